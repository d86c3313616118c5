"""Conv stages in the bit-exact integer model against docs/numerics.md ("Conv stages").

``tests/int_reference.py`` computes a conv stage element by element with Python integers from
the text of docs/numerics.md; here one step of a small conv network (1-D and 2-D, average and
max pooling, a residual, a dense classifier; group norm, projections, Online Normalization with
its running state) is compared with ``FixedArithmetic`` code for code in every rounding and
overflow mode, the zero-delay schedule (``sgd``) with the reference run sample by sample, and
several configs batched along the leading dimension with separate runs.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch
from int_reference import Fmt, RefConvStage, RefNet
from test_fixed_arith import (
    MODE_CASES,
    check,
    codes,
    counts_of,
    fmt_of,
    narrow_raw,
    rand_inputs,
    randomize,
    ref_net,
)

from golden.conv import (
    NORM_EPS,
    _four_d,
    _projection_stride,
    conv_backward,
    conv_forward,
    split_parameters,
)
from golden.conv_fixed import geometry
from golden.fixed_arith import FixedArithmetic
from golden.pipeline import Pipeline
from pbhw.core.config import ConfigError, Norm, from_dict
from pbhw.core.datapath import ACC_LIMIT
from pbhw.core.datasets import Dataset
from pbhw.core.datasets import load as load_dataset
from pbhw.core.plan import derive_plan
from pbhw.core.weights import initial_weights
from pbhw.tools.train import train, train_many


def _conv(channels: int, kernel: int, **keys) -> dict:
    return {"type": "conv", "channels": channels, "kernel": kernel, **keys}


def _online(channels: int, kernel: int, **keys) -> dict:
    return _conv(channels, kernel, norm="online", **keys)


#: Small networks: a residual around an averaging stage, a max pooling stage, a dense classifier.
NETS = {
    "1d": (
        [2, 12],
        [
            _conv(3, 3, padding=1),
            _conv(3, 3, padding=1, residual=1, pool="avg"),
            _conv(4, 3, stride=2, pool="max"),
            {"type": "dense", "units": 3},
        ],
    ),
    "2d": (
        [1, 8, 8],
        [
            _conv(3, 3, stride=2, padding=1),
            _conv(3, 3, padding=1, residual=1, pool="avg"),
            _conv(4, 2, padding=1, pool="max"),
            {"type": "dense", "units": 3},
        ],
    ),
    # a global average over 6 positions (a division) after a residual, then a dense classifier
    "1d-global": (
        [2, 12],
        [
            _conv(3, 3, padding=1),
            _conv(4, 3, stride=2, padding=1),
            _conv(4, 3, padding=1, residual=1, pool="global_avg"),
            {"type": "dense", "units": 3},
        ],
    ),
    # a global average over 4 positions (a shift) as the classifier
    "2d-global": (
        [1, 8, 8],
        [
            _conv(3, 3, stride=2, padding=1),
            _conv(3, 3, padding=1, residual=1),
            _conv(4, 2, padding=1, pool="max"),
            _conv(3, 1, pool="global_avg"),
        ],
    ),
    # group norm: two groups, one channel per group around a residual (avg pooling after),
    # then before a global average over 6 positions (its error divided in the norm's backward)
    "1d-norm": (
        [2, 12],
        [
            _conv(4, 3, padding=1, norm="group", groups=2),
            _conv(4, 3, padding=1, residual=1, pool="avg", norm="group", groups=4),
            _conv(4, 3, padding=1, norm="group", groups=2, pool="global_avg"),
            {"type": "dense", "units": 3},
        ],
    ),
    # group norm with max pooling, and in the last stage (no ReLU) before a global average
    "2d-norm": (
        [1, 8, 8],
        [
            _conv(4, 3, stride=2, padding=1, norm="group", groups=2),
            _conv(4, 3, padding=1, residual=1, norm="group", groups=1, pool="max"),
            _conv(4, 2, padding=1),
            _conv(3, 1, norm="group", groups=1, pool="global_avg"),
        ],
    ),
    # residual projections: with a stride, then into group norm and a global average
    # (divided by 6)
    "1d-proj": (
        [2, 12],
        [
            _conv(3, 3, padding=1),
            _conv(4, 3, stride=2, padding=1, residual=1, projection=True),
            _conv(
                4,
                3,
                padding=1,
                residual=1,
                projection=True,
                norm="group",
                groups=2,
                pool="global_avg",
            ),
            {"type": "dense", "units": 3},
        ],
    ),  # fmt: skip
    # Online Normalization: with a clamp that holds often, around a residual with average
    # pooling after, and before a global average over 6 positions (its error divided)
    "1d-online": (
        [2, 12],
        [
            _online(4, 3, padding=1, alpha_fwd=0.75, alpha_bkw=0.5, clamp=1.5),
            _online(4, 3, padding=1, residual=1, pool="avg", alpha_fwd=0.9, alpha_bkw=0.8),
            _online(4, 3, padding=1, alpha_fwd=0.5, clamp=2.0, pool="global_avg"),
            {"type": "dense", "units": 3},
        ],
    ),
    # Online Normalization with a projected residual, then with max pooling (5 x 5 positions,
    # the last row and column dropped) in the last conv stage, then a dense classifier
    "2d-online": (
        [1, 8, 8],
        [
            _online(4, 3, stride=2, padding=1, alpha_fwd=0.9, alpha_bkw=0.75, clamp=1.0),
            _online(4, 3, padding=1, residual=1, projection=True, alpha_bkw=0.6),
            _online(4, 2, padding=1, alpha_fwd=0.8, clamp=1.25, pool="max"),
            {"type": "dense", "units": 3},
        ],
    ),
    # projections with average pooling, with group norm and a stride, in the last stage
    "2d-proj": (
        [1, 8, 8],
        [
            _conv(3, 3, stride=2, padding=1),
            _conv(4, 3, padding=1, residual=1, projection=True, pool="avg"),
            _conv(4, 3, stride=2, padding=1, residual=1, projection=True, norm="group", groups=2),
            _conv(3, 1, residual=1, projection=True, pool="global_avg"),
        ],
    ),
}


def conv_raw(net: str, **keys) -> dict:
    """``narrow_raw``'s narrow formats and modes (one override per stage) on a conv network."""
    shape, layers = NETS[net]
    loss = keys.pop("loss", "mse")
    bias = keys.pop("bias", True)
    raw = narrow_raw(layers=(4, 4, 4, 4, 3), loss=loss, bias=bias, **keys)
    raw["network"] = {"input": shape, "layers": layers, "loss": loss, "bias": bias}
    return raw


def ref_conv_net(plan) -> RefNet:
    """The plan as the reference's plain data: ``ref_net``'s stages, the conv ones with their
    geometry (``n_in`` the window's ``C_in x kh x kw`` columns, ``n_out`` the channels)."""
    net = ref_net(plan)
    for li, sp in enumerate(plan.stages):
        if not sp.conv:
            continue
        g, spec = geometry(sp), sp.spec
        source = plan.stages[sp.index - 1 - spec.residual] if spec.residual else None
        res_fmt: Fmt | None = None if source is None else fmt_of(source.formats.activation)
        fields = {**vars(net.stages[li]), "n_in": g.columns, "n_out": g.conv_shape[0]}
        net.stages[li] = RefConvStage(
            **fields,
            in_chw=g.in_shape,
            out_hw=g.conv_shape[1:],
            kernel=g.kernel,
            stride=g.stride,
            padding=g.padding,
            pool=spec.pool.value,
            window=g.window,
            res_fmt=res_fmt,
            res_err_fmt=None if source is None else fmt_of(source.formats.error),
            residual_back=spec.residual,
            groups=spec.groups if spec.norm is Norm.GROUP else 0,
            eps=NORM_EPS,
            res_chw=_four_d(sp.residual_shape) if spec.projection else None,
            proj_stride=tuple(_projection_stride(sp)) if spec.projection else None,
            online=spec.norm is Norm.ONLINE,
            alpha_fwd=spec.alpha_fwd,
            alpha_bkw=spec.alpha_bkw,
            clamp=spec.clamp,
        )
    return net


#: Online Normalization's state, per channel (docs/numerics.md, "Online Normalization")
ONLINE_STATE = ("M", "V", "P", "U")


def online_state(state) -> dict[str, list[int]]:
    """A model's Online Normalization state of config 0 as the reference's lists."""
    return {k: codes(state.online[k])[0] for k in ONLINE_STATE}


def random_online(rng: random.Random, rs: RefConvStage) -> dict[str, list[int]]:
    """A running state a stage could have reached: means within the convolution's range, a
    variance up to the largest (sometimes 0), ``P`` and ``U`` mostly near the range the
    compensation reads (beyond it at times) and now and then next to their 44-bit limits."""
    m, a, e = rs.positions, rs.fmt["activation"], rs.fmt["error"]
    top = m * 2 ** (a.width - 1)

    def state(bits: int, step: int) -> int:
        """Mostly about ``m 2^bits``; at times within ``m step`` of a 44-bit limit (``step``
        about the largest sum one sample adds)."""
        if rng.random() < 0.15:
            return rng.choice((1, -1)) * (2**43 - rng.randint(1, m * step))
        return rng.randint(-(2**bits), 2**bits) * m

    return {
        "M": [rng.randint(-top, top) * 2**8 + rng.randint(0, 255) for _ in range(rs.n_out)],
        "V": [
            0 if rng.random() < 0.1 else rng.randint(0, top * top // rng.choice((1, 16)))
            for _ in range(rs.n_out)
        ],
        "P": [
            state(e.width + a.width - rng.randint(0, 3), 2 ** (e.width + a.width - 3))
            for _ in range(rs.n_out)
        ],
        "U": [state(e.width + 8 - rng.randint(0, 3), 2 ** (e.width - 2)) for _ in range(rs.n_out)],
    }


def random_states(plan, arith, ref, rng):
    """The model's initial states overwritten with random codes, and the reference's copies
    (Online Normalization's state checked against its initial values first)."""
    states, rstates = [], []
    for sp, params, rs in zip(plan.stages, initial_weights(plan), ref.stages, strict=True):
        state = arith.init_conv_state(sp, params) if sp.conv else arith.init_state(sp, *params)
        assert np.asarray(state.w).shape == (1, rs.n_out, rs.cols)
        states.append(state)
        rstates.append(randomize(state, rs, rng))
        if getattr(rs, "online", False):
            assert online_state(state) == rs.online_init()
            rstates[-1]["online"] = random_online(rng, rs)
            for k, values in rstates[-1]["online"].items():
                state.online[k][0] = values
        else:
            assert not sp.conv or state.online is None
    return states, rstates


def ref_sample(ref: RefNet, plan, rstates, xf, label, step, record=None):
    """One sample through the reference: forward, loss, backward with the residual's error
    added at its source, update (every delay 0; Online Normalization's state, ``rstates[l]
    ["online"]``, advanced in place). ``record`` collects every value by name."""
    record = {} if record is None else record
    num = len(ref.stages)
    x = ref.encode_input(xf, step)
    inputs, outs, stash = [], [], []
    for li, (sp, rs, rst) in enumerate(zip(plan.stages, ref.stages, rstates, strict=True)):
        wh = ref.predicted(rs, rst["w"], rst["v"], rst["w_prev"], step)
        record[f"stage {rs.index} predicted"] = wh
        inputs.append(x)
        if sp.conv:
            residual = outs[li - sp.spec.residual] if sp.spec.residual else None
            x, mask, choices, norm = ref.conv_forward(
                rs, wh, x, residual, step, online=rst.get("online")
            )
            stash.append((mask, choices, norm))
        else:
            x, mask = ref.forward(rs, wh, x, step)
            stash.append((mask, None, None))
        record[f"stage {rs.index} output"] = x
        outs.append(x)
    delta = ref.loss(x, label, step)
    record["loss error"] = delta
    held: dict[int, list[int]] = {}
    pending = []
    for li in reversed(range(num)):
        sp, rs, rst = plan.stages[li], ref.stages[li], rstates[li]
        if li in held:
            delta = ref.add_errors(rs, delta, held.pop(li))
            record[f"stage {rs.index} summed error"] = delta
        mask, choices, norm = stash[li]
        if sp.conv:
            d, error_in, res_err, norm_d = ref.conv_backward(
                rs, rst["w"], inputs[li], mask, choices, delta, step, norm, rst.get("online")
            )
            if res_err is not None:
                held[li - sp.spec.residual] = res_err
                record[f"stage {rs.index} residual error"] = res_err
            residual = outs[li - sp.spec.residual] if sp.spec.residual else None
            pending.append((li, (d, norm_d, residual)))
        else:
            d = ref.output_gradient(delta, mask)
            error_in = ref.backward(rs, rst["w"], d, step) if li > 0 else None
            pending.append((li, d))
        if error_in is not None:
            record[f"stage {rs.index} error"] = error_in
        delta = error_in
    for li, d in pending:
        sp, rs, rst = plan.stages[li], ref.stages[li], rstates[li]
        if sp.conv:
            _, v2, w2 = ref.conv_update(rs, rst["w"], rst["v"], d[0], inputs[li], step, *d[1:])
        else:
            _, v2, w2 = ref.update(rs, rst["w"], rst["v"], d, inputs[li], step)
        if rst["w_prev"] is not None:
            rst["w_prev"] = rst["w"]
        rst["w"], rst["v"] = w2, v2
        record[f"stage {rs.index} new weight"] = w2
        record[f"stage {rs.index} new velocity"] = v2
        for k in ONLINE_STATE if rst.get("online") else ():
            record[f"stage {rs.index} online {k}"] = list(rst["online"][k])
    return record


def model_sample(arith, plan, states, xf, label, step, record=None):
    """The same through ``FixedArithmetic``'s operations, called one by one."""
    record = {} if record is None else record
    arith.begin_step(step)
    x = arith.encode_input(torch.tensor(xf, dtype=torch.float64))
    inputs, outs, stash = [], [], []
    for li, (sp, st) in enumerate(zip(plan.stages, states, strict=True)):
        inputs.append(x)
        if sp.conv:
            wh, _ = arith.conv_predicted(sp, st)
            residual = outs[li - sp.spec.residual] if sp.spec.residual else None
            x, kept = arith.conv_forward(sp, wh, x, residual, state=st)
        else:
            wh, _ = arith.predicted(sp, st)
            x, kept = arith.forward(sp, wh, None, x)
        record[f"stage {sp.index} predicted"] = wh
        stash.append(kept)
        record[f"stage {sp.index} output"] = x
        outs.append(x)
    delta, _ = arith.loss(x, label)
    record["loss error"] = delta
    held: dict[int, np.ndarray] = {}
    pending = []
    for li in reversed(range(len(plan.stages))):
        sp, st = plan.stages[li], states[li]
        if li in held:
            delta = arith.add_errors(sp, delta, held.pop(li))
            record[f"stage {sp.index} summed error"] = delta
        if sp.conv:
            grad, error_in, res_err = arith.conv_backward(
                sp, st.w, inputs[li], stash[li], delta, state=st
            )
            if res_err is not None:
                held[li - sp.spec.residual] = res_err
                record[f"stage {sp.index} residual error"] = res_err
            pending.append((li, grad))
        else:
            dz = arith.output_gradient(sp, delta, stash[li])
            error_in = arith.backward(sp, st.w, dz) if li > 0 else None
            pending.append((li, dz))
        if error_in is not None:
            record[f"stage {sp.index} error"] = error_in
        delta = error_in
    for li, grad in pending:
        sp, st = plan.stages[li], states[li]
        if sp.conv:
            arith.conv_update(sp, st, grad)
        else:
            arith.update(sp, st, grad, inputs[li])
        record[f"stage {sp.index} new weight"] = st.w
        record[f"stage {sp.index} new velocity"] = st.v
        for k in ONLINE_STATE if getattr(st, "online", None) is not None else ():
            record[f"stage {sp.index} online {k}"] = st.online[k].copy()
    return record


def compare(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        check(name, got[name], [value])


# ------------------------------------------------------------------------------------------
# One step of every operation against the reference


@pytest.mark.parametrize("prediction", ["velocity", "weight_difference"])
@pytest.mark.parametrize("loss", ["mse", "softmax_ce"])
@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("case", list(MODE_CASES))
def test_one_step_of_a_conv_net_matches_integer_reference(case, net, loss, prediction):
    raw = conv_raw(net, case=case, loss=loss, prediction=prediction)
    plan = derive_plan(from_dict(raw))
    arith = FixedArithmetic(plan)
    ref = ref_conv_net(plan)
    # a seed per case that does not change between runs (hash() of a str does)
    rng = random.Random(zlib.crc32(repr((case, net, loss, prediction)).encode()) & 0xFFFF)
    states, rstates = random_states(plan, arith, ref, rng)
    xf = rand_inputs(rng, plan.stages[0].n_in)
    label = rng.randrange(plan.stages[-1].n_out)
    want = ref_sample(ref, plan, rstates, xf, label, 3)
    got = model_sample(arith, plan, states, xf, label, 3)
    compare(got, want)
    assert counts_of(arith) == ref.count_dict()
    if "online" in net:  # the clamp's path is taken
        assert ref.clamps > 0


def test_narrow_formats_do_saturate_in_conv_stages():
    """The one-step test exercises overflow in the new rounding points too."""
    raw = conv_raw("1d", case="half_even-saturate")
    plan = derive_plan(from_dict(raw))
    arith, ref = FixedArithmetic(plan), ref_conv_net(plan)
    rng = random.Random(2)
    states, rstates = random_states(plan, arith, ref, rng)
    for step in range(3):
        xf = rand_inputs(rng, plan.stages[0].n_in)
        ref_sample(ref, plan, rstates, xf, 1, step)
        model_sample(arith, plan, states, xf, 1, step)
    counted = counts_of(arith)
    assert counted == ref.count_dict()
    for key in ("stage 2 activation", "stage 1 residual", "stage 3 gradient"):
        assert counted.get(key, 0) > 0, counted


# ------------------------------------------------------------------------------------------
# The schedule: zero delays against the reference sample by sample; batched configs


def _samples(plan, n, seed):
    rng = random.Random(seed)
    return [(rand_inputs(rng, plan.stages[0].n_in), rng.randrange(3)) for _ in range(n)]


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("case", ["stochastic-saturate", "mixed-per-layer"])
def test_zero_delay_schedule_matches_reference_sample_by_sample(case, net):
    raw = conv_raw(net, case=case, lr=0.05, momentum=0.6, loss="softmax_ce")
    raw["optimizer"]["algorithm"] = "sgd"
    plan = derive_plan(from_dict(raw))
    arith = FixedArithmetic(plan)
    pipe = Pipeline(plan, arith)
    ref = ref_conv_net(plan)
    rstates = [
        {"w": codes(s.state.w)[0], "v": codes(s.state.v)[0], "w_prev": None} for s in pipe.stages
    ]
    for s, rs, rst in zip(pipe.stages, ref.stages, rstates, strict=True):
        if getattr(rs, "online", False):  # the initial state of docs/numerics.md
            rst["online"] = rs.online_init()
            assert online_state(s.state) == rst["online"]
    for t, (x, label) in enumerate(_samples(plan, 6, 4)):
        _, rec = pipe.step(torch.tensor(x), label, record=True)
        want = ref_sample(ref, plan, rstates, x, label, t)
        for i, st in enumerate(rec.stages, start=1):
            check(f"step {t} stage {i} output", st.output, [want[f"stage {i} output"]])
            if i > 1:
                check(f"step {t} stage {i} error", st.error, [want[f"stage {i} error"]])
        for i, s in enumerate(pipe.stages, start=1):
            for k in ONLINE_STATE if f"stage {i} online M" in want else ():
                check(
                    f"step {t} stage {i} online {k}",
                    s.state.online[k],
                    [want[f"stage {i} online {k}"]],
                )
    for s, rs in zip(pipe.stages, rstates, strict=True):
        check("final w", s.state.w, [rs["w"]])
        check("final v", s.state.v, [rs["v"]])
    assert counts_of(arith) == ref.count_dict()
    if "online" in net:  # the clamp's path is taken
        assert ref.clamps > 0
    # evaluation: step EVAL_STEP, index sample * N + element of each rounded tensor, no counting
    before = arith.saturation_counts()
    rng = random.Random(8)
    xe = [rand_inputs(rng, plan.stages[0].n_in) for _ in range(3)]
    out = pipe.evaluate(torch.tensor(xe, dtype=torch.float64))
    check("evaluate", out, [ref.evaluate(rstates, xe)])
    assert arith.saturation_counts() == before
    for s, rst in zip(pipe.stages, rstates, strict=True):  # evaluation reads the state only
        if "online" in rst:
            assert online_state(s.state) == rst["online"]


def _variant(raw: dict, **formats) -> dict:
    out = {**raw, "formats": {**raw["formats"], **formats}}
    return out


@pytest.mark.parametrize("net", list(NETS))
def test_batched_conv_configs_equal_each_config_alone(net):
    base = conv_raw(net, case="stochastic-saturate", lr=0.05, momentum=0.6, loss="softmax_ce")
    base["optimizer"]["weight_stashing"] = True
    raws = [
        base,
        _variant(base, activation={"width": 8, "frac": 4}, weight={"width": 7, "frac": 5}),
    ]
    plans = [derive_plan(from_dict(r)) for r in raws]
    samples = _samples(plans[0], 10, 9)
    xe = torch.tensor([rand_inputs(random.Random(3), plans[0].stages[0].n_in) for _ in range(4)])

    def run(ps):
        arith = FixedArithmetic(ps)
        pipe = Pipeline(ps[0], arith, initial_weights(ps[0]))
        outs = [pipe.step(torch.tensor(x), label)[0] for x, label in samples]
        list(pipe.drain())
        return pipe, arith, outs

    together, arith, outs = run(plans)
    for c, p in enumerate(plans):
        alone, arith_c, outs_c = run([p])
        for s, s_c in zip(together.stages, alone.stages, strict=True):
            check(f"config {c} weights", s.state.w[c : c + 1], codes(s_c.state.w))
        for done, done_c in zip(outs, outs_c, strict=True):
            if done is not None:
                assert int(np.asarray(done.prediction)[c]) == int(done_c.prediction[0])
        check(f"config {c} evaluation", together.evaluate(xe)[c : c + 1], codes(alone.evaluate(xe)))
        assert {k: v[c] for k, v in arith.saturation_counts().items()} == {
            k: v[0] for k, v in arith_c.saturation_counts().items()
        }
    assert not np.array_equal(together.stages[0].state.w[0], together.stages[0].state.w[1])


# ------------------------------------------------------------------------------------------
# Configuration: the accumulator widths


def test_group_norm_sums_wider_than_the_limit_are_refused():
    """Group norm's variance squares a whole group's codes: 28-bit activations over a group of
    48 overflow 62 bits there (while the convolution's sums fit), and the model says which sum.
    """
    raw = conv_raw("1d", case="half_even-saturate")
    raw["formats"].update(activation={"width": 28, "frac": 12}, weight={"width": 20, "frac": 10})
    raw["network"]["layers"] = [
        _conv(64, 3, padding=1),
        _conv(4, 3, padding=1, norm="group", groups=1),
        {"type": "dense", "units": 3},
    ]
    raw["overrides"] = []
    with pytest.raises(ConfigError, match="stage 2: group norm's variance sum needs 67 bits"):
        FixedArithmetic(derive_plan(from_dict(raw)))
    raw["network"]["layers"][1]["groups"] = 4  # a group of 12: 63 bits
    with pytest.raises(ConfigError, match="stage 2: group norm's variance sum needs 63 bits"):
        FixedArithmetic(derive_plan(from_dict(raw)))
    raw["formats"]["activation"]["width"] = 27  # the variance fits, the backward's t * r not
    with pytest.raises(ConfigError, match="stage 2: group norm's backward sum needs 66 bits"):
        FixedArithmetic(derive_plan(from_dict(raw)))
    raw["formats"]["activation"]["width"] = 16
    FixedArithmetic(derive_plan(from_dict(raw)))


def test_conv_accumulator_wider_than_the_limit_is_refused_before_training():
    """The forward sums channels x kernel products: a config that is fine for a dense stage of
    the same input width overflows 62 bits once the conv's terms are counted."""
    wide = {"width": 29, "frac": 20}
    raw = conv_raw("1d", case="half_even-saturate")
    raw["formats"].update(weight=dict(wide), activation=dict(wide))
    raw["overrides"] = [{"layer": 2, "formats": {"weight": {"width": 6, "frac": 4}}}]
    raw["network"]["layers"] = [_conv(8, 9, padding=4), {"type": "dense", "units": 3}]
    raw["network"]["input"] = [8, 12]
    plan = derive_plan(from_dict(raw))
    with pytest.raises(ConfigError, match="stage 1: the forward accumulator needs 64 bits") as e:
        FixedArithmetic(plan)
    assert str(ACC_LIMIT) in str(e.value)
    raw["network"]["layers"][0]["kernel"] = 1
    raw["network"]["layers"][0]["padding"] = 0
    FixedArithmetic(derive_plan(from_dict(raw)))  # 8 terms fit


# ------------------------------------------------------------------------------------------
# The trainer


def test_trainer_batches_conv_configs_and_returns_their_parameters():
    """``train_many`` of two conv configs that differ in formats gives each config's run
    alone, and the trained parameters in their configured shapes as the codes' values."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (90,), generator=gen)
    x = torch.rand(3, 24, generator=gen, dtype=torch.float64)[y] + 0.1 * torch.randn(
        90, 24, generator=gen, dtype=torch.float64
    )
    data = Dataset("toy", x[:60], y[:60], x[60:], y[60:], 3, shape=(2, 12))
    base = conv_raw("1d", case="stochastic-saturate", lr=0.05, momentum=0.6, loss="softmax_ce")
    base["train"]["epochs"] = 2
    narrow = _variant(base, activation={"width": 8, "frac": 4})
    configs = [from_dict(base), from_dict(narrow)]
    together = train_many(configs, dataset=data)
    for cfg, batched in zip(configs, together, strict=True):
        alone = train(cfg, dataset=data)
        assert batched.test_accuracy == alone.test_accuracy
        assert batched.final_loss == alone.final_loss
        assert batched.extra["saturation"] == alone.extra["saturation"]
        for got, want in zip(batched.weights, alone.weights, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    plan = derive_plan(configs[0])
    for stage, params in zip(plan.stages, together[0].weights, strict=True):
        if stage.conv:
            shapes = [tuple(p.shape) for p in params]
            assert shapes == [shape for _, shape in stage.parameter_shapes]
    assert together[0].final_loss != together[1].final_loss


# ------------------------------------------------------------------------------------------
# Group norm: close to the float model, within a bound from the formats


def test_group_norm_matches_the_float_model_within_a_bound_from_the_formats():
    """Forward and backward of a group-norm stage against ``golden.conv``'s float path on the
    same parameter values and inputs (16-bit default formats, half-even, no saturation).

    Forward: ``c`` is rounded once (half an ulp ``u = 2^-f(A)``), which moves a value and
    its group's mean by at most ``u/2`` each and the deviation by at most ``u`` relative to it:
    ``xhat`` moves by ``u (1 + |xhat|) / sigma``; ``r`` carries a relative error below
    ``2^-14``; ``xhat`` and ``z`` are rounded once each (``u/2``):
    ``|dz| <= |scale| (u (1 + |xhat|) / sigma + 2^-14 |xhat| + u/2) + u/2``.
    Backward (``ue = 2^-f(E)``): ``dx`` and ``k`` are rounded once (``ue/2``), each reaching
    ``dc`` through ``rstd`` with the weights ``2 + 2 xhat^2``; the error of ``xhat`` above
    reaches it through ``rstd |scale| |d| (1 + 2 |xhat|)``; ``r``'s ``2^-14`` relative, and
    ``dc``'s own rounding ``ue/2``."""
    raw = {
        "seed": 3,
        "network": {
            "input": [2, 16],
            "loss": "softmax_ce",
            "layers": [
                _conv(8, 3, padding=1, norm="group", groups=2),
                {"type": "dense", "units": 3},
            ],
        },
        "train": {"arith": "fixed"},
    }
    plan = derive_plan(from_dict(raw))
    sp = plan.stages[0]
    arith = FixedArithmetic(plan)
    gen = torch.Generator().manual_seed(1)
    params = list(initial_weights(plan)[0])
    params[2] = 0.5 + torch.rand(8, generator=gen, dtype=torch.float64)  # norm_scale
    params[3] = torch.rand(8, generator=gen, dtype=torch.float64) - 0.5  # norm_shift
    state = arith.init_conv_state(sp, tuple(params))
    values = state.tensors()
    p = split_parameters(sp, torch.cat([v.reshape(-1) for v in values]))
    fa, fe = sp.formats.activation.format.frac, sp.formats.error.format.frac
    u, ue, top_scale = 2.0**-fa, 2.0**-fe, float(values[2].abs().max())
    for trial in range(10):
        arith.begin_step(trial)
        x = arith.encode_input(torch.rand(32, generator=gen, dtype=torch.float64) * 2 - 1)
        y, kept = arith.conv_forward(sp, state.w, x, None)
        xf = torch.from_numpy(np.ldexp(x.astype(np.float64), -fa))
        yf, ctx = conv_forward(sp, p, xf, None)
        c = ctx.conv.reshape(2, -1)
        sigma = float(c.std(1, unbiased=False).min())
        xhat = float(
            ((c - c.mean(1, keepdim=True)) / c.std(1, unbiased=False, keepdim=True)).abs().max()
        )
        bound = top_scale * (u * (1 + xhat) / sigma + 2**-14 * xhat + u / 2) + u / 2
        assert np.abs(np.ldexp(y.astype(np.float64), -fa) - yf.numpy()).max() <= bound

        e = torch.randint(-(2**10), 2**10, (1, 8 * 16), generator=gen).numpy()
        (dc, _, _, _), _, _ = arith.conv_backward(sp, state.w, x, kept, e)
        d = torch.from_numpy(np.ldexp((e * kept.mask.reshape(1, -1)).astype(np.float64), -fe))
        dcf, _, _ = torch.ops.aten.native_group_norm_backward(
            d.reshape(1, 8, 1, 16), ctx.conv, ctx.mean, ctx.rstd, p["norm_scale"],
            1, 8, 16, 2, [True, False, False],
        )  # fmt: skip
        dxhat = u * (1 + xhat) / sigma + 2**-14 * xhat + u / 2
        bound = (
            (2 + 2 * xhat * xhat) * ue / 2 / sigma
            + top_scale * float(d.abs().max()) * dxhat * (1 + 2 * xhat) / sigma
            + 2**-14 * float(dcf.abs().max())
            + ue / 2
        )
        got = np.ldexp(dc.reshape(-1).astype(np.float64), -fe)
        assert np.abs(got - dcf.reshape(-1).numpy()).max() <= bound


def test_a_group_norm_cnn_trains_above_chance_in_fixed_point():
    """500 digits, one epoch, pipelined with LWP and SC: group norm before an average and a
    global average pooling, in 16-bit default formats (about a second; 0.42 measured, the
    float model 0.41, the same network without group norm 0.17)."""
    full = load_dataset("digits")
    data = Dataset(
        "digits", full.x_train[:500], full.y_train[:500], full.x_test, full.y_test, 10, full.shape
    )
    norm = {"norm": "group", "groups": 2}
    raw = {
        "seed": 0,
        "network": {
            "input": [1, 8, 8],
            "loss": "softmax_ce",
            "layers": [
                _conv(8, 3, padding=1, pool="avg", **norm),
                _conv(8, 3, padding=1, pool="global_avg", **norm),
                {"type": "dense", "units": 10},
            ],
        },
        "optimizer": {"lr": 0.005, "momentum": 0.9, "reference_batch": 1},
        "train": {"arith": "fixed", "epochs": 1, "dataset": "digits"},
    }
    result = train(from_dict(raw), dataset=data)
    assert result.test_accuracy > 0.3  # chance: 0.1


def test_group_norm_roundings_overflow_and_are_counted():
    """A spike in one group of 48 values: its normalized code (about 6.9) overflows ``A``'s
    range (below 4), and the error at the convolution's output (times ``rstd`` of about 7)
    overflows ``E'`` (saturating); both are counted, and everything equals the reference."""
    for ovf in ("saturate", "wrap"):
        raw = conv_raw("1d", case=f"half_even-{ovf}")
        raw["network"]["input"] = [1, 24]
        raw["network"]["layers"] = [
            _conv(2, 1, norm="group", groups=1),
            {"type": "dense", "units": 3},
        ]
        raw["overrides"] = raw["overrides"][:1]
        plan = derive_plan(from_dict(raw))
        arith, ref = FixedArithmetic(plan), ref_conv_net(plan)
        states, rstates = random_states(plan, arith, ref, random.Random(1))
        one = 2 ** plan.stages[0].formats.weight.format.frac
        rows = [[one, 0, one, 0], [0, 0, one, 0]]  # weight, bias, scale, shift
        rstates[0]["w"], rstates[0]["v"] = rows, [[0] * 4, [0] * 4]
        states[0].w, states[0].v = np.array([rows]), np.zeros((1, 2, 4), dtype=np.int64)
        xf = [1.0] + [0.0] * 23
        want = ref_sample(ref, plan, rstates, xf, 0, 2)
        got = model_sample(arith, plan, states, xf, 0, 2)
        compare(got, want)
        counted = counts_of(arith)
        assert counted == ref.count_dict()
        assert counted.get("stage 1 normalized", 0) > 0, counted
        if ovf == "saturate":  # wrapped, the spike's output is negative: no error comes back
            assert counted.get("stage 1 norm_backward", 0) > 0, counted


def test_projection_matches_the_float_model_to_its_one_rounding():
    """A strided projection without group norm: the forward's convolution, bias, projection and
    its bias are one exact sum rounded once (half-even: at most half an ulp of ``A`` from the
    float model's value), and so is the error sent along the residual (half an ulp of the
    source's ``E``)."""
    raw = {
        "seed": 3,
        "network": {
            "input": [2, 16],
            "loss": "softmax_ce",
            "layers": [
                _conv(3, 3, padding=1),
                _conv(4, 3, padding=1, stride=2, residual=1, projection=True),
                {"type": "dense", "units": 3},
            ],
        },
        "train": {"arith": "fixed"},
    }
    plan = derive_plan(from_dict(raw))
    sp, arith = plan.stages[1], FixedArithmetic(plan)
    state = arith.init_conv_state(sp, initial_weights(plan)[1])
    p = split_parameters(sp, torch.cat([v.reshape(-1) for v in state.tensors()]))
    fa, fe = plan.stages[0].formats.activation.format.frac, sp.formats.error.format.frac
    fe0 = plan.stages[0].formats.error.format.frac
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, res = (torch.randint(0, 2**fa, (1, 48), generator=gen).numpy() for _ in range(2))
        y, kept = arith.conv_forward(sp, state.w, x, res)
        yf, ctx = conv_forward(
            sp, p, *(torch.from_numpy(np.ldexp(v.astype(np.float64), -fa)) for v in (x, res))
        )
        assert np.abs(np.ldexp(y.astype(np.float64), -fa) - yf.numpy()).max() <= 2.0 ** -(fa + 1)
        e = torch.randint(-(2**10), 2**10, (1, 32), generator=gen).numpy()
        _, _, r_err = arith.conv_backward(sp, state.w, x, kept, e)
        ctx.mask = torch.from_numpy(kept.mask.reshape(1, 4, 1, 8).astype(np.float64))
        error = torch.from_numpy(np.ldexp(e.astype(np.float64), -fe))
        xf = torch.from_numpy(np.ldexp(x.astype(np.float64), -fa))
        _, _, r_float = conv_backward(sp, p, xf, ctx, error, False)
        got = np.ldexp(r_err.astype(np.float64), -fe0)
        assert np.abs(got - r_float.numpy()).max() <= 2.0 ** -(fe0 + 1)
