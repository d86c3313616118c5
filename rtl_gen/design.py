"""From a config to a :class:`~rtl_gen.top.Network`: plan, lanes and memory init contents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbhw.core.config import Algorithm, Arith, Config, ConfigError
from pbhw.core.devices import Device, config_device
from pbhw.core.plan import Plan, derive_plan
from pbhw.core.weights import initial_codes
from rtl_gen.lanes import auto_lanes
from rtl_gen.target import Multiplier
from rtl_gen.top import Network

__all__ = ["Design", "build_design", "check_lanes", "fixed_plan", "resolve_lanes"]


@dataclass(frozen=True)
class Design:
    config: Config
    plan: Plan
    lanes: tuple[int, ...]
    init: list[np.ndarray]
    network: Network

    def discard(self) -> None:
        """Mark the components as deliberately not elaborated (a manifest-only use), so that
        Amaranth does not warn about them."""
        self.network.discard()


def fixed_plan(config: Config) -> Plan:
    """The config's plan with fixed-point arithmetic (constants must be representable)."""
    if config.optimizer.algorithm is not Algorithm.PB:
        raise ConfigError(
            "config key 'optimizer.algorithm' must be 'pb' to generate hardware (the pipeline "
            f"is the hardware), not '{config.optimizer.algorithm.value}'"
        )
    if config.optimizer.weight_stashing:
        raise ConfigError(
            "config key 'optimizer.weight_stashing' must be false to generate hardware: the "
            "generator keeps no copies of the weights (use weight_prediction instead)"
        )
    config.network.require_dense()  # the fixed-point model trains conv stages; no hardware yet
    if config.train.arith is not Arith.FIXED:
        config = config.replace({"train.arith": "fixed"})
    return derive_plan(config)


def resolve_lanes(config: Config, plan: Plan, device: Device) -> tuple[int, ...]:
    """The lanes per stage: the config's, or for ``"auto"`` :func:`rtl_gen.lanes.auto_lanes`
    on ``device``; raises ConfigError (naming ``hardware.lanes``) if a stage gets more lanes than
    it has weights."""
    if config.hardware.lanes == "auto":
        lanes = auto_lanes(plan, device)
    else:
        lanes = tuple(config.hardware.lanes)
    check_lanes(plan, lanes)
    return lanes


def check_lanes(plan: Plan, lanes: tuple[int, ...]) -> None:
    """ConfigError (naming ``hardware.lanes``) if a stage gets more lanes than weights."""
    bias = int(plan.config.network.bias)
    for st, n in zip(plan.stages, lanes, strict=True):
        weights = st.n_out * (st.n_in + bias)
        if n > weights:
            raise ConfigError(
                f"config key 'hardware.lanes' gives stage {st.index} {n} lanes, more than its "
                f"{weights} weights"
            )


def build_design(
    config: Config, lanes: tuple[int, ...] | None = None, *, primitives: bool = True
) -> Design:
    """Plan, lanes (``lanes`` or the config's; ``auto`` is resolved by :mod:`rtl_gen.lanes`),
    init contents and the network component.

    With ``primitives`` (the default), products use the device's ``[multiplier] primitive``
    when it names one; ``primitives=False`` leaves every product to synthesis, with the same
    cycles and results, for ``amaranth.sim``, which cannot simulate a vendor primitive."""
    plan = fixed_plan(config)
    device = config_device(config)
    lanes = resolve_lanes(config, plan, device) if lanes is None else tuple(lanes)
    check_lanes(plan, lanes)
    init = initial_codes(plan)
    multiplier = Multiplier.from_device(
        device, primitives=primitives, constants=config.hardware.constants
    )
    network = Network(plan=plan, lanes=lanes, init=init, multiplier=multiplier)
    return Design(config, plan, tuple(lanes), init, network)
