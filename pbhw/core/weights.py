"""Initial weights, defined once for the trainer, the golden model and the generated memories.

:func:`initial_weights` draws the float64 weights from the config's seed, or reads them from the
PyTorch checkpoint ``train.init_from`` (:func:`pbhw.core.torch_io.read_checkpoint`, which checks
every key and shape against the config); :func:`weight_codes`
quantizes one stage's weights (bias as the last column) to its weight format, half-even with
saturation; :func:`initial_codes` is both for every stage: the weight memories' init contents
and the golden model's initial state.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pbhw.core.fixed import Overflow, Rounding, quantize
from pbhw.core.plan import Plan, StagePlan
from pbhw.core.torch_io import read_checkpoint

__all__ = ["conv_parameters", "initial_codes", "initial_weights", "weight_codes"]


def initial_weights(
    plan: Plan, seed: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Float64 initial weights: those of the checkpoint ``train.init_from`` when the config
    names one (and no ``seed`` is given), else from the seed: uniform He init (gain sqrt(2))
    before a ReLU, gain 1 for the last layer; biases zero.

    A conv stage's entry is the tuple of its parameters in
    :attr:`pbhw.core.plan.StagePlan.parameter_shapes` order (:func:`conv_parameters`)."""
    if plan.config.train.init_from and seed is None:
        return read_checkpoint(plan.config).weights
    gen = torch.Generator().manual_seed(plan.config.seed if seed is None else seed)
    out: list = []
    for st in plan.stages:
        if st.conv:
            out.append(conv_parameters(st, gen))
            continue
        gain = 2.0**0.5 if st.relu else 1.0
        bound = gain * (3.0 / st.n_in) ** 0.5
        w = (torch.rand(st.n_out, st.n_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        b = torch.zeros(st.n_out, dtype=torch.float64) if plan.config.network.bias else None
        out.append((w, b))
    return out


def conv_parameters(stage: StagePlan, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A conv stage's float64 initial parameters in ``stage.parameter_shapes`` order: uniform
    He init over each weight's fan-in (gain sqrt(2) before a ReLU; 1 for the last stage and
    for a residual projection), biases and norm shifts zero, norm scales one."""
    out = []
    for name, shape in stage.parameter_shapes:
        if name in ("weight", "projection"):
            gain = 2.0**0.5 if stage.relu and name == "weight" else 1.0
            bound = gain * (3.0 / math.prod(shape[1:])) ** 0.5
            out.append((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        elif name == "norm_scale":
            out.append(torch.ones(shape, dtype=torch.float64))
        else:
            out.append(torch.zeros(shape, dtype=torch.float64))
    return tuple(out)


def weight_codes(stage: StagePlan, w: torch.Tensor, b: torch.Tensor | None) -> np.ndarray:
    """``[N_out, N_in (+1)]`` codes of ``stage``'s weight format: the float weights (bias as the
    last column) quantized half-even with saturation."""
    w_aug = w if b is None else torch.cat([w, b[:, None]], 1)
    return quantize(
        w_aug, stage.formats.weight.format, Rounding.HALF_EVEN, Overflow.SATURATE
    ).numpy()


def initial_codes(plan: Plan) -> list[np.ndarray]:
    """Every stage's initial weight codes (``[N_out, N_in (+1)]``)."""
    return [
        weight_codes(st, w, b)
        for st, (w, b) in zip(plan.stages, initial_weights(plan), strict=True)
    ]
