"""Tests for rtl_gen.update: random and extreme codes against golden.fixed_arith."""

import dataclasses

import numpy as np
import pytest
import torch
from amaranth.back import verilog
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from pbhw_testing import raises_in_init

from golden.fixed_arith import FixedArithmetic, FixedState, threefry_words
from pbhw.core.config import ConstantProducts, WeightPrediction, from_dict
from pbhw.core.constants import stream_id
from pbhw.core.fixed import FixedFormat, StochasticKey, requantize
from pbhw.core.plan import derive_plan
from rtl_gen.target import Multiplier
from rtl_gen.update import UpdateUnit

K = 18  # a K x K stage: K * K = 324 elements, every (dz, x) pair of K codes each
SEED, STEP = 5, 7


def role(width, frac, rounding="half_even", overflow="saturate", signed=True):
    return {
        "width": width,
        "frac": frac,
        "rounding": rounding,
        "overflow": overflow,
        "signed": signed,
    }


def make_plan(*, prediction="velocity", spike_compensation=True, momentum=0.5, lr=0.25, **formats):
    table = {
        "weight": role(8, 5),
        "error": role(8, 6),
        "gradient": role(8, 6),
        "velocity": role(8, 6),  # narrow enough for m * v + g to saturate
        "coefficient": role(10, 8),
        "activation": role(8, 4),
    }
    table.update(formats)
    return derive_plan(
        from_dict(
            {
                "seed": SEED,
                "network": {"layers": [K, K], "bias": False},
                "optimizer": {
                    "reference_batch": 1,
                    "lr": lr,
                    "momentum": momentum,
                    "spike_compensation": spike_compensation,
                    "weight_prediction": prediction,
                },
                "train": {"arith": "fixed"},
                "formats": table,
            }
        )
    )


def make_unit(plan, pipelined=False, constants=ConstantProducts.DSP):
    stage = plan.stages[0]
    codes = {name: c.code for name, c in stage.coefficients.items()}
    return UpdateUnit(
        formats=stage.formats,
        momentum=codes["momentum"],
        eta_a=codes["eta_a"],
        eta_b=codes["eta_b"],
        prediction=plan.config.optimizer.weight_prediction,
        eta_t=codes.get("eta_T", 0),
        horizon=stage.horizon,
        x_format=stage.formats.activation.format,
        pipelined=pipelined,
        multiplier=Multiplier(constants=constants),
    )


def codes_of(fmt, n, rng):
    """``n`` random codes of ``fmt``, the first ones its extremes."""
    extremes = [fmt.min_code, fmt.max_code, 0, fmt.min_code + 1, fmt.max_code - 1]
    return np.concatenate([extremes, rng.integers(fmt.min_code, fmt.max_code + 1, n - 5)])


def golden(plan, dz, x, w, v, w_prev):
    """Golden outputs per element (flattened ``o * K + i``) and saturation counts per role."""
    stage = plan.stages[0]
    arith = FixedArithmetic(plan)
    arith.begin_step(STEP)
    state = FixedState(w.reshape(1, K, K), v.reshape(1, K, K))
    if arith.prediction is WeightPrediction.WEIGHT_DIFFERENCE:
        state.w_prev = w_prev.reshape(1, K, K)
    w_hat, _ = arith.predicted(stage, state)
    arith.update(stage, state, dz[None], x[None])
    # The golden update keeps g internal: requantize the product by the doc's first formula.
    fm = stage.formats
    product = torch.from_numpy(np.outer(dz, x).reshape(-1))
    key = StochasticKey(SEED, stream_id(1, "gradient"), STEP)
    g = requantize(
        product,
        FixedFormat(40, fm.error.format.frac + fm.activation.format.frac),
        fm.gradient.format,
        fm.gradient.rounding,
        fm.gradient.overflow,
        key=key,
        index=torch.arange(K * K),
    )
    counts = {role: 0 for role in ("gradient", "velocity", "weight", "prediction")}
    for name, n in arith.saturation_counts().items():
        counts[name.split()[-1]] = n[0]
    outputs = {
        "g": g.numpy(),
        "v_new": state.v.reshape(-1),
        "v_next": state.v.reshape(-1),
        "w_new": state.w.reshape(-1),
        "w_hat": w_hat.reshape(-1),
    }
    return outputs, counts


def simulate(dut, dz, x, w, v, w_prev):
    """RTL outputs per element and the number of saturated elements per rounding point."""
    index = np.arange(K * K)
    words = {
        point: threefry_words(SEED, stream_id(1, point), STEP, index)
        for point in ("gradient", "velocity", "weight", "prediction")
        if hasattr(dut, f"random_{point}")
    }
    outputs = {name: [] for name in ("g", "v_new", "v_next", "w_new", "w_hat")}
    counts = {point: 0 for point in ("gradient", "velocity", "weight", "prediction")}

    def latency_of(name):
        if name == "v_next":  # the new velocity, ready before the new weight
            return dut.velocity_latency
        return dut.prediction_latency if name in ("w_hat", "prediction") else dut.latency

    async def testbench(ctx):
        # One element enters per cycle; each output and flag is read at its own latency, each
        # random word at its rounding point's stage (all 0 when combinational).
        for c in range(K * K + dut.latency):
            n = min(c, K * K - 1)
            ctx.set(dut.dz, int(dz[n // K]))
            ctx.set(dut.x, int(x[n % K]))
            ctx.set(dut.w, int(w[n]))
            ctx.set(dut.v, int(v[n]))
            if hasattr(dut, "w_prev"):
                ctx.set(dut.w_prev, int(w_prev[n]))
            for point, word in words.items():
                e = c - dut.random_stage[point]
                if 0 <= e < K * K:
                    ctx.set(getattr(dut, f"random_{point}"), int(word[e]))
            for name, values in outputs.items():
                if 0 <= c - latency_of(name) < K * K:
                    values.append(ctx.get(getattr(dut, name)))
            for point in counts:
                if 0 <= c - latency_of(point) < K * K:
                    counts[point] += ctx.get(getattr(dut.saturated, point))
            if dut.pipelined:
                await ctx.tick()
            elif c + 1 == K * K:
                break

    sim = Simulator(dut)
    if dut.pipelined:
        sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return {name: np.array(values) for name, values in outputs.items()}, counts


CASES = {
    "half_even_sc_velocity": {},
    "no_sc_weight_difference": {
        "prediction": "weight_difference",
        "spike_compensation": False,
    },
    "no_prediction_wrap_unsigned_input": {
        "prediction": "none",
        "weight": role(8, 5, overflow="wrap"),
        "velocity": role(8, 6, "half_up", "wrap"),
        "activation": role(8, 4, signed=False),
    },
    "shift_constants": {"coefficient": {**role(10, 8), "shift": True}},
    # Velocity and constants wider than an 18x18 multiplier: the products are cut into pieces.
    "wide_velocity_and_constants": {
        "weight": role(8, 5),
        "velocity": role(22, 14),
        "coefficient": role(26, 22),
    },
    "stochastic": {
        "gradient": role(8, 6, "stochastic"),
        "velocity": role(8, 6, "stochastic"),
        "weight": role(8, 5, "stochastic"),
    },
    # The default coefficient format s24.22 and a momentum of 0.99671 (the example's, with
    # the reference batch): constants of many canonical signed digits.
    "example_constants": {
        "momentum": 0.99671,
        "lr": 0.003,
        "velocity": role(16, 12),
        "coefficient": role(24, 22),
    },
}
#: How the pipelined unit builds its products by a constant (the combinational one multiplies).
BUILDS = {
    "combinational": (False, ConstantProducts.DSP),
    "pipelined": (True, ConstantProducts.DSP),
    "pipelined_fabric": (True, ConstantProducts.FABRIC),
}


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("case", CASES)
def test_matches_golden(case, build):
    pipelined, constants = BUILDS[build]
    plan = make_plan(**CASES[case])
    fm = plan.stages[0].formats
    rng = np.random.default_rng(sum(map(ord, case)))
    dz, x = codes_of(fm.error.format, K, rng), codes_of(fm.activation.format, K, rng)
    w = codes_of(fm.weight.format, K * K, rng)
    v = codes_of(fm.velocity.format, K * K, rng)
    w_prev = codes_of(fm.weight.format, K * K, rng)[::-1].copy()
    expected, expected_counts = golden(plan, dz, x, w, v, w_prev)
    dut = make_unit(plan, pipelined, constants)
    got, counts = simulate(dut, dz, x, w, v, w_prev)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    assert counts == expected_counts
    # The extremes make every present rounding point saturate somewhere (the wide velocity
    # cannot).
    assert counts["weight"] > 0 and (counts["velocity"] > 0 or case.startswith(("wide", "example")))
    if plan.stages[0].horizon and plan.config.optimizer.weight_prediction.value != "none":
        assert counts["prediction"] > 0


def test_init():
    plan = make_plan()
    dut = make_unit(plan)
    fm = plan.stages[0].formats
    assert dut.formats == fm
    assert dut.x_format == fm.activation.format
    assert (dut.momentum, dut.eta_a, dut.eta_b, dut.eta_t) == (128, 32, 64, 64)
    assert dut.prediction is WeightPrediction.VELOCITY
    assert dut.horizon == 1
    assert dut.latency == 0
    assert dut.velocity_latency == 0
    assert len(dut.dz) == 8 and len(dut.v) == 8 and len(dut.w_hat) == 8
    assert not hasattr(dut, "w_prev") and not hasattr(dut, "random_gradient")
    Fragment.get(dut, None)

    dut = make_unit(make_plan(**CASES["stochastic"]))
    for point in ("gradient", "velocity", "weight", "prediction"):
        assert len(getattr(dut, f"random_{point}")) == 32
    Fragment.get(dut, None)

    dut = make_unit(make_plan(prediction="weight_difference", weight=role(8, 5, "stochastic")))
    assert len(dut.w_prev) == 8
    assert not hasattr(dut, "random_prediction")
    Fragment.get(dut, None)


def kwargs(**changes):
    stage = make_plan().stages[0]
    args = {
        "formats": stage.formats,
        "momentum": 128,
        "eta_a": 32,
        "eta_b": 64,
        "prediction": "velocity",
        "eta_t": 64,
        "horizon": 1,
        "x_format": stage.formats.activation.format,
    }
    args.update(changes)
    return args


def test_init_wrong_formats():
    with raises_in_init(TypeError, r"Formats must be a Formats, not 's8\.5'"):
        UpdateUnit(**kwargs(formats="s8.5"))


def test_init_wrong_x_format():
    with raises_in_init(TypeError, r"Input format must be a FixedFormat, not 8"):
        UpdateUnit(**kwargs(x_format=8))


def test_init_wrong_constant():
    with raises_in_init(TypeError, r"Momentum must be an integer code, not 0\.5"):
        UpdateUnit(**kwargs(momentum=0.5))
    with raises_in_init(TypeError, r"Eta_b must be an integer code, not True"):
        UpdateUnit(**kwargs(eta_b=True))


def test_init_wrong_prediction():
    with raises_in_init(ValueError, r"Prediction must be one of .*, not 'linear'"):
        UpdateUnit(**kwargs(prediction="linear"))
    with raises_in_init(TypeError, r"Prediction must be a WeightPrediction or one of .*, not 1"):
        UpdateUnit(**kwargs(prediction=1))


def test_init_wrong_horizon():
    with raises_in_init(ValueError, r"Horizon must be a non-negative integer, not -1"):
        UpdateUnit(**kwargs(horizon=-1))
    with raises_in_init(TypeError, r"Horizon must be a non-negative integer, not '2'"):
        UpdateUnit(**kwargs(horizon="2"))


def test_init_wrong_accumulator_width():
    with raises_in_init(ValueError, r"The weight accumulator needs \d+ bits, more than 62"):
        UpdateUnit(**kwargs(eta_a=1 << 60))


def test_init_keyword_only():
    args = kwargs()
    with raises_in_init(TypeError, r"positional argument"):
        UpdateUnit(*args.values())


@pytest.mark.parametrize("case", ["half_even_sc_velocity", "no_sc_weight_difference", "stochastic"])
def test_verilog(case):
    dut = make_unit(make_plan(**CASES[case]))
    assert "module" in verilog.convert(dut, name="update_unit")


@pytest.mark.parametrize(
    "code, terms",
    [
        (0, []),
        (8, [(1, 3)]),
        (-4, [(-1, 2)]),
        (0b111000, [(1, 6), (-1, 3)]),
        ((1 << 22) - (1 << 19), [(1, 22), (-1, 19)]),
        (5, None),
    ],
)
def test_shift_terms_split_codes_into_at_most_two_powers_of_two(code, terms):
    from rtl_gen.update import shift_terms

    assert shift_terms(code) == terms
    if terms is not None:
        assert sum(s << k for s, k in terms) == code


def test_the_shift_option_removes_every_constant_multiplier():
    plain = make_unit(make_plan())
    plain._MustUse__silence = True  # only its cost is asked for
    shifted_plan = make_plan(coefficient={**role(10, 8), "shift": True})
    shifted = make_unit(shifted_plan)
    assert plain.coefficient_multipliers > 0
    assert shifted.coefficient_multipliers == 0
    # Elaborated, it has no multiplication by a constant left.
    text = verilog.convert(shifted, name="shifted", emit_src=False)
    assert text.count(" * ") == 1  # the gradient product dz * x only


def test_the_shift_option_refuses_constants_that_are_not_shifts():
    plan = make_plan()
    stage = plan.stages[0]
    formats = dataclasses.replace(stage.formats, coefficient_shift=True)
    with raises_in_init(ValueError, "must be a power of two or a difference of two powers"):
        UpdateUnit(
            formats=formats,
            momentum=5,
            eta_a=4,
            eta_b=0,
            x_format=stage.formats.activation.format,
        )
