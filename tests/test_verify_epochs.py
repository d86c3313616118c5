"""``pbhw verify --epochs``: its arguments are checked before any work (one ``error:`` line, exit
status 2); ``pbhw flow`` verifies the whole training run when it is cheap. The harness runs
themselves are in tests/test_harness.py."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pbhw.cli.commands as commands
import pbhw.tools.estimate as estimate_module
from pbhw.cli import main
from pbhw.core.config import load
from pbhw.flows.flow import FULL_RUN_SECONDS, full_run_seconds, run_flow
from pbhw.tools.toolchain import ToolError, verilator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.toml"


@pytest.fixture
def no_work(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("work started")

    for name in ("run_verify", "run_verify_epochs"):
        monkeypatch.setattr(commands, name, started)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs must be a positive integer, not 0"),
        (["--epochs", "-3"], "--epochs must be a positive integer, not -3"),
        (["--epochs", "2", "--samples", "10"], "give either --samples or --epochs, not both"),
        (
            ["--epochs", "1", "--simulator", "icarus"],
            "--epochs runs on the compiled Verilator harness, not --simulator icarus",
        ),
        (["--epochs", "1", "--idle", "1.5"], "--idle must be a probability in [0, 1), not 1.5"),
    ],
)
def test_bad_epochs_arguments_are_refused_before_any_work(no_work, args, message):
    result = CliRunner().invoke(main, ["verify", str(EXAMPLE), *args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {message}"]


def test_samples_default_to_200_without_epochs(monkeypatch):
    seen = {}

    def fake(config, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(commands, "run_verify", fake)
    CliRunner().invoke(main, ["verify", str(EXAMPLE)])
    assert seen["samples"] == 200


def test_flow_verifies_the_whole_training_run_when_it_is_cheap(tmp_path, monkeypatch):
    """A tiny config's whole run is predicted to take well under FULL_RUN_SECONDS: the flow
    verifies every epoch on the compiled harness, and the golden model of that run reaches the
    fixed-point trainer's test accuracy. Synthesis is stubbed (tests/test_flow.py runs it)."""
    try:
        verilator()
    except ToolError as error:
        pytest.skip(f"Verilator unavailable: {error}")

    def synthesize(verilog, top, device, *, clock_mhz=None, **options):
        used = {"lut": 1, "ff": 1, "dsp": 0, "bram_bits": 0}
        return estimate_module._judge(
            device, used, method="synthesis", fmax_mhz=None, clock_mhz=clock_mhz, seconds=0.0
        )

    monkeypatch.setattr(estimate_module, "synthesize", synthesize)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = rng.normal(0, 0.3, (120, 4)) + np.eye(3, 4)[y]
    np.savez(tmp_path / "blobs.npz", X=x, y=y)
    sets = (
        "name='tiny_full'",
        "network.layers=[4, 3, 3]",
        "hardware.lanes=[3, 2]",
        "train.epochs=2",
        f"train.dataset='npz:{tmp_path / 'blobs.npz'}'",
    )
    config = load(EXAMPLE, sets)
    summary = run_flow(config, tmp_path / "flow")
    checked = json.loads((tmp_path / "flow" / "verify.json").read_text())
    assert checked == summary["verify"]
    assert checked["bit_exact"], checked["mismatch"]
    assert checked["epochs"] == 2 and checked["samples"] == summary["train_fixed"]["samples"]
    assert checked["full_run"]["chosen"]
    assert checked["full_run"]["predicted_seconds"] <= FULL_RUN_SECONDS
    assert checked["golden_test_accuracy"] == checked["full_run"]["trainer_test_accuracy"]
    assert checked["rtl_test_accuracy"] == checked["golden_test_accuracy"]


def test_the_full_run_rule_prefers_the_short_check_for_long_runs():
    # 10 epochs of digits on the default example (371 cycles/sample): verified whole; a run
    # ten times as long is not.
    assert full_run_seconds(371, 14370) <= FULL_RUN_SECONDS < full_run_seconds(371, 143700)
