"""Convolutional stages in float: each stage type against torch autograd, and the PB schedule
of residual networks (at zero delays against SGD exactly, with delays against an independent
sample-by-sample re-implementation of the delayed schedule)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pbhw_testing import make_config

from golden.conv import conv_backward, conv_forward, split_parameters
from golden.float_arith import FloatArithmetic
from golden.pipeline import Pipeline
from golden.sgd import SGDReference
from pbhw.core.config import Norm, Pool
from pbhw.core.plan import derive_plan
from pbhw.core.weights import initial_weights

RTOL, ATOL = 1e-10, 1e-12


def _conv(channels, kernel=3, **keys):
    return {"type": "conv", "channels": channels, "kernel": kernel, **keys}


def _plan(input_shape, layers, **sections):
    network = {"input": list(input_shape), "layers": layers, **sections.pop("network", {})}
    return derive_plan(make_config(network=network, **sections))


def _arith(plan):
    cfg = plan.config
    return FloatArithmetic(cfg.network.loss, cfg.optimizer.weight_prediction)


# --------------------------------------------------------------------------------------------
# An independent float reference of one stage, written with torch.nn.functional in the stage's
# own rank (conv1d/conv2d, group_norm, pool1d/pool2d) and differentiated by autograd.


def _reference_forward(stage, params, x, residual, forward_values=None):
    """Outputs of one stage for ``x [B, n_in]``. With ``forward_values`` (the values of a
    forward with other weights: its convolution output, ReLU mask and max-pool choices), the
    result has those values' statistics, mask and choices, with gradients through ``params``:
    PB's backward with the current weights over the stashed forward."""
    sp = stage.spec
    rank = len(stage.in_shape) - 1
    conv = F.conv1d if rank == 1 else F.conv2d
    batch = x.shape[0]
    c = conv(
        x.reshape(batch, *stage.in_shape),
        params["weight"],
        params.get("bias"),
        stride=sp.stride,
        padding=sp.padding,
    )
    if forward_values is not None:  # value of the forward, gradient through the current weights
        c = forward_values["c"] + (c - c.detach())
    z = c
    if sp.norm is Norm.GROUP:
        z = F.group_norm(c, sp.groups, params["norm_scale"], params["norm_shift"], eps=1e-5)
    if sp.residual:
        r = residual.reshape(batch, *stage.residual_shape)
        if sp.projection:
            r = conv(
                r, params["projection"], params.get("projection_bias"), stride=sp.projection_stride
            )
        z = z + r
    mask = (z > 0) if forward_values is None else forward_values["mask"]
    a = z * mask if stage.relu else z
    values = {"c": c.detach(), "mask": mask}
    if sp.pool is Pool.AVG:
        a = (F.avg_pool1d if rank == 1 else F.avg_pool2d)(a, 2)
    elif sp.pool is Pool.MAX:
        if forward_values is None:
            _, index = (F.max_pool1d if rank == 1 else F.max_pool2d)(a, 2, return_indices=True)
        else:
            index = forward_values["index"]
        values["index"] = index
        a = a.flatten(2).gather(2, index.flatten(2)).reshape(index.shape)
    elif sp.pool is Pool.GLOBAL_AVG:
        a = a.mean(tuple(range(2, a.ndim)))
    return a.reshape(batch, -1), values


def _named(stage, flat):
    """The stage's parameters from a flat vector, as leaves in their configured shapes."""
    out, offset = {}, 0
    for name, shape in stage.parameter_shapes:
        size = math.prod(shape)
        out[name] = flat[offset : offset + size].reshape(shape).clone().requires_grad_()
        offset += size
    return out


def _reference_backward(stage, params, x, residual, error, forward_values=None):
    """``(flat gradient, input error, residual error)`` by autograd."""
    x = x.clone().requires_grad_()
    r = None if residual is None else residual.clone().requires_grad_()
    out, _ = _reference_forward(stage, params, x, r, forward_values)
    leaves = [x, *params.values()] + ([r] if r is not None else [])
    grads = torch.autograd.grad(out, leaves, error, allow_unused=True)
    flat = torch.cat([g.reshape(-1) for g in grads[1 : 1 + len(params)]])
    return flat, grads[0], (grads[-1] if r is not None else None)


STAGE_CASES = {
    "1d": ((2, 12), [_conv(4, 3, padding=1), {"type": "dense", "units": 3}]),
    "1d_stride_nopad": ((3, 13), [_conv(5, 4, stride=3), {"type": "dense", "units": 3}]),
    "2d": ((2, 7, 6), [_conv(3, 3, stride=2, padding=1), {"type": "dense", "units": 3}]),
    "group_norm": (
        (2, 10),
        [_conv(6, 3, padding=1, norm="group", groups=3), {"type": "dense", "units": 3}],
    ),
    "group_norm_2d": (
        (1, 6, 6),
        [_conv(4, 3, padding=1, norm="group", groups=2), {"type": "dense", "units": 3}],
    ),
    "avg_pool": ((2, 11), [_conv(3, 3, pool="avg"), {"type": "dense", "units": 3}]),
    "max_pool_2d": ((2, 6, 7), [_conv(3, 2, pool="max"), {"type": "dense", "units": 3}]),
    "global_avg_last": ((2, 9), [_conv(4, 3, padding=1, pool="global_avg")]),
    "no_bias": ((2, 9), [_conv(3, 3), {"type": "dense", "units": 3}], {"bias": False}),
}


def _check_against_autograd(plan, index, seed):
    """Forward, input error, residual error and gradient of stage ``index`` (0-based) against
    :func:`_reference_backward`, with random parameters (norm scales and shifts included)."""
    stage = plan.stages[index]
    gen = torch.Generator().manual_seed(seed)
    flat = torch.cat([p.reshape(-1) for p in initial_weights(plan)[index]])
    flat = flat + 0.3 * torch.randn(flat.shape, generator=gen, dtype=torch.float64)
    x = torch.randn(3, stage.n_in, generator=gen, dtype=torch.float64)
    residual = None
    if stage.residual_shape:
        residual = torch.randn(3, math.prod(stage.residual_shape), generator=gen).double()
    error = torch.randn(3, stage.n_out, generator=gen, dtype=torch.float64)

    params = split_parameters(stage, flat)
    y, ctx = conv_forward(stage, params, x, residual)
    ref, _ = _reference_forward(stage, _named(stage, flat), x, residual)
    torch.testing.assert_close(y, ref.detach(), rtol=RTOL, atol=ATOL)
    grad, dx, dr = conv_backward(stage, params, x, ctx, error, True)
    ref_grad, ref_dx, ref_dr = _reference_backward(stage, _named(stage, flat), x, residual, error)
    torch.testing.assert_close(dx, ref_dx, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(grad, ref_grad, rtol=RTOL, atol=ATOL)
    if residual is None:
        assert dr is None
    else:
        torch.testing.assert_close(dr, ref_dr, rtol=RTOL, atol=ATOL)
    # Without a stage before it, a stage sends no error backward.
    assert conv_backward(stage, params, x, ctx, error, False)[1] is None


@pytest.mark.parametrize("case", sorted(STAGE_CASES))
def test_stage_forward_and_backward_match_torch_autograd(case):
    input_shape, layers, *network = STAGE_CASES[case]
    plan = _plan(input_shape, layers, network=network[0] if network else {})
    _check_against_autograd(plan, 0, seed=3)


RESIDUAL_CASES = {
    "identity": ((4, 10), [_conv(4, 3, padding=1), _conv(4, 3, padding=1, residual=1)], 1),
    "projection_2d": (
        (2, 8, 8),
        [_conv(3, 3, padding=1), _conv(5, 3, stride=2, padding=1, residual=1, projection=True)],
        1,
    ),
    "projection_norm_pool": (
        (2, 12),
        [
            _conv(3, 3, padding=1),
            _conv(4, 3, padding=1, pool="avg"),
            _conv(
                6,
                3,
                padding=1,
                stride=2,
                norm="group",
                groups=2,
                residual=2,
                projection=True,
                pool="max",
            ),
        ],  # fmt: skip
        2,
    ),
}


@pytest.mark.parametrize("case", sorted(RESIDUAL_CASES))
def test_residual_stage_matches_torch_autograd(case):
    input_shape, layers, index = RESIDUAL_CASES[case]
    plan = _plan(input_shape, [*layers, {"type": "dense", "units": 3}])
    _check_against_autograd(plan, index, seed=4)


def test_split_parameters_gives_views_in_plan_order():
    plan = _plan(
        (2, 12), RESIDUAL_CASES["projection_norm_pool"][1] + [{"type": "dense", "units": 3}]
    )
    stage = plan.stages[2]
    flat = torch.arange(stage.parameters, dtype=torch.float64)
    views = split_parameters(stage, flat)
    assert list(views) == [name for name, _ in stage.parameter_shapes]
    assert [tuple(v.shape) for v in views.values()] == [
        (6, 4, 1, 3), (6,), (6,), (6,), (6, 3, 1, 1), (6,),
    ]  # fmt: skip
    views["norm_scale"][0] = -1.0
    assert flat[6 * 4 * 3 + 6] == -1.0


# --------------------------------------------------------------------------------------------
# Whole networks on the schedule

NETWORKS = {
    "residual_1d": (
        (2, 12),
        [
            _conv(4, 3, padding=1, norm="group", groups=2),
            _conv(4, 3, padding=1, residual=1, pool="max"),
            _conv(6, 3, stride=2, padding=1, residual=2, projection=True),
            {"type": "dense", "units": 5},
        ],
    ),
    "residual_2d_global": (
        (1, 6, 6),
        [
            _conv(3, 3, padding=1),
            _conv(3, 3, padding=1, norm="group", groups=3, residual=1, pool="avg"),
            _conv(5, 1, residual=1, projection=True, pool="global_avg"),
        ],
    ),
}


#: Networks with Online Normalization: its backward is not the gradient of its forward, so the
#: autograd re-implementation of the delayed schedule below does not cover them
#: (tests/test_online_norm.py checks the norm itself).
ONLINE_NETWORKS = {
    "online_1d": (
        (2, 12),
        [
            _conv(4, 3, padding=1, norm="online", alpha_fwd=0.9, alpha_bkw=0.8, clamp=1.5),
            _conv(4, 3, padding=1, residual=1, norm="online", pool="max"),
            _conv(6, 3, stride=2, padding=1, norm="online", alpha_fwd=0.5, pool="avg"),
            {"type": "dense", "units": 5},
        ],
    ),
}


def _samples(plan, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, plan.stages[0].n_in, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, plan.stages[-1].n_out, (n,), generator=gen)


@pytest.mark.parametrize("loss", ["mse", "softmax_ce"])
@pytest.mark.parametrize("name", sorted(NETWORKS | ONLINE_NETWORKS))
def test_zero_delay_schedule_equals_sgd_batch_1_exactly(name, loss):
    input_shape, layers = (NETWORKS | ONLINE_NETWORKS)[name]
    plan = _plan(
        input_shape, layers, network={"loss": loss}, optimizer={"algorithm": "sgd", "lr": 0.5}
    )
    weights = initial_weights(plan)
    pipe = Pipeline(plan, _arith(plan), weights)
    ref = SGDReference(plan, weights)
    x, y = _samples(plan, 30)
    for i in range(len(x)):
        done, _ = pipe.step(x[i], int(y[i]))
        losses, _ = ref.step(x[i : i + 1], y[i : i + 1])
        assert done.loss == float(losses[0])
    for stage, state in zip(pipe.stages, ref.states, strict=True):
        assert torch.equal(stage.state.wa, state.wa)
        assert torch.equal(stage.state.va, state.va)
        online = getattr(stage.state, "online", None)
        if online is not None:  # the norm's running state, forward and backward alike
            for key in ("mean", "var", "u", "v"):
                assert torch.equal(getattr(online, key), getattr(state.online, key))
            assert not torch.equal(online.u, torch.zeros_like(online.u))
    assert not torch.equal(pipe.stages[0].state.wa, torch.cat([p.reshape(-1) for p in weights[0]]))


def _delayed_reference(plan, weights, x, y, prediction, stashing=False):
    """PB written sample by sample, without a schedule: stage ``l`` forwards sample ``s`` with
    its weights after the updates from samples ``0 .. s - D_l - 1`` (predicted), and backwards
    it with its weights after the updates from samples ``0 .. s - 1`` (with ``stashing``: the
    forward's weights), over the forward's stashed values. Returns the final flat weights of
    every stage."""
    stages = plan.stages
    cfg = plan.config
    flat = [
        torch.cat([p.reshape(-1) for p in w])
        if st.conv
        else (w[0] if w[1] is None else torch.cat([w[0], w[1][:, None]], 1)).reshape(-1)
        for st, w in zip(stages, weights, strict=True)
    ]
    # history[l][k]: (weights, velocity) after k updates
    history = [[(f.clone(), torch.zeros_like(f))] for f in flat]
    for s in range(len(x)):
        outputs, saved = [], []
        h = x[s : s + 1]
        for st in stages:
            w, v = history[st.index - 1][max(0, s - st.delay)]
            if prediction == "velocity" and st.horizon:
                w = w - plan.lr * st.horizon * v
            elif prediction == "weight_difference" and st.horizon:
                k = max(0, s - st.delay)
                w_prev = history[st.index - 1][max(0, k - 1)][0]
                w = w + st.horizon * (w - w_prev)
            residual = outputs[-st.spec.residual] if st.conv and st.spec.residual else None
            if st.conv:
                out, values = _reference_forward(st, _named(st, w), h, residual)
                out = out.detach()
            else:
                wm = w.reshape(st.n_out, -1)
                z = h @ wm[:, : st.n_in].T + (wm[:, st.n_in] if cfg.network.bias else 0)
                values = {"mask": z > 0}
                out = z * values["mask"] if st.relu else z
            saved.append((h, residual, values, w))
            outputs.append(out)
            h = out
        if cfg.network.loss.value == "mse":
            error = h - F.one_hot(y[s : s + 1], h.shape[1]).to(h.dtype)
        else:
            error = torch.softmax(h, 1) - F.one_hot(y[s : s + 1], h.shape[1]).to(h.dtype)
        sent: dict[int, torch.Tensor] = {}
        for i in reversed(range(len(stages))):
            st = stages[i]
            for c, other in enumerate(stages):
                if other.conv and other.spec.residual and c - other.spec.residual == i:
                    error = error + sent.pop(c)
            w, v = history[i][s]
            h_in, residual, values, w_forward = saved[i]
            w_backward = w_forward if stashing else w
            if st.conv:
                g, error_in, sent[i] = _reference_backward(
                    st, _named(st, w_backward), h_in, residual, error, values
                )
            else:
                dz = error * values["mask"] if st.relu else error
                xa = (
                    torch.cat([h_in, torch.ones(1, 1, dtype=h_in.dtype)], 1)
                    if cfg.network.bias
                    else h_in
                )
                g = (dz.T @ xa).reshape(-1)
                error_in = dz @ w_backward.reshape(st.n_out, -1)[:, : st.n_in]
            m = plan.momentum
            v = m * v + g
            w = w - plan.lr * st.a * v - plan.lr * st.b * g
            history[i].append((w, v))
            error = error_in
    return [h[-1][0] for h in history]


@pytest.mark.parametrize(
    ("prediction", "stashing"),
    [("none", False), ("velocity", False), ("weight_difference", False), ("velocity", True)],
)
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_residual_schedule_with_delays_matches_a_sample_by_sample_reimplementation(
    name, prediction, stashing
):
    input_shape, layers = NETWORKS[name]
    plan = _plan(
        input_shape,
        layers,
        network={"loss": "softmax_ce"},
        optimizer={"lr": 2.0, "weight_prediction": prediction, "weight_stashing": stashing},
    )
    assert [st.delay for st in plan.stages] == [
        2 * (len(layers) - k) + 1 for k in range(1, len(layers) + 1)
    ]
    weights = initial_weights(plan)
    x, y = _samples(plan, 14)
    pipe = Pipeline(plan, _arith(plan), weights)
    list(pipe.run(x, y.tolist()))
    expected = _delayed_reference(plan, weights, x, y, prediction, stashing)
    for stage, want in zip(pipe.stages, expected, strict=True):
        torch.testing.assert_close(stage.state.wa.reshape(-1), want, rtol=1e-9, atol=1e-12)
    # The delays matter: without them (sgd at batch 1) the weights differ.
    sgd = SGDReference(plan, weights)
    for i in range(len(x)):
        sgd.step(x[i : i + 1], y[i : i + 1])
    assert not torch.allclose(pipe.stages[0].state.wa, sgd.states[0].wa, rtol=1e-6, atol=0)


def test_residual_fifo_holds_values_for_exactly_n_steps():
    input_shape, layers = NETWORKS["residual_1d"]
    plan = _plan(input_shape, layers)
    pipe = Pipeline(plan, _arith(plan))
    assert pipe._residual_wait == {1: 1, 2: 2}
    x, y = _samples(plan, 9)
    most = {i: 0 for i in pipe._held_forward}
    for i in range(len(x)):
        pipe.step(x[i], int(y[i]))
        for c, fifo in pipe._held_forward.items():
            most[c] = max(most[c], len(fifo))
    # A residual over N stages holds the outputs of N samples in steady state.
    assert most == {1: 1, 2: 2}
    # Tamper with the wait: the schedule's check must notice.
    pipe._residual_wait[2] = 3
    with pytest.raises(AssertionError, match="residual into stage 3"):
        pipe.step(x[0], int(y[0]))
