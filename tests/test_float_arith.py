"""Float update rules (SC, LWP) and the float path's values and gradients against autograd."""

from __future__ import annotations

import pytest
import torch
from pbhw_testing import make_plan

from golden.float_arith import FloatArithmetic, momentum_update
from golden.pipeline import Pipeline
from pbhw.core.plan import spike_coefficients
from pbhw.core.weights import initial_weights


def _impulse_response(m, eta, eta_a, eta_b, arrival, steps):
    """Weight after each step when a unit gradient arrives at step ``arrival``."""
    w, v = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    out = []
    for t in range(steps):
        g = (
            torch.ones(1, dtype=torch.float64)
            if t == arrival
            else torch.zeros(1, dtype=torch.float64)
        )
        momentum_update(w, v, g, m, eta_a, eta_b)
        out.append(float(w))
    return out


@pytest.mark.parametrize("delay", [1, 3, 9])
def test_sc_impulse_response_is_sgdm_total_with_the_spike_at_step_d(delay):
    # Dyadic constants keep every float exact, so the comparison is exact.
    m, eta = 0.5, 0.25
    a, b = spike_coefficients(m, delay)
    sgdm = _impulse_response(m, eta, eta, 0.0, arrival=0, steps=delay + 20)
    sc = _impulse_response(m, eta, eta * a, eta * b, arrival=delay, steps=delay + 20)
    assert sc[:delay] == [0.0] * delay  # nothing before the gradient arrives
    assert sc[delay:] == sgdm[delay:]  # the spike is everything SGDM did by then; then its tail
    assert sc[delay] - 0.0 == sgdm[delay]


def test_sc_with_zero_delay_is_sgdm():
    assert spike_coefficients(0.9, 0) == (1.0, 0.0)


def _stage_and_state(prediction, *, sc, horizon="auto"):
    plan = make_plan(
        optimizer={
            "weight_prediction": prediction,
            "spike_compensation": sc,
            "prediction_horizon": horizon,
            "lr": 0.5,
            "momentum": 0.5,
            "reference_batch": 1,
        }
    )
    arith = FloatArithmetic(plan.config.network.loss, plan.config.optimizer.weight_prediction)
    stage = plan.stages[0]
    gen = torch.Generator().manual_seed(3)
    # Dyadic weights, inputs and errors: every float operation below is exact.
    w = torch.randint(-8, 8, (stage.n_out, stage.n_in), generator=gen).double() / 8
    state = arith.init_state(stage, w, torch.zeros(stage.n_out, dtype=torch.float64))
    for _ in range(4):
        dz = torch.randint(-4, 4, (1, stage.n_out), generator=gen).double() / 4
        x = torch.randint(0, 4, (1, stage.n_in), generator=gen).double() / 4
        arith.update(stage, state, dz, x)
    return arith, stage, state


def test_lwp_forms_agree_under_plain_sgdm_and_equal_w_minus_eta_t_v():
    arith_v, stage, state_v = _stage_and_state("velocity", sc=False)
    arith_d, stage_d, state_d = _stage_and_state("weight_difference", sc=False)
    assert torch.equal(state_v.w, state_d.w)
    w_vel, b_vel = arith_v.predicted(stage, state_v)
    w_dif, b_dif = arith_d.predicted(stage_d, state_d)
    eta, horizon = stage.coefficients["eta_a"].value, stage.horizon
    assert horizon == stage.delay == 5
    assert torch.equal(w_vel, state_v.w - eta * horizon * state_v.v)
    assert torch.equal(w_dif, w_vel)
    assert torch.equal(b_dif, b_vel)


def test_lwp_forms_differ_under_sc():
    arith_v, stage, state_v = _stage_and_state("velocity", sc=True)
    arith_d, stage_d, state_d = _stage_and_state("weight_difference", sc=True)
    assert not torch.equal(
        arith_v.predicted(stage, state_v)[0], arith_d.predicted(stage_d, state_d)[0]
    )


def test_lwp_explicit_horizon_is_used():
    _, stage, _ = _stage_and_state("velocity", sc=False, horizon=2)
    assert stage.horizon == 2
    assert stage.coefficients["eta_T"].value == 2 * stage.coefficients["eta_a"].value


class _GradSpy(FloatArithmetic):
    def __init__(self, *args):
        super().__init__(*args)
        self.grads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.outputs: list[torch.Tensor] = []

    def update(self, stage, s, dz, x):
        self.grads[stage.index] = (dz.T @ x, dz.sum(0))
        super().update(stage, s, dz, x)

    def loss(self, y, label):
        self.outputs.append(y.clone())
        return super().loss(y, label)


@pytest.mark.parametrize("loss", ["mse", "softmax_ce"])
def test_float_path_values_and_gradients_match_autograd(loss):
    plan = make_plan(network={"loss": loss}, optimizer={"algorithm": "sgd"})
    weights = initial_weights(plan)
    spy = _GradSpy(plan.config.network.loss, plan.config.optimizer.weight_prediction)
    pipe = Pipeline(plan, spy, weights)
    x = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    label = 2
    done, _ = pipe.step(x, label)

    params = [(w.clone().requires_grad_(), b.clone().requires_grad_()) for w, b in weights]
    h = x[None]
    for i, (w, b) in enumerate(params):
        h = h @ w.T + b
        if i < len(params) - 1:
            h = torch.relu(h)
    if loss == "mse":
        target = torch.nn.functional.one_hot(torch.tensor([label]), 3).double()
        value = 0.5 * ((h - target) ** 2).sum()
    else:
        value = torch.nn.functional.cross_entropy(h, torch.tensor([label]))
    value.backward()

    torch.testing.assert_close(spy.outputs[0], h.detach(), rtol=1e-13, atol=1e-15)
    assert done.loss == pytest.approx(value.item(), rel=1e-13)
    for i, (w, b) in enumerate(params):
        gw, gb = spy.grads[i + 1]
        torch.testing.assert_close(gw, w.grad, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(gb, b.grad, rtol=1e-12, atol=1e-15)
