"""``lanes = "auto"``: lanes per stage that balance the stages within a DSP budget.

A stage with ``P`` lanes takes ``ceil(weights / P)`` cycles per step; the slowest stage sets the
throughput. :func:`auto_lanes` finds the shortest step ``T`` for which the lanes
``P_l = ceil(weights_l / T)`` fit :data:`AUTO_DSP_SHARE` of the device's hard multipliers,
counting for every lane the blocks its multipliers need (the pieces of the products of the
stage's datapath, :mod:`pbhw.core.datapath`, each counted by
:func:`pbhw.core.devices.dsp_count`).
"""

from __future__ import annotations

import math

from pbhw.core.config import ConfigError
from pbhw.core.datapath import stage_datapath, x_format_of
from pbhw.core.devices import Device, load_device
from pbhw.core.plan import Plan, StagePlan

__all__ = ["AUTO_DSP_SHARE", "auto_budget", "auto_lanes", "lane_dsp_cost"]

#: Share of the device's hard multipliers ``lanes = "auto"`` may fill; the rest is routing
#: headroom (``docs/hardware.md``, "Timing history").
AUTO_DSP_SHARE = 0.8


def auto_budget(device: Device) -> int:
    """Hard multiplier blocks ``lanes = "auto"`` may use on ``device``."""
    return int(device.resources["dsp"] * AUTO_DSP_SHARE)


def lane_dsp_cost(plan: Plan, stage: StagePlan, device: Device) -> int:
    """Hard multiplier blocks of one lane of ``stage`` on ``device``: the pieces of every
    product of the stage's datapath (:func:`pbhw.core.datapath.stage_datapath`)."""
    datapath = stage_datapath(
        stage,
        x_format=x_format_of(plan, stage),
        bias=plan.config.network.bias,
        prediction=plan.config.optimizer.weight_prediction,
        multiplier_ports=device.multiplier_widths,
    )
    return datapath.lane_dsp(device)


def auto_lanes(plan: Plan, device: Device | None = None) -> tuple[int, ...]:
    """Lanes per stage for the config's device (or ``device``, a :class:`pbhw.core.devices.Device`).

    Raises
    ------
    ConfigError
        If even one lane per stage needs more multiplier blocks than the device has.
    """
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
