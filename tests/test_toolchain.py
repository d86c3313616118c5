"""Tests for pbhw.tools.toolchain: tool discovery, lint with the waiver file, cached simulation
builds."""

import fcntl
import importlib.metadata
import os

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.fixed import FixedFormat
from pbhw.tools.harness import SOURCE, VERILATOR_FLAGS
from pbhw.tools.harness import _hash as _harness_hash
from pbhw.tools.toolchain import (
    VERILATOR_MIN_VERSION,
    ToolError,
    _build_hash,
    build_lock,
    iverilog,
    lint,
    make_flags,
    prune_builds,
    sim_build,
    verilator,
    verilator_env,
    verilog_of,
)
from rtl_gen.requantizer import Requantizer
from rtl_gen.resources import MODELS, WAIVER, models_for


class Invert(wiring.Component):
    a: In(8)
    y: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(~self.a)
        return m


BROKEN = "module broken(input a, output b);\n  assign b = a & missing_net;\nendmodule\n"


def test_verilator_is_recent_enough():
    tool = verilator()
    assert tool.version >= VERILATOR_MIN_VERSION
    assert tool.executable.is_file() and os.access(tool.executable, os.X_OK)
    if tool.root is not None:  # the PyPI wheel prints "rev vUNKNOWN": its version is the dist's
        major, minor, *_ = importlib.metadata.version("verilator").split(".")
        assert tool.version == (int(major), int(minor))
        assert tool.version_string == f"{major}.{int(minor):03d}"


def test_verilator_env_puts_it_first_on_path():
    env = verilator_env()
    assert env["PATH"].split(os.pathsep)[0] == str(verilator().executable.parent)
    assert ("VERILATOR_ROOT" in env) == (verilator().root is not None)


def test_iverilog_is_found_or_named_missing():
    try:
        tool = iverilog()
    except ToolError as error:
        assert "iverilog" in str(error)
    else:
        assert tool.version >= (10, 0)


def test_waiver_file_is_a_verilator_config():
    assert WAIVER.read_text().startswith("`verilator_config")


@pytest.mark.parametrize(
    "rounding, src",
    [("stochastic", FixedFormat(24, 12)), ("half_even", FixedFormat(4, 0, signed=False))],
)
def test_lint_accepts_amaranth_verilog(tmp_path, rounding, src):
    dut = Requantizer(src=src, dst=FixedFormat(8, 4), rounding=rounding, overflow="saturate")
    path = tmp_path / "requantizer.v"
    path.write_text(verilog_of(dut, "requantizer"))
    lint(path, "requantizer")


def test_lint_rejects_broken_verilog(tmp_path):
    path = tmp_path / "broken.v"
    path.write_text(BROKEN)
    with pytest.raises(ToolError, match=r"(?s)lint of .*broken\.v.*missing_net"):
        lint(path, "broken")


def test_models_for_finds_instantiated_primitives():
    instance = (
        'module top(input a);\n  MULT18X18D #(\n    .GSR("DISABLED")\n  ) m (.A0(a));\nendmodule\n'
    )
    assert models_for(instance) == [MODELS / "MULT18X18D.v"]
    # a design that defines the module itself, or only mentions the name, needs no model
    assert models_for(instance + "module MULT18X18D(input A0);\nendmodule\n") == []
    assert models_for("module top;\n  wire MULT18X18D_used;\nendmodule\n") == []


def test_verilog_of_names_the_top_module():
    text = verilog_of(Invert(), "invert")
    assert "module invert(" in text and "/work" not in text  # no source paths: stable hashes


def test_verilog_of_wrong_component():
    with pytest.raises(TypeError, match=r"Component must be a wiring.Component, not 'x'"):
        verilog_of("x", "top")
    dut = Invert()
    with pytest.raises(ValueError, match=r"Module name must be a Verilog identifier, not 'a b'"):
        verilog_of(dut, "a b")
    verilog_of(dut, "invert")  # elaborated, so Amaranth does not warn about an unused component


def fastest_simulator():
    """Icarus compiles in a fraction of a second, Verilator in tens; the cache is the same."""
    try:
        iverilog()
    except ToolError:
        return "verilator"
    return "icarus"


def test_sim_build_is_reused_while_inputs_are_unchanged(tmp_path):
    sim = fastest_simulator()
    text = verilog_of(Invert(), "invert")
    first = sim_build(text, "invert", simulator=sim, root=tmp_path)
    again = sim_build(text, "invert", simulator=sim, root=tmp_path)
    assert first.rebuilt and not again.rebuilt
    assert again.directory == first.directory
    assert first.directory.parent == tmp_path / sim
    other = sim_build(text, "invert", simulator=sim, root=tmp_path, build_args=["-DUNUSED"])
    assert other.rebuilt and other.directory != first.directory


def harness_hash(text: str) -> str:
    return _harness_hash(text, "invert", VERILATOR_FLAGS, SOURCE.read_text())


def test_build_hashes_hold_the_make_flags(monkeypatch):
    """A model compiled with other C++ options (MAKEFLAGS) is another build, never reused: the
    cocotb build's hash and the compiled harness's both change with them."""
    text, tool = verilog_of(Invert(), "invert"), verilator()
    digests = []
    for flags in ("OPT_FAST=-O0", "OPT_FAST=-O1"):
        monkeypatch.setenv("MAKEFLAGS", flags)
        assert make_flags().startswith(flags)
        digests.append((_build_hash(text, "invert", "verilator", tool, ()), harness_hash(text)))
    assert digests[0][0] != digests[1][0] and digests[0][1] != digests[1][1]


def test_build_lock_excludes_other_holders_until_released(tmp_path):
    directory = tmp_path / "verilator" / "0123"

    def try_lock() -> bool:
        with open(tmp_path / "verilator" / "0123.lock", "a") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True

    with build_lock(directory):
        assert not try_lock()
    assert try_lock()
    prune_builds(tmp_path, keep=1)  # no build: the lock file is not one
    assert (tmp_path / "verilator" / "0123.lock").is_file()


def test_sim_build_reports_compiler_errors(tmp_path):
    with pytest.raises(ToolError, match=r"(?s)verilator build of broken failed.*missing_net"):
        sim_build(BROKEN, "broken", root=tmp_path)


def _fake_build(root, kind, name, *, used=None, stamped=True):
    """A build directory with a stamp last used at ``used`` (seconds since the epoch)."""
    directory = root / kind / name
    directory.mkdir(parents=True)
    (directory / "model.bin").write_bytes(b"\0" * 64)
    if stamped:
        (directory / "pbhw-build.json").write_text("{}\n")
        os.utime(directory / "pbhw-build.json", (used, used))
    else:
        os.utime(directory, (used, used))
    return directory


def test_prune_builds_keeps_the_most_recently_used(tmp_path):
    now = 1_000_000_000.0
    ages = {"a": 50, "b": 10, "c": 30, "d": 20}  # seconds since last use
    builds = {
        name: _fake_build(tmp_path, "verilator" if name < "c" else "harness", name, used=now - age)
        for name, age in ages.items()
    }
    deleted = prune_builds(tmp_path, keep=2, now=now)
    assert set(deleted) == {builds["a"], builds["c"]}
    assert sorted(p.name for p in tmp_path.glob("*/*")) == ["b", "d"]


def test_prune_builds_spares_the_new_build_and_recent_incomplete_ones(tmp_path):
    now = 1_000_000_000.0
    new = _fake_build(tmp_path, "harness", "new", used=now - 1000)
    old = _fake_build(tmp_path, "verilator", "old", used=now - 10)
    failed = _fake_build(tmp_path, "verilator", "failed", used=now - 2 * 86400, stamped=False)
    building = _fake_build(tmp_path, "verilator", "building", used=now - 60, stamped=False)
    deleted = prune_builds(tmp_path, keep=1, keep_also=new, now=now)
    assert set(deleted) == {failed, old}
    assert new.is_dir() and building.is_dir()


def test_prune_builds_reads_the_bound_from_the_environment(tmp_path, monkeypatch):
    now = 1_000_000_000.0
    for k in range(4):
        _fake_build(tmp_path, "verilator", f"b{k}", used=now - k)
    monkeypatch.setenv("PBHW_SIM_BUILD_KEEP", "3")
    assert [p.name for p in prune_builds(tmp_path, now=now)] == ["b3"]
    monkeypatch.setenv("PBHW_SIM_BUILD_KEEP", "0")
    with pytest.raises(ToolError, match="PBHW_SIM_BUILD_KEEP must be a positive integer, not '0'"):
        prune_builds(tmp_path, now=now)
