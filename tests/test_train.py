"""The trainer and `pbhw train`: real data, JSON output, divergence, batched fixed-point runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pbhw.cli import main
from pbhw.core.config import ConfigError, from_dict
from pbhw.core.datasets import Dataset
from pbhw.tools.train import TrainingDiverged, _LossWatch, train, train_many

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.toml"


def _tiny_dataset(n=120, features=6, classes=3, seed=0) -> Dataset:
    """A linearly separable toy problem, small enough for fast fixed-point runs."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(classes, features, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + 0.05 * torch.randn(n, features, generator=gen, dtype=torch.float64)
    return Dataset("toy", x[: n - 30], y[: n - 30], x[n - 30 :], y[n - 30 :], classes)


def _config(**optimizer):
    return from_dict(
        {
            "network": {"layers": [6, 8, 3]},
            "optimizer": {"lr": 0.5, "momentum": 0.9, "reference_batch": 32, **optimizer},
            "train": {"epochs": 3},
        }
    )


@pytest.mark.parametrize(
    "optimizer",
    [
        {"algorithm": "sgd"},
        {"algorithm": "sgd", "batch_size": 8},
        {"algorithm": "pb"},
        {"algorithm": "pb", "weight_stashing": True, "weight_prediction": "weight_difference"},
    ],
)
def test_training_learns_a_separable_problem(optimizer):
    result = train(_config(**optimizer), dataset=_tiny_dataset())
    assert result.test_accuracy >= 0.9
    assert result.epochs == 3 and len(result.history) == 3
    assert result.samples == 90 * 3
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_digits_default_example_reaches_90_percent_in_float_and_fixed():
    raw = {"network": {"layers": [64, 32, 32, 10]}, "train": {"epochs": 3}}
    for arith in ("float", "fixed"):
        result = train(from_dict({**raw, "train": {"epochs": 3, "arith": arith}}))
        assert result.test_accuracy > 0.9, arith


def test_divergence_stops_the_run_with_a_message():
    cfg = _config(lr=50.0, reference_batch=1, momentum=0.0)
    with pytest.raises(TrainingDiverged, match="diverged"):
        train(cfg, dataset=_tiny_dataset(n=600))


def test_dataset_that_does_not_fit_the_network_is_a_config_error():
    cfg = from_dict({"network": {"layers": [5, 3]}})
    with pytest.raises(ConfigError, match="needs 6 inputs"):
        train(cfg, dataset=_tiny_dataset())


def _fixed(**formats):
    raw = {
        "network": {"layers": [6, 8, 3]},
        "optimizer": {"lr": 0.5, "momentum": 0.9, "reference_batch": 32},
        "train": {"epochs": 2, "arith": "fixed"},
        "formats": formats,
    }
    return from_dict(raw)


def test_batched_fixed_run_equals_the_configs_run_one_by_one():
    configs = [
        _fixed(),
        _fixed(weight={"width": 10, "frac": 8}, activation={"width": 10, "frac": 6}),
        _fixed(gradient={"rounding": "stochastic"}, weight={"width": 12, "frac": 10}),
        _fixed(velocity={"width": 12, "frac": 8, "overflow": "wrap"}),
    ]
    data = _tiny_dataset()
    together = train_many(configs, dataset=data)
    for cfg, batched in zip(configs, together, strict=True):
        alone = train(cfg, dataset=data)
        assert batched.test_accuracy == alone.test_accuracy
        assert batched.train_accuracy == alone.train_accuracy
        assert batched.final_loss == alone.final_loss
        assert batched.extra["saturation"] == alone.extra["saturation"]
    assert together[1].extra["saturation_total"] > 0  # the narrow config does saturate


def test_batched_run_derives_each_plan_once_and_quantizes_each_input_role_once(monkeypatch):
    import golden.fixed_arith
    import pbhw.tools.train

    configs = [
        _fixed(gradient={"rounding": "stochastic"}),  # sorted after the nearest configs
        _fixed(),
        _fixed(activation={"width": 10, "frac": 6}),  # another input role
        _fixed(weight={"width": 10, "frac": 8}),
    ]
    derived, quantized = [], []
    derive, quantize = pbhw.tools.train.derive_plan, golden.fixed_arith.quantize
    compiled = golden.fixed_arith._quantize_compiled

    def counting_derive(config):
        derived.append(config)
        return derive(config)

    def counting_quantize(x, fmt, *args, **kwargs):
        quantized.append((tuple(x.shape), fmt))
        return quantize(x, fmt, *args, **kwargs)

    def counting_compiled(x, role):
        quantized.append((tuple(x.shape), role.format))
        return compiled(x, role)

    monkeypatch.setattr(pbhw.tools.train, "derive_plan", counting_derive)
    monkeypatch.setattr(golden.fixed_arith, "quantize", counting_quantize)
    monkeypatch.setattr(golden.fixed_arith, "_quantize_compiled", counting_compiled)
    data = _tiny_dataset()
    train_many(configs[:1], dataset=data)
    alone = len(quantized)  # the input quantizations of one config's run
    derived.clear(), quantized.clear()
    train_many(configs, dataset=data)
    assert len(derived) == len(configs)
    # once per distinct input role (2 of them), not once per config (4)
    assert len({fmt for _, fmt in quantized}) == 2
    assert len(quantized) == 2 * alone


def _watch_outcome(watch, feed):
    try:
        feed()
    except TrainingDiverged as e:
        return str(e), None, None
    return None, list(watch.window), watch.baseline


@pytest.mark.parametrize("seed", range(12))
def test_loss_watch_extend_equals_one_add_per_loss(seed):
    """Windows, sums, baseline and the first failure (its message) of ``extend`` in chunks are
    those of ``add`` per loss, for finite runs, blow-ups and non-finite losses."""
    gen = np.random.default_rng(seed)
    losses = gen.uniform(0.5, 1.5, 900)
    if seed % 3 == 1:
        losses[gen.integers(0, 900)] = [float("nan"), float("inf")][seed % 2]
    if seed % 3 == 2:
        losses[gen.integers(200, 700) :] *= 1e3
    losses, samples = losses.tolist(), list(range(1000, 1900))
    one, chunked = _LossWatch(), _LossWatch()

    def add_each():
        for loss, sample in zip(losses, samples, strict=True):
            one.add(loss, 3, sample)

    def extend_chunks():
        cuts = sorted(gen.integers(0, 900, 6).tolist())
        for a, b in zip([0, *cuts], [*cuts, 900], strict=True):
            chunked.extend(losses[a:b], 3, samples[a:b])

    expected = _watch_outcome(one, add_each)
    assert _watch_outcome(chunked, extend_chunks) == expected
    if seed % 3:
        assert expected[0] is not None  # the failures are met
    else:
        assert expected[0] is None and expected[2] is not None


def test_a_diverging_config_of_a_batched_run_is_reported_as_it_alone_fails(monkeypatch):
    monkeypatch.setattr("pbhw.tools.train.WINDOW", 1)  # the first loss is the baseline
    wide = {"width": 24, "frac": 12}
    good = _fixed()
    bad = _fixed(
        coefficient={"width": 24, "frac": 8},
        weight=wide,
        error=wide,
        activation={"width": 24, "frac": 10},
    )
    bad = from_dict(
        {
            **bad.to_dict(),
            "optimizer": {
                **bad.to_dict()["optimizer"],
                "lr": 10.0,
                "reference_batch": 1,
                "momentum": 0.0,
            },
        }
    )
    data = _tiny_dataset(n=600)
    with pytest.raises(TrainingDiverged, match="over the last 1 samples") as alone:
        train(bad, dataset=data)
    results = train_many([good, bad], dataset=data)
    assert results[0].extra["diverged"] is None
    assert results[1].extra["diverged"] == str(alone.value)


def test_batched_run_rejects_configs_that_differ_in_shape():
    other = from_dict({"network": {"layers": [6, 5, 3]}, "train": {"epochs": 2, "arith": "fixed"}})
    with pytest.raises(ConfigError, match="network"):
        train_many([_fixed(), other], dataset=_tiny_dataset())


def test_cli_train_writes_json_with_the_required_fields(tmp_path):
    out = tmp_path / "r" / "train.json"
    result = CliRunner().invoke(
        main, ["train", str(EXAMPLE), "--epochs", "1", "--arith", "fixed", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in (
        "test_accuracy",
        "train_accuracy",
        "final_loss",
        "epochs",
        "samples_per_second",
        "config",
        "formats",
        "saturation",
    ):
        assert key in data
    assert data["epochs"] == 1 and data["config"]["train"]["arith"] == "fixed"
    assert "epoch   1/1" in result.stderr


def test_cli_train_divergence_exits_1_and_writes_nothing(tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pbhw.cli",
            "train",
            str(EXAMPLE),
            "--epochs",
            "1",
            "--set",
            "optimizer.lr=1e4",
            "--set",
            "optimizer.momentum=0.0",
            "--set",
            "optimizer.reference_batch=1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "error: training diverged" in proc.stderr
    assert not out.exists()


def test_cli_train_bad_dataset_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["train", str(EXAMPLE), "--dataset", "digitz"])
    assert result.exit_code == 2
    assert "did you mean" in result.stderr


def test_a_collapsed_network_is_flagged(monkeypatch):
    import pbhw.tools.train as train_module
    from pbhw.core.plan import derive_plan
    from pbhw.core.weights import initial_weights

    assert train(_config(), dataset=_tiny_dataset()).extra["collapsed"] is False
    # Zero first-layer weights and a negative bias: every ReLU is dead, the output constant.
    cfg = _config(lr=1e-9)
    weights = initial_weights(derive_plan(cfg))
    weights[0] = (torch.zeros_like(weights[0][0]), torch.full_like(weights[0][1], -1.0))
    monkeypatch.setattr(train_module, "initial_weights", lambda plan: weights)
    assert train(cfg, dataset=_tiny_dataset()).extra["collapsed"] is True
