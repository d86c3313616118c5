"""``lanes = "auto"``: lanes per stage that balance the stages within a DSP budget.

A stage with ``P`` lanes takes ``ceil(weights / P)`` cycles per step; the slowest stage sets the
throughput. :func:`auto_lanes` finds the shortest step ``T`` for which the lanes
``P_l = ceil(weights_l / T)`` fit the device's hard multipliers, counting for every lane the
blocks its multipliers need (an ``a x b`` product takes ``ceil(a / A) * ceil(b / B)`` blocks of
an ``A x B`` multiplier; a product with a constant counts the constant's own bit length).
"""

from __future__ import annotations

import math

from pbhw.config import WeightPrediction
from pbhw.plan import Plan, StagePlan
from rtl_gen.update import shift_terms

__all__ = ["auto_lanes", "lane_dsp_cost", "multiplier_blocks"]


def multiplier_blocks(a_bits: int, b_bits: int, widths: tuple[int, int]) -> int:
    """Hard multiplier blocks for an ``a_bits x b_bits`` product (either orientation)."""
    wa, wb = widths
    return min(
        math.ceil(a_bits / wa) * math.ceil(b_bits / wb),
        math.ceil(a_bits / wb) * math.ceil(b_bits / wa),
    )


def lane_dsp_cost(plan: Plan, stage: StagePlan, widths: tuple[int, int]) -> int:
    """Multiplier blocks of one lane of ``stage``."""
    fm = stage.formats
    i = stage.index - 1
    x_bits = plan.stages[max(i - 1, 0)].formats.activation.format.width
    w_bits, e_bits = fm.weight.format.width, fm.error.format.width
    v_bits, g_bits = fm.velocity.format.width, fm.gradient.format.width
    cost = multiplier_blocks(w_bits, x_bits, widths)  # forward
    cost += multiplier_blocks(e_bits, x_bits, widths)  # gradient
    if stage.index > 1:
        cost += multiplier_blocks(w_bits, e_bits, widths)  # backward
    prediction = plan.config.optimizer.weight_prediction
    if prediction is WeightPrediction.WEIGHT_DIFFERENCE and stage.horizon > 1:
        cost += multiplier_blocks(stage.horizon.bit_length() + 1, w_bits + 1, widths)
    if fm.coefficient_shift:
        return cost
    codes = {name: c.code for name, c in stage.coefficients.items()}
    products = [("momentum", v_bits), ("eta_a", v_bits), ("eta_b", g_bits)]
    if prediction is WeightPrediction.VELOCITY and stage.horizon:
        products.append(("eta_T", v_bits))
    for name, bits in products:
        code = codes.get(name, 0)
        terms = shift_terms(code)
        if terms is not None and len(terms) <= 1:
            continue  # 0 or a power of two: a shift
        cost += multiplier_blocks(abs(code).bit_length() + 1, bits + 1, widths)
    return cost


def auto_lanes(plan: Plan, device=None) -> tuple[int, ...]:
    """Lanes per stage for the config's device (or ``device``, a :class:`pbhw.devices.Device`).

    Raises
    ------
    ConfigError
        If even one lane per stage needs more multiplier blocks than the device has.
    """
    from pbhw.config import ConfigError
    from pbhw.devices import load_device

    if device is None:
        device = load_device(plan.config.hardware.device)
    budget = device.resources["dsp"]
    bias = int(plan.config.network.bias)
    weights = [st.n_out * (st.n_in + bias) for st in plan.stages]
    costs = [lane_dsp_cost(plan, st, device.multiplier_widths) for st in plan.stages]

    def lanes_for(step: int) -> list[int]:
        return [math.ceil(w / step) for w in weights]

    def used(lanes: list[int]) -> int:
        return sum(n * c for n, c in zip(lanes, costs, strict=True))

    if used([1] * len(weights)) > budget:
        raise ConfigError(
            f"config key 'hardware.lanes' is 'auto', but one lane per stage already needs "
            f"{used([1] * len(weights))} multiplier blocks and {device.name} has {budget}; "
            "narrow the formats, use formats.coefficient.shift, or pick a larger device"
        )
    lo, hi = 1, max(weights)  # the step time: hi always fits (one lane per stage)
    while lo < hi:
        mid = (lo + hi) // 2
        if used(lanes_for(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return tuple(lanes_for(lo))
