"""Atomic file output: the one writer every command uses for a single file; and where pbhw
keeps its per-user cache.

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

__all__ = ["user_cache_dir", "write_atomic", "write_json"]


def user_cache_dir() -> Path:
    """pbhw's per-user cache folder: ``$PBHW_CACHE_DIR``, else ``$XDG_CACHE_HOME/pbhw``, else
    ``~/.cache/pbhw`` (read at each call, so the environment may change in between)."""
    own = os.environ.get("PBHW_CACHE_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative path is to be ignored
        return Path(xdg) / "pbhw"
    return Path.home() / ".cache" / "pbhw"


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
