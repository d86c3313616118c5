"""pytest configuration for the testbenches: share the models of the amaranth.sim tests.

``tests/`` is a rootless test directory (its modules import each other by bare name), so a run of
``pytest sim/`` alone puts it on ``sys.path`` here to reuse, e.g., ``test_rtl_update.golden``.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
