"""The transaction trace of the bit-exact model."""

from __future__ import annotations

import numpy as np
import torch
from pbhw_testing import make_plan

from golden.fixed_arith import FixedArithmetic
from golden.pipeline import Pipeline
from golden.trace import run_trace


def _data(n=20):
    gen = torch.Generator().manual_seed(4)
    return torch.rand(n, 6, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


def _plan(**formats):
    return make_plan(train={"arith": "fixed"}, formats=formats)


def test_trace_records_every_stage_every_step_and_the_final_state():
    plan = _plan(gradient={"rounding": "stochastic"})
    x, y = _data()
    trace = run_trace(plan, x, y)
    num_stages = len(plan.stages)
    # S samples take S + 2L - 1 steps to drain (the last update is stage 1's, D_1 + L steps later)
    assert trace.steps == len(x) + 2 * num_stages - 1
    assert len(trace.events) == trace.steps * num_stages
    assert sorted(trace.loss_errors) == list(range(len(x)))
    assert sorted(trace.predictions) == list(range(len(x)))
    for stage in range(1, num_stages + 1):
        events = trace.stage_events(stage)
        assert [e.forward_sample for e in events if e.forward_sample is not None] == list(
            range(len(x))
        )
        assert sum(e.updated for e in events) == len(x)
        for e in events:
            assert (e.output is None) == (e.forward_sample is None)
            assert (
                e.error is None if stage == 1 else (e.error is None) == (e.backward_sample is None)
            )
    assert trace.inputs.shape == (len(x), 6)


def test_trace_final_state_equals_an_untraced_run():
    plan = _plan()
    x, y = _data()
    trace = run_trace(plan, x, y)
    pipe = Pipeline(plan, FixedArithmetic(plan))
    list(pipe.run(x, y.tolist()))
    for stage, w, v in zip(pipe.stages, trace.final_weights, trace.final_velocities, strict=True):
        assert np.array_equal(stage.state.w[0], w)
        assert np.array_equal(stage.state.v[0], v)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(trace.initial_weights, trace.final_weights, strict=True)
    )


def test_trace_is_deterministic_including_stochastic_rounding():
    plan = _plan(gradient={"rounding": "stochastic"}, weight={"rounding": "stochastic"})
    x, y = _data(12)
    a, b = run_trace(plan, x, y), run_trace(plan, x, y)
    for ea, eb in zip(a.events, b.events, strict=True):
        assert ea.forward_sample == eb.forward_sample
        for u, v in ((ea.output, eb.output), (ea.error, eb.error)):
            assert (u is None and v is None) or np.array_equal(u, v)
    assert all(np.array_equal(u, v) for u, v in zip(a.final_weights, b.final_weights, strict=True))
    other = make_plan(
        train={"arith": "fixed"},
        seed=1,
        formats={"gradient": {"rounding": "stochastic"}, "weight": {"rounding": "stochastic"}},
    )
    c = run_trace(other, x, y, weights=None)
    assert not all(
        np.array_equal(u, v) for u, v in zip(a.final_weights, c.final_weights, strict=True)
    )
