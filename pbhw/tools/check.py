"""What ``pbhw check`` validates: everything a later command would refuse in the config.

:func:`check_config` runs the checks the other commands run, by calling the same functions: the
trainer's (:func:`pbhw.tools.train.check_trainable`: representable constants, accumulators of the
bit-exact model, a dataset that loads and fits), and for a config the generator accepts
(pipelined, no weight stashing) the hardware's: the device (``hardware.device``), every stage's
datapath (:func:`pbhw.core.datapath.plan_datapaths`) and the lanes (``hardware.lanes``,
:func:`rtl_gen.design.resolve_lanes`). Every failure is a ConfigError or DatasetError naming
the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from pbhw.core.config import Algorithm, Config
from pbhw.core.datapath import StageDatapath, plan_datapaths
from pbhw.core.datasets import Dataset
from pbhw.core.devices import Device, config_device
from pbhw.tools.train import check_trainable
from rtl_gen.design import fixed_plan, resolve_lanes

__all__ = ["CheckedConfig", "check_config"]


@dataclass(frozen=True)
class CheckedConfig:
    """The results of :func:`check_config`.

    ``lanes``, ``dsp_blocks`` and ``datapaths`` are None for a config the generator does not
    take (the non-pipelined reference, or weight stashing)."""

    dataset: Dataset
    device: Device
    lanes: tuple[int, ...] | None
    dsp_blocks: int | None
    datapaths: tuple[StageDatapath, ...] | None


def check_config(config: Config) -> CheckedConfig:
    """Check ``config`` as every later command would; raises the first command's error."""
    dataset = check_trainable(config)
    device = config_device(config)
    if config.optimizer.algorithm is not Algorithm.PB or config.optimizer.weight_stashing:
        return CheckedConfig(dataset, device, None, None, None)
    plan = fixed_plan(config)
    datapaths = plan_datapaths(plan, device.multiplier_widths)
    lanes = resolve_lanes(config, plan, device)
    dsp = sum(n * dp.lane_dsp(device) for n, dp in zip(lanes, datapaths, strict=True))
    return CheckedConfig(dataset, device, lanes, dsp, datapaths)
