"""pbhw.core.io: the atomic writer's file modes."""

from __future__ import annotations

import os
import stat
import sys

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


def test_the_umask_survives_files_written_from_many_threads(tmp_path, umask):
    """pbhw flow writes files from two threads; reading the umask (by setting it and setting it
    back) must not leave another thread's stand-in behind."""
    import threading

    from pbhw.core.io import _umask

    umask(0o027)
    start = threading.Barrier(8)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, between any two calls

    def write(i):
        start.wait()
        for j in range(20):
            write_atomic(tmp_path / f"f{i}_{j}.txt", "x")
            for _ in range(500):
                _umask()  # what every atomic write and staging folder reads

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.setswitchinterval(interval)
    assert os.umask(0o027) == 0o027
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o640}
