"""Float arithmetic for the PB schedule (algorithm studies), in float64.

Vectors are rows of shape ``(1, n)`` (a batch of one) so that the pipelined path and the batched
SGD reference in :mod:`golden.sgd` call the very same tensor operations: with every delay forced
to 0 the two give identical floats, not merely close ones.

This module is one implementation of the arithmetic interface used by
:class:`golden.pipeline.Pipeline`; the bit-exact integer one plugs in the same way.
"""

from __future__ import annotations

import torch

from golden.conv import ConvContext, ConvState, conv_backward, conv_forward
from pbhw.core.config import Loss, WeightPrediction
from pbhw.core.plan import StagePlan

__all__ = [
    "FloatArithmetic",
    "FloatState",
    "evaluate",
    "linear",
    "loss_and_error",
    "momentum_update",
    "with_bias_input",
]


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ w.T + b`` for a batch of rows ``x``."""
    return x @ w.T if b is None else torch.addmm(b, x, w.T)


def with_bias_input(x: torch.Tensor) -> torch.Tensor:
    """Rows ``x`` with a constant 1 appended: the input of the bias column."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def loss_and_error(
    y: torch.Tensor, labels: torch.Tensor, loss: Loss, onehot: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and its gradient with respect to the network output ``y``.

    ``mse``: loss ``0.5 * ||y - onehot||^2``, error ``y - onehot``.
    ``softmax_ce``: loss ``-log softmax(y)[label]``, error ``softmax(y) - onehot``.
    ``onehot`` may be given precomputed (the same values the labels give).
    """
    if onehot is None:
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
    w.sub_(v, alpha=eta_a)
    if eta_b:
        w.sub_(g, alpha=eta_b)


class FloatState:
    """Weights of one stage. With a bias, the bias is the last column of one matrix ``wa``
    (``[N_out, N_in + 1]``), so an update is one pass; ``w``/``b`` (and ``v``/``vb``) are views.
    ``wa_prev`` holds the weights before the last update (weight-difference prediction)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, keep_previous: bool):
        self.n_in = w.shape[1]
        self.bias = b is not None
        self.wa = w.clone() if b is None else torch.cat([w, b[:, None]], 1)
        self.va = torch.zeros_like(self.wa)
        self.wa_prev = self.wa.clone() if keep_previous else None
        # Views stay valid: every update modifies wa/va/wa_prev in place.
        self.w, self.b = self.split(self.wa)
        self.v, self.vb = self.split(self.va)
        self.w_prev, self.b_prev = self.split(self.wa_prev)

    def split(self, a: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if a is None:
            return None, None
        return (a[:, : self.n_in], a[:, self.n_in]) if self.bias else (a, None)


class FloatArithmetic:
    """Exact-constant float64 arithmetic (the algorithm of docs/design.md section 1)."""

    name = "float"

    def __init__(self, loss: Loss, prediction: WeightPrediction):
        self.loss_kind = loss
        self.prediction = prediction
        self._onehot: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def begin_step(self, step: int) -> None:
        """Float arithmetic draws no random bits: the step number is not needed."""

    def snapshot(self, w: torch.Tensor) -> torch.Tensor:
        """A copy of weights for weight stashing (updates modify ``w`` in place)."""
        return w.clone()

    # state -----------------------------------------------------------------------------------
    def init_state(self, stage: StagePlan, w: torch.Tensor, b: torch.Tensor | None) -> FloatState:
        return FloatState(
            w.to(torch.float64),
            None if b is None else b.to(torch.float64),
            self.prediction is WeightPrediction.WEIGHT_DIFFERENCE,
        )

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
            predicted = torch.sub(s.wa, s.va, alpha=stage.coefficients["eta_T"].value)
        else:
            predicted = s.wa + horizon * (s.wa - s.wa_prev)
        return s.split(predicted)

    def forward(
        self, stage: StagePlan, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = linear(x, w, b)
        if not stage.relu:
            return z, None
        mask = z > 0
        return z * mask, mask

    def loss(self, y: torch.Tensor, label: int) -> tuple[torch.Tensor, float]:
        key = (label, y.shape[1])
        if key not in self._onehot:
            labels = torch.tensor([label])
            onehot = torch.nn.functional.one_hot(labels, y.shape[1]).to(y.dtype)
            self._onehot[key] = (labels, onehot)
        labels, onehot = self._onehot[key]
        losses, error = loss_and_error(y, labels, self.loss_kind, onehot)
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
        if s.wa_prev is not None:
            s.wa_prev.copy_(s.wa)
        xa = with_bias_input(x) if s.bias else x
        momentum_update(
            s.wa, s.va, dz.T @ xa, c["momentum"].value, c["eta_a"].value, c["eta_b"].value
        )

    # conv stages (golden.conv): every parameter in one flat vector --------------------------
    def init_conv_state(self, stage: StagePlan, params: tuple[torch.Tensor, ...]) -> ConvState:
        return ConvState(stage, params, self.prediction is WeightPrediction.WEIGHT_DIFFERENCE)

    def conv_predicted(
        self, stage: StagePlan, s: ConvState
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The flat parameters the forward pass uses (LWP, as for dense stages; written into
        ``s.predicted``) or ``wa``, and their named views."""
        horizon = stage.horizon
        if not horizon or self.prediction is WeightPrediction.NONE:
            return s.wa, s.params
        if self.prediction is WeightPrediction.VELOCITY:
            torch.sub(s.wa, s.va, alpha=stage.coefficients["eta_T"].value, out=s.predicted)
        else:
            torch.sub(s.wa, s.wa_prev, out=s.predicted)
            s.predicted.mul_(horizon).add_(s.wa)
        return s.predicted, s.predicted_params

    def conv_forward(
        self,
        stage: StagePlan,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        residual: torch.Tensor | None,
        state: ConvState | None = None,
    ) -> tuple[torch.Tensor, ConvContext]:
        """A conv stage's forward (``state``: the stage's, for its online norm)."""
        return conv_forward(stage, params, x, residual, None if state is None else state.online)

    def conv_backward(
        self,
        stage: StagePlan,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        ctx: ConvContext,
        error: torch.Tensor,
        state: ConvState | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Gradient (flat), error to the previous stage (None for stage 1) and residual error
        (``state``: the stage's, for its online norm)."""
        online = None if state is None else state.online
        return conv_backward(stage, params, x, ctx, error, stage.index > 1, online)

    def add_errors(
        self, stage: StagePlan, error: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """The error arriving at a residual's source: the next stage's plus the residual's."""
        return error + residual

    def conv_update(self, stage: StagePlan, s: ConvState, grad: torch.Tensor) -> None:
        """The update rule of every stage, on every parameter at once."""
        c = stage.coefficients
        if s.wa_prev is not None:
            s.wa_prev.copy_(s.wa)
        momentum_update(s.wa, s.va, grad, c["momentum"].value, c["eta_a"].value, c["eta_b"].value)

    def label_of(self, y: torch.Tensor) -> int:
        return int(y.argmax())

    def evaluate(
        self, stages: list[StagePlan], states: list[FloatState], x: torch.Tensor
    ) -> torch.Tensor:
        return evaluate(stages, states, x)


def evaluate(
    stages: list[StagePlan], states: list[FloatState | ConvState], x: torch.Tensor
) -> torch.Tensor:
    """Network outputs for a batch of inputs with the current weights ``w`` (no prediction)."""
    h = x.to(torch.float64)
    outputs: list[torch.Tensor] = []
    for stage, s in zip(stages, states, strict=True):
        if stage.conv:
            assert stage.spec is not None and isinstance(s, ConvState)
            residual = outputs[-stage.spec.residual] if stage.spec.residual else None
            h, _ = conv_forward(stage, s.params, h, residual, s.online, learn=False)
        else:
            assert isinstance(s, FloatState)
            h = linear(h, s.w, s.b)
            if stage.relu:
                h = torch.relu(h)
        outputs.append(h)
    return h
