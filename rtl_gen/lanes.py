"""``lanes = "auto"``: lanes per stage that balance the stages within DSP, LUT and FF budgets.

A stage with ``P`` lanes takes ``ceil(weights / P)`` cycles per step; the slowest stage sets the
throughput. :func:`auto_lanes` finds the shortest step ``T`` for which the lanes
``P_l = ceil(weights_l / T)`` fit :data:`AUTO_DSP_SHARE` of the device's hard multipliers,
counting for every lane the blocks its multipliers need (the pieces of the products of the
stage's datapath, :mod:`pbhw.core.datapath`, each counted by
:func:`pbhw.core.devices.dsp_count`: with ``hardware.constants = "fabric"`` only the data
products), and :data:`AUTO_LUT_SHARE` of its LUTs and :data:`AUTO_FF_SHARE` of its flip-flops
as the analytic model predicts them (:mod:`pbhw.core.resource_model`, the model of ``pbhw
estimate --fast``, with the delay lines' block RAMs of the stages built with those lanes), and
:data:`AUTO_BRAM_SHARE` of its block RAMs.
"""

from __future__ import annotations

import math

import numpy as np

from pbhw.core import resource_model
from pbhw.core.config import ROLES, ConfigError, WeightPrediction
from pbhw.core.datapath import StageDatapath, stage_datapath, x_format_of
from pbhw.core.devices import Device, load_device, stage_blocks
from pbhw.core.plan import Plan, StagePlan
from rtl_gen.stage import Stage
from rtl_gen.target import Multiplier
from rtl_gen.top import Network

__all__ = [
    "AUTO_BRAM_SHARE",
    "AUTO_DSP_SHARE",
    "AUTO_FF_SHARE",
    "AUTO_LUT_SHARE",
    "auto_bram_budget",
    "auto_budget",
    "auto_lanes",
    "auto_ff_budget",
    "auto_lut_budget",
    "lane_dsp_cost",
    "predicted_blocks",
    "predicted_logic",
    "predicted_luts",
]

#: Share of the device's hard multipliers ``lanes = "auto"`` may fill; the rest is routing
#: headroom (``docs/hardware.md``, "Timing history").
AUTO_DSP_SHARE = 0.8
#: Share of the device's LUTs ``lanes = "auto"`` may fill (as the analytic model predicts them):
#: nextpnr packs about twice Yosys's LUT4 count into slices (``docs/hardware.md``), and the
#: placer needs free slices to route.
AUTO_LUT_SHARE = 0.7
#: Share of the device's flip-flops ``lanes = "auto"`` may fill (as the analytic model predicts
#: them): a lane holds about 1,380 FF and 1,110 LUT (``docs/hardware.md``), so on the default
#: example the FFs bind before the LUTs. 17, 9, 3 lanes (70.5 % of them in Yosys) did not route
#: at two seeds; 16, 8, 3 (64 %) did not route at two of five ("Timing history").
AUTO_FF_SHARE = 0.61
#: Share of the device's block RAMs ``lanes = "auto"`` may fill (weights, velocities, stash and
#: the lanes' delay lines).
AUTO_BRAM_SHARE = 0.9


def auto_budget(device: Device) -> int:
    """Hard multiplier blocks ``lanes = "auto"`` may use on ``device``."""
    return int(device.resources["dsp"] * AUTO_DSP_SHARE)


def auto_lut_budget(device: Device) -> int:
    """LUTs ``lanes = "auto"`` may use on ``device``."""
    return int(device.resources["lut"] * AUTO_LUT_SHARE)


def auto_ff_budget(device: Device) -> int:
    """Flip-flops ``lanes = "auto"`` may use on ``device``."""
    return int(device.resources["ff"] * AUTO_FF_SHARE)


def auto_bram_budget(device: Device) -> int:
    """Block RAMs ``lanes = "auto"`` may use on ``device``."""
    return int(device.resources["bram_bits"] // device.block_bits * AUTO_BRAM_SHARE)


def _stages(plan: Plan, lanes: tuple[int, ...], device: Device) -> list[Stage]:
    """The stages of ``plan`` with ``lanes``, built (not elaborated) to read their memories."""
    bias = int(plan.config.network.bias)
    multiplier = Multiplier.from_device(
        device, primitives=False, constants=plan.config.hardware.constants
    )
    init = [np.zeros((st.n_out, st.n_in + bias), dtype=np.int64) for st in plan.stages]
    net = Network(plan=plan, lanes=lanes, init=init, multiplier=multiplier)
    net.discard()
    return net.stages


def predicted_blocks(
    plan: Plan, lanes: tuple[int, ...], device: Device, stages: list[Stage] | None = None
) -> int:
    """Block RAMs of the design with ``lanes`` on ``device``
    (:func:`pbhw.core.devices.stage_blocks` of every stage; ``stages``: those of
    :func:`_stages`, if already built)."""
    return sum(
        stage_blocks(
            st.memory_bits,
            lanes=st.lanes,
            weight_bits=st.weight_bits,
            velocity_bits=st.velocity_bits,
            delay_memories=st.delay_memories,
            device=device,
        )
        for st in stages or _stages(plan, lanes, device)
    )


def _datapath(plan: Plan, stage: StagePlan, device: Device) -> StageDatapath:
    return stage_datapath(
        stage,
        x_format=x_format_of(plan, stage),
        bias=plan.config.network.bias,
        prediction=plan.config.optimizer.weight_prediction,
        multiplier_ports=device.multiplier_widths,
        constants=plan.config.hardware.constants,
    )


def lane_dsp_cost(plan: Plan, stage: StagePlan, device: Device) -> int:
    """Hard multiplier blocks of one lane of ``stage`` on ``device``: the pieces of every
    product of the stage's datapath (:func:`pbhw.core.datapath.stage_datapath`)."""
    return _datapath(plan, stage, device).lane_dsp(device)


def predicted_luts(plan: Plan, lanes: tuple[int, ...], device: Device) -> float:
    """LUTs of the design with ``lanes`` on ``device`` as the analytic model predicts them
    (:func:`pbhw.core.resource_model.predict`), fabric adders included."""
    return predicted_logic(plan, lanes, device)["lut"]


def predicted_logic(
    plan: Plan, lanes: tuple[int, ...], device: Device, stages: list[Stage] | None = None
) -> dict[str, float]:
    """``{"lut": ..., "ff": ...}`` of the design with ``lanes`` on ``device`` as the analytic
    model predicts them (:func:`pbhw.core.resource_model.predict`), fabric adders and the
    delay lines' block RAMs included (``stages``: those of :func:`_stages`, if already
    built)."""
    feats = dict.fromkeys(resource_model.FEATURES, 0.0)
    feats["constant"] = 1.0
    built = stages or _stages(plan, tuple(lanes), device)
    for st, n, stage_hw in zip(plan.stages, lanes, built, strict=True):
        datapath = _datapath(plan, st, device)
        prediction = plan.config.optimizer.weight_prediction
        stage = resource_model.stage_features(
            stage=st.index,
            n_in=st.n_in,
            n_out=st.n_out,
            bias=plan.config.network.bias,
            lanes=n,
            roles={role: st.formats.role(role) for role in ROLES},
            x_format=datapath.x_format if st.index > 1 else None,
            prediction=prediction if st.horizon else WeightPrediction.NONE,
            shapes=[(a, b, n) for _, a, b in datapath.pieces()],
            fabric_constants=[(p.a_bits, p.operand[1]) for p in datapath.products if p.fabric],
            drain=stage_hw.drain,  # as the fast estimate reads it from the manifest
            device=device,
            delay_memory_bits=sum(d.register_bits for d in stage_hw.delay_memories),
        )
        for key, value in stage.items():
            feats[key] += value
    return {key: resource_model.predict(key, feats, device) for key in ("lut", "ff")}


def auto_lanes(plan: Plan, device: Device | None = None) -> tuple[int, ...]:
    """Lanes per stage for the config's device (or ``device``, a :class:`pbhw.core.devices.Device`).

    Raises
    ------
    ConfigError
        If even one lane per stage needs more multiplier blocks or LUTs than auto may use.
    """
    if device is None:
        device = load_device(plan.config.hardware.device)
    budget = auto_budget(device)
    logic_budget = {"lut": auto_lut_budget(device), "ff": auto_ff_budget(device)}
    bias = int(plan.config.network.bias)
    weights = [st.n_out * (st.n_in + bias) for st in plan.stages]
    costs = [lane_dsp_cost(plan, st, device) for st in plan.stages]

    def lanes_for(step: int) -> list[int]:
        return [math.ceil(w / step) for w in weights]

    def used(lanes: list[int]) -> int:
        return sum(n * c for n, c in zip(lanes, costs, strict=True))

    def short_of(lanes: list[int]) -> list[str]:
        """The logic and memory resources ``lanes`` would take beyond auto's budget."""
        stages = _stages(plan, tuple(lanes), device)  # built once for both predictions
        logic = predicted_logic(plan, tuple(lanes), device, stages)
        short = [key for key, cap in logic_budget.items() if logic[key] > cap]
        if predicted_blocks(plan, tuple(lanes), device, stages) > auto_bram_budget(device):
            short.append("bram")
        return short

    def fits(lanes: list[int]) -> bool:
        return used(lanes) <= budget and not short_of(lanes)

    one = [1] * len(weights)
    if used(one) > budget:
        raise ConfigError(
            f"config key 'hardware.lanes' is 'auto', but one lane per stage already needs "
            f"{used(one)} multiplier blocks and auto may use {budget} of "
            f"{device.name}'s {device.resources['dsp']} ({AUTO_DSP_SHARE:.0%}); narrow the "
            "formats, use formats.coefficient.shift, give the lanes explicitly, or pick a larger "
            "device"
        )
    if short_of(one):
        key = short_of(one)[0]
        if key == "bram":
            need, cap, total = (
                predicted_blocks(plan, tuple(one), device),
                auto_bram_budget(device),
                device.resources["bram_bits"] // device.block_bits,
            )
            what, share = "block RAMs", AUTO_BRAM_SHARE
        else:
            need = round(predicted_logic(plan, tuple(one), device)[key])
            cap, total = logic_budget[key], device.resources[key]
            what = f"{key.upper()}s"
            share = {"lut": AUTO_LUT_SHARE, "ff": AUTO_FF_SHARE}[key]
        raise ConfigError(
            f"config key 'hardware.lanes' is 'auto', but one lane per stage already needs "
            f"about {need} {what} and auto may use {cap} of {device.name}'s {total} "
            f"({share:.0%}); narrow the formats, give the lanes explicitly, or pick a larger "
            "device"
        )
    lo, hi = 1, max(weights)  # the step time: hi always fits (one lane per stage)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(lanes_for(mid)):
            hi = mid
        else:
            lo = mid + 1
    return tuple(lanes_for(lo))
