"""``pbhw flow`` end to end on a tiny design: every step runs for real and the report says so."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pbhw.cli import main
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
