"""Non-pipelined momentum SGD at batch size B: the reference PB is compared against.

Plain minibatch SGD with momentum, written directly (no schedule, no stash): forward the batch,
backward, average the gradients over the batch, update every layer. It calls the same tensor
operations as :class:`golden.float_arith.FloatArithmetic`, so at B = 1 it reproduces the PB path
with every delay forced to 0 float for float.
"""

from __future__ import annotations

import torch

from golden.conv import ConvState, conv_backward, conv_forward
from golden.float_arith import (
    FloatState,
    evaluate,
    linear,
    loss_and_error,
    momentum_update,
    with_bias_input,
)
from pbhw.core.plan import Plan

__all__ = ["SGDReference"]


class SGDReference:
    """Momentum SGD on the plan's network with the plan's batch-scaled ``lr`` and ``momentum``.

    Weights are held as :class:`golden.float_arith.FloatState` (bias as the last column), the
    layout the pipelined float path uses; ``w``/``b`` list the per-layer views."""

    def __init__(self, plan: Plan, weights: list[tuple[torch.Tensor, torch.Tensor | None]]):
        self.plan = plan
        self.loss = plan.config.network.loss
        self.states: list = [
            ConvState(st, params, False)
            if st.conv
            else FloatState(
                params[0].to(torch.float64),
                None if params[1] is None else params[1].to(torch.float64),
                False,
            )
            for st, params in zip(plan.stages, weights, strict=True)
        ]

    @property
    def w(self) -> list[torch.Tensor]:
        return [s.w for s in self.states]

    @property
    def b(self) -> list[torch.Tensor | None]:
        return [s.b for s in self.states]

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One update from the batch ``(x, labels)``; returns per-sample losses and predictions."""
        if self.plan.config.network.convolutional:
            return self._step_general(x, labels)
        stages = self.plan.stages
        inputs, masks = [], []
        h = x.to(torch.float64)
        for st, s in zip(stages, self.states, strict=True):
            inputs.append(h)
            z = linear(h, s.w, s.b)
            if st.relu:
                mask = z > 0
                h = z * mask
            else:
                mask, h = None, z
            masks.append(mask)
        losses, error = loss_and_error(h, labels, self.loss)
        batch = float(x.shape[0])
        grads = []
        for i in reversed(range(len(stages))):
            dz = error if masks[i] is None else error * masks[i]
            xa = with_bias_input(inputs[i]) if self.states[i].bias else inputs[i]
            grads.append((i, (dz.T @ xa) / batch))
            if i > 0:
                error = dz @ self.states[i].w
        for i, g in grads:
            c = stages[i].coefficients
            s = self.states[i]
            momentum_update(s.wa, s.va, g, c["momentum"].value, c["eta_a"].value, 0.0)
        return losses, h.argmax(1)

    def _step_general(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` for a network with conv stages and residuals: the operations of
        :class:`golden.pipeline.Pipeline` with every delay 0, on a batch."""
        stages = self.plan.stages
        inputs, contexts, outputs = [], [], []
        h = x.to(torch.float64)
        for st, s in zip(stages, self.states, strict=True):
            inputs.append(h)
            if st.conv:
                residual = outputs[-st.spec.residual] if st.spec.residual else None
                h, ctx = conv_forward(st, s.params, h, residual, s.online)
            else:
                z = linear(h, s.w, s.b)
                ctx = z > 0 if st.relu else None
                h = z if ctx is None else z * ctx
            contexts.append(ctx)
            outputs.append(h)
        losses, error = loss_and_error(h, labels, self.loss)
        batch = float(x.shape[0])
        consumers = {
            i: [c for c, st in enumerate(stages) if st.conv and st.spec.residual == c - i > 0]
            for i in range(len(stages))
        }
        residual_errors: dict[int, torch.Tensor] = {}
        grads = []
        for i in reversed(range(len(stages))):
            st, s = stages[i], self.states[i]
            for c in consumers[i]:
                error = error + residual_errors.pop(c)
            if st.conv:
                g, error_in, residual_errors[i] = conv_backward(
                    st, s.params, inputs[i], contexts[i], error, i > 0, s.online
                )
                grads.append((i, g / batch))
            else:
                dz = error if contexts[i] is None else error * contexts[i]
                xa = with_bias_input(inputs[i]) if s.bias else inputs[i]
                grads.append((i, (dz.T @ xa) / batch))
                error_in = dz @ s.w if i > 0 else None
            error = error_in
        for i, g in grads:
            c = stages[i].coefficients
            s = self.states[i]
            momentum_update(s.wa, s.va, g, c["momentum"].value, c["eta_a"].value, 0.0)
        return losses, h.argmax(1)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return evaluate(self.plan.stages, self.states, x)
