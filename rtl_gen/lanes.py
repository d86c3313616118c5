"""``lanes = "auto"``: lanes per stage that balance the stages within a DSP budget.

A stage with ``P`` lanes takes ``ceil(weights / P)`` cycles per step; the slowest stage sets the
throughput. :func:`auto_lanes` finds the shortest step ``T`` for which the lanes
``P_l = ceil(weights_l / T)`` fit the device's hard multipliers, counting for every lane the
blocks its multipliers need (:func:`lane_products`, counted as Yosys splits them,
:func:`pbhw.estimate.dsp_count`).
"""

from __future__ import annotations

import math

from pbhw.config import WeightPrediction
from pbhw.plan import Plan, StagePlan
from rtl_gen.update import shift_terms

__all__ = ["auto_lanes", "lane_dsp_cost", "lane_products"]


def lane_products(plan: Plan, stage: StagePlan) -> list[tuple[str, int, int]]:
    """Every product one lane of ``stage`` computes, as ``(name, a_bits, b_bits)``.

    Forward ``W x A``, gradient ``E x A``, backward ``W x E`` (not in stage 1, which sends no
    error), ``T * (w - w_prev)`` for the weight-difference prediction with ``T > 1``, and, unless
    the ``shift`` option makes them shifts, one product per update constant that is neither 0
    nor a power of two, sized by the constant's own bit length."""
    fm = stage.formats
    x_bits = plan.stages[max(stage.index - 2, 0)].formats.activation.format.width
    w_bits, e_bits = fm.weight.format.width, fm.error.format.width
    v_bits, g_bits = fm.velocity.format.width, fm.gradient.format.width
    products = [("forward", w_bits, x_bits), ("gradient", e_bits, x_bits)]
    if stage.index > 1:
        products.append(("backward", w_bits, e_bits))
    prediction = plan.config.optimizer.weight_prediction
    if prediction is WeightPrediction.WEIGHT_DIFFERENCE and stage.horizon > 1:
        products.append(("horizon", stage.horizon.bit_length() + 1, w_bits + 1))
    if fm.coefficient_shift:
        return products
    codes = {name: c.code for name, c in stage.coefficients.items()}
    constants = [("momentum", v_bits), ("eta_a", v_bits), ("eta_b", g_bits)]
    if prediction is WeightPrediction.VELOCITY and stage.horizon:
        constants.append(("eta_T", v_bits))
    for name, bits in constants:
        code = codes.get(name, 0)
        terms = shift_terms(code)
        if terms is not None and len(terms) <= 1:
            continue  # 0 or a power of two: a shift
        products.append((name, abs(code).bit_length() + 1, bits + 1))
    return products


def lane_dsp_cost(plan: Plan, stage: StagePlan, device) -> int:
    """Hard multiplier blocks of one lane of ``stage`` on ``device``."""
    from pbhw.estimate import dsp_count

    return sum(dsp_count(a, b, device) for _, a, b in lane_products(plan, stage))


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
    costs = [lane_dsp_cost(plan, st, device) for st in plan.stages]

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
