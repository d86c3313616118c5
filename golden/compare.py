"""Compare what an RTL simulation observed with the golden trace, and name the first difference.

The observation is simulator-neutral (plain codes), so the Amaranth-simulator tests, the cocotb
testbenches and ``pbhw verify`` share this one comparison. Exact equality only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from golden.trace import Trace

__all__ = ["Mismatch", "Observed", "first_mismatch", "vector_mismatch"]


@dataclass
class Observed:
    """Tokens an RTL run produced, in the order each stream carried them.

    ``forward[l]`` / ``error[l]`` hold stage ``l + 1``'s forward and error tokens, one per step,
    as ``(bubble, codes)``; ``error[0]`` stays empty (stage 1 sends none). ``results`` holds one
    ``(label, prediction, delta codes)`` per sample. ``weights`` / ``velocities`` are the final
    memory contents per stage (flat, row-major) and ``saturation`` the counters by name."""

    forward: list[list[tuple[int, list[int]]]]
    error: list[list[tuple[int, list[int]]]]
    results: list[tuple[int, int, list[int]]] = field(default_factory=list)
    weights: list[list[int]] | None = None
    velocities: list[list[int]] | None = None
    saturation: dict[str, int] | None = None


@dataclass(frozen=True)
class Mismatch:
    step: int | None
    stage: int | None
    role: str
    element: int | None
    rtl: object
    golden: object

    def __str__(self) -> str:
        where = []
        if self.step is not None:
            where.append(f"step {self.step}")
        if self.stage is not None:
            where.append(f"stage {self.stage}")
        where.append(self.role)
        if self.element is not None:
            where.append(f"element {self.element}")
        return f"first mismatch at {', '.join(where)}: RTL {self.rtl}, golden {self.golden}"


def vector_mismatch(step, stage, role, got, want) -> Mismatch | None:
    """The first difference of a streamed vector ``got`` (``(bubble, codes)`` or None for no
    token) from the golden codes ``want``, or None when they are equal."""
    want = [int(v) for v in np.asarray(want).reshape(-1)]
    if got is None:
        return Mismatch(step, stage, role, None, "no token", "a token")
    bubble, codes = got
    if bubble:
        return Mismatch(step, stage, role, None, "a bubble", "a sample")
    if len(codes) != len(want):
        return Mismatch(step, stage, role, None, f"{len(codes)} codes", f"{len(want)} codes")
    for i, (a, b) in enumerate(zip(codes, want, strict=True)):
        if a != b:
            return Mismatch(step, stage, role, i, a, b)
    return None


def first_mismatch(trace: Trace, seen: Observed) -> Mismatch | None:
    """The first difference, in step order (forward outputs, errors, loss error of each step),
    then the final weights, velocities and saturation counters; ``None`` when bit-exact."""
    L = len(trace.plan.stages)
    loss_step = {}
    for e in trace.events:
        if e.stage == L and e.forward_sample is not None:
            loss_step[e.forward_sample] = e.step
    by_step: dict[int, list] = {}
    for e in trace.events:
        by_step.setdefault(e.step, []).append(e)
    for step in sorted(by_step):
        for e in sorted(by_step[step], key=lambda e: e.stage):
            i = e.stage - 1
            if e.output is not None:
                got = seen.forward[i][step] if step < len(seen.forward[i]) else None
                found = vector_mismatch(step, e.stage, "forward output", got, e.output)
                if found:
                    return found
            if e.error is not None:
                got = seen.error[i][step] if step < len(seen.error[i]) else None
                found = vector_mismatch(step, e.stage, "error", got, e.error)
                if found:
                    return found
        for sample, s in loss_step.items():
            if s != step:
                continue
            if sample >= len(seen.results):
                return Mismatch(step, L, "loss error", None, "no result", "a result")
            label, prediction, delta = seen.results[sample]
            found = vector_mismatch(step, L, "loss error", (0, delta), trace.loss_errors[sample])
            if found:
                return found
            if prediction != trace.predictions[sample]:
                return Mismatch(step, L, "prediction", None, prediction, trace.predictions[sample])
            if label != trace.labels[sample]:
                return Mismatch(step, L, "label", None, label, trace.labels[sample])
    for role, got_all, want_all in (
        ("final weight", seen.weights, trace.final_weights),
        ("final velocity", seen.velocities, trace.final_velocities),
    ):
        if got_all is None:
            continue
        for i, (got, want) in enumerate(zip(got_all, want_all, strict=True)):
            found = vector_mismatch(None, i + 1, role, (0, list(got)), want)
            if found:
                return found
    if seen.saturation is not None:
        for name in sorted(set(seen.saturation) | set(trace.saturation)):
            if "input" in name:
                continue  # input codes are quantized on the host, not counted in hardware
            a, b = seen.saturation.get(name, 0), int(trace.saturation.get(name, 0))
            if a != b:
                return Mismatch(None, None, f"saturation counter '{name}'", None, a, b)
    return None
