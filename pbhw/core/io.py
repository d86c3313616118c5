"""Atomic file output: the one writer every command uses for a single file.

A reader never sees a half-written file: the data goes to a temporary file in the same directory,
which is renamed over the target. Whole output directories are staged the same way by their
writers (:func:`rtl_gen.generate.generate`, :func:`pbhw.flows.flow.run_flow`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_json"]


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON (no NaN or infinity), atomically."""
    write_atomic(Path(path), json.dumps(payload, indent=2, allow_nan=False) + "\n")
