"""Figures of merit of a training accelerator and its memory model, computed in this one place.

* :func:`useful_multiplies`: the data multiplies one training sample needs: per weight, the
  forward product, the backward product (every stage but the first, which sends no error) and
  the gradient product; the bias columns are not counted. 8,128 for the 64-32-32-10 example.
* :func:`figures_of_merit`: samples/s at a clock, the DSP-bound limit (every DSP block of the
  device doing one useful multiply per cycle at the Fmax of a lone registered MAC) and the
  device efficiency, their ratio.
* :func:`memory_model`: per stage, the bits of weights, velocities, the input stash (and
  ``w_prev``) that pipelined backpropagation holds, beside what a batch-parallel design at batch
  size ``B`` holds for the same network (weights, velocities and every stage's input for the
  whole batch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pbhw.core.config import WeightPrediction
from pbhw.core.datapath import x_format_of
from pbhw.core.plan import Plan, StagePlan

__all__ = [
    "FiguresOfMerit",
    "MemoryModel",
    "StageMemory",
    "figures_of_merit",
    "memory_model",
    "stash_bits",
    "useful_multiplies",
]


def useful_multiplies(plan: Plan) -> int:
    """Useful data multiplies per training sample.

    Each stage's forward count (:attr:`pbhw.core.plan.StagePlan.forward_multiplies`) times 2
    in stage 1 (forward and gradient: it sends no error) and times 3 elsewhere (forward,
    backward, gradient).

    Parameters
    ----------
    plan
        The derived plan (:func:`pbhw.core.plan.derive_plan`).

    Returns
    -------
    int
    """
    return sum((2 if st.index == 1 else 3) * st.forward_multiplies for st in plan.stages)


@dataclass(frozen=True)
class FiguresOfMerit:
    """Throughput against what the device's DSP blocks could do.

    ``samples_per_second`` is the clock over the cycles per sample; ``dsp_bound`` the samples/s
    of every DSP block doing one useful multiply per cycle at ``mac_fmax_mhz``; ``efficiency``
    the first over the second (None without a MAC Fmax)."""

    fmax_mhz: float
    cycles_per_sample: float
    samples_per_second: float
    useful_multiplies: int
    dsp_blocks: int
    mac_fmax_mhz: float | None
    dsp_bound: float | None
    efficiency: float | None

    def to_json(self) -> dict[str, float | int | None]:
        """Every field by name."""
        return asdict(self)


def figures_of_merit(
    *,
    fmax_mhz: float,
    cycles_per_sample: float,
    useful: int,
    dsp_blocks: int,
    mac_fmax_mhz: float | None,
) -> FiguresOfMerit:
    """Samples/s, the DSP-bound limit and the device efficiency.

    Parameters
    ----------
    fmax_mhz
        The design's clock: its routed Fmax (or an estimate of it).
    cycles_per_sample
        Predicted or measured cycles per training sample.
    useful
        Useful data multiplies per sample (:func:`useful_multiplies`).
    dsp_blocks
        The device's DSP blocks (all of them, not the design's).
    mac_fmax_mhz
        Fmax of the registered 16x16 + 40-bit MAC on the device's hard-multiplier primitive
        (:mod:`pbhw.tools.reference`), routed in the same run; None if not routed.

    Returns
    -------
    FiguresOfMerit
    """
    for name, value in (("fmax_mhz", fmax_mhz), ("cycles_per_sample", cycles_per_sample)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
    if useful < 1:
        raise ValueError(f"useful must be a positive number of multiplies, not {useful!r}")
    samples = fmax_mhz * 1e6 / cycles_per_sample
    bound = None if mac_fmax_mhz is None else dsp_blocks * mac_fmax_mhz * 1e6 / useful
    efficiency = None if not bound else samples / bound
    return FiguresOfMerit(
        fmax_mhz, cycles_per_sample, samples, useful, dsp_blocks, mac_fmax_mhz, bound, efficiency
    )


# --------------------------------------------------------------------------------------------
# Memory


@dataclass(frozen=True)
class StageMemory:
    """Bits one stage holds, pipelined (``weight``, ``velocity``, ``w_prev``, ``stash``) and in
    a batch-parallel design at the model's batch size (``batch_weight``, ``batch_velocity``,
    ``batch_activation``: the stage's input for every sample of the batch)."""

    stage: int
    weight: int
    velocity: int
    w_prev: int
    stash: int
    batch_weight: int
    batch_velocity: int
    batch_activation: int

    @property
    def pipelined(self) -> int:
        return self.weight + self.velocity + self.w_prev + self.stash

    @property
    def batch(self) -> int:
        return self.batch_weight + self.batch_velocity + self.batch_activation

    def to_json(self) -> dict[str, int]:
        """Every field by name, with the totals ``pipelined`` and ``batch``."""
        return {**asdict(self), "pipelined": self.pipelined, "batch": self.batch}


@dataclass(frozen=True)
class MemoryModel:
    """The memory of every stage, pipelined and batch-parallel at ``batch_size``."""

    batch_size: int
    stages: tuple[StageMemory, ...]

    @property
    def pipelined(self) -> int:
        return sum(s.pipelined for s in self.stages)

    @property
    def batch(self) -> int:
        return sum(s.batch for s in self.stages)

    def to_json(self) -> dict[str, object]:
        """``{batch_size, pipelined, batch, stages: [...]}``."""
        return {
            "batch_size": self.batch_size,
            "pipelined": self.pipelined,
            "batch": self.batch,
            "stages": [s.to_json() for s in self.stages],
        }


def stash_bits(stage: StagePlan, x_width: int) -> int:
    """Bits of one stage's stash: the inputs of the last ``D_l + 1`` steps, ``x_width`` bits each
    (the format of the activations the stage receives, :func:`pbhw.core.datapath.x_format_of`)
    and, with a ReLU, one mask bit per output for each of them (``docs/hardware.md``)."""
    return stage.stash_depth * (stage.n_in * x_width + (stage.n_out if stage.relu else 0))


def memory_model(plan: Plan, batch_size: int | None = None) -> MemoryModel:
    """The memory of PB hardware beside that of a batch-parallel design, per stage, in bits.

    Pipelined, stage ``l`` holds ``(N_in + bias) * N_out`` weights and velocities at their widths,
    as many ``w_prev`` weights with the weight-difference prediction, and the stash: the inputs of
    the last ``D_l + 1`` steps in the format of the activations it receives (stage 1: its own
    activation format, the sample's) and, with ReLU, one mask bit per output for each of them
    (``docs/hardware.md``). Lane padding of the memory rows is not counted. A batch-parallel
    design at batch size ``B`` holds the same weights and velocities and, for the backward pass,
    every stage's input for all ``B`` samples (a ReLU mask is the sign of the next stage's
    input, so no mask is stored).

    Parameters
    ----------
    plan
        The derived plan.
    batch_size
        ``B`` of the batch-parallel design; default the config's ``optimizer.reference_batch``.

    Returns
    -------
    MemoryModel
    """
    config = plan.config
    batch = config.optimizer.reference_batch if batch_size is None else batch_size
    if batch < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch!r}")
    bias = 1 if config.network.bias else 0
    w_prev = config.optimizer.weight_prediction is WeightPrediction.WEIGHT_DIFFERENCE
    stages = []
    for st in plan.stages:
        words = (st.n_in + bias) * st.n_out
        weight = words * st.formats.weight.format.width
        x_width = x_format_of(plan, st).width
        stash = stash_bits(st, x_width)
        stages.append(
            StageMemory(
                stage=st.index,
                weight=weight,
                velocity=words * st.formats.velocity.format.width,
                w_prev=weight if w_prev else 0,
                stash=stash,
                batch_weight=weight,
                batch_velocity=words * st.formats.velocity.format.width,
                batch_activation=batch * st.n_in * x_width,
            )
        )
    return MemoryModel(batch, tuple(stages))
