"""pytest configuration of the whole suite (``tests/`` and ``sim/``).

* The suite's Verilator models are compiled without C++ optimisation (the make variables
  ``OPT_FAST``, ``OPT_SLOW`` and ``OPT_GLOBAL`` of Verilator's generated makefiles, through
  ``MAKEFLAGS``): the compiler's time is most of a build, and the suite's simulations are short.
  A build's hash holds these flags (:func:`pbhw.tools.toolchain.make_flags`), so a test build
  never stands in for a user's optimised one; ``bench/sim_speed.py`` measures optimised builds.
* The build cache keeps more builds during the run (``PBHW_SIM_BUILD_KEEP``): the suite makes
  about twenty, and with ``pytest -n 2`` one worker must not delete a build the other still uses.
"""

import os

#: The make variables of an unoptimised C++ build of a Verilated model.
UNOPTIMISED = "OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"

os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} {UNOPTIMISED}".strip()
os.environ.setdefault("PBHW_SIM_BUILD_KEEP", "64")
