"""Online Normalization in conv stages (float): its running state against an independent
sample-by-sample re-implementation of its recursions, a stage's forward and backward against
torch autograd (the error compensation off, where the backward is the gradient), evaluation
that reads the statistics without moving them, PB learning with it, and the config's checks
(the PB schedule at zero delays against SGD exactly: tests/test_conv.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from pbhw_testing import make_config

from golden.conv import NORM_EPS, ConvState, OnlineStats, conv_backward, conv_forward
from golden.float_arith import FloatArithmetic, evaluate
from golden.pipeline import Pipeline
from pbhw.cli import main
from pbhw.core.config import ConfigError, Norm
from pbhw.core.plan import derive_plan
from pbhw.core.weights import initial_weights


def _conv(channels, kernel=3, **keys):
    return {"type": "conv", "channels": channels, "kernel": kernel, **keys}


def _plan(input_shape, layers, **sections):
    network = {"input": list(input_shape), "layers": layers, **sections.pop("network", {})}
    return derive_plan(make_config(network=network, **sections))


NETWORK = (
    (2, 12),
    [
        _conv(4, 3, padding=1, norm="online", alpha_fwd=0.9, alpha_bkw=0.8, clamp=1.5),
        _conv(4, 3, padding=1, residual=1, norm="online", pool="max"),
        _conv(6, 3, stride=2, padding=1, norm="online", alpha_fwd=0.5, pool="avg"),
        {"type": "dense", "units": 5},
    ],
)


# --------------------------------------------------------------------------------------------
# The running state against its recursions, written out sample by sample in numpy


def _numpy_online(cs, gs, alpha, beta):
    """Forward of every sample of ``cs [K, C, H, W]``, then backward of every error of ``gs``
    (the same shape) in order: the normalized values, the errors at ``c`` and the final state
    ``(mean, var, u, v)``."""
    channels = cs.shape[1]
    mean, var = np.zeros(channels), np.ones(channels)
    u, v = np.zeros(channels), np.zeros(channels)
    ys, scales = [], []
    for c in cs:
        scale = np.sqrt(var + NORM_EPS)
        ys.append((c - mean[:, None, None]) / scale[:, None, None])
        scales.append(scale)
        mu = c.mean(axis=(1, 2))
        sample_var = ((c - mu[:, None, None]) ** 2).mean(axis=(1, 2))
        var = alpha * var + (1 - alpha) * sample_var + alpha * (1 - alpha) * (mu - mean) ** 2
        mean = mean + (1 - alpha) * (mu - mean)
    errors = []
    for g, y, scale in zip(gs, ys, scales, strict=True):
        g = g - (1 - beta) * v[:, None, None] * y
        v = v + (g * y).mean(axis=(1, 2))
        g = g / scale[:, None, None]
        g = g - (1 - beta) * u[:, None, None]
        u = u + g.mean(axis=(1, 2))
        errors.append(g)
    return np.stack(ys), np.stack(errors), (mean, var, u, v)


@pytest.mark.parametrize("batch", [1, 3])
def test_online_state_follows_its_recursions_sample_by_sample(batch):
    gen = np.random.default_rng(4)
    cs = gen.normal(0.7, 2.0, (6, 3, 2, 5))
    gs = gen.normal(0.0, 1.0, cs.shape)
    ys, errors, expected = _numpy_online(cs, gs, alpha=0.8, beta=0.7)
    stats = OnlineStats(3)
    y = torch.cat(
        [
            stats.normalize(torch.from_numpy(cs[i : i + batch]), 0.8, True)[0]
            for i in range(0, 6, batch)
        ]
    )
    np.testing.assert_allclose(y.numpy(), ys, rtol=1e-12, atol=1e-12)
    # the backward, in the same order, with the deviations the forward used
    stats2 = OnlineStats(3)
    _, scales = stats2.normalize(torch.from_numpy(cs), 0.8, True)
    d = torch.cat(
        [
            stats.backward(
                torch.from_numpy(gs[i : i + batch]), y[i : i + batch], scales[i : i + batch], 0.7
            )
            for i in range(0, 6, batch)
        ]
    )
    np.testing.assert_allclose(d.numpy(), errors, rtol=1e-12, atol=1e-12)
    for got, want in zip((stats.mean, stats.var, stats.u, stats.v), expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_a_batch_is_its_samples_one_after_another_exactly():
    gen = torch.Generator().manual_seed(2)
    c = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64) * 3 + 1
    together, one = OnlineStats(2), OnlineStats(2)
    y, scale = together.normalize(c, 0.9, True)
    ys = [one.normalize(c[i : i + 1], 0.9, True) for i in range(4)]
    assert torch.equal(y, torch.cat([a for a, _ in ys]))
    assert torch.equal(scale, torch.cat([s for _, s in ys]))
    assert torch.equal(together.var, one.var) and torch.equal(together.mean, one.mean)


def test_evaluation_reads_the_statistics_and_leaves_them():
    stats = OnlineStats(2)
    stats.mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    stats.var = torch.tensor([4.0, 0.25], dtype=torch.float64)
    c = torch.randn(5, 2, 1, 4, dtype=torch.float64)
    y, _ = stats.normalize(c, 0.9, False)
    want = (c - stats.mean[:, None, None]) / torch.sqrt(stats.var + NORM_EPS)[:, None, None]
    assert torch.equal(y, want)
    assert stats.mean.tolist() == [1.0, -2.0] and stats.var.tolist() == [4.0, 0.25]


# --------------------------------------------------------------------------------------------
# A stage against autograd: with alpha_bkw = 1 the error compensation is off and the backward
# is the gradient of the forward with the statistics it used held constant.


def test_stage_backward_without_compensation_is_the_gradient_of_its_forward():
    plan = _plan(
        (2, 8), [_conv(3, 3, padding=1, norm="online", clamp=0.8), {"type": "dense", "units": 3}]
    )
    stage = plan.stages[0]
    stage = dataclasses.replace(stage, spec=dataclasses.replace(stage.spec, alpha_bkw=1.0))
    gen = torch.Generator().manual_seed(5)
    params = {
        name: torch.randn(shape, generator=gen, dtype=torch.float64)
        for name, shape in stage.parameter_shapes
    }
    params["weight"] = params["weight"].reshape(3, 2, 1, 3)
    state = ConvState(stage, tuple(params.values()), False)
    for _ in range(3):  # statistics that are not the initial ones
        conv_forward(stage, state.params, torch.randn(1, 16, generator=gen, dtype=torch.float64),
                     None, state.online)  # fmt: skip
    x = torch.randn(1, 16, generator=gen, dtype=torch.float64)
    mean, var = state.online.mean.clone(), state.online.var.clone()
    y, ctx = conv_forward(stage, state.params, x, None, state.online)
    error = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    grad, dx, _ = conv_backward(stage, state.params, x, ctx, error, True, state.online)

    leaves = {k: v.detach().clone().requires_grad_() for k, v in state.params.items()}
    xr = x.detach().clone().requires_grad_()
    c = F.conv1d(xr.reshape(1, 2, 8), leaves["weight"].reshape(3, 2, 3), leaves["bias"], padding=1)
    n = (c - mean[:, None]) / torch.sqrt(var + NORM_EPS)[:, None]
    a = n * leaves["norm_scale"][:, None] + leaves["norm_shift"][:, None]
    a = torch.relu(a.clamp(-0.8, 0.8))
    assert torch.allclose(a.reshape(1, -1), y, rtol=1e-12, atol=1e-12)
    assert 0 < int((a.abs() == 0.8).sum()) < a.numel()  # the clamp holds somewhere, not everywhere
    (a.reshape(1, -1) * error).sum().backward()
    want = torch.cat([leaves[name].grad.reshape(-1) for name, _ in stage.parameter_shapes])
    assert torch.allclose(grad, want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(dx, xr.grad, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# The schedule


def test_evaluation_of_a_trained_network_leaves_the_statistics():
    """(The schedule at zero delays against SGD, online norm's state included, is
    tests/test_conv.py's test_zero_delay_schedule_equals_sgd_batch_1_exactly.)"""
    plan = _plan(*NETWORK)
    cfg = plan.config
    arith = FloatArithmetic(cfg.network.loss, cfg.optimizer.weight_prediction)
    pipe = Pipeline(plan, arith, initial_weights(plan))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, plan.stages[0].n_in, generator=gen, dtype=torch.float64)
    for i in range(len(x)):
        pipe.step(x[i], i % 5)
    convs = [s for s in pipe.stages if s.plan.conv]
    before = [(s.state.online.mean.clone(), s.state.online.var.clone()) for s in convs]
    out = evaluate(plan.stages, [s.state for s in pipe.stages], x[:7])
    assert out.shape == (7, 5) and torch.isfinite(out).all()
    for (mean, var), s in zip(before, convs, strict=True):
        assert torch.equal(mean, s.state.online.mean) and torch.equal(var, s.state.online.var)
        assert not torch.equal(mean, torch.zeros_like(mean))  # training moved them


def test_pb_with_online_norm_learns_mnist1d():
    from pbhw.tools.train import train

    cfg = make_config(
        network={
            "input": [1, 40],
            "loss": "softmax_ce",
            "layers": [
                _conv(8, 5, padding=2, norm="online"),
                _conv(8, 5, stride=2, padding=2, norm="online", pool="avg"),
                {"type": "dense", "units": 10},
            ],
        },
        optimizer={"algorithm": "pb", "lr": 0.05, "momentum": 0.9, "reference_batch": 32,
                   "spike_compensation": True, "weight_prediction": "velocity"},
        train={"dataset": "mnist1d", "epochs": 2},
    )  # fmt: skip
    result = train(cfg)
    assert result.test_accuracy > 0.6, result.test_accuracy


# --------------------------------------------------------------------------------------------
# The config


def test_online_norm_parameters_and_stash():
    plan = _plan(*NETWORK)
    first = plan.stages[0]
    assert first.spec.norm is Norm.ONLINE and first.spec.clamp == 1.5
    assert [name for name, _ in first.parameter_shapes] == [
        "weight", "bias", "norm_scale", "norm_shift",
    ]  # fmt: skip
    conv = 4 * 12
    assert first.stash_entry_values == 24 + conv + 2 * conv  # input, ReLU mask, y and clamp


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"alpha_fwd": 1.0}, "'network.layers.0.alpha_fwd' must be in (0, 1)"),
        ({"alpha_bkw": 0}, "'network.layers.0.alpha_bkw' must be in (0, 1)"),
        ({"clamp": -1}, "'network.layers.0.clamp' must be a number > 0"),
        ({"norm": "group", "groups": 2, "clamp": 3}, "'network.layers.0.clamp' applies only"),
        ({"norm": "none", "alpha_fwd": 0.5}, "'network.layers.0.alpha_fwd' applies only"),
        ({"groups": 2}, "'network.layers.0.groups' applies only with norm = \"group\""),
    ],
)
def test_online_norm_keys_are_checked(keys, message):
    layers = [_conv(4, 3, padding=1, norm="online", **{}), {"type": "dense", "units": 3}]
    layers[0].update(keys)
    with pytest.raises(ConfigError) as e:
        make_config(network={"input": [1, 6], "layers": layers})
    assert message in str(e.value)


def test_a_decay_the_fixed_point_model_cannot_hold_is_refused_with_exit_2(tmp_path):
    """``alpha_fwd`` within 2^-17 of 1 rounds to the 16-bit code 65536 (docs/numerics.md):
    float trains it, fixed point refuses it before training, one ``error:`` line, exit 2."""
    path = tmp_path / "on.toml"
    path.write_text(
        "[network]\ninput = [1, 8, 8]\nlayers = [\n"
        '  { type = "conv", channels = 2, kernel = 3, norm = "online", alpha_fwd = 0.999999 },\n'
        '  { type = "dense", units = 10 },\n]\n'
    )
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "+onlinenorm" in result.output
    result = CliRunner().invoke(main, ["train", str(path), "--arith", "fixed", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "stage 1: online norm's alpha_fwd = 0.999999 is 65536 / 2^16" in errors[0]
    assert "epoch" not in result.output


def test_check_shows_the_fixed_point_decay_and_clamp_codes(tmp_path):
    """``pbhw check`` of a fixed-point config shows each Online Normalization stage's decay codes
    (``round(alpha * 2^16)``) and clamp code (of the activation format); a float one does not."""
    path = tmp_path / "on.toml"
    path.write_text(
        "[network]\ninput = [1, 8, 8]\nlayers = [\n"
        '  { type = "conv", channels = 2, kernel = 3, norm = "online", alpha_bkw = 0.75,'
        " clamp = 2.5 },\n"
        '  { type = "dense", units = 10 },\n]\n'
        '[formats]\nactivation = { width = 12, frac = 6 }\n[train]\narith = "fixed"\n'
    )
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1:-1] for line in result.output.splitlines() if "│ 1 " in line]
    cells = {r[1].strip(): [c.strip() for c in r[2:]] for r in rows if len(r) == 6}
    assert cells["alpha_fwd"][:2] == ["0.999", "65470"]  # 65470.464 rounded
    assert cells["alpha_bkw"][:3] == ["0.75", "49152", "0.75"]
    assert cells["clamp"][:3] == ["2.5", "160", "2.5"]  # 2.5 * 2^6
    result = CliRunner().invoke(main, ["check", str(path), "--set", 'train.arith="float"'])
    assert result.exit_code == 0 and "Online Normalization constants" not in result.output
