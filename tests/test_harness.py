"""The compiled Verilator harness (``pbhw verify --epochs``) on a small config, against the golden
model over whole epochs.

One small three-stage network on a small ``npz`` dataset (so that an epoch is a few hundred
samples) is built once for the module; the planted change costs one more harness build and one
cocotb build of the changed design (the localisation).
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pbhw.cli import main
from pbhw.core.config import load
from pbhw.core.datasets import load as load_dataset
from pbhw.core.plan import derive_plan
from pbhw.tools.toolchain import ToolError, verilator
from pbhw.tools.train import train
from pbhw.tools.verify import compare_epochs, golden_epochs, verify_epochs
from rtl_gen.design import build_design

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mlp_digits.toml"
TRAIN, TEST = 150, 40
EPOCHS = 2


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The sets of a 12-6-5-4 network (three stages) on a random 4-class npz dataset."""
    try:
        verilator()
    except ToolError as error:
        pytest.skip(f"Verilator unavailable: {error}")
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("harness") / "small.npz"
    x = rng.uniform(-1, 1, (TRAIN + TEST, 12))
    y = (x[:, :4].argmax(1) + (x[:, 4] > 0.8)) % 4
    np.savez(path, X=x[:TRAIN], y=y[:TRAIN], X_test=x[TRAIN:], y_test=y[TRAIN:])
    return (
        "name='small'",
        "network.layers=[12, 6, 5, 4]",
        f"train.dataset='npz:{path}'",
        f"train.epochs={EPOCHS}",
        "train.arith='fixed'",
        "hardware.lanes=[5, 4, 3]",
    )


@pytest.fixture(scope="module")
def result(small):
    return verify_epochs(load(EXAMPLE, small), epochs=EPOCHS)


def test_whole_epochs_are_bit_exact_and_reach_the_trainers_accuracy(small, result):
    assert result.bit_exact, result.mismatch
    assert result.samples == EPOCHS * TRAIN
    assert result.epochs == EPOCHS
    assert result.rtl_test_accuracy == result.golden_test_accuracy
    # The golden run streams the trainer's order: the fixed-point trainer ends where it does.
    trained = train(load(EXAMPLE, small))
    assert trained.test_accuracy == result.golden_test_accuracy
    assert result.measured_cycles_per_sample == result.predicted_cycles_per_sample
    assert result.sim_cycles_per_second > 0


def test_idle_cycles_back_pressure_and_random_initial_values_change_no_code(small, result):
    again = verify_epochs(
        load(EXAMPLE, small),
        epochs=EPOCHS,
        idle=0.3,
        backpressure=0.4,
        seed=5,
        plusargs=("+verilator+rand+reset+2", "+verilator+seed+7"),
    )
    assert again.bit_exact, again.mismatch
    assert again.cycles > result.cycles  # the waits happened
    assert again.rtl_test_accuracy == result.rtl_test_accuracy


def test_a_changed_weight_at_an_epoch_end_is_named(small):
    config = load(EXAMPLE, small)
    data = load_dataset(config.train.dataset)
    gold = golden_epochs(derive_plan(config), data, EPOCHS)
    results = [
        (gold.labels[k], gold.predictions[k], [int(v) for v in gold.loss_errors[k]])
        for k in range(len(gold.labels))
    ]
    snapshots = [
        ([w.copy() for w in s.weights], [v.copy() for v in s.velocities], dict(s.saturation))
        for s in gold.snapshots
    ]
    assert compare_epochs(gold, results, snapshots, TRAIN) == (None, -1)
    snapshots[0][0][1][7] += 1
    found, sample = compare_epochs(gold, results, snapshots, TRAIN)
    assert sample == -1
    assert (found.stage, found.role, found.element) == (2, "epoch 1 end weight", 7)
    assert found.step == TRAIN  # stage 2 has done the pass of the step after the epoch's last
    assert (found.rtl, found.golden) == (
        int(gold.snapshots[0].weights[1][7]) + 1,
        int(gold.snapshots[0].weights[1][7]),
    )


def test_a_planted_rounding_change_is_found_and_located(small):
    config = load(EXAMPLE, small)
    planted = build_design(load(EXAMPLE, (*small, "formats.activation.rounding='floor'")))
    found = verify_epochs(config, epochs=EPOCHS, rtl_design=planted)
    assert not found.bit_exact
    # The harness sees the first differing result; the rerun with the inter-stage taps names
    # the forward output where floor rounding first departs, upstream of the loss unit.
    assert re.fullmatch(
        r"first mismatch at step \d+, stage \d+, forward output, element \d+: "
        r"RTL -?\d+, golden -?\d+",
        found.mismatch,
    ), found.mismatch
    assert found.rtl_test_accuracy is not None


def test_the_command_writes_the_accuracies_and_the_speed(small, result, tmp_path):
    out = tmp_path / "verify.json"
    sets = [arg for s in small for arg in ("--set", s)]
    run = CliRunner().invoke(
        main, ["verify", str(EXAMPLE), "--epochs", str(EPOCHS), *sets, "--json", str(out)]
    )
    assert run.exit_code == 0, run.output
    assert run.stdout.startswith(f"bit-exact: {EPOCHS} epochs, {EPOCHS * TRAIN} samples")
    got = json.loads(out.read_text())
    assert got["bit_exact"] and got["samples"] == EPOCHS * TRAIN
    assert got["rtl_test_accuracy"] == got["golden_test_accuracy"] == result.golden_test_accuracy
    assert got["sim_cycles_per_second"] > 0
