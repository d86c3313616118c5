"""The step schedule: delays measured from the schedule, fill/drain, stashing, SGD equivalence."""

from __future__ import annotations

import pytest
import torch
from pbhw_testing import make_plan, run_records

from golden.float_arith import FloatArithmetic
from golden.pipeline import Pipeline
from golden.sgd import SGDReference
from pbhw.core.weights import initial_weights


def _arith(plan):
    cfg = plan.config
    return FloatArithmetic(cfg.network.loss, cfg.optimizer.weight_prediction)


def _data(n, features=6, classes=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, features, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


@pytest.mark.parametrize("layers", [[6, 3], [6, 5, 3], [6, 5, 4, 3], [6, 5, 5, 4, 4, 3]])
def test_measured_delay_of_each_stage_is_2_L_minus_l_plus_1(layers):
    plan = make_plan(network={"layers": layers})
    pipe = Pipeline(plan, _arith(plan))
    n = 40
    records = run_records(pipe, *_data(n, classes=3))
    num_stages = len(layers) - 1
    for i, stage in enumerate(pipe.stages):
        fwd_step = {
            r.stages[i].forward_sample: r.step
            for r in records
            if r.stages[i].forward_sample is not None
        }
        upd_step = {r.stages[i].backward_sample: r.step for r in records if r.stages[i].updated}
        updated = [r.step for r in records if r.stages[i].updated]
        # Steady-state samples: the whole window between forward and update has a full pipeline.
        for s in range(2 * num_stages, n - 2 * num_stages):
            window = [t for t in updated if fwd_step[s] <= t < upd_step[s]]
            assert len(window) == 2 * (num_stages - (i + 1)) + 1, (i, s)
        assert stage.delay == 2 * (num_stages - (i + 1)) + 1
        assert stage.max_stash == stage.delay + 1


def test_fill_and_drain_steps_do_no_update():
    plan = make_plan()
    pipe = Pipeline(plan, _arith(plan))
    x, y = _data(10)
    before = [s.state.w.clone() for s in pipe.stages]
    records = []
    for step in range(plan.config.network.num_stages * 2):
        _, rec = pipe.step(x[step], int(y[step]), record=True)
        records.append(rec)
        for i, stage in enumerate(pipe.stages):
            if not rec.stages[i].updated:
                assert torch.equal(stage.state.w, before[i]), (step, i)
    num_stages = len(pipe.stages)
    for i in range(num_stages):
        first = next(r.step for r in records if r.stages[i].updated)
        assert first == 2 * num_stages - (i + 1)  # sample 0's backward at stage l
        assert all(
            r.stages[i].updated == (r.stages[i].backward_sample is not None) for r in records
        )
    list(pipe.drain())
    assert not pipe.in_flight
    # Every sample fed was used for exactly one update per stage; then nothing changes.
    fed = len(records)
    assert [s.updates for s in pipe.stages] == [fed] * num_stages
    frozen = [s.state.w.clone() for s in pipe.stages]
    for _ in range(3):
        pipe.step()
    assert all(torch.equal(s.state.w, f) for s, f in zip(pipe.stages, frozen, strict=True))


@pytest.mark.parametrize("loss", ["mse", "softmax_ce"])
@pytest.mark.parametrize("bias", [True, False])
def test_zero_delay_pb_path_equals_sgd_batch_1_exactly(loss, bias):
    plan = make_plan(network={"loss": loss, "bias": bias}, optimizer={"algorithm": "sgd"})
    assert [st.delay for st in plan.stages] == [0, 0, 0]
    weights = initial_weights(plan)
    pipe = Pipeline(plan, _arith(plan), weights)
    ref = SGDReference(plan, weights)
    x, y = _data(60)
    for i in range(len(x)):
        done, _ = pipe.step(x[i], int(y[i]))
        losses, _ = ref.step(x[i : i + 1], y[i : i + 1])
        assert done.loss == float(losses[0])
    for stage, w, b in zip(pipe.stages, ref.w, ref.b, strict=True):
        assert torch.equal(stage.state.w, w)
        assert (b is None) == (stage.state.b is None)
        if b is not None:
            assert torch.equal(stage.state.b, b)


def test_pipelined_path_differs_from_sgd():
    """The equivalence above is not vacuous: with delays the weights differ."""
    plan_pb = make_plan(optimizer={"spike_compensation": False, "weight_prediction": "none"})
    plan_sgd = make_plan(optimizer={"algorithm": "sgd"})
    weights = initial_weights(plan_pb)
    pipe = Pipeline(plan_pb, _arith(plan_pb), weights)
    ref = SGDReference(plan_sgd, weights)
    x, y = _data(30)
    list(pipe.run(x, y.tolist()))
    for i in range(len(x)):
        ref.step(x[i : i + 1], y[i : i + 1])
    assert not torch.equal(pipe.stages[0].state.w, ref.w[0])


class _Spy(FloatArithmetic):
    """Records the weights each forward and backward used, per (stage, sample)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.fwd: dict = {}
        self.bwd: dict = {}
        self.current_sample = None

    def forward(self, stage, w, b, x):
        self.fwd.setdefault(stage.index, []).append(w.clone())
        return super().forward(stage, w, b, x)

    def backward(self, stage, w, dz):
        self.bwd.setdefault(stage.index, []).append(w.clone())
        return super().backward(stage, w, dz)


@pytest.mark.parametrize("prediction", ["none", "velocity"])
def test_weight_stashing_backward_uses_exactly_the_forwards_weights(prediction):
    plan = make_plan(optimizer={"weight_stashing": True, "weight_prediction": prediction})
    spy = _Spy(plan.config.network.loss, plan.config.optimizer.weight_prediction)
    pipe = Pipeline(plan, spy)
    x, y = _data(25)
    list(pipe.run(x, y.tolist()))
    for index in (2, 3):  # stage 1 sends no error back
        assert len(spy.bwd[index]) == len(spy.fwd[index]) == 25
        for w_fwd, w_bwd in zip(spy.fwd[index], spy.bwd[index], strict=True):
            assert torch.equal(w_fwd, w_bwd)


def test_without_stashing_backward_uses_newer_weights():
    plan = make_plan(optimizer={"weight_stashing": False, "weight_prediction": "none"})
    spy = _Spy(plan.config.network.loss, plan.config.optimizer.weight_prediction)
    pipe = Pipeline(plan, spy)
    x, y = _data(25)
    list(pipe.run(x, y.tolist()))
    differ = [not torch.equal(a, b) for a, b in zip(spy.fwd[2], spy.bwd[2], strict=True)]
    assert sum(differ) >= 20


def test_completions_arrive_in_order_with_their_labels():
    plan = make_plan()
    pipe = Pipeline(plan, _arith(plan))
    x, y = _data(12)
    done = list(pipe.run(x, y.tolist()))
    assert [d.sample for d in done] == list(range(12))
    assert [d.label for d in done] == y.tolist()
    assert [d.step for d in done] == [s + len(pipe.stages) - 1 for s in range(12)]
