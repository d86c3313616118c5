"""Non-pipelined momentum SGD at batch size B: the reference PB is compared against.

Plain minibatch SGD with momentum, written directly (no schedule, no stash): forward the batch,
backward, average the gradients over the batch, update every layer. It calls the same tensor
operations as :class:`golden.float_arith.FloatArithmetic`, so at B = 1 it reproduces the PB path
with every delay forced to 0 float for float.
"""

from __future__ import annotations

import torch

from golden.float_arith import linear, loss_and_error, momentum_update
from pbhw.plan import Plan

__all__ = ["SGDReference"]


class SGDReference:
    """Momentum SGD on the plan's network with the plan's batch-scaled ``lr`` and ``momentum``."""

    def __init__(self, plan: Plan, weights: list[tuple[torch.Tensor, torch.Tensor | None]]):
        self.plan = plan
        self.loss = plan.config.network.loss
        self.w = [w.to(torch.float64).clone() for w, _ in weights]
        self.b = [None if b is None else b.to(torch.float64).clone() for _, b in weights]
        self.vw = [torch.zeros_like(w) for w in self.w]
        self.vb = [None if b is None else torch.zeros_like(b) for b in self.b]

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One update from the batch ``(x, labels)``; returns per-sample losses and predictions."""
        stages = self.plan.stages
        inputs, masks = [], []
        h = x.to(torch.float64)
        for st, w, b in zip(stages, self.w, self.b, strict=True):
            inputs.append(h)
            z = linear(h, w, b)
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
            grads.append((i, (dz.T @ inputs[i]) / batch, dz.sum(0) / batch))
            if i > 0:
                error = dz @ self.w[i]
        for i, gw, gb in grads:
            c = stages[i].coefficients
            m, eta = c["momentum"].value, c["eta_a"].value
            momentum_update(self.w[i], self.vw[i], gw, m, eta, 0.0)
            if self.b[i] is not None:
                momentum_update(self.b[i], self.vb[i], gb, m, eta, 0.0)
        return losses, h.argmax(1)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float64)
        for st, w, b in zip(self.plan.stages, self.w, self.b, strict=True):
            h = linear(h, w, b)
            if st.relu:
                h = torch.relu(h)
        return h
