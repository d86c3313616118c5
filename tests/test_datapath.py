"""pbhw.core.datapath: accumulators exact and tight, products cut to the multiplier, one plan
read by the golden model, the hardware, lane allocation and the manifest."""

import functools
import itertools
from pathlib import Path

import pytest
from pbhw_testing import make_config

from golden.fixed_arith import FixedArithmetic
from pbhw.core.config import (
    ConfigError,
    ConstantProducts,
    Formats,
    RoleFormat,
    WeightPrediction,
    load,
)
from pbhw.core.datapath import (
    ACC_LIMIT,
    StageDatapath,
    csd_digits,
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
from rtl_gen.lanes import (
    auto_bram_budget,
    auto_budget,
    auto_ff_budget,
    auto_lanes,
    auto_lut_budget,
    lane_dsp_cost,
    predicted_blocks,
    predicted_logic,
)

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


@functools.cache
def _min_weight(code: int) -> int:
    """Fewest non-zero digits of any signed binary form of ``code`` (digits -1, 0, 1): an even
    code ends in a 0 digit, an odd one in +1 or -1."""
    if code in (-1, 0, 1):
        return abs(code)
    if code % 2 == 0:
        return _min_weight(code // 2)
    return 1 + min(_min_weight((code - 1) // 2), _min_weight((code + 1) // 2))


def test_csd_digits_are_the_non_adjacent_form_of_least_weight():
    for code in range(-(1 << 12), 1 << 12):
        digits = csd_digits(code)
        assert sum(d << k for k, d in digits) == code
        assert all(d in (1, -1) for _, d in digits)
        shifts = [k for k, _ in digits]
        assert all(b - a >= 2 for a, b in itertools.pairwise(shifts))  # no adjacent digits
        assert len(digits) == _min_weight(code)
    assert csd_digits(0) == []
    assert csd_digits(7) == [(0, -1), (3, 1)]
    assert len(csd_digits(0x555555)) == 12


def test_csd_digits_need_no_complement_form():
    """``m * v`` as ``v - (1 - m) * v`` never has fewer digits: the form is minimal."""
    frac = 22
    for code in [4180517, 3774874, 1 << 21, (1 << 22) - 1, 0x2AAAAA, *range(1, 1 << 10)]:
        assert len(csd_digits(code)) <= 1 + len(csd_digits((1 << frac) - code))
    assert len(csd_digits((1 << 22) - 1)) == 2  # 2**22 - 1: one adder


def test_fabric_constants_take_no_hard_multiplier():
    """With hardware.constants = "fabric", a product by a constant has no pieces but its
    digits; the data products are cut as with "dsp"; the DSP count is the data products'."""
    config = make_config(optimizer={"weight_prediction": "weight_difference"})
    device = load_device(config.hardware.device)
    plans = {
        mode: plan_datapaths(derive_plan(config.replace({"hardware.constants": mode.value})))
        for mode in ConstantProducts
    }
    for fabric, dsp in zip(
        plans[ConstantProducts.FABRIC], plans[ConstantProducts.DSP], strict=True
    ):
        assert fabric.constants is ConstantProducts.FABRIC and dsp.constants is ConstantProducts.DSP
        assert [p.name for p in fabric.products] == [p.name for p in dsp.products]
        for f, d in zip(fabric.products, dsp.products, strict=True):
            if f.data:
                assert f == d and not f.fabric
            else:
                assert f.pieces == () and f.dsp(device) == 0
                assert f.digits == tuple(csd_digits(f.operand[1]))
                assert f.adders == len(f.digits) - 1
        assert fabric.lane_dsp(device) == sum(p.dsp(device) for p in dsp.products if p.data)
        assert fabric.lane_dsp(device) < dsp.lane_dsp(device)
        assert any(p.name == "horizon" and p.fabric for p in fabric.products)


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


def test_auto_lanes_with_fabric_constants_fill_the_dsp_blocks_within_the_logic_budgets():
    """On the default example, "dsp" keeps the 10 lanes the update constants' blocks allowed;
    "fabric" counts only the data products' blocks and gets more lanes, as many as the DSP, LUT
    and FF budgets allow: one step shorter breaks one of them."""
    base = ROOT / "examples" / "mlp_digits.toml"
    device = load_device("ecp5-85k")
    got = {}
    for mode in ConstantProducts:
        plan = fixed_plan(load(base, (f"hardware.constants='{mode.value}'",)))
        lanes = auto_lanes(plan, device)
        costs = [lane_dsp_cost(plan, st, device) for st in plan.stages]
        weights = [st.n_out * (st.n_in + 1) for st in plan.stages]
        step = max(-(-w // n) for w, n in zip(weights, lanes, strict=True))
        shorter = tuple(-(-w // (step - 1)) for w in weights)
        dsp = sum(n * c for n, c in zip(lanes, costs, strict=True))
        assert dsp <= auto_budget(device)
        budgets = {"lut": auto_lut_budget(device), "ff": auto_ff_budget(device)}
        logic = predicted_logic(plan, lanes, device)
        assert all(logic[key] <= cap for key, cap in budgets.items())
        logic = predicted_logic(plan, shorter, device)
        assert sum(n * c for n, c in zip(shorter, costs, strict=True)) > auto_budget(device) or any(
            logic[key] > cap for key, cap in budgets.items()
        )
        got[mode] = lanes
    assert got[ConstantProducts.DSP] == (6, 3, 1)
    assert sum(got[ConstantProducts.FABRIC]) > sum(got[ConstantProducts.DSP])


def test_auto_lanes_keep_the_delay_lines_block_rams_within_the_budget():
    """With ``hardware.delay_lines = "block_ram"`` every lane takes block RAMs: auto stays
    within 90 % of them (fewer lanes on a device with fewer blocks), and a device that cannot
    hold one lane per stage is refused naming the block RAMs."""
    import dataclasses

    base = ROOT / "examples" / "mlp_digits.toml"
    plan = fixed_plan(load(base, ("hardware.delay_lines='block_ram'",)))
    device = load_device("ecp5-85k")
    full = auto_lanes(plan, device)
    assert predicted_blocks(plan, full, device) <= auto_bram_budget(device)
    blocks = device.block_bits
    small = dataclasses.replace(device, resources={**device.resources, "bram_bits": 60 * blocks})
    fewer = auto_lanes(plan, small)
    assert sum(fewer) < sum(full)
    assert predicted_blocks(plan, fewer, small) <= auto_bram_budget(small) == 54
    tiny = dataclasses.replace(device, resources={**device.resources, "bram_bits": 20 * blocks})
    with pytest.raises(ConfigError, match="block RAMs and auto may use 18 of ecp5-85k's 20"):
        auto_lanes(plan, tiny)


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("hardware.delay_lines='block_ram'",),
        ("network.layers=[9, 5, 3]", "hardware.lanes=[4, 3]"),
        (
            "network.layers=[16, 8, 4]",
            "hardware.lanes=[19, 3]",
            "formats.weight.rounding='stochastic'",
        ),
    ],
)
def test_auto_predicts_the_logic_the_fast_estimate_gives_the_design(sets):
    """``lanes = "auto"`` and ``pbhw estimate --fast`` read one model from the same features
    (the lane pipeline's depth included): for the lanes a design has, auto's prediction is the
    fast estimate of that design, to the rounding of the estimate."""
    from pbhw.tools.estimate import fast_estimate
    from rtl_gen.generate import manifest_of, top_name

    config = load(ROOT / "examples" / "mlp_digits.toml", sets)
    device = load_device("ecp5-85k")
    design = build_design(config)
    used = fast_estimate(manifest_of(design, top=top_name(config)), device).used
    design.discard()
    logic = predicted_logic(fixed_plan(config), tuple(design.lanes), device)
    assert {key: round(value) for key, value in logic.items()} == {
        key: used[key] for key in ("lut", "ff")
    }
