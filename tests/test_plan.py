"""pbhw.core.plan: delays, Spike Compensation, batch scaling and quantized update constants."""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pbhw.core.config import ConfigError, RoleFormat, from_dict, load
from pbhw.core.fixed import FixedFormat, Overflow, Rounding
from pbhw.core.plan import (
    Plan,
    delay_of,
    derive_plan,
    quantize_coefficient,
    scaled_hyperparameters,
    spike_coefficients,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.toml"
LAYERS = [8, 6, 4, 2]  # three stages: delays 5, 3, 1 under PB


def plan_of(**sections: Any) -> Plan:
    """The plan of the three-stage network with ``sections`` replacing parts of the config."""
    return derive_plan(from_dict({"network": {"layers": LAYERS}, **sections}))


def sgd(batch: int = 32, **optimizer: Any) -> dict[str, Any]:
    return {"algorithm": "sgd", "batch_size": batch, **optimizer}


def role(width: int = 24, frac: int = 22, rounding: str = "half_even", overflow: str = "saturate"):
    return RoleFormat(FixedFormat(width, frac), Rounding(rounding), Overflow(overflow))


def exact_code(value: float, frac: int, rounding: Rounding = Rounding.HALF_EVEN) -> int:
    """The code of ``value`` computed with exact rationals."""
    scaled = Fraction(value) * 2**frac
    if rounding is Rounding.HALF_EVEN:
        return round(scaled)  # Fraction.__round__ rounds ties to even
    if rounding is Rounding.FLOOR:
        return math.floor(scaled)
    if rounding is Rounding.TOWARD_ZERO:
        return math.trunc(scaled)
    return math.floor(scaled + Fraction(1, 2))  # HALF_UP


# delay_of


def test_delays_of_three_stages_are_5_3_1():
    assert [delay_of(stage, 3) for stage in (1, 2, 3)] == [5, 3, 1]


@pytest.mark.parametrize("num_stages", range(1, 8))
def test_delay_is_twice_the_stages_after_plus_one(num_stages):
    for stage in range(1, num_stages + 1):
        assert delay_of(stage, num_stages) == 2 * (num_stages - stage) + 1
    assert delay_of(num_stages, num_stages) == 1


@pytest.mark.parametrize(("stage", "num_stages"), [(0, 3), (4, 3), (-1, 3), (1, 0)])
def test_delay_of_a_stage_out_of_range_is_an_error(stage, num_stages):
    with pytest.raises(ValueError, match=f"Stage must be in 1..{num_stages}, not {stage}"):
        delay_of(stage, num_stages)


# spike_coefficients


@settings(max_examples=200, deadline=None)
@given(
    momentum=st.floats(min_value=0.0, max_value=0.9999, exclude_max=True),
    delay=st.integers(min_value=0, max_value=60),
)
def test_spike_coefficients_match_the_closed_form(momentum, delay):
    a, b = spike_coefficients(momentum, delay)
    m = Fraction(momentum)
    exact_a = m**delay
    exact_b = (1 - m**delay) / (1 - m)  # the closed form, summed nowhere
    assert a == pytest.approx(float(exact_a), rel=1e-14, abs=0)
    assert b == pytest.approx(float(exact_b), rel=1e-13, abs=0)


def test_spike_coefficients_by_hand():
    assert spike_coefficients(0.5, 3) == (0.125, 1.75)  # 1 + 1/2 + 1/4
    assert spike_coefficients(0.9, 1) == (0.9, 1.0)


def test_spike_coefficients_with_zero_momentum():
    # a = 0^D, b = (1 - 0)/(1 - 0) = 1: the delayed gradient is applied once, in full
    assert spike_coefficients(0.0, 1) == (0.0, 1.0)
    assert spike_coefficients(0.0, 5) == (0.0, 1.0)
    assert spike_coefficients(0.0, 0) == (1.0, 0.0)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.999])
def test_spike_coefficients_at_delay_zero_are_plain_momentum(momentum):
    assert spike_coefficients(momentum, 0) == (1.0, 0.0)


def test_spike_of_design_example_is_about_six():
    # docs/design.md: m = 0.9 used directly at batch 1 gives b of about 6 at D = 9
    _, b = spike_coefficients(0.9, 9)
    assert b == pytest.approx((1 - 0.9**9) / 0.1, rel=1e-14)
    assert round(b) == 6


def test_spike_coefficients_of_a_negative_delay_is_an_error():
    with pytest.raises(ValueError, match="Delay must be a non-negative integer, not -1"):
        spike_coefficients(0.9, -1)


# scaled_hyperparameters


def test_batch_scaling_of_the_design_example():
    lr, m = scaled_hyperparameters(0.1, 0.9, 32, 1)
    assert round(m, 4) == 0.9967
    assert m == pytest.approx(math.exp(math.log(0.9) / 32), rel=1e-15)
    # eta_1 = (1/32) * 0.1 * (1 - m_1) / (1 - 0.9)
    assert lr == pytest.approx((1 - m) / 32, rel=1e-14)
    assert lr == pytest.approx(1.02722e-4, rel=1e-5)


def test_batch_scaling_to_a_larger_batch_by_hand():
    lr, m = scaled_hyperparameters(0.1, 0.9, 32, 64)
    assert m == pytest.approx(0.81, rel=1e-15)
    assert lr == pytest.approx(2 * 0.1 * 0.19 / 0.1, rel=1e-14)  # 0.38


@pytest.mark.parametrize(
    ("lr", "momentum", "batch"), [(0.1, 0.9, 32), (0.5, 0.0, 1), (3e-3, 0.99, 7)]
)
def test_batch_scaling_at_the_reference_batch_is_the_identity(lr, momentum, batch):
    assert scaled_hyperparameters(lr, momentum, batch, batch) == (lr, momentum)


@settings(max_examples=200, deadline=None)
@given(
    lr=st.floats(min_value=1e-6, max_value=10.0),
    momentum=st.floats(min_value=0.01, max_value=0.999),
    reference=st.integers(min_value=1, max_value=1024),
    batch=st.integers(min_value=1, max_value=1024),
)
def test_batch_scaling_keeps_half_life_and_total_step_per_sample(lr, momentum, reference, batch):
    lr_b, m_b = scaled_hyperparameters(lr, momentum, reference, batch)
    ratio = batch / reference
    assert 0.0 <= m_b < 1.0
    # m_ref^(B/B_ref) may underflow for large B/B_ref, or become subnormal (fewer bits: the
    # log below then loses the 1e-12 precision; hypothesis found 0.01^(473/3) ~ 1e-315)
    assume(m_b >= sys.float_info.min)
    # same momentum half-life in samples: m_B^(1/B) == m_ref^(1/B_ref)
    assert math.log(m_b) / batch == pytest.approx(math.log(momentum) / reference, rel=1e-12)
    # same total step per sample: eta_B / (1 - m_B) == (B / B_ref) eta_ref / (1 - m_ref)
    assert lr_b / (1 - m_b) == pytest.approx(ratio * lr / (1 - momentum), rel=1e-9)


def test_batch_scaling_with_zero_momentum_scales_lr_linearly():
    assert scaled_hyperparameters(0.1, 0.0, 32, 8) == (pytest.approx(0.025, rel=1e-15), 0.0)


# derive_plan: schedule values


def test_pb_plan_of_the_example():
    plan = derive_plan(load(EXAMPLE))
    assert plan.batch_size == 1
    assert (plan.lr, plan.momentum) == scaled_hyperparameters(0.1, 0.9, 32, 1)
    assert [stage.delay for stage in plan.stages] == [5, 3, 1]
    assert [stage.horizon for stage in plan.stages] == [5, 3, 1]
    assert [(stage.n_in, stage.n_out) for stage in plan.stages] == [(64, 32), (32, 32), (32, 10)]
    assert [stage.weights for stage in plan.stages] == [2048, 1024, 320]
    assert [stage.relu for stage in plan.stages] == [True, True, False]
    assert [stage.index for stage in plan.stages] == [1, 2, 3]
    assert plan.warnings == []


def test_pb_with_spike_compensation_uses_batch_one_momentum():
    plan = plan_of()
    for stage in plan.stages:
        assert (stage.a, stage.b) == spike_coefficients(plan.momentum, stage.delay)
    assert plan.stages[-1].b == 1.0  # D = 1: b = 1


def test_pb_without_spike_compensation_has_a_one_and_b_zero():
    plan = plan_of(optimizer={"spike_compensation": False})
    assert [stage.delay for stage in plan.stages] == [5, 3, 1]
    assert all((stage.a, stage.b) == (1.0, 0.0) for stage in plan.stages)
    assert all(stage.coefficients["eta_b"].code == 0 for stage in plan.stages)
    assert plan.warnings == []  # a constant that is exactly 0 is not a loss


def test_sgd_plan_has_no_delay_no_spike_and_no_prediction():
    plan = plan_of(optimizer=sgd(batch=32, spike_compensation=True, prediction_horizon=4))
    assert plan.batch_size == 32
    assert (plan.lr, plan.momentum) == (0.1, 0.9)  # B = B_ref: identity
    for stage in plan.stages:
        assert (stage.delay, stage.a, stage.b, stage.horizon) == (0, 1.0, 0.0, 0)
        assert set(stage.coefficients) == {"momentum", "eta_a", "eta_b"}


def test_sgd_plan_scales_to_its_own_batch_size():
    plan = plan_of(optimizer=sgd(batch=8))
    assert plan.batch_size == 8
    assert (plan.lr, plan.momentum) == scaled_hyperparameters(0.1, 0.9, 32, 8)


def test_lwp_horizon_auto_is_the_delay():
    plan = plan_of(optimizer={"prediction_horizon": "auto"})
    assert [stage.horizon for stage in plan.stages] == [5, 3, 1]


def test_lwp_explicit_horizon_applies_to_every_stage():
    plan = plan_of(optimizer={"prediction_horizon": 2})
    assert [stage.horizon for stage in plan.stages] == [2, 2, 2]


def test_no_weight_prediction_means_horizon_zero():
    plan = plan_of(optimizer={"weight_prediction": "none", "prediction_horizon": 4})
    assert [stage.horizon for stage in plan.stages] == [0, 0, 0]
    assert all("eta_T" not in stage.coefficients for stage in plan.stages)


def test_eta_t_only_for_the_velocity_form():
    velocity = plan_of(optimizer={"weight_prediction": "velocity"})
    for stage in velocity.stages:
        assert stage.coefficients["eta_T"].value == velocity.lr * stage.horizon
    difference = plan_of(optimizer={"weight_prediction": "weight_difference"})
    assert [stage.horizon for stage in difference.stages] == [5, 3, 1]
    assert all(
        set(stage.coefficients) == {"momentum", "eta_a", "eta_b"} for stage in difference.stages
    )


def test_velocity_form_with_horizon_zero_has_no_eta_t():
    plan = plan_of(optimizer={"prediction_horizon": 0})
    assert all("eta_T" not in stage.coefficients for stage in plan.stages)


def test_update_constants_are_the_products_of_the_plan():
    plan = plan_of()
    for stage in plan.stages:
        c = stage.coefficients
        assert list(c) == ["momentum", "eta_a", "eta_b", "eta_T"]
        assert c["momentum"].value == plan.momentum
        assert c["eta_a"].value == plan.lr * stage.a
        assert c["eta_b"].value == plan.lr * stage.b
        assert c["eta_T"].value == plan.lr * stage.horizon


def test_stage_lanes_and_formats_come_from_the_config():
    plan = plan_of(
        hardware={"lanes": [4, 2, 1]},
        overrides=[{"layer": 2, "formats": {"coefficient": {"frac": 20}}}],
    )
    assert [stage.lanes for stage in plan.stages] == [4, 2, 1]
    assert [stage.formats for stage in plan.stages] == list(plan.config.layer_formats)
    assert plan.stages[1].coefficients["eta_a"].format == FixedFormat(24, 20)
    assert plan.stages[0].coefficients["eta_a"].format == FixedFormat(24, 22)
    assert all(stage.lanes is None for stage in plan_of().stages)


# coefficient quantization


@pytest.mark.parametrize("rounding", ["half_even", "floor", "toward_zero", "half_up"])
def test_plan_codes_are_the_exactly_rounded_values(rounding):
    plan = plan_of(formats={"coefficient": {"rounding": rounding}})
    for stage in plan.stages:
        for c in stage.coefficients.values():
            assert c.code == exact_code(c.value, 22, Rounding(rounding)), c.name
            assert c.quantized == c.code * 2.0**-22
            assert c.format == FixedFormat(24, 22)


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(min_value=0.0, max_value=1.9),
    frac=st.integers(min_value=0, max_value=40),
)
def test_quantize_coefficient_rounds_half_even_exactly(value, frac):
    c = quantize_coefficient("x", value, role(width=48, frac=frac), shift=False)
    assert c.code == exact_code(value, frac)
    assert (c.name, c.value) == ("x", value)


def test_quantize_coefficient_breaks_ties_by_the_role_rounding():
    tie = 2.5 * 2.0**-22
    assert quantize_coefficient("x", tie, role(), shift=False).code == 2
    assert quantize_coefficient("x", tie, role(rounding="half_up"), shift=False).code == 3


def test_coefficient_error_is_relative_and_zero_for_zero():
    c = quantize_coefficient("x", 0.3, role(width=8, frac=4), shift=False)
    assert c.code == 5  # 0.3 * 16 = 4.8
    assert c.quantized == 0.3125
    assert c.error == pytest.approx(abs(0.3125 - 0.3) / 0.3, rel=1e-15)
    assert quantize_coefficient("x", 0.0, role(), shift=False).error == 0.0


def is_power_of_two(code: int) -> bool:
    return code > 0 and code & (code - 1) == 0


def test_shift_gives_powers_of_two_and_one_minus_a_power_of_two():
    plan = plan_of(formats={"coefficient": {"shift": True}})
    frac = 22
    k = round(-math.log2(1 - plan.momentum))  # 0.99671 -> 1 - 2^-8
    assert k == 8
    for stage in plan.stages:
        c = stage.coefficients
        assert c["momentum"].code == 2**frac - 2 ** (frac - k)
        assert c["momentum"].quantized == 1 - 2.0**-8
        for name in ("eta_a", "eta_b", "eta_T"):
            assert is_power_of_two(c[name].code), name
            # the nearest power of two in the log domain: within a factor sqrt(2)
            assert abs(math.log2(c[name].quantized / c[name].value)) <= 0.5


@pytest.mark.parametrize(
    ("value", "expected"), [(0.9, 1 - 2.0**-3), (0.5, 0.5), (0.7, 0.75), (0.99, 1 - 2.0**-7)]
)
def test_shift_momentum_by_hand(value, expected):
    c = quantize_coefficient("momentum", value, role(), shift=True, kind="momentum")
    assert c.quantized == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(0.3, 0.25), (0.4, 0.5), (1.0, 1.0), (1e-3, 2.0**-10)]
)
def test_shift_scale_by_hand(value, expected):
    assert quantize_coefficient("eta", value, role(), shift=True).quantized == expected


def test_shift_leaves_zero_at_zero():
    for kind in ("scale", "momentum"):
        assert quantize_coefficient("x", 0.0, role(), shift=True, kind=kind).code == 0


def test_shift_momentum_stays_below_one_when_k_exceeds_frac():
    # m = 0.99671 wants k = 8, but frac = 6 can only hold 1 - 2^-6
    c = quantize_coefficient("momentum", 0.9967, role(width=8, frac=6), shift=True, kind="momentum")
    assert c.quantized == 1 - 2.0**-6


def test_momentum_that_rounds_to_one_produces_a_plan_warning():
    plan = plan_of(formats={"coefficient": {"width": 8, "frac": 6}})
    assert plan.stages[0].coefficients["momentum"].quantized == 1.0  # 0.99671 in s8.6
    assert any("momentum" in warning for warning in plan.warnings)


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_constant_too_large_for_the_coefficient_format_is_flagged_saturated(overflow):
    c = quantize_coefficient("eta_a", 2.0, role(overflow=overflow), shift=False)
    assert c.saturated
    message = c.describe_saturation()
    assert "update constant eta_a = 2 does not fit the coefficient format s24.22" in message
    assert "formats.coefficient" in message
    assert not quantize_coefficient("eta_a", 1.5, role(overflow=overflow), shift=False).saturated


def test_too_large_constant_is_a_config_error_for_fixed_arithmetic():
    with pytest.raises(ConfigError, match="stage 1: update constant eta_a = 3 does not fit"):
        plan_of(optimizer=sgd(batch=1, reference_batch=1, lr=3.0), train={"arith": "fixed"})


def test_too_large_constant_is_a_warning_for_float_arithmetic():
    plan = plan_of(optimizer=sgd(batch=32, lr=3.0), train={"arith": "float"})
    assert [w.split(":")[0] for w in plan.warnings] == ["stage 1", "stage 2", "stage 3"]
    assert all("update constant eta_a = 3 does not fit" in w for w in plan.warnings)
    with pytest.raises(ConfigError, match="stage 1: update constant eta_a = 3 does not fit"):
        plan.require_representable()


def test_largest_representable_constant_fits():
    c = quantize_coefficient("eta_a", 2 - 2.0**-22, role(), shift=False)
    assert c.code == 2**23 - 1


def test_tiny_constant_produces_a_plan_warning():
    plan = plan_of(optimizer=sgd(batch=32, lr=1e-9))
    assert plan.warnings == [
        f"stage {i}: eta_a = 1e-09 quantizes to 0 in s24.22; the update loses that term "
        "(raise its frac)"
        for i in (1, 2, 3)
    ]


def test_tiny_shift_constant_is_zero_with_a_warning():
    c = quantize_coefficient("eta_a", 0.3 * 2.0**-22, role(), shift=True)
    assert c.code == 0
    plan = plan_of(optimizer=sgd(batch=32, lr=1e-8), formats={"coefficient": {"shift": True}})
    assert len(plan.warnings) == 3
    assert all("eta_a" in w and "quantizes to 0" in w for w in plan.warnings)


def test_plan_is_frozen():
    plan = plan_of()
    with pytest.raises(AttributeError):
        plan.lr = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        plan.stages[0].delay = 0  # type: ignore[misc]
