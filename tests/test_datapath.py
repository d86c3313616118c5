"""pbhw.core.datapath: accumulators exact and tight, products cut to the multiplier, one plan
read by the golden model, the hardware, lane allocation and the manifest."""

import itertools
from pathlib import Path

import pytest
from pbhw_testing import make_config

from golden.fixed_arith import FixedArithmetic
from pbhw.core.config import ConfigError, Formats, RoleFormat, WeightPrediction
from pbhw.core.datapath import (
    ACC_LIMIT,
    StageDatapath,
    plan_datapaths,
    product_pieces,
    span_width,
    stage_datapath,
    update_datapath,
    x_format_of,
)
from pbhw.core.devices import load_device
from pbhw.core.fixed import FixedFormat, Overflow, Rounding
from pbhw.core.plan import derive_plan
from rtl_gen.design import build_design, fixed_plan
from rtl_gen.lanes import lane_dsp_cost

ROOT = Path(__file__).resolve().parents[1]


def test_pieces_fit_the_ports():
    assert product_pieces(16, ("width", 16), (18, 18)) == [(16, 16)]
    assert product_pieces(21, ("width", 16), (18, 18)) == [(18, 16), (4, 16)]
    assert product_pieces(21, ("width", 16), (25, 18)) == [(21, 16)]
    # 0.9 in s24.22 times a 21-bit velocity: 2 x 2 pieces, a power-of-two slice would be a shift
    assert product_pieces(21, ("constant", 3774874), (18, 18)) == [
        (18, 18),
        (4, 18),
        (18, 6),
        (4, 6),
    ]
    assert product_pieces(21, ("constant", 1 << 20), (18, 18)) == []
    for a in (16, 21, 35):
        for b in (("width", 16), ("width", 40), ("constant", 123456789)):
            assert all(x <= 18 and y <= 18 for x, y in product_pieces(a, b, (18, 18)))


def test_bad_operand_kind():
    with pytest.raises(ValueError, match=r"Operand must be \('width', n\) or \('constant', code\)"):
        product_pieces(16, ("value", 3), (18, 18))


def _formats(**widths: tuple[int, int]) -> Formats:
    defaults = {
        "activation": (5, 2),
        "weight": (5, 3),
        "error": (4, 2),
        "gradient": (4, 3),
        "velocity": (6, 3),
        "coefficient": (6, 4),
    }
    defaults.update(widths)
    roles = {
        role: RoleFormat(FixedFormat(w, f), Rounding.HALF_EVEN, Overflow.SATURATE)
        for role, (w, f) in defaults.items()
    }
    return Formats(**roles)


def _codes(fmt: FixedFormat) -> range:
    return range(fmt.min_code, fmt.max_code + 1)


def test_update_accumulators_hold_exactly_every_reachable_sum():
    """Brute force over every code of small formats: each accumulator's width is the narrowest
    that holds every sum its terms can make, and its shifts align the terms to its frac."""
    fm = _formats()
    x = FixedFormat(5, 2)
    m, ea, eb, et = 13, -7, 5, 9
    dp = update_datapath(
        fm, x, momentum=m, eta_a=ea, eta_b=eb, prediction=WeightPrediction.VELOCITY, eta_t=et
    )
    w, v, g = (_codes(fm.role(r).format) for r in ("weight", "velocity", "gradient"))
    e, xs = _codes(fm.error.format), _codes(x)

    def tight(acc, values):
        values = list(values)
        assert acc.width == span_width(min(values), max(values))

    tight(dp.gradient, (a * b for a, b in itertools.product(e, xs)))
    sv = dp.velocity.shifts
    tight(
        dp.velocity, ((m * vi << sv["mv"]) + (gi << sv["g"]) for vi, gi in itertools.product(v, g))
    )
    su = dp.weight.shifts
    tight(
        dp.weight,
        (
            (wi << su["w"]) - (ea * vi << su["v"]) - (eb * gi << su["g"])
            for wi, vi, gi in itertools.product(w, v, g)
        ),
    )
    sp = dp.prediction.shifts
    tight(
        dp.prediction,
        ((wi << sp["w"]) - (et * vi << sp["v"]) for wi, vi in itertools.product(w, v)),
    )
    c, fv, fg, fw = 4, 3, 3, 3
    assert dp.velocity.frac == max(c + fv, fg) and dp.weight.frac == max(fw, c + fv, c + fg)
    assert all(
        acc.frac - shift == term_frac
        for acc, terms in (
            (dp.velocity, {"mv": c + fv, "g": fg}),
            (dp.weight, {"w": fw, "v": c + fv, "g": c + fg}),
            (dp.prediction, {"w": fw, "v": c + fv}),
        )
        for name, term_frac in terms.items()
        for shift in [acc.shifts[name]]
    )
    assert dp.constants == {"momentum": m, "eta_a": ea, "eta_b": eb, "eta_t": et}
    assert dp.coefficient_multipliers == 4


def test_an_accumulator_wider_than_the_limit_names_the_stage():
    config = make_config(formats={"weight": {"width": 40, "frac": 30}, "activation": {"width": 30}})
    plan = derive_plan(config)
    with pytest.raises(
        ConfigError,
        match=rf"stage 1: the forward accumulator needs \d+ bits, more than {ACC_LIMIT}",
    ):
        plan_datapaths(plan, (18, 18))


def test_without_spike_compensation_eta_b_has_no_term_and_no_product():
    plan = derive_plan(make_config(optimizer={"spike_compensation": False}))
    for dp in plan_datapaths(plan, (18, 18)):
        assert "eta_b" not in dp.update.constants
        assert "eta_b" not in [p.name for p in dp.products]


def test_the_golden_model_and_the_hardware_read_one_plan():
    """The network's stages carry exactly the plan's datapaths; the golden model's rounding
    points start from the plan's accumulator fracs; the manifest's multiplier shapes and the
    lane allocation's DSP cost are the plan's products."""
    config = make_config(
        train={"arith": "fixed"},
        optimizer={"weight_prediction": "weight_difference"},
    )
    design = build_design(config, (3, 2, 5), primitives=False)
    plan = design.plan
    device = load_device(config.hardware.device)
    expected = plan_datapaths(plan, device.multiplier_widths)
    assert tuple(stage.datapath for stage in design.network.stages) == expected
    arith = FixedArithmetic(plan)
    for i, dp in enumerate(expected):
        ctx = arith._stage[i]
        assert ctx["fwd"].shift == dp.forward.frac - plan.stages[i].formats.activation.format.frac
        assert ctx["upd"].shift == dp.update.weight.frac - plan.stages[i].formats.weight.format.frac
        assert lane_dsp_cost(plan, plan.stages[i], device) == dp.lane_dsp(device)
        assert dp.x_format == x_format_of(plan, plan.stages[i])
    design.discard()


def test_the_golden_model_needs_no_device():
    plan = fixed_plan(make_config(train={"arith": "fixed"}, hardware={"device": "no-such-part"}))
    dp = stage_datapath(
        plan.stages[1],
        x_format=x_format_of(plan, plan.stages[1]),
        bias=True,
        prediction=WeightPrediction.VELOCITY,
        multiplier_ports=None,
    )
    assert isinstance(dp, StageDatapath) and dp.products == () and dp.backward is not None
    FixedArithmetic(plan)  # builds every stage's rounding points from the plan
