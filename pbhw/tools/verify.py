"""``pbhw verify``: simulate the generated Verilog and compare it with the golden model bit for bit.

The samples are the first ``N`` training samples of the config's dataset. The golden trace
(:func:`golden.trace.run_trace`) fixes every forward and error token of every stage and step, every
loss error and prediction, and the final W, V and saturation counters; the cocotb testbench
``pbhw/tools/testbench/network.py`` records the same from the RTL under Verilator or Icarus, and
:func:`golden.compare.first_mismatch` names the first difference.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from amaranth.lib import data

from golden.compare import Mismatch, Observed, first_mismatch, vector_mismatch
from golden.fixed_arith import FixedArithmetic
from golden.pipeline import Pipeline
from golden.trace import Trace, run_trace
from pbhw.core.config import Config, ConfigError
from pbhw.core.datasets import load
from pbhw.core.errors import ToolError, UserError
from pbhw.core.io import check_output_file
from pbhw.core.plan import derive_plan
from pbhw.core.weights import initial_weights
from pbhw.tools.harness import (
    VERILATOR_FLAGS,
    WAVE_FLAGS,
    HarnessBuild,
    HarnessTrace,
    Pause,
    build_harness,
    run_harness,
)
from pbhw.tools.toolchain import sim_build, sim_test
from pbhw.tools.train import check_fits, epoch_orders
from rtl_gen.counters import COUNTER_BITS
from rtl_gen.design import build_design
from rtl_gen.generate import Generated, top_name, verilog_text
from rtl_gen.top import DEBUG_LATENCY

__all__ = [
    "WAVES_MARGIN_SAMPLES",
    "WAVES_WHOLE_RUN",
    "EpochTrace",
    "Snapshot",
    "VerifyResult",
    "Waves",
    "check_waves_file",
    "compare_epochs",
    "decode_counters",
    "decode_memories",
    "decode_results",
    "golden_epochs",
    "observe",
    "run_rtl",
    "unpack_row",
    "verify",
    "verify_epochs",
    "waves_window",
]

#: ``--waves`` dumps a run of at most this many cycles whole.
WAVES_WHOLE_RUN = 20_000
#: Else it dumps this many predicted cycles per sample before and after the first mismatch's cycle
#: (the end of the run when it is bit-exact).
WAVES_MARGIN_SAMPLES = 4


@dataclass(frozen=True)
class Waves:
    """A waveform file written by ``--waves``: the harness cycles ``[from_cycle, to_cycle)``."""

    file: str
    from_cycle: int
    to_cycle: int


@dataclass(frozen=True)
class VerifyResult:
    config: str
    simulator: str
    bit_exact: bool
    mismatch: str | None
    samples: int
    steps: int
    measured_cycles_per_sample: float | None
    predicted_cycles_per_sample: int
    sim_seconds: float
    build_seconds: float
    rebuilt: bool
    cycles: int
    #: ``--epochs``: whole epochs in the trainer's order on the compiled harness, the test
    #: accuracy of the RTL's final weights and of the golden model's, and the simulation speed
    #: (the cycles over the harness's time in its simulation loop; ``sim_seconds`` is the
    #: harness process's wall time)
    epochs: int | None = None
    rtl_test_accuracy: float | None = None
    golden_test_accuracy: float | None = None
    sim_cycles_per_second: float | None = None
    #: ``--waves``: the waveform file and the window of cycles it holds
    waves: Waves | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.bit_exact and self.epochs is not None:
            return (
                f"bit-exact: {self.epochs} epochs, {self.samples} samples, {self.steps} steps, "
                f"{self.cycles:,} cycles on the compiled harness ({self.simulator}), "
                f"{self.measured_cycles_per_sample:g} cycles/sample (predicted "
                f"{self.predicted_cycles_per_sample}); test accuracy of the RTL's weights "
                f"{100 * self.rtl_test_accuracy:.2f} % (golden model "
                f"{100 * self.golden_test_accuracy:.2f} %); build {self.build_seconds:.1f} s, "
                f"simulation {self.sim_seconds:.1f} s ({self.sim_cycles_per_second:,.0f} cycles/s)"
            )
        if self.bit_exact:
            cps = self.measured_cycles_per_sample
            cycles = "" if cps is None else f", {cps:g} cycles/sample (predicted "
            cycles += "" if cps is None else f"{self.predicted_cycles_per_sample})"
            return (
                f"bit-exact: {self.samples} samples, {self.steps} steps on {self.simulator}"
                f"{cycles}; build {self.build_seconds:.1f} s, simulation {self.sim_seconds:.1f} s"
            )
        return f"NOT bit-exact on {self.simulator}: {self.mismatch}"


def dataset_samples(config: Config, samples: int):
    """The first ``samples`` training samples of the config's dataset."""

    ds = load(config.train.dataset)
    if samples < 1:
        raise ConfigError(f"--samples must be a positive integer, not {samples}")
    if samples > len(ds.y_train):
        raise ConfigError(
            f"--samples must be at most the {len(ds.y_train)} training samples of "
            f"{config.train.dataset}, not {samples}"
        )
    check_fits(config, ds)
    return ds.x_train[:samples], ds.y_train[:samples]


def _decode(layout, raw: int, field: str) -> tuple[int, list[int]]:
    token = data.Const(layout, raw)
    vec = getattr(token, field)
    return int(token.bubble), [int(vec[i]) for i in range(layout.members[field].length)]


def unpack_row(row: int, width: int, signed: bool, lanes: int) -> list[int]:
    """The ``lanes`` codes of a memory row read through the debug port (lane 0 lowest)."""
    out = []
    for p in range(lanes):
        c = (row >> (p * width)) & ((1 << width) - 1)
        out.append(c - (1 << width) if signed and c >> (width - 1) else c)
    return out


def observe(design, trace: Trace, raw: dict[str, Any]) -> tuple[Observed, list[int]]:
    """Decode the testbench's raw integers into an :class:`Observed`."""
    net = design.network
    L = len(net.stages)
    seen = Observed([[] for _ in range(L)], [[] for _ in range(L)])
    for i, st in enumerate(net.stages):
        fwd = st.fwd_o.payload.shape()
        seen.forward[i] = [_decode(fwd, v, "x") for v in raw["streams"][f"fwd{i}"]]
        if i:
            err = st.err_o.payload.shape()
            seen.error[i] = [_decode(err, v, "e") for v in raw["streams"][f"err{i}"]]
    seen.results = decode_results(net, raw["results"])
    seen.weights, seen.velocities = decode_memories(net, raw["memories"])
    seen.saturation = decode_counters(net, raw["saturation"])
    return seen, raw["taken"]


def decode_results(net, values) -> list[tuple[int, int, list[int]]]:
    """``(label, prediction, delta codes)`` of each result payload (an unsigned integer)."""
    layout = net.results.payload.shape()
    out = []
    for v in values:
        r = data.Const(layout, v)
        delta = [int(r.delta[k]) for k in range(layout.members["delta"].length)]
        out.append((int(r.label), int(r.prediction), delta))
    return out


def decode_memories(net, memories) -> tuple[list[list[int]], list[list[int]]]:
    """Flat W and V codes per stage from the rows read through the debug port,
    ``memories[stage] = (W rows, V rows)``."""
    weights, velocities = [], []
    for st, (w_rows, v_rows) in zip(net.stages, memories, strict=True):
        for rows, bits, fmt, out in (
            (w_rows, st.weight_bits, st.plan.formats.weight.format, weights),
            (v_rows, st.velocity_bits, st.plan.formats.velocity.format, velocities),
        ):
            codes = [c for row in rows for c in unpack_row(row, bits, fmt.signed, st.lanes)]
            out.append(codes[: st.weights])
    return weights, velocities


def decode_counters(net, value: int) -> dict[str, int]:
    """The saturation counters by name from the value of the ``saturation`` port."""
    return {
        name: (value >> (COUNTER_BITS * k)) & ((1 << COUNTER_BITS) - 1)
        for k, name in enumerate(net.counter_names())
    }


def stream_payloads(net, plan, inputs, labels) -> list[int]:
    """The ``samples`` payloads (unsigned integers) of the input codes ``inputs`` with their
    ``labels``, then the ``2L - 1`` bubbles that drain the network."""
    layout = net.samples.payload.shape()
    payloads = [
        layout.const({"bubble": 0, "label": int(label), "x": [int(v) for v in row]})
        .as_value()
        .value
        for row, label in zip(inputs, labels, strict=True)
    ]
    n_in = plan.stages[0].n_in
    bubble = layout.const({"bubble": 1, "label": 0, "x": [0] * n_in}).as_value().value
    return payloads + [bubble] * (2 * len(net.stages) - 1)


def run_rtl(
    design,
    trace: Trace,
    *,
    simulator: str = "verilator",
    idle: float = 0.0,
    backpressure: float = 0.0,
    seed: int = 0,
    top: str | None = None,
    verilog: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Observed, list[int], dict[str, Any]]:
    """Build (or reuse) the simulation model of ``design`` and run the trace's samples;
    ``progress`` hears of the build and the run.

    ``verilog`` is the design's Verilog with module ``top`` when the caller has it already (as
    :func:`rtl_gen.generate.generate` wrote it); by default the design is converted here."""

    top = top or top_name(design.config)
    net = design.network
    payloads = stream_payloads(net, design.plan, trace.inputs, trace.labels)
    per_sample = net.predicted_cycles_per_sample
    spec = {
        "stages": len(net.stages),
        "samples": len(trace.labels),
        "payloads": payloads,
        "rows": [st.rows for st in net.stages],
        "idle": idle,
        "backpressure": backpressure,
        "seed": seed,
        "quiet_cycles": net.quiet_cycles,
        "debug_latency": DEBUG_LATENCY,
        "timeout_cycles": 20 * per_sample * (len(payloads) + 4) + 1000,
    }
    say = progress or (lambda message: None)
    start = time.perf_counter()
    if verilog is None:
        verilog = verilog_text(design, top)
    say(
        f"{simulator} model for cocotb: building, or reusing an identical earlier build (a "
        "large design takes minutes; builds are cached by content hash) ..."
    )
    build = sim_build(verilog, top, simulator=simulator)
    build_seconds = time.perf_counter() - start
    say(
        f"{simulator} model {'built' if build.rebuilt else 'reused'} ({build_seconds:.0f} s); "
        f"simulating {len(trace.labels)} samples under cocotb ..."
    )
    with tempfile.TemporaryDirectory(prefix="pbhw-verify-") as tmp:
        stim, observed = Path(tmp) / "stimulus.json", Path(tmp) / "observed.json"
        stim.write_text(json.dumps(spec))
        start = time.perf_counter()
        sim_test(
            build,
            "pbhw.tools.testbench.network",
            test_dir=Path(tmp) / "run",
            extra_env={"PBHW_STIMULUS": str(stim), "PBHW_OBSERVED": str(observed)},
        )
        sim_seconds = time.perf_counter() - start
        raw = json.loads(observed.read_text())
    seen, taken = observe(design, trace, raw)
    info = {
        "build_seconds": build_seconds,
        "sim_seconds": sim_seconds,
        "rebuilt": build.rebuilt,
    }
    return seen, taken, info


def steady_cycles_per_sample(taken: list[int], samples: int) -> float | None:
    """Median spacing of accepted samples in the second half of the run (steady state)."""
    real = taken[:samples]
    if len(real) < 4:
        return None
    diffs = np.diff(real[len(real) // 2 :])
    return float(np.median(diffs))


def verify(
    config: Config,
    *,
    samples: int = 200,
    simulator: str = "verilator",
    idle: float = 0.0,
    backpressure: float = 0.0,
    seed: int = 0,
    x=None,
    labels=None,
    generated: Generated | None = None,
    waves: str | os.PathLike[str] | None = None,
    waves_whole: int = WAVES_WHOLE_RUN,
    progress: Callable[[str], None] | None = None,
) -> VerifyResult:
    """Generate, simulate and compare ``samples`` samples (the dataset's, or ``x``/``labels``).

    ``generated`` is ``config``'s design as :func:`rtl_gen.generate.generate` returned it: its
    design and Verilog are simulated as they are, instead of building and converting the design
    again (``pbhw flow`` generates once); a design of another config is refused (ValueError).

    ``waves`` is an FST or VCD file (by its suffix) to which the same samples, run again on the
    compiled harness built with tracing (Verilator only), dump :func:`waves_window`'s cycles
    around the cycle at which the harness accepted the sample of the first mismatch's step;
    runs of at most ``waves_whole`` cycles whole."""
    if waves is not None:
        waves = check_waves_file(waves)
        if simulator != "verilator":
            raise UserError(f"--waves runs on the Verilator harness, not --simulator {simulator}")
    if generated is None:
        design, verilog, top = build_design(config), None, None
    else:
        generated.check_config(config)
        design, verilog, top = generated.design, generated.verilog, generated.manifest.top
    if x is None:
        x, labels = dataset_samples(config, samples)
    if waves is not None and verilog is None:
        top = top_name(config)
        verilog = verilog_text(design, top)
    trace = run_trace(design.plan, x, labels)
    seen, taken, info = run_rtl(
        design,
        trace,
        simulator=simulator,
        idle=idle,
        backpressure=backpressure,
        seed=seed,
        top=top,
        verilog=verilog,
        progress=progress,
    )
    found = first_mismatch(trace, seen)
    n = len(trace.labels)
    per_sample = design.network.predicted_cycles_per_sample
    dumped = None
    if waves is not None:
        payloads = stream_payloads(design.network, design.plan, trace.inputs, trace.labels)
        step = None if found is None else found.step

        def window(run: HarnessTrace) -> tuple[int, int]:
            at = None if step is None else int(run.taken[min(step, len(run.taken) - 1)])
            return waves_window(run.cycles, per_sample, at, waves_whole)

        dumped = _write_waves(
            verilog,
            top,
            design.network,
            payloads,
            [Pause(len(payloads), n, drained=True)],
            waves,
            window,
            None,
            idle=idle,
            backpressure=backpressure,
            seed=seed,
            progress=progress,
        )
    return VerifyResult(
        config=config.name,
        simulator=simulator,
        bit_exact=found is None,
        mismatch=None if found is None else str(found),
        samples=n,
        steps=trace.steps,
        measured_cycles_per_sample=steady_cycles_per_sample(taken, n),
        predicted_cycles_per_sample=per_sample,
        sim_seconds=info["sim_seconds"],
        build_seconds=info["build_seconds"],
        rebuilt=info["rebuilt"],
        cycles=(taken[-1] if taken else 0),
        waves=dumped,
    )


# --------------------------------------------------------------------------------------------
# Waveforms (``pbhw verify --waves FILE``): the run again on a harness built with tracing.


def check_waves_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a waveform file ``--waves`` can write: its suffix ``.fst`` or ``.vcd`` (the
    format) and its folder writable.

    Raises
    ------
    UserError
        Naming ``--waves`` and what is allowed.
    """
    path = Path(path)
    if path.suffix not in WAVE_FLAGS:
        raise UserError(
            f"--waves must name a file ending in {' or '.join(WAVE_FLAGS)}, not '{path}'"
        )
    check_output_file(path, "--waves")
    return path


def waves_window(
    cycles: int, per_sample: int, at: int | None, whole: int = WAVES_WHOLE_RUN
) -> tuple[int, int]:
    """The cycles ``[from, to)`` that ``--waves`` dumps of a run of ``cycles`` cycles: all of
    them if at most ``whole``, else :data:`WAVES_MARGIN_SAMPLES` times ``per_sample`` cycles
    before and after cycle ``at`` (the first mismatch's), or the last such window of the run when
    ``at`` is None (bit-exact)."""
    if cycles <= whole:
        return 0, cycles
    margin = WAVES_MARGIN_SAMPLES * per_sample
    if at is None:
        return max(0, cycles - 2 * margin), cycles
    at = min(max(at, 0), cycles - 1)
    return max(0, at - margin), min(cycles, at + margin + 1)


def _run_payloads(
    build: HarnessBuild,
    net,
    payloads: Sequence[int],
    pauses: Sequence[Pause],
    *,
    idle: float,
    backpressure: float,
    seed: int,
    plusargs: Sequence[str] = (),
    waves: Path | None = None,
    window: tuple[int, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> HarnessTrace:
    """Stream ``payloads`` of the network ``net`` through a compiled harness (the harness's
    arguments as the network sets them)."""
    per_sample = net.predicted_cycles_per_sample
    return run_harness(
        build,
        payloads,
        net.samples.payload.shape().size,
        rows=[st.rows for st in net.stages],
        pauses=pauses,
        quiet_cycles=net.quiet_cycles,
        settle_cycles=net.quiet_cycles + 2 * per_sample,
        debug_latency=DEBUG_LATENCY,
        stall_cycles=50 * per_sample + 10_000,
        result_bits=net.results.payload.shape().size,
        debug_bits=len(net.dbg_data),
        counter_bits=len(net.saturation.as_value()),
        idle=idle,
        backpressure=backpressure,
        seed=seed,
        plusargs=plusargs,
        waves=waves,
        waves_window=window,
        progress=progress,
    )


def _write_waves(
    verilog: str,
    top: str,
    net,
    payloads: Sequence[int],
    pauses: Sequence[Pause],
    waves: Path,
    window: Callable[[HarnessTrace], tuple[int, int]],
    untraced: HarnessTrace | None,
    *,
    idle: float,
    backpressure: float,
    seed: int,
    plusargs: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> Waves:
    """Run ``payloads`` again on the harness built with tracing and write the cycles
    ``window(untraced)`` to ``waves`` (written in a temporary folder beside it and renamed into
    place once complete). ``untraced`` is the run being dumped; without it (the cocotb path)
    the traced build runs once to find the cycles first. The traced run must be the same run:
    its cycles and results are checked against ``untraced``'s."""
    say = progress or (lambda message: None)
    waves = Path(waves)
    build = build_harness(
        verilog, top, flags=(*VERILATOR_FLAGS, *WAVE_FLAGS[waves.suffix]), progress=say
    )
    run = functools.partial(
        _run_payloads,
        build,
        net,
        payloads,
        pauses,
        idle=idle,
        backpressure=backpressure,
        seed=seed,
        plusargs=plusargs,
    )
    if untraced is None:
        untraced = run()
    start, end = window(untraced)
    say(f"waves: cycles {start:,} to {end:,} of {untraced.cycles:,} to {waves} ...")
    waves.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{waves.name}-", dir=waves.parent) as partial:
        traced = run(waves=Path(partial) / waves.name, window=(start, end))
        if traced.cycles != untraced.cycles or traced.results != untraced.results:
            raise ToolError(
                f"the traced harness of {top} ran differently ({traced.cycles} cycles, not "
                f"{untraced.cycles}): the waves would not show the run"
            )
        os.replace(Path(partial) / waves.name, waves)
    return Waves(str(waves), start, end)


# --------------------------------------------------------------------------------------------
# Whole training runs on the compiled harness (``pbhw verify --epochs N``).


@dataclass
class Snapshot:
    """Golden W, V (flat codes per stage) and the saturation counters at one pause.

    ``steps[l]`` is the last step whose update stage ``l + 1`` has written by then. When the
    sample stream stops after step ``t`` (an epoch end), stage 1 has done step ``t`` and every
    later stage the pass (and so the update) of step ``t + 1``: a stage starts a step once it
    holds a token from each neighbour, but finishes it only once its previous output tokens are
    taken, and stage 1 takes nothing more. The stages then wait with ``idle`` low, so the
    counters, some of which count in a step's finish, are compared only after the final drain
    (``saturation`` is empty at the other pauses)."""

    steps: list[int]
    weights: list[np.ndarray]
    velocities: list[np.ndarray]
    saturation: dict[str, int]


@dataclass
class EpochTrace:
    """The golden model over whole epochs in the trainer's order (samples streamed across epoch
    boundaries, the pipeline drained once at the end)."""

    inputs: np.ndarray  # [S, N_in] input codes, in streaming order
    x: torch.Tensor  # [S, N_in] the samples themselves
    labels: list[int]
    loss_errors: list[np.ndarray]
    predictions: list[int]
    loss_steps: list[int]
    snapshots: list[Snapshot]  # one per epoch end; the last after the drain
    steps: int
    test_accuracy: float
    final_states: list[Any]
    arith: Any


def _accuracy(arith, plan, states, data) -> float:
    """Test accuracy of ``states`` with the fixed-point forward, as the trainer evaluates."""
    out = np.asarray(arith.evaluate(list(plan.stages), states, data.x_test))[0]
    return float((out.argmax(-1) == data.y_test.numpy()).mean())


def golden_epochs(
    plan, data, epochs: int, progress: Callable[[str], None] | None = None
) -> EpochTrace:
    """Run ``epochs`` epochs of ``data``'s training set through the bit-exact model in the
    trainer's order (:func:`pbhw.tools.train.epoch_orders`), recording every result and W, V and
    the counters where the RTL will be read: at each epoch end (staggered, see
    :class:`Snapshot`) and after the final drain."""
    n = len(data.y_train)
    x = torch.cat([data.x_train[o] for o in epoch_orders(plan.config.seed, n, epochs)])
    labels = torch.cat(
        [data.y_train[o] for o in epoch_orders(plan.config.seed, n, epochs)]
    ).tolist()
    arith = FixedArithmetic(plan)
    pipe = Pipeline(plan, arith, initial_weights(plan))
    L = len(pipe.stages)
    total = len(labels)
    snapshots = [Snapshot([0] * L, [None] * L, [None] * L, {}) for _ in range(epochs)]
    due: dict[int, list[tuple[int, int]]] = {}
    for e in range(epochs - 1):
        last = (e + 1) * n - 1
        for i in range(L):
            due.setdefault(last + min(i, 1), []).append((e, i))
    codes = arith.encode_inputs(x)
    inputs = np.zeros((total, plan.stages[0].n_in), dtype=np.int64)
    loss_errors: list[np.ndarray] = [None] * total
    predictions, loss_steps = [0] * total, [0] * total

    def step(k: int | None) -> None:
        if k is None:
            done, rec = pipe.step(record=True)
        else:
            if codes is None:
                arith.begin_step(pipe.step_index)
                enc = arith.encode_input(x[k])
            else:
                enc = codes[k]
            inputs[k] = enc[0]
            done, rec = pipe.step(None, labels[k], record=True, encoded=enc)
        if rec.loss_sample is not None:
            loss_errors[rec.loss_sample] = np.asarray(rec.loss_error)[0].copy()
            loss_steps[rec.loss_sample] = rec.step
        if done is not None:
            predictions[done.sample] = int(np.asarray(done.prediction).reshape(-1)[0])
        for e, i in due.pop(rec.step, ()):
            st = pipe.stages[i].state
            snap = snapshots[e]
            snap.steps[i] = rec.step
            snap.weights[i], snap.velocities[i] = st.w[0].reshape(-1), st.v[0].reshape(-1)
            snap.weights[i], snap.velocities[i] = snap.weights[i].copy(), snap.velocities[i].copy()

    for k in range(total):
        step(k)
        if progress is not None and (k + 1) % n == 0:
            progress(f"golden model: epoch {(k + 1) // n}/{epochs} streamed")
    while pipe.in_flight:
        step(None)
    final = snapshots[-1]
    final.steps = [pipe.step_index - 1] * L
    final.weights = [s.state.w[0].reshape(-1).copy() for s in pipe.stages]
    final.velocities = [s.state.v[0].reshape(-1).copy() for s in pipe.stages]
    final.saturation = {k: v[0] for k, v in arith.saturation_counts().items()}
    states = [s.state for s in pipe.stages]
    return EpochTrace(
        inputs,
        x,
        labels,
        loss_errors,
        predictions,
        loss_steps,
        snapshots,
        pipe.step_index,
        _accuracy(arith, plan, states, data),
        states,
        arith,
    )


def _first_code(step, stage, role, got, want) -> Mismatch | None:
    """The first differing code of a vector, as :func:`golden.compare.first_mismatch` names it."""
    return vector_mismatch(step, stage, role, (0, list(got)), want)


def _pause_name(pause: int, pauses: int) -> str:
    """How a mismatch at a pause of :func:`verify_epochs` names it: ``epoch N end``, ``final``."""
    return "final" if pause == pauses - 1 else f"epoch {pause + 1} end"


def _mismatch_cycle(raw: HarnessTrace, found: Mismatch, sample: int, epochs: int) -> int:
    """The harness cycle of a mismatch of :func:`compare_epochs`: when the differing result was
    taken, or when the pause at which W, V or a counter differs began its reading (the run's end
    when a result is missing)."""
    if 0 <= sample < len(raw.result_cycles):
        return int(raw.result_cycles[sample])
    for pause in range(epochs):
        if found.role.startswith(_pause_name(pause, epochs) + " "):
            return raw.pause_cycles[pause]
    return raw.cycles - 1


def compare_epochs(gold: EpochTrace, results, snapshots, n: int) -> tuple[Mismatch | None, int]:
    """The first difference between the harness's observations and the golden epochs, epoch by
    epoch (each result of the epoch's samples, then W, V and the counters at its end), and the
    sample whose result differs (-1 if none does).

    ``results`` are ``(label, prediction, delta codes)`` per sample, ``snapshots`` per pause
    ``(weights, velocities, counters)``."""
    L = len(gold.final_states)
    total = len(gold.labels)
    for e, (snap, (weights, velocities, counters)) in enumerate(
        zip(gold.snapshots, snapshots, strict=True)
    ):
        for k in range(e * n, min((e + 1) * n, total) if e < len(gold.snapshots) - 1 else total):
            step = gold.loss_steps[k]
            if k >= len(results):
                return Mismatch(step, L, "loss error", None, "no result", "a result"), k
            label, prediction, delta = results[k]
            found = _first_code(step, L, "loss error", delta, gold.loss_errors[k])
            if found is None and prediction != gold.predictions[k]:
                found = Mismatch(step, L, "prediction", None, prediction, gold.predictions[k])
            if found is None and label != gold.labels[k]:
                found = Mismatch(step, L, "label", None, label, gold.labels[k])
            if found is not None:
                return found, k
        when = _pause_name(e, len(gold.snapshots))
        for i in range(L):
            for role, got, want in (
                (f"{when} weight", weights[i], snap.weights[i]),
                (f"{when} velocity", velocities[i], snap.velocities[i]),
            ):
                found = _first_code(snap.steps[i], i + 1, role, got, want)
                if found is not None:
                    return found, -1
        for name in sorted(snap.saturation):
            if "input" in name:
                continue  # input codes are quantized on the host, not counted in hardware
            a, b = counters.get(name, 0), int(snap.saturation[name])
            if a != b:
                return Mismatch(None, None, f"{when} saturation counter '{name}'", None, a, b), -1
    if len(results) != total:
        return Mismatch(None, L, "results", None, f"{len(results)} results", total), -1
    return None, -1


def verify_epochs(
    config: Config,
    *,
    epochs: int,
    idle: float = 0.0,
    backpressure: float = 0.0,
    seed: int = 0,
    generated: Generated | None = None,
    rtl_design=None,
    localise: bool = True,
    plusargs: Sequence[str] = (),
    waves: str | os.PathLike[str] | None = None,
    waves_whole: int = WAVES_WHOLE_RUN,
    progress: Callable[[str], None] | None = None,
) -> VerifyResult:
    """``epochs`` whole epochs of the training set through the RTL on the compiled harness
    (:mod:`pbhw.tools.harness`), in the trainer's order, compared bit for bit with the golden
    model: every result token (label, prediction, loss error), and W, V and the saturation
    counters at every epoch end and after the final drain. The RTL's final weights are then
    evaluated on the test set with the golden model's fixed-point forward.

    A result that differs is localised by running the samples up to it again under cocotb with
    every inter-stage stream recorded (``localise``), so the mismatch names the step, stage,
    role and element where the RTL first departs. ``rtl_design`` is the design simulated when it
    is not ``config``'s (tests plant a change this way); ``plusargs`` go to the Verilated model.

    ``waves`` is an FST or VCD file (by its suffix) to which the same run, again on a harness
    built with tracing, dumps :func:`waves_window`'s cycles around the first mismatch's (a
    differing result: the cycle it was taken; W, V or a counter: the cycle its reading began);
    runs of at most ``waves_whole`` cycles whole.
    """
    if epochs < 1:
        raise ConfigError(f"--epochs must be a positive integer, not {epochs}")
    if waves is not None:
        waves = check_waves_file(waves)
    say = progress or (lambda message: None)
    data = load(config.train.dataset)
    check_fits(config, data)
    if rtl_design is not None:
        rtl, verilog, top, plan = rtl_design, None, top_name(config), derive_plan(config)
    elif generated is not None:
        generated.check_config(config)
        rtl, verilog, top = generated.design, generated.verilog, generated.manifest.top
        plan = rtl.plan
    else:
        rtl, verilog, top = build_design(config), None, top_name(config)
        plan = rtl.plan
    start = time.perf_counter()
    if verilog is None:
        verilog = verilog_text(rtl, top)
    build = build_harness(verilog, top, progress=say)
    build_seconds = time.perf_counter() - start
    say(f"golden model: {epochs} epochs of {len(data.y_train)} samples ...")
    gold = golden_epochs(plan, data, epochs, progress=say)
    net = rtl.network
    n, total = len(data.y_train), len(gold.labels)
    payloads = stream_payloads(net, plan, gold.inputs, gold.labels)
    # At an epoch end the last sample's result waits in stage L (see Snapshot).
    pauses = [Pause((e + 1) * n, (e + 1) * n - 1, drained=False) for e in range(epochs - 1)]
    pauses.append(Pause(len(payloads), total, drained=True))
    per_sample = net.predicted_cycles_per_sample
    say(f"simulating {total} samples ({epochs} epochs) on the compiled harness ...")
    options = {"idle": idle, "backpressure": backpressure, "seed": seed, "plusargs": plusargs}
    raw = _run_payloads(build, net, payloads, pauses, **options, progress=say)
    results = decode_results(net, raw.results)
    snapshots = []
    for memories, counters in zip(raw.memories, raw.saturation, strict=True):
        snapshots.append((*decode_memories(net, memories), decode_counters(net, counters)))
    found, sample = compare_epochs(gold, results, snapshots, n)
    dumped = None
    if waves is not None:
        at = None if found is None else _mismatch_cycle(raw, found, sample, epochs)
        dumped = _write_waves(
            verilog,
            top,
            net,
            payloads,
            pauses,
            waves,
            lambda run: waves_window(run.cycles, per_sample, at, waves_whole),
            raw,
            **options,
            progress=say,
        )
    if found is not None and sample >= 0 and localise:
        say(f"localising the mismatch of sample {sample}: the samples up to it under cocotb ...")
        prefix = run_trace(plan, gold.x[: sample + 1], gold.labels[: sample + 1])
        seen, _, _ = run_rtl(rtl, prefix, top=top, verilog=verilog)
        found = first_mismatch(prefix, seen) or found
    rtl_states = [
        replace(state, w=np.asarray(w, dtype=state.w.dtype).reshape(state.w.shape[1:])[None])
        for state, w in zip(gold.final_states, snapshots[-1][0], strict=True)
    ]
    sim_seconds = raw.seconds
    return VerifyResult(
        config=config.name,
        simulator="verilator",
        bit_exact=found is None,
        mismatch=None if found is None else str(found),
        samples=total,
        steps=gold.steps,
        measured_cycles_per_sample=steady_cycles_per_sample(list(raw.taken), total),
        predicted_cycles_per_sample=per_sample,
        sim_seconds=sim_seconds,
        build_seconds=build_seconds,
        rebuilt=build.rebuilt,
        cycles=raw.cycles,
        epochs=epochs,
        rtl_test_accuracy=_accuracy(gold.arith, plan, rtl_states, data),
        golden_test_accuracy=gold.test_accuracy,
        sim_cycles_per_second=raw.cycles / raw.loop_seconds if raw.loop_seconds > 0 else None,
        waves=dumped,
    )
