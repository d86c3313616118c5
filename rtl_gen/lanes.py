"""``lanes = "auto"``: lanes per stage that balance the stages within a DSP budget.

A stage with ``P`` lanes takes ``ceil(weights / P)`` cycles per step; the slowest stage sets the
throughput. :func:`auto_lanes` finds the shortest step ``T`` for which the lanes
``P_l = ceil(weights_l / T)`` fit :data:`AUTO_DSP_SHARE` of the device's hard multipliers,
counting for every lane the blocks its multipliers need (:func:`lane_products`: the pieces
:mod:`rtl_gen.multiply` cuts the products into, each counted by
:func:`pbhw.core.devices.dsp_count`).
"""

from __future__ import annotations

import math

from pbhw.core.config import WeightPrediction
from pbhw.core.plan import Plan, StagePlan
from rtl_gen.multiply import product_shapes

__all__ = ["AUTO_DSP_SHARE", "auto_budget", "auto_lanes", "lane_dsp_cost", "lane_products"]

#: Share of the device's hard multipliers ``lanes = "auto"`` may fill. The rest is routing
#: headroom: with the default example at 149 of the ECP5-85k's 156 blocks (95 %), nextpnr's
#: router2 did not converge (overuse down to 836 wires, then back up to 1,400 by iteration 44);
#: at 114 blocks (73 %) it routes.
AUTO_DSP_SHARE = 0.8


def auto_budget(device) -> int:
    """Hard multiplier blocks ``lanes = "auto"`` may use on ``device``."""
    return int(device.resources["dsp"] * AUTO_DSP_SHARE)


def lane_products(plan: Plan, stage: StagePlan, device=None) -> list[tuple[str, int, int]]:
    """Every hard-multiplier piece one lane of ``stage`` multiplies, as ``(name, a, b)``.

    The products are forward ``W x A``, gradient ``E x A``, backward ``W x E`` (not in stage 1,
    which sends no error), ``T * (w - w_prev)`` for the weight-difference prediction, and,
    unless the ``shift`` option makes them shifts, one product per update constant. Each is cut
    as :func:`rtl_gen.multiply.pipelined_product` cuts it for the device's multiplier
    (``device``, by default the config's): operand widths are those of the signed operands the
    hardware multiplies, and a constant's power-of-two and zero slices need no piece."""
    from pbhw.core.devices import load_device

    if device is None:
        device = load_device(plan.config.hardware.device)
    ports = device.multiplier_widths
    fm = stage.formats

    def signed_bits(role_format) -> int:
        return role_format.width + (0 if role_format.signed else 1)

    x_bits = signed_bits(plan.stages[max(stage.index - 2, 0)].formats.activation.format)
    w_bits, e_bits = signed_bits(fm.weight.format), signed_bits(fm.error.format)
    v_bits = signed_bits(fm.velocity.format)
    products = [("forward", w_bits, ("width", x_bits)), ("gradient", e_bits, ("width", x_bits))]
    if stage.index > 1:
        products.append(("backward", w_bits, ("width", e_bits)))
    prediction = plan.config.optimizer.weight_prediction
    if prediction is WeightPrediction.WEIGHT_DIFFERENCE and stage.horizon:
        products.append(("horizon", w_bits + 1, ("constant", stage.horizon)))
    if not fm.coefficient_shift:
        codes = {name: c.code for name, c in stage.coefficients.items()}
        # The unit's rounded velocity and gradient carry one extra bit.
        constants = [
            ("momentum", v_bits),
            ("eta_a", fm.velocity.format.width + 1),
            ("eta_b", fm.gradient.format.width + 1),
        ]
        if prediction is WeightPrediction.VELOCITY and stage.horizon:
            constants.append(("eta_T", v_bits))
        for name, bits in constants:
            code = codes.get(name, 0)
            if code:  # eta_b is 0 without Spike Compensation: no term
                products.append((name, bits, ("constant", code)))
    return [
        (name, a, b)
        for name, bits, other in products
        for a, b in product_shapes(bits, other, ports)
    ]


def lane_dsp_cost(plan: Plan, stage: StagePlan, device) -> int:
    """Hard multiplier blocks of one lane of ``stage`` on ``device``."""
    from pbhw.core.devices import dsp_count

    return sum(dsp_count(a, b, device) for _, a, b in lane_products(plan, stage, device))


def auto_lanes(plan: Plan, device=None) -> tuple[int, ...]:
    """Lanes per stage for the config's device (or ``device``, a :class:`pbhw.core.devices.Device`).

    Raises
    ------
    ConfigError
        If even one lane per stage needs more multiplier blocks than the device has.
    """
    from pbhw.core.config import ConfigError
    from pbhw.core.devices import load_device

    if device is None:
        device = load_device(plan.config.hardware.device)
    budget = auto_budget(device)
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
            f"{used([1] * len(weights))} multiplier blocks and auto may use {budget} of "
            f"{device.name}'s {device.resources['dsp']} ({AUTO_DSP_SHARE:.0%}); narrow the "
            "formats, use formats.coefficient.shift, give the lanes explicitly, or pick a larger "
            "device"
        )
    lo, hi = 1, max(weights)  # the step time: hi always fits (one lane per stage)
    while lo < hi:
        mid = (lo + hi) // 2
        if used(lanes_for(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return tuple(lanes_for(lo))
