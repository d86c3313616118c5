"""What ``pbhw check`` validates: everything a later command would refuse in the config.

:func:`check_config` runs the checks the other commands run, by calling the same functions: the
trainer's (:func:`pbhw.tools.train.check_trainable`: representable constants, accumulators of the
bit-exact model, a dataset that loads and fits), and for a config the generator accepts
(pipelined, no weight stashing) the hardware's: the device (``hardware.device``), every stage's
datapath, the lanes (``hardware.lanes``, :func:`rtl_gen.design.resolve_lanes`) and the
network's cycles and DSP blocks, all from one :func:`rtl_gen.design.build_design` (its
components are built, not elaborated: milliseconds) and the manifest's count. A network with
convolutional stages has no hardware yet, so it gets no hardware checks. Every failure is
a ConfigError or DatasetError naming the key.

:func:`stage_rows` gives the per-stage sizes ``pbhw check`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from pbhw.core.config import Algorithm, Config
from pbhw.core.datapath import StageDatapath
from pbhw.core.datasets import Dataset
from pbhw.core.devices import Device, config_device
from pbhw.core.plan import Plan
from pbhw.tools.train import check_trainable
from rtl_gen.design import build_design
from rtl_gen.generate import manifest_of, top_name

__all__ = ["STAGE_COLUMNS", "CheckedConfig", "check_config", "stage_rows"]

#: The columns of :func:`stage_rows`.
STAGE_COLUMNS = ("stage", "type", "output", "parameters", "multiplies", "delay D", "stash")


@dataclass(frozen=True)
class CheckedConfig:
    """The results of :func:`check_config`.

    ``lanes``, ``dsp_blocks``, ``datapaths`` and ``predicted_cycles_per_sample`` are None for a
    config the generator does not take (the non-pipelined reference, weight stashing, or
    convolutional stages)."""

    dataset: Dataset
    device: Device
    lanes: tuple[int, ...] | None
    dsp_blocks: int | None
    datapaths: tuple[StageDatapath, ...] | None
    predicted_cycles_per_sample: int | None = None


def check_config(config: Config) -> CheckedConfig:
    """Check ``config`` as every later command would; raises the first command's error."""
    dataset = check_trainable(config)
    device = config_device(config)
    if (
        config.optimizer.algorithm is not Algorithm.PB
        or config.optimizer.weight_stashing
        or config.network.convolutional
    ):
        return CheckedConfig(dataset, device, None, None, None)
    design = build_design(config)
    design.discard()
    manifest = manifest_of(design, top=top_name(config))
    return CheckedConfig(
        dataset,
        device,
        design.lanes,
        manifest.dsp_blocks,
        tuple(st.datapath for st in design.network.stages),
        manifest.predicted_cycles_per_sample,
    )


def stage_rows(plan: Plan) -> list[tuple[str, ...]]:
    """Per stage (columns :data:`STAGE_COLUMNS`): its type (with norm, residual and pooling),
    output shape, parameter count, forward multiplies per sample
    (:attr:`pbhw.core.plan.StagePlan.forward_multiplies`), delay and the values its stash holds
    at most (:attr:`pbhw.core.plan.StagePlan.stash_values`)."""
    rows = []
    for st in plan.stages:
        kind = "dense"
        if st.conv:
            sp = st.spec
            assert sp is not None
            kind = f"conv{len(st.in_shape) - 1}d k{sp.kernel}"
            kind += f" s{sp.stride}" if sp.stride != 1 else ""
            kind += f" p{sp.padding}" if sp.padding else ""
            if sp.norm.value == "group":
                kind += f" +groupnorm/{sp.groups}"
            elif sp.norm.value == "online":
                kind += " +onlinenorm"
            if sp.residual:
                kind += f" +res{sp.residual}" + ("(proj)" if sp.projection else "")
            kind += f" {sp.pool.value}pool" if sp.pool.value != "none" else ""
        rows.append(
            (
                str(st.index),
                kind,
                "x".join(map(str, st.out_shape)),
                str(st.parameters),
                str(st.forward_multiplies),
                str(st.delay),
                str(st.stash_values),
            )
        )
    return rows
