"""The step-synchronous Pipelined Backpropagation schedule, written once for every arithmetic.

Time advances in steps. In step ``t`` every stage ``l`` does, with the weights it holds at the
start of the step:

* the forward of the sample that stage ``l - 1`` produced in step ``t - 1`` (stage 1: the sample
  entering the pipeline in step ``t``), pushing the input and its ReLU mask on the stash FIFO;
* the backward of the error stage ``l + 1`` produced in step ``t - 1`` (stage ``L``: the loss error
  formed from its own forward output of step ``t - 1``), popping that sample's stash entry;
* the update from that backward sample, at the end of the step. Steps without a backward sample
  (pipeline fill and drain) do no update.

So stage ``l`` forwards sample ``s`` in step ``s + l - 1`` and updates from it in step
``s + 2L - l``: ``D_l = 2(L - l) + 1`` updates lie between the two, and the stash holds at most
``D_l + 1`` entries. With ``pipelined=False`` (the ``sgd`` algorithm, every delay forced to 0) the
same code runs a whole sample through every stage, forward then backward, in one step.

A residual (a conv stage ``i`` adding the output of stage ``i - N``) crosses stages with other
delays: stage ``i - N`` forwards sample ``s`` ``N`` steps before stage ``i`` does, and stage
``i`` backwards it ``N`` steps before stage ``i - N`` does. So the forwarded output waits ``N``
steps in a FIFO before stage ``i`` adds it, and the error stage ``i`` sends back along the
residual waits ``N`` steps before stage ``i - N`` adds it to the error arriving from stage
``i - N + 1`` (both 0 steps unpipelined); every pop checks the sample and the wait.

Arithmetic is a strategy object (:class:`golden.float_arith.FloatArithmetic`, or the integer one):
this module never computes on values itself, it only routes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from golden.conv import split_parameters
from pbhw.core.config import Algorithm
from pbhw.core.plan import Plan, StagePlan
from pbhw.core.weights import initial_weights

__all__ = ["ConvStage", "Pipeline", "Stage", "StageStep", "StepRecord", "Completion"]


@dataclass
class StashEntry:
    sample: int
    x: Any
    mask: Any
    weights: tuple[Any, Any] | None  # weights the forward used (weight stashing only)


@dataclass
class StageStep:
    """What one stage did in one step (``None`` where it had nothing to do)."""

    forward_sample: int | None = None
    output: Any = None
    backward_sample: int | None = None
    error: Any = None  # error sent to the previous stage (None for stage 1)
    updated: bool = False


@dataclass
class StepRecord:
    step: int
    stages: list[StageStep]
    loss_sample: int | None = None
    loss_error: Any = None


@dataclass
class Completion:
    """A sample whose forward reached the loss unit: its prediction and loss."""

    sample: int
    label: int
    prediction: int
    loss: float
    step: int


class Stage:
    """One pipeline stage: its state, its stash FIFO and its counters."""

    def __init__(self, plan: StagePlan, arith: Any, state: Any, stashing: bool):
        self.plan = plan
        self.arith = arith
        self.state = state
        self.stashing = stashing
        self.stash: deque[StashEntry] = deque()
        self.max_stash = 0
        self.updates = 0

    @property
    def delay(self) -> int:
        return self.plan.delay

    def forward(self, sample: int, x: Any) -> Any:
        w, b = self.arith.predicted(self.plan, self.state)
        y, mask = self.arith.forward(self.plan, w, b, x)
        # Stashed weights must be a copy: w may be the live tensor that updates modify in place.
        kept = None
        if self.stashing:
            kept = (self.arith.snapshot(w), None if b is None else self.arith.snapshot(b))
        self.stash.append(StashEntry(sample, x, mask, kept))
        self.max_stash = max(self.max_stash, len(self.stash))
        return y

    def pop(self, sample: int) -> StashEntry:
        """The stash entry of ``sample``: the oldest (the schedule is FIFO by construction)."""
        entry = self.stash.popleft()
        if entry.sample != sample:
            raise AssertionError(
                f"stage {self.plan.index}: backward of sample {sample} but the "
                f"stash holds sample {entry.sample} first"
            )
        return entry

    def backward(self, sample: int, error: Any) -> tuple[Any, StashEntry]:
        entry = self.pop(sample)
        dz = self.arith.output_gradient(self.plan, error, entry.mask)
        error_in = None
        if self.plan.index > 1:
            w = entry.weights[0] if self.stashing else self.state.w
            error_in = self.arith.backward(self.plan, w, dz)
        return (dz, entry), error_in

    def update(self, pending: tuple[Any, StashEntry]) -> None:
        dz, entry = pending
        self.arith.update(self.plan, self.state, dz, entry.x)
        self.updates += 1


class ConvStage(Stage):
    """A convolutional stage (:mod:`golden.conv`): every parameter in one flat vector; the
    forward may add a residual and the backward sends an error back along it."""

    def __init__(self, plan: StagePlan, arith: Any, state: Any, stashing: bool):
        super().__init__(plan, arith, state, stashing)
        #: the error the last backward sent along the residual (None without one)
        self.residual_error: Any = None

    def forward(self, sample: int, x: Any, residual: Any = None) -> Any:
        flat, params = self.arith.conv_predicted(self.plan, self.state)
        y, ctx = self.arith.conv_forward(self.plan, params, x, residual, self.state)
        # Stashed parameters must be a copy: ``flat`` is the live vector or a reused buffer
        # (the float model's, split into named views; the integer model's codes are a matrix).
        kept = None
        if self.stashing:
            kept = self.arith.snapshot(flat)
            if isinstance(kept, torch.Tensor):
                kept = split_parameters(self.plan, kept)
        self.stash.append(StashEntry(sample, x, ctx, kept))
        self.max_stash = max(self.max_stash, len(self.stash))
        return y

    def backward(self, sample: int, error: Any) -> tuple[Any, Any]:
        entry = self.pop(sample)
        params = entry.weights if self.stashing else self.state.params
        grad, error_in, self.residual_error = self.arith.conv_backward(
            self.plan, params, entry.x, entry.mask, error, self.state
        )
        return grad, error_in

    def update(self, pending: Any) -> None:
        self.arith.conv_update(self.plan, self.state, pending)
        self.updates += 1


@dataclass
class _Held:
    """A value crossing a residual: the sample, the step it was sent and the value."""

    sample: int
    step: int
    value: Any


class Pipeline:
    """A stack of stages run on the PB schedule (or, for ``sgd``, with zero delays)."""

    def __init__(self, plan: Plan, arith: Any, weights: list | None = None):
        self.plan = plan
        self.arith = arith
        cfg = plan.config
        self.pipelined = cfg.optimizer.algorithm is Algorithm.PB
        stashing = self.pipelined and cfg.optimizer.weight_stashing
        weights = initial_weights(plan) if weights is None else weights
        self.stages: list[Stage] = [
            ConvStage(st, arith, arith.init_conv_state(st, params), stashing)
            if st.conv
            else Stage(st, arith, arith.init_state(st, *params), stashing)
            for st, params in zip(plan.stages, weights, strict=True)
        ]
        # An arithmetic may work on all stages' states at once (the integer one joins their
        # predictions and updates): it is given them here, and defers updates to end_step.
        attach = getattr(arith, "attach", None)
        if attach is not None:
            attach([stage.state for stage in self.stages])
        self._end_step = getattr(arith, "end_step", None)
        # Residuals: consumer stage i (0-based) adds the output of stage i - N.
        self._residual_source = {
            i: i - st.spec.residual
            for i, st in enumerate(plan.stages)
            if st.spec is not None and st.spec.residual
        }
        self._residual_wait = {
            i: i - j if self.pipelined else 0 for i, j in self._residual_source.items()
        }
        self._held_forward: dict[int, deque[_Held]] = {i: deque() for i in self._residual_source}
        self._held_error: dict[int, deque[_Held]] = {i: deque() for i in self._residual_source}
        self.step_index = 0
        self._next_sample = 0
        self._labels: dict[int, int] = {}
        # Values latched at the end of the previous step (pipelined mode only).
        self._fwd_latch: list[tuple[int, Any] | None] = [None] * len(self.stages)
        self._err_latch: list[tuple[int, Any] | None] = [None] * len(self.stages)

    @property
    def in_flight(self) -> bool:
        return any(e is not None for e in self._fwd_latch + self._err_latch) or any(
            st.stash for st in self.stages
        )

    def step(
        self,
        x: torch.Tensor | None = None,
        label: int | None = None,
        record: bool = False,
        encoded: Any = None,
    ) -> tuple[Completion | None, StepRecord | None]:
        """Advance one step, feeding sample ``(x, label)`` (or a bubble when ``x`` is None).

        ``encoded`` may carry the sample already in the arithmetic's input representation
        (see ``encode_inputs``); then ``x`` is ignored."""
        L = len(self.stages)
        t = self.step_index
        steps = [StageStep() for _ in range(L)] if record else None
        self.arith.begin_step(t)
        incoming: tuple[int, Any] | None = None
        if x is not None or encoded is not None:
            if encoded is None:
                encoded = self.arith.encode_input(x)
            incoming = (self._next_sample, encoded)
            self._labels[self._next_sample] = int(label)
            self._next_sample += 1

        # Forward: each stage reads what its predecessor latched last step (or, unpipelined,
        # what it produced this step).
        fwd_out: list[tuple[int, Any] | None] = [None] * L
        for i, stage in enumerate(self.stages):
            src = (
                incoming
                if i == 0
                else (self._fwd_latch[i - 1] if self.pipelined else fwd_out[i - 1])
            )
            if src is not None:
                if i in self._residual_source:
                    residual = self._take(self._held_forward[i], src[0], t, i, "output")
                    fwd_out[i] = (src[0], stage.forward(src[0], src[1], residual))
                else:
                    fwd_out[i] = (src[0], stage.forward(src[0], src[1]))
                for consumer, source in self._residual_source.items():
                    if source == i:
                        self._held_forward[consumer].append(_Held(src[0], t, fwd_out[i][1]))
                if steps:
                    steps[i].forward_sample, steps[i].output = fwd_out[i]

        # Loss unit: turns stage L's output into the first error vector.
        completion, loss_err = None, None
        if fwd_out[L - 1] is not None:
            sample, y = fwd_out[L - 1]
            error, loss = self.arith.loss(y, self._labels[sample])
            completion = Completion(
                sample, self._labels.pop(sample), self.arith.label_of(y), loss, t
            )
            loss_err = (sample, error)

        # Backward, stage L down to 1, with the weights held at the start of the step.
        err_out: list[tuple[int, Any] | None] = [None] * L
        pending: list[Any] = [None] * L
        for i in reversed(range(L)):
            if i == L - 1:
                src = self._err_latch[i] if self.pipelined else loss_err
            else:
                src = self._err_latch[i] if self.pipelined else err_out[i + 1]
            if src is None:
                continue
            error = src[1]
            for consumer, source in self._residual_source.items():
                if source == i:
                    held = self._take(self._held_error[consumer], src[0], t, consumer, "error")
                    error = self.arith.add_errors(self.stages[i].plan, error, held)
            pending[i], error_in = self.stages[i].backward(src[0], error)
            if i in self._residual_source:
                stage = self.stages[i]
                assert isinstance(stage, ConvStage)
                self._held_error[i].append(_Held(src[0], t, stage.residual_error))
            if i > 0:
                err_out[i] = (src[0], error_in)
            if steps:
                steps[i].backward_sample, steps[i].error = src[0], error_in

        # Updates, at the end of the step.
        for i, stage in enumerate(self.stages):
            if pending[i] is not None:
                stage.update(pending[i])
                if steps:
                    steps[i].updated = True
        if self._end_step is not None:
            self._end_step()

        # Latch: stage i's forward feeds stage i+1 next step; the loss error feeds stage L next
        # step; stage i's backward error feeds stage i-1 next step.
        if self.pipelined:
            self._fwd_latch = fwd_out
            self._err_latch = [err_out[i + 1] if i + 1 < L else loss_err for i in range(L)]
        self.step_index += 1
        rec = StepRecord(t, steps, *(loss_err if loss_err else (None, None))) if record else None
        return completion, rec

    def _take(self, fifo: deque[_Held], sample: int, step: int, consumer: int, what: str) -> Any:
        """Pop the value a residual holds for ``sample``, checking it waited exactly the
        schedule's number of steps."""
        held = fifo.popleft()
        wait = self._residual_wait[consumer]
        if held.sample != sample or step - held.step != wait:
            raise AssertionError(
                f"residual into stage {consumer + 1}: the {what} of sample {sample} in step "
                f"{step} found sample {held.sample} sent in step {held.step} (wait {wait})"
            )
        return held.value

    def run(
        self, xs: Iterable[torch.Tensor], labels: Iterable[int], drain: bool = True
    ) -> Iterator[Completion]:
        """Stream samples through the pipeline, yielding a completion per sample."""
        for x, label in zip(xs, labels, strict=True):
            done, _ = self.step(x, label)
            if done is not None:
                yield done
        if drain:
            yield from self.drain()

    def drain(self) -> Iterator[Completion]:
        """Feed bubbles until every sample in flight has done its update."""
        while self.in_flight:
            done, _ = self.step()
            if done is not None:
                yield done

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Network outputs for a batch with the current weights (no pipeline, no prediction)."""
        return self.arith.evaluate([s.plan for s in self.stages], [s.state for s in self.stages], x)
