"""bench/cnn_speed.py's PyTorch Online Normalization (the naive loop's, written after pbhw's float
model): its forward and compensated backward against a hand computation of the formulas, and a
whole conv stage with it against pbhw's float stage (golden/conv.py), sample after sample."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from golden.conv import NORM_EPS, ConvState, conv_backward, conv_forward
from pbhw.core.config import load
from pbhw.core.plan import derive_plan

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("cnn_speed", ROOT / "bench/cnn_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cnn_speed"] = module
    spec.loader.exec_module(module)
    return module


cnn_speed = _bench()


def test_online_norm_follows_its_formulas_by_hand():
    """One channel of three positions, two samples (forward then backward each), a = 0.5,
    b = 0.25, scale 2, shift 0.5, clamp 1.5."""
    a, b = 0.5, 0.25
    norm = cnn_speed.OnlineNorm(1, a, b, 1.5).double()
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(0.5)
    c1, c2 = [0.1, -0.3, 1.0], [0.0, 0.6, -0.4]
    g1, g2 = [0.5, -1.0, 2.0], [1.0, 0.25, -0.5]

    def step(c, g):
        x = torch.tensor([[c]], dtype=torch.float64, requires_grad=True)
        out = norm(x)
        out.backward(torch.tensor([[g]], dtype=torch.float64))
        return out.detach()[0, 0].tolist(), x.grad[0, 0].tolist()

    # sample 1: the statistics start at mean 0, var 1 (u = v = 0)
    s1 = math.sqrt(1 + NORM_EPS)
    y1 = [ci / s1 for ci in c1]
    out, grad = step(c1, g1)
    assert out == pytest.approx([max(-1.5, min(1.5, 2 * yi + 0.5)) for yi in y1])
    live1 = [abs(2 * yi + 0.5) < 1.5 for yi in y1]  # the clamp held on the others
    assert live1 == [True, True, False]
    d1 = [2 * gi if keep else 0.0 for gi, keep in zip(g1, live1, strict=True)]
    dc1 = [di / s1 for di in d1]
    assert grad == pytest.approx(dc1)
    mu1 = sum(c1) / 3
    var1 = sum((ci - mu1) ** 2 for ci in c1) / 3
    mean = (1 - a) * mu1
    var = a * 1 + (1 - a) * var1 + a * (1 - a) * mu1**2
    v = sum(di * yi for di, yi in zip(d1, y1, strict=True)) / 3
    u = sum(dc1) / 3
    assert norm.mean.item() == pytest.approx(mean) and norm.var.item() == pytest.approx(var)
    assert norm.v.item() == pytest.approx(v) and norm.u.item() == pytest.approx(u)

    # sample 2: normalized by sample 1's statistics, its error compensated by sample 1's
    s2 = math.sqrt(var + NORM_EPS)
    y2 = [(ci - mean) / s2 for ci in c2]
    out, grad = step(c2, g2)
    assert out == pytest.approx([max(-1.5, min(1.5, 2 * yi + 0.5)) for yi in y2])
    live2 = [abs(2 * yi + 0.5) < 1.5 for yi in y2]
    assert live2 == [True, False, True]
    d2 = [2 * gi if keep else 0.0 for gi, keep in zip(g2, live2, strict=True)]
    comp = [di - (1 - b) * v * yi for di, yi in zip(d2, y2, strict=True)]
    dc2 = [ci / s2 - (1 - b) * u for ci in comp]
    assert grad == pytest.approx(dc2)
    v2 = v + sum(ci * yi for ci, yi in zip(comp, y2, strict=True)) / 3
    assert norm.v.item() == pytest.approx(v2)
    assert norm.u.item() == pytest.approx(u + sum(dc2) / 3)
    mu2 = sum(c2) / 3
    var2 = sum((ci - mu2) ** 2 for ci in c2) / 3
    assert norm.var.item() == pytest.approx(
        a * var + (1 - a) * var2 + a * (1 - a) * (mu2 - mean) ** 2
    )
    assert norm.mean.item() == pytest.approx(mean + (1 - a) * (mu2 - mean))


@pytest.mark.parametrize("stage", [0, 3])
@pytest.mark.parametrize(
    "decays", [(), ("alpha_fwd=0.5", "alpha_bkw=0.6", "clamp=1.0")], ids=["config", "fast"]
)
def test_torch_online_stage_matches_pbhw_float_sample_by_sample(stage, decays):
    """The naive loop's conv stage with Online Normalization against pbhw's float stage on a
    stream of samples (forward, then backward, each): outputs, parameter gradients, input
    errors and the running state."""
    sets = [f"network.layers.{stage}.{key}" for key in decays]
    plan = derive_plan(load(ROOT / "examples/cnn_mnist1d_on.toml", sets))
    st = plan.stages[stage]
    gen = torch.Generator().manual_seed(stage)
    params = tuple(
        torch.randn(shape, generator=gen, dtype=torch.float64) * (0.5 if name == "weight" else 1)
        + (1.0 if name == "norm_scale" else 0.0)
        for name, shape in st.parameter_shapes
    )
    state = ConvState(st, params, keep_previous=False)
    parts = cnn_speed.TorchNet(plan).double().layers[stage]
    with torch.no_grad():
        named = dict(zip((name for name, _ in st.parameter_shapes), params, strict=True))
        parts["conv"].weight.copy_(named["weight"])
        parts["conv"].bias.copy_(named["bias"])
        parts["norm"].weight.copy_(named["norm_scale"])
        parts["norm"].bias.copy_(named["norm_shift"])
    for _ in range(4):
        x = torch.randn(1, st.n_in, generator=gen, dtype=torch.float64) * 2 + 0.5
        error = torch.randn(1, st.n_out, generator=gen, dtype=torch.float64)
        out, ctx = conv_forward(st, state.params, x, None, state.online)
        grads, dx, _ = conv_backward(st, state.params, x, ctx, error, True, state.online)
        xt = x.reshape(1, *st.in_shape).clone().requires_grad_(True)
        for p in parts.parameters():
            p.grad = None
        h = cnn_speed.TorchNet.stage_forward(st, parts, xt, [])
        h.backward(error.reshape(h.shape))
        torch.testing.assert_close(h.detach().reshape(1, -1), out, rtol=1e-10, atol=1e-12)
        torch_grads = torch.cat(
            [
                parts["conv"].weight.grad.reshape(-1),
                parts["conv"].bias.grad,
                parts["norm"].weight.grad,
                parts["norm"].bias.grad,
            ]
        )
        torch.testing.assert_close(torch_grads, grads, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(xt.grad.reshape(1, -1), dx, rtol=1e-10, atol=1e-12)
        norm = parts["norm"]
        for mine, theirs in (
            (norm.mean, state.online.mean),
            (norm.var, state.online.var),
            (norm.u, state.online.u),
            (norm.v, state.online.v),
        ):
            torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
