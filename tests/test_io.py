"""pbhw.core.io: the atomic writer's file modes."""

from __future__ import annotations

import os
import stat

import pytest

from pbhw.core.io import write_atomic, write_json


@pytest.fixture
def umask():
    """Set the process umask for a test, and restore it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_written_files_have_the_usual_mode_for_the_umask(tmp_path, umask, mask):
    """As ``open(path, "w")`` would create them (0o666 less the umask), not mkstemp's 0o600."""
    umask(mask)
    write_atomic(tmp_path / "a.txt", "text\n")
    write_json(tmp_path / "b.json", {"x": 1})
    write_atomic(tmp_path / "a.txt", "again\n")  # replacing keeps the usual mode too
    for name in ("a.txt", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
