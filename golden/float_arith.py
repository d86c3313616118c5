"""Float arithmetic for the PB schedule (algorithm studies), in float64.

Vectors are rows of shape ``(1, n)`` (a batch of one) so that the pipelined path and the batched
SGD reference in :mod:`golden.sgd` call the very same tensor operations: with every delay forced
to 0 the two give identical floats, not merely close ones.

This module is one implementation of the arithmetic interface used by
:class:`golden.pipeline.Pipeline`; the bit-exact integer one plugs in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pbhw.config import Loss, WeightPrediction
from pbhw.plan import StagePlan

__all__ = ["FloatArithmetic", "FloatState", "linear", "loss_and_error", "momentum_update"]


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ w.T + b`` for a batch of rows ``x``."""
    z = x @ w.T
    return z + b if b is not None else z


def loss_and_error(
    y: torch.Tensor, labels: torch.Tensor, loss: Loss
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and its gradient with respect to the network output ``y``.

    ``mse``: loss ``0.5 * ||y - onehot||^2``, error ``y - onehot``.
    ``softmax_ce``: loss ``-log softmax(y)[label]``, error ``softmax(y) - onehot``.
    """
    onehot = torch.nn.functional.one_hot(labels, y.shape[1]).to(y.dtype)
    if loss is Loss.MSE:
        diff = y - onehot
        return 0.5 * (diff * diff).sum(1), diff
    logp = torch.log_softmax(y, 1)
    return -logp.gather(1, labels[:, None])[:, 0], logp.exp() - onehot


def momentum_update(
    w: torch.Tensor, v: torch.Tensor, g: torch.Tensor, m: float, eta_a: float, eta_b: float
) -> None:
    """In place: ``v <- m*v + g``; ``w <- w - eta_a*v - eta_b*g`` (``eta_b = 0``: plain SGDM)."""
    v.mul_(m).add_(g)
    w.sub_(eta_a * v)
    if eta_b:
        w.sub_(eta_b * g)


@dataclass
class FloatState:
    """Weights of one stage: ``w``, velocity ``v``, bias ``b``/``vb`` and, for the weight-difference
    prediction, the weights before the last update (``w_prev``/``b_prev``)."""

    w: torch.Tensor
    v: torch.Tensor
    b: torch.Tensor | None
    vb: torch.Tensor | None
    w_prev: torch.Tensor | None = None
    b_prev: torch.Tensor | None = None


class FloatArithmetic:
    """Exact-constant float64 arithmetic (the algorithm as written in DESIGN.md section 1)."""

    name = "float"

    def __init__(self, loss: Loss, prediction: WeightPrediction):
        self.loss_kind = loss
        self.prediction = prediction

    def begin_step(self, step: int) -> None:
        """Float arithmetic draws no random bits: the step number is not needed."""

    def snapshot(self, w: torch.Tensor) -> torch.Tensor:
        """A copy of weights for weight stashing (updates modify ``w`` in place)."""
        return w.clone()

    # state -----------------------------------------------------------------------------------
    def init_state(self, stage: StagePlan, w: torch.Tensor, b: torch.Tensor | None) -> FloatState:
        w = w.to(torch.float64).clone()
        b = None if b is None else b.to(torch.float64).clone()
        state = FloatState(w, torch.zeros_like(w), b, None if b is None else torch.zeros_like(b))
        if self.prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            state.w_prev = w.clone()
            state.b_prev = None if b is None else b.clone()
        return state

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64).reshape(1, -1)

    def encode_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every row of ``x`` as the pipeline's input representation, at once."""
        return list(x.to(torch.float64)[:, None, :].unbind(0))

    # datapath ----------------------------------------------------------------------------------
    def predicted(
        self, stage: StagePlan, s: FloatState
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weights the forward pass uses (LWP), or ``w`` itself."""
        horizon = stage.horizon
        if not horizon or self.prediction is WeightPrediction.NONE:
            return s.w, s.b
        if self.prediction is WeightPrediction.VELOCITY:
            eta_t = stage.coefficients["eta_T"].value
            return s.w - eta_t * s.v, None if s.b is None else s.b - eta_t * s.vb
        w_hat = s.w + horizon * (s.w - s.w_prev)
        return w_hat, None if s.b is None else s.b + horizon * (s.b - s.b_prev)

    def forward(
        self, stage: StagePlan, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = linear(x, w, b)
        if not stage.relu:
            return z, None
        mask = z > 0
        return z * mask, mask

    def loss(self, y: torch.Tensor, label: int) -> tuple[torch.Tensor, float]:
        losses, error = loss_and_error(y, torch.tensor([label]), self.loss_kind)
        return error, float(losses[0])

    def output_gradient(
        self, stage: StagePlan, error: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Error at the stage's pre-activation: ``delta * relu'(z)``."""
        return error if mask is None else error * mask

    def backward(self, stage: StagePlan, w: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
        return dz @ w

    def update(self, stage: StagePlan, s: FloatState, dz: torch.Tensor, x: torch.Tensor) -> None:
        c = stage.coefficients
        m, eta_a, eta_b = c["momentum"].value, c["eta_a"].value, c["eta_b"].value
        if s.w_prev is not None:
            s.w_prev.copy_(s.w)
            if s.b is not None:
                s.b_prev.copy_(s.b)
        momentum_update(s.w, s.v, dz.T @ x, m, eta_a, eta_b)
        if s.b is not None:
            momentum_update(s.b, s.vb, dz.sum(0), m, eta_a, eta_b)

    def label_of(self, y: torch.Tensor) -> int:
        return int(y.argmax())

    def evaluate(
        self, stages: list[StagePlan], states: list[FloatState], x: torch.Tensor
    ) -> torch.Tensor:
        """Network outputs for a batch of inputs with the current weights ``w`` (no prediction)."""
        h = x.to(torch.float64)
        for stage, s in zip(stages, states, strict=True):
            h = linear(h, s.w, s.b)
            if stage.relu:
                h = torch.relu(h)
        return h
