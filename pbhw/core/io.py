"""Atomic file output: the one writer every command uses for a single file; the checks that an
output path can be written (run before any work, so that a bad path costs nothing); and where
pbhw keeps its per-user cache.

A reader never sees a half-written file: the data goes to a temporary file in the same directory,
which is renamed over the target. Whole output directories are staged the same way by their
writers (:func:`rtl_gen.generate.generate`, :func:`pbhw.flows.flow.run_flow`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbhw.core.errors import UserError

__all__ = [
    "check_output_dir",
    "check_output_file",
    "discard_staging_dir",
    "make_staging_dir",
    "replace_dir",
    "user_cache_dir",
    "write_atomic",
    "write_json",
]


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_folder(folder: Path, option: str, target: Path) -> None:
    """Raise :class:`UserError` unless files can be created in ``folder`` (or, if it does not
    exist yet, in its nearest existing ancestor, where it would be created). Tried for real with
    a temporary file that is removed at once."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise UserError(
            f"{option} '{target}' cannot be written: '{base}' is a file, not a folder; give a "
            "path in a writable folder"
        )
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".pbhw-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"{option} '{target}' cannot be written ({e.strerror or e} in '{base}'); give a "
            "path in a writable folder"
        ) from None


def check_output_file(path: Path, option: str) -> None:
    """Raise :class:`UserError` (naming ``option``) unless :func:`write_atomic` can write
    ``path``: not a folder, in a folder that exists or can be created and takes new files."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} '{path}' is a folder; give a file path")
    _check_writable_folder(path.parent, option, path)


def check_output_dir(
    path: Path, option: str, command: str, is_own: Callable[[Path], bool], *, replaced: bool
) -> None:
    """Raise :class:`UserError` (naming ``option``) unless ``path`` can take ``command``'s
    output: it does not exist, is an empty folder, or is a folder ``is_own`` recognises as an
    earlier output of ``command``; and it can be written (``replaced``: the folder is staged
    beside it and renamed into place, so its parent must take new entries)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UserError(f"{option} '{path}' is a file; give a folder")
        if any(path.iterdir()) and not is_own(path):
            raise UserError(
                f"{option} '{path}' exists and is not a {command} output; choose another "
                "folder (or an empty one)"
            )
    _check_writable_folder(path.parent if replaced or not path.exists() else path, option, path)


def make_staging_dir(path: Path) -> tuple[Path, Path | None]:
    """A new empty folder beside ``path`` (creating ``path``'s missing parents) in which to
    build ``path``'s contents, with the usual permissions (``0o777`` less the umask); and the
    top-most parent folder created (``None`` if none was), for :func:`discard_staging_dir`."""
    path = Path(path)
    first_missing = None
    for parent in reversed(Path(os.path.abspath(path)).parents):
        if not parent.exists():
            first_missing = parent
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp, first_missing


def replace_dir(staging: Path, path: Path) -> None:
    """Rename the finished ``staging`` folder to ``path``, replacing an earlier ``path`` as a
    whole (the earlier one is renamed aside first, and removed once the new one is in place)."""
    path = Path(path)
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        old.rmdir()
        path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(path)


def discard_staging_dir(staging: Path, created: Path | None) -> None:
    """Remove a staging folder, and the parent folders :func:`make_staging_dir` created."""
    shutil.rmtree(staging, ignore_errors=True)
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)


#: Held while :func:`_umask` sets the umask and sets it back: two threads reading it at once
#: (``pbhw flow`` writes files from two) would otherwise leave the second one's stand-in set.
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask (read by setting it, and setting it back at once)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


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


def read_text(path: Path, what: str, error: type[UserError]) -> str:
    """The UTF-8 text of ``path``, or ``error`` naming ``what`` the file is ("config file",
    "manifest file") and why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} '{path}' cannot be read: {e}") from None


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place, with the mode
    a plain ``open(path, "w")`` gives (``0o666`` less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates the file 0o600; give it the mode open() would have given it.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON (no NaN or infinity), atomically."""
    write_atomic(Path(path), json.dumps(payload, indent=2, allow_nan=False) + "\n")
