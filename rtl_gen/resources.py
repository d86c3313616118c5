"""Files that ship with the generator, read through :mod:`importlib.resources` so that they are
found in an installed package as in a checkout.

* ``models/<PRIMITIVE>.v``: a simulation model of every vendor primitive the generator can
  instantiate (:data:`pbhw.core.devices.PRIMITIVES`); synthesis reads the vendor's own.
* ``verilator.vlt``: the Verilator waiver file passed to every Verilator run (lint and builds).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

__all__ = ["MODELS", "WAIVER", "models_for"]


def _path(name: str) -> Path:
    ref = resources.files(__package__) / name
    path = Path(str(ref))
    if not path.exists():  # pragma: no cover - only a zipped install lands here
        raise FileNotFoundError(f"rtl_gen package data {name!r} is not on the file system")
    return path


#: Directory of the primitives' simulation models, one file per module.
MODELS = _path("models")
#: The Verilator waiver (configuration) file.
WAIVER = _path("verilator.vlt")


def models_for(verilog: str) -> list[Path]:
    """Simulation models (:data:`MODELS`) of the primitives ``verilog`` instantiates but does
    not define: a simulation of the text needs them, synthesis reads the vendor's own."""
    return [
        path
        for path in sorted(MODELS.glob("*.v"))
        if re.search(rf"^\s*{path.stem}\s", verilog, re.MULTILINE)
        and not re.search(rf"^\s*module\s+{path.stem}\b", verilog, re.MULTILINE)
    ]
