"""``pbhw flow`` end to end on a tiny design: every step runs for real and the report says so."""

import dataclasses
import functools
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pbhw.tools.estimate as estimate_module
import pbhw.tools.reference as reference_module
import pbhw.tools.toolchain as toolchain
import pbhw.tools.verify as verify_module
from golden.compare import Observed
from pbhw.cli import main
from pbhw.core.config import load
from pbhw.core.errors import TrainingDiverged
from pbhw.flows.flow import run_flow
from pbhw.tools.toolchain import ToolError, verilator

ROOT = Path(__file__).resolve().parents[1]


def tiny_dataset(path: Path) -> Path:
    """Three separable blobs in 4 features: a network small enough to place and route in
    seconds."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 240)
    x = rng.normal(0, 0.3, (240, 4)) + np.eye(3, 4)[y]
    np.savez(path, X=x, y=y)
    return path


def tiny_sets(tmp_path: Path) -> tuple[str, ...]:
    data = tiny_dataset(tmp_path / "blobs.npz")
    return (
        "name='tiny'",
        "network.layers=[4, 3]",
        "hardware.lanes=[3]",
        "train.epochs=2",
        f"train.dataset='npz:{data}'",
    )


def test_flow_trains_generates_verifies_estimates_and_reports(tmp_path):
    try:
        verilator()
    except ToolError as error:
        pytest.skip(f"verilator unavailable: {error}")
    out = tmp_path / "flow"
    args = [
        "flow",
        str(ROOT / "examples" / "mlp_digits.toml"),
        "-o",
        str(out),
        "--verify-samples",
        "8",
        "--pnr-seed",
        "3",
    ]
    for s in tiny_sets(tmp_path):
        args += ["--set", s]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for name in (
        "report.md",
        "training.png",
        "resources.png",
        "train_fixed.json",
        "train_sgd.json",
        "verify.json",
        "estimate.json",
        "rtl/manifest.json",
    ):
        assert (out / name).is_file(), name
    verify = json.loads((out / "verify.json").read_text())
    assert verify["bit_exact"] and verify["samples"] == 8
    estimate = json.loads((out / "estimate.json").read_text())
    assert estimate["method"] == "synthesis" and estimate["fmax_mhz"] > 0
    assert estimate["dsp_used"] == json.loads((out / "rtl/manifest.json").read_text())["dsp_blocks"]
    report = (out / "report.md").read_text()
    assert "**bit-exact**" in report and "Fmax (place and route)" in report
    assert " MHz at nextpnr placement seed 3 |" in report and "nextpnr seed 3" in estimate["notes"]
    assert "![training curves](training.png)" in report
    assert (
        f"{100 * json.loads((out / 'train_fixed.json').read_text())['test_accuracy']:.2f} %"
        in report
    )


@pytest.mark.parametrize("seed", ["0", "-2", "two"])
def test_flow_refuses_a_bad_placement_seed_before_any_work(tmp_path, seed):
    out = tmp_path / "flow"
    args = ["flow", str(ROOT / "examples" / "mlp_digits.toml"), "-o", str(out), "--pnr-seed", seed]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--pnr-seed" in result.output, result.output
    assert not out.exists()


@pytest.fixture
def stub_tools(tmp_path, monkeypatch) -> dict:
    """The simulator and the synthesis tools stubbed (they take their input as it comes);
    returns what was handed to them."""
    handed: dict = {}

    def sim_build(verilog, top, *, simulator):
        handed["simulated"] = (verilog, top)
        return toolchain.SimBuild(simulator, top, tmp_path, rebuilt=False)

    def sim_test(build, test_module, *, test_dir, extra_env):
        Path(extra_env["PBHW_OBSERVED"]).write_text("{}")

    def observe(design, trace, raw):
        stages = len(design.network.stages)
        return Observed([[] for _ in range(stages)], [[] for _ in range(stages)]), []

    def synthesize(verilog, top, device, *, clock_mhz=None, key="synthesized", **options):
        handed[key] = (verilog, top)
        used = {"lut": 1, "ff": 1, "dsp": 0, "bram_bits": 0}
        return estimate_module._judge(
            device, used, method="synthesis", fmax_mhz=None, clock_mhz=clock_mhz, seconds=0.0
        )

    monkeypatch.setattr(verify_module, "sim_build", sim_build)
    monkeypatch.setattr(verify_module, "sim_test", sim_test)
    monkeypatch.setattr(verify_module, "observe", observe)
    monkeypatch.setattr(estimate_module, "synthesize", synthesize)
    monkeypatch.setattr(
        reference_module, "synthesize", functools.partial(synthesize, key="reference_mac")
    )
    return handed


def test_flow_elaborates_the_design_once(tmp_path, monkeypatch, stub_tools):
    """generate builds and converts the design; verify simulates and estimate synthesises that
    same Verilog (the simulator and the synthesis tools are stubbed: they would take their
    input as it comes). The reference MAC of the figures of merit is a design of its own."""
    import amaranth.back.verilog

    import rtl_gen.design

    counts = {"built": 0, "converted": 0}
    network, convert = rtl_gen.design.Network, amaranth.back.verilog.convert

    def counted_network(*args, **kwargs):
        counts["built"] += 1
        return network(*args, **kwargs)

    def counted_convert(component, *args, **kwargs):
        # the design's conversions (the reference MAC beside it is converted on its own)
        counts["converted"] += isinstance(component, network)
        return convert(component, *args, **kwargs)

    monkeypatch.setattr(rtl_gen.design, "Network", counted_network)
    monkeypatch.setattr(amaranth.back.verilog, "convert", counted_convert)

    config = load(ROOT / "examples" / "mlp_digits.toml", tiny_sets(tmp_path))
    out = tmp_path / "flow"
    summary = run_flow(config, out, verify_samples=8)
    assert counts == {"built": 1, "converted": 1}
    generated = ((out / "rtl" / "tiny.v").read_text(), "tiny")
    assert stub_tools["reference_mac"][1].startswith("mac_")  # a design of its own
    del stub_tools["reference_mac"]
    assert stub_tools == {"simulated": generated, "synthesized": generated}
    assert summary["manifest"]["top"] == "tiny" and (out / "report.md").is_file()


def test_verify_and_estimate_refuse_another_config_s_design(tmp_path):
    from rtl_gen.generate import generate

    config = load(ROOT / "examples" / "mlp_digits.toml", tiny_sets(tmp_path))
    generated = generate(config, tmp_path / "rtl")
    other = config.replace({"seed": 1})
    with pytest.raises(ValueError, match="generated must be the design of config 'tiny'"):
        verify_module.verify(other, samples=8, generated=generated)
    with pytest.raises(ValueError, match="generated must be the design of config 'tiny'"):
        estimate_module.estimate(other, fast=True, generated=generated)
    handed = estimate_module.estimate(config, fast=True, generated=generated)
    standalone = estimate_module.estimate(config, fast=True)
    assert dataclasses.replace(handed, seconds=0.0) == dataclasses.replace(standalone, seconds=0.0)


# --------------------------------------------------------------------------------------------
# bad input: refused before any work, nothing written


def _flow_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    args = ["flow", str(ROOT / "examples" / "mlp_digits.toml"), "-o", str(out)]
    for s in tiny_sets(tmp_path):
        args += ["--set", s]
    return [*args, *extra]  # (a later --set wins)


@pytest.fixture
def no_training(monkeypatch):
    """Training (the first minutes of a real flow) fails the test if it starts."""
    import pbhw.flows.flow as flow_module

    def train(config, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(flow_module, "train", train)


def _assert_refused(result, *fragments: str) -> None:
    """Exit status 2 and one ``error:`` line, the last on stderr. (A design the generator
    refuses is found by generating it, the first step, after its progress line.)"""
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    assert lines[:-1] in ([], ["1/5 generating Verilog ..."]), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--verify-samples", "0"], ["--verify-samples", "not 0"]),
        (["--verify-samples", "100000"], ["--verify-samples", "at most the 192", "not 100000"]),
        (["--pnr-timeout", "0"], ["--pnr-timeout", "a positive number of minutes", "not 0"]),
        (["--pnr-timeout", "-5"], ["--pnr-timeout", "not -5"]),
        (["--pnr-timeout", "nan"], ["--pnr-timeout", "not nan"]),
        (["--set", "optimizer.algorithm='sgd'"], ["'optimizer.algorithm' must be 'pb'"]),
        (["--set", "optimizer.weight_stashing=true"], ["'optimizer.weight_stashing'"]),
        (["--set", "hardware.lanes=[99]"], ["'hardware.lanes'", "99 lanes"]),
        (["--set", "hardware.device='ecp6'"], ["unknown device 'ecp6'"]),
    ],
)
def test_flow_refuses_bad_input_before_training_and_writes_nothing(
    tmp_path, no_training, extra, fragments
):
    out = tmp_path / "deep" / "flow"
    result = CliRunner().invoke(main, _flow_args(tmp_path, out, *extra))
    _assert_refused(result, *fragments)
    assert not (tmp_path / "deep").exists()


def test_flow_refuses_a_missing_simulator_before_training(tmp_path, no_training, monkeypatch):
    def missing():
        raise ToolError("Icarus Verilog is not installed: no 'iverilog' and 'vvp' on PATH")

    monkeypatch.setattr(toolchain, "iverilog", missing)
    out = tmp_path / "flow"
    result = CliRunner().invoke(main, _flow_args(tmp_path, out, "--simulator", "icarus"))
    _assert_refused(result, "Icarus Verilog is not installed")
    assert not out.exists()


@pytest.mark.parametrize("command", ["flow", "sweep"])
def test_flow_and_sweep_refuse_a_folder_that_is_not_their_output(tmp_path, no_training, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own notes\n")
    if command == "flow":
        args = _flow_args(tmp_path, out)
    else:
        args = ["sweep", str(ROOT / "examples" / "mlp_digits.toml"), "-o", str(out)]
        args += ["--grid", "seed=1,2", *[x for s in tiny_sets(tmp_path) for x in ("--set", s)]]
    result = CliRunner().invoke(main, args)
    _assert_refused(result, f"'{out}'", f"not a pbhw {command} output", "choose another")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs.npz", "mine"]


def test_a_failing_flow_leaves_nothing_behind_and_keeps_an_earlier_output(
    tmp_path, stub_tools, monkeypatch
):
    import pbhw.flows.flow as flow_module

    config = load(ROOT / "examples" / "mlp_digits.toml", tiny_sets(tmp_path))
    out = tmp_path / "runs" / "flow"

    def broken(*args, **kwargs):
        raise ToolError("yosys: out of cheese")

    real_estimate = flow_module.estimate
    monkeypatch.setattr(flow_module, "estimate", broken)
    with pytest.raises(ToolError, match="out of cheese"):
        run_flow(config, out, verify_samples=8)
    assert not (tmp_path / "runs").exists()

    monkeypatch.setattr(flow_module, "estimate", real_estimate)
    first = run_flow(config, out, verify_samples=8)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / "summary.json").is_file() and first["verify"]["samples"] == 8
    monkeypatch.setattr(flow_module, "estimate", broken)
    with pytest.raises(ToolError):
        run_flow(config.replace({"seed": 5}), out, verify_samples=8)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["flow"]

    # A finished run replaces an earlier output of pbhw flow as a whole.
    monkeypatch.setattr(flow_module, "estimate", real_estimate)
    run_flow(config.replace({"seed": 5}), out, verify_samples=8)
    assert json.loads((out / "summary.json").read_text())["config"]["seed"] == 5
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["flow"]


# --------------------------------------------------------------------------------------------
# step 2 (synthesis and place-and-route) beside training, verification and the reference MAC


def _overlapping(monkeypatch, first: str, second: str) -> list:
    """Replace the flow's functions ``first`` and ``second`` by wrappers that each wait for the
    other to have started (with a time limit: one after the other, they fail), then call the
    real one. Returns the list of ``second``'s results."""
    import pbhw.flows.flow as flow_module

    started = {first: threading.Event(), second: threading.Event()}
    results = []

    def wrap(name, other):
        real = getattr(flow_module, name)

        def wrapper(config, **kwargs):
            started[name].set()
            if not started[other].wait(timeout=60):
                raise AssertionError(f"{other} did not run while {name} did")
            result = real(config, **kwargs)
            if name == second:
                results.append(result)
            return result

        monkeypatch.setattr(flow_module, name, wrapper)

    wrap(first, second)
    wrap(second, first)
    return results


def test_the_reference_mac_is_routed_beside_the_design(tmp_path, monkeypatch, stub_tools):
    """The reference MAC is routed while the design's estimate still runs, and its result
    reaches the summary."""
    routed = _overlapping(monkeypatch, "estimate", "reference_mac")
    lines = []
    config = load(ROOT / "examples" / "mlp_digits.toml", tiny_sets(tmp_path))
    summary = run_flow(config, tmp_path / "flow", verify_samples=8, progress=lines.append)
    assert "[mac] the reference MAC for the figures of merit ..." in lines
    assert len(routed) == 1 and summary["reference_mac"] == routed[0]
    assert stub_tools["reference_mac"][1].startswith("mac_")  # the stubbed tools, not nextpnr
    assert summary["timings"]["reference_mac"] > 0


def test_synthesis_runs_beside_training_and_verification(tmp_path, monkeypatch, stub_tools):
    """The estimate starts before training and is still running when training starts. Progress
    lines come from the calling thread only, prefixed with their step while steps overlap."""
    import pbhw.flows.flow as flow_module

    _overlapping(monkeypatch, "estimate", "train")
    lines, threads = [], set()

    def progress(message):
        lines.append(message)
        threads.add(threading.current_thread())

    config = load(ROOT / "examples" / "mlp_digits.toml", tiny_sets(tmp_path))
    summary = run_flow(config, tmp_path / "flow", verify_samples=8, progress=progress)
    assert threads == {threading.main_thread()}
    assert lines[0] == "1/5 generating Verilog ..." and lines[-1] == "5/5 writing the report ..."
    middle = [line for line in lines[1:-1] if not line.startswith("waiting for step 2")]
    assert all(
        line.split(" ")[0] in ("[estimate]", "[train]", "[verify]", "[mac]") for line in middle
    )
    starts = [line.split(" ")[1] for line in middle if line.split(" ")[1][1:2] == "/"]
    assert sorted(starts) == ["2/5", "3/5", "4/5"], lines
    assert any(line.startswith("[estimate] yosys") or "fits: True" in line for line in middle)
    assert list(summary["timings"]) == [*flow_module.TIMED_STEPS, "total"]
    saved = json.loads((tmp_path / "flow" / "summary.json").read_text())
    assert saved["timings"] == summary["timings"]
    total = summary["timings"]["total"]
    assert (
        f"Total wall time of the flow: {total:,.1f} s" in (tmp_path / "flow/report.md").read_text()
    )
    assert json.loads((tmp_path / "flow" / "estimate.json").read_text())["method"] == "synthesis"
    assert not [t for t in threading.enumerate() if t.name.startswith("pbhw flow")]


def test_a_failure_beside_training_stops_it_and_is_the_error(tmp_path, monkeypatch, stub_tools):
    """Step 2 fails while training runs: training stops at its next progress point (an
    epoch), nothing is left behind, and the command reports step 2's error with its exit
    status."""
    import pbhw.flows.flow as flow_module

    training = threading.Event()
    calls = []

    def estimate(config, **kwargs):
        if not training.wait(timeout=60):
            raise AssertionError("training did not start")
        raise ToolError("yosys: out of cheese")

    def train(config, *, on_epoch=None, **kwargs):
        calls.append("train")
        training.set()
        for _ in range(6000):  # epochs; each ends at the flow's progress point
            on_epoch(None)
            time.sleep(0.01)
        raise AssertionError("training went on after step 2 failed")

    def verify(*args, **kwargs):
        raise AssertionError("verification started after step 2 failed")

    monkeypatch.setattr(flow_module, "estimate", estimate)
    monkeypatch.setattr(flow_module, "train", train)
    monkeypatch.setattr(flow_module, "verify", verify)
    out = tmp_path / "runs" / "flow"
    result = CliRunner().invoke(main, _flow_args(tmp_path, out, "--verify-samples", "8"))
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == "error: yosys: out of cheese", result.stderr
    assert calls == ["train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs.npz"]
    assert not [t for t in threading.enumerate() if t.name.startswith("pbhw flow")]


def _children_listed() -> bool:
    return Path(f"/proc/self/task/{threading.get_native_id()}/children").exists()


@pytest.mark.skipif(not _children_listed(), reason="no /proc/PID/task/TID/children here")
@pytest.mark.parametrize(
    "failure", [TrainingDiverged("loss diverged at epoch 1"), KeyboardInterrupt()]
)
def test_a_failure_in_training_kills_the_tool_beside_it(tmp_path, monkeypatch, failure):
    """Training fails (or is interrupted) while step 2's tool runs: the tool's process is
    killed, its thread ends, the training error is raised (not the killed tool's) and nothing
    is left behind."""
    import pbhw.flows.flow as flow_module

    running = threading.Event()
    ended = {}

    def estimate(config, **kwargs):
        kwargs["progress"]("yosys: a minute's sleep")
        running.set()
        tool = subprocess.run([sys.executable, "-c", "import time; time.sleep(60)"])
        ended["returncode"] = tool.returncode
        raise ToolError(f"yosys failed (exit {tool.returncode})")

    def train(config, **kwargs):
        if not running.wait(timeout=60):
            raise AssertionError("the estimate did not start")
        raise failure

    monkeypatch.setattr(flow_module, "estimate", estimate)
    monkeypatch.setattr(flow_module, "train", train)
    config = load(ROOT / "examples" / "mlp_digits.toml", tiny_sets(tmp_path))
    with pytest.raises(type(failure)) as raised:
        run_flow(config, tmp_path / "runs" / "flow", verify_samples=8)
    assert raised.value is failure
    assert ended == {"returncode": -signal.SIGTERM}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs.npz"]
    assert not [t for t in threading.enumerate() if t.name.startswith("pbhw flow")]
