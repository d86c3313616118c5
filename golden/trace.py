"""Transaction traces of the bit-exact model: what the RTL must produce, step by step.

:func:`run_trace` streams samples through the pipeline with the integer arithmetic and records,
per step and stage, the forward output codes and the error codes the stage sends back, plus the
initial and final weight and velocity codes and the saturation counters. The testbenches and
``pbhw verify`` compare the RTL against exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from golden.fixed_arith import FixedArithmetic
from golden.pipeline import Pipeline
from pbhw.core.plan import Plan
from pbhw.core.weights import initial_weights

__all__ = ["StageEvent", "Trace", "run_trace"]


@dataclass(frozen=True)
class StageEvent:
    """What one stage did in one step (codes; ``None`` where it had nothing to do)."""

    step: int
    stage: int  # 1-based
    forward_sample: int | None
    output: np.ndarray | None  # forward output codes, [N_out]
    backward_sample: int | None
    error: np.ndarray | None  # error codes sent to stage - 1, [N_in]; None for stage 1
    updated: bool


@dataclass
class Trace:
    plan: Plan
    inputs: np.ndarray  # [S, N_in] input codes
    labels: list[int]
    events: list[StageEvent] = field(default_factory=list)
    loss_errors: dict[int, np.ndarray] = field(default_factory=dict)  # sample -> [N_out]
    predictions: dict[int, int] = field(default_factory=dict)
    initial_weights: list[np.ndarray] = field(default_factory=list)  # [N_out, N_in (+1)]
    final_weights: list[np.ndarray] = field(default_factory=list)
    final_velocities: list[np.ndarray] = field(default_factory=list)
    saturation: dict[str, int] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return 1 + max((e.step for e in self.events), default=-1)

    def stage_events(self, stage: int) -> list[StageEvent]:
        return [e for e in self.events if e.stage == stage]


def run_trace(
    plan: Plan,
    x: torch.Tensor,
    labels: list[int] | torch.Tensor,
    weights: list | None = None,
) -> Trace:
    """Run ``len(x)`` samples through the bit-exact pipeline and drain it, recording all."""
    labels = [int(v) for v in labels]
    arith = FixedArithmetic(plan)
    pipe = Pipeline(plan, arith, initial_weights(plan) if weights is None else weights)
    trace = Trace(plan, np.zeros((0, plan.stages[0].n_in), dtype=np.int64), labels)
    trace.initial_weights = [s.state.w[0].copy() for s in pipe.stages]
    inputs = []

    def record(rec, done) -> None:
        for i, st in enumerate(rec.stages):
            trace.events.append(
                StageEvent(
                    rec.step,
                    i + 1,
                    st.forward_sample,
                    None if st.output is None else np.asarray(st.output)[0].copy(),
                    st.backward_sample,
                    None if st.error is None else np.asarray(st.error)[0].copy(),
                    st.updated,
                )
            )
        if rec.loss_sample is not None:
            trace.loss_errors[rec.loss_sample] = np.asarray(rec.loss_error)[0].copy()
        if done is not None:
            trace.predictions[done.sample] = int(np.asarray(done.prediction).reshape(-1)[0])

    for row, label in zip(x, labels, strict=True):
        arith.begin_step(pipe.step_index)
        codes = arith.encode_input(row)
        inputs.append(codes[0])
        done, rec = pipe.step(None, label, record=True, encoded=codes)
        record(rec, done)
    while pipe.in_flight:
        done, rec = pipe.step(record=True)
        record(rec, done)
    trace.inputs = np.stack(inputs) if inputs else trace.inputs
    trace.final_weights = [s.state.w[0].copy() for s in pipe.stages]
    trace.final_velocities = [s.state.v[0].copy() for s in pipe.stages]
    trace.saturation = {k: v[0] for k, v in arith.saturation_counts().items()}
    return trace
