"""The accuracy benchmarks bench/pb_vs_sgd.py and bench/bitwidth_accuracy.py: every network they
train is a valid config under every method and format they set, and the paired comparison with
SGD says what the numbers say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from golden.fixed_arith import FixedArithmetic
from pbhw.core.config import Arith, LayerType, Norm, from_dict, load
from pbhw.core.plan import derive_plan
from pbhw.tools.train import check_trainable

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pb_vs_sgd = _bench("pb_vs_sgd")
bitwidth = _bench("bitwidth_accuracy")


@pytest.mark.parametrize("bench", list(pb_vs_sgd.BENCHES))
def test_every_bench_takes_every_method_and_lr(bench):
    spec = pb_vs_sgd.BENCHES[bench]
    assert spec.suite in pb_vs_sgd.SUITES
    for method in pb_vs_sgd.METHODS:
        for lr in spec.lrs:
            config = load(ROOT / spec.config, pb_vs_sgd.Point(bench, lr, method, 1, 2).sets)
            assert config.optimizer.lr == lr and config.seed == 1 and config.train.epochs == 2
    check_trainable(config)  # the dataset fits the network


def test_the_cnn_suite_has_the_networks_of_the_table():
    """mnist1d and digits CNNs of at least 3 conv stages, without and with norm, and a residual
    network."""
    kinds = set()
    for spec in pb_vs_sgd.BENCHES.values():
        if spec.suite != "cnn":
            continue
        config = load(ROOT / spec.config)
        convs = [sp for sp in config.network.specs if sp.type is LayerType.CONV]
        assert len(convs) >= 3
        norm = all(sp.norm is not Norm.NONE for sp in convs)
        assert norm or all(sp.norm is Norm.NONE for sp in convs)
        kinds.add((config.train.dataset, norm, any(sp.residual for sp in convs)))
    assert kinds >= {
        ("mnist1d", False, False),
        ("mnist1d", True, False),
        ("digits", False, False),
        ("digits", True, False),
    }
    assert any(residual for _, _, residual in kinds)


def _row(bench, method, seed, acc):
    return {
        "bench": bench,
        "lr": 0.1,
        "method": method,
        "seed": seed,
        "test_accuracy": acc,
        "diverged": False,
        "collapsed": False,
    }


def test_verdicts_judge_the_paired_difference_to_sgd():
    """Within, below or above, on the mean paired difference as printed."""
    rows = [
        _row("a", "SGD", 0, 0.90),
        _row("a", "SGD", 1, 0.80),
        _row("a", "PB+LWP+SC", 0, 0.897),  # -0.3 and +0.2 points: mean -0.05
        _row("a", "PB+LWP+SC", 1, 0.802),
        _row("b", "SGD", 0, 0.90),
        _row("b", "PB+LWP+SC", 0, 0.89),  # -1 point
        _row("c", "SGD", 0, 0.90),
        _row("c", "PB+LWP+SC", 0, 0.92),  # +2 points
        _row("d", "SGD", 0, 0.826),
        _row("d", "PB+LWP+SC", 0, 0.821),  # -0.5 points (-0.50000000000000x in floats)
    ]
    summary = pb_vs_sgd.summarize(rows)
    a, b, c, d = pb_vs_sgd.verdicts(summary)
    assert a.startswith("a lr=0.1: PB+LWP+SC 84.95 ± 6.72 against SGD 85.00 ± 7.07")
    assert "paired difference -0.05 ± 0.35: within 0.5 points of SGD" in a
    assert b.endswith("paired difference -1.00 ± 0.00: NOT within 0.5 points of SGD (below it)")
    assert c.endswith("+2.00 ± 0.00: above SGD by more than 0.5 points")
    assert d.endswith("-0.50 ± 0.00: within 0.5 points of SGD")


@pytest.mark.parametrize("bench", ["mnist1d-cnn", "mnist1d-cnn-on"])
@pytest.mark.parametrize("width", [8, 10, 12, 16])
def test_the_bitwidth_sweep_of_the_cnn_is_a_valid_fixed_point_config(width, bench):
    raw = bitwidth.base(bench, 1, 2)
    config = from_dict({**raw, "formats": bitwidth.formats(width, "stochastic", 6, 5)})
    assert config.network.convolutional and config.train.arith is Arith.FIXED
    assert config.seed == 1 and config.train.epochs == 2
    assert config.formats.weight.format.width == width
    assert config.formats.gradient.format.frac == width - 5
    FixedArithmetic(derive_plan(config))  # every sum within the model's widths


def test_the_table_has_a_row_per_network_when_they_outnumber_the_methods():
    rows = [_row(b, m, 0, 0.9) for b in ("a", "b", "c") for m in ("SGD", "PB")]
    wide = pb_vs_sgd.markdown_table(pb_vs_sgd.summarize(rows)).splitlines()
    assert wide[0] == "| network | lr | SGD | PB |"
    assert wide[2] == "| a | 0.1 | 90.00 ± 0.00 | 90.00 ± 0.00 |"
    narrow = pb_vs_sgd.markdown_table(pb_vs_sgd.summarize(rows[:2])).splitlines()
    assert narrow[0] == "| method | a lr=0.1 |"
    assert narrow[2:] == ["| SGD | 90.00 ± 0.00 |", "| PB | 90.00 ± 0.00 |"]


def test_the_activation_split_of_the_bitwidth_sweep_can_change():
    assert bitwidth.formats(12, "stochastic")["activation"]["frac"] == 7  # s12.7, +-16
    assert bitwidth.formats(12, "stochastic", 6)["activation"]["frac"] == 6  # s12.6, +-32
