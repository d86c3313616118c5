"""``pbhw flow``: the main job, from a config to an HLS-style report of a training accelerator.

First every argument is checked (:func:`check_flow`): the options, the output folder, the
dataset, the simulator and the synthesis tools, the config's fitness for training and for
hardware; a problem is one :class:`~pbhw.core.errors.InputError` before any work. Then the steps,
each writing its own file into a staging folder beside the output folder, which is renamed into
place (replacing an earlier output of ``pbhw flow`` as a whole) only when every step is done; a
run that fails leaves nothing behind:

1. generate the Verilog (``rtl/``, as ``pbhw generate``): the one elaboration of the design,
   whose Verilog steps 2 and 4 take as it is; first, so that a design the generator refuses
   costs seconds, not the minutes of training;
2. synthesise, place and route for the config's device (``estimate.json``), then the reference
   MAC of the figures of merit: started as soon as the Verilog is there and run in a thread
   beside steps 3 and 4 (Yosys and nextpnr are single-threaded child processes, so on two cores
   place and route and training no longer take turns);
3. train in the hardware's fixed-point arithmetic (the bit-exact model) on the config's dataset,
   and a float SGD baseline at the reference batch (``train_fixed.json``, ``train_sgd.json``);
4. verify the RTL bit for bit against the golden model (``verify.json``): the whole training run
   (every epoch of the training set on the compiled harness, ``pbhw verify --epochs``) when its
   predicted simulation time is within :data:`FULL_RUN_SECONDS` (:func:`full_run_seconds`), else
   a short run of ``verify_samples`` samples;
5. once step 2 is done too, write ``report.md`` with ``training.png`` and ``resources.png``.

While step 2 runs beside steps 3 and 4, every progress line of those steps starts with its
step's name (``[estimate]``, ``[train]``, ``[verify]``); all of them are printed from the
calling thread. The first failure of either side stops the other: a failure of step 3 or 4 (or
a KeyboardInterrupt) kills the running Yosys or nextpnr process (on Linux, where the flow finds
the thread's child processes in ``/proc``; elsewhere step 2 ends with its running tool) and
waits for the thread to end; a failure of step 2 stops steps 3 and 4 at their next progress
point (an epoch of training, a progress line of verification). Either way the first error is
raised, as it would have been with the steps one after another. ``summary.json`` records each
step's wall time and the flow's total wall time (``timings``; ``total`` from the start of the
checks to the report), which ``report.md`` shows.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbhw.core.config import Config
from pbhw.core.devices import config_device
from pbhw.core.errors import UserError
from pbhw.core.io import (
    check_output_dir,
    discard_staging_dir,
    make_staging_dir,
    replace_dir,
    write_json,
)
from pbhw.flows.report import render_flow_report
from pbhw.tools.estimate import estimate, require_tools
from pbhw.tools.reference import reference_mac
from pbhw.tools.toolchain import SIMULATORS, simulator_tool
from pbhw.tools.train import check_trainable, train
from pbhw.tools.verify import verify, verify_epochs
from rtl_gen.design import fixed_plan
from rtl_gen.generate import Generated, generate

__all__ = [
    "FULL_RUN_CYCLES_PER_SECOND",
    "FULL_RUN_SECONDS",
    "TIMED_STEPS",
    "VERIFY_SAMPLES",
    "check_flow",
    "full_run_seconds",
    "is_flow_output",
    "run_flow",
]

#: A conservative speed of the compiled harness: half of the 72,000-145,000 cycles/s measured
#: on the default example on a loaded 2-core machine (bench/results/sim_speed.json).
FULL_RUN_CYCLES_PER_SECOND = 40_000
#: The flow verifies the whole training run when its predicted simulation takes at most this
#: long (the default example's 10 epochs: 5.3 M cycles, predicted 133 s).
FULL_RUN_SECONDS = 300.0
#: Samples of the short check when the whole run would take longer.
VERIFY_SAMPLES = 100

#: Keys of ``summary.json`` by which an earlier output of ``pbhw flow`` is recognised.
_SUMMARY_KEYS = frozenset({"config", "train_fixed", "train_sgd", "verify", "estimate"})

#: The order in which ``summary["timings"]`` lists the steps' wall times (``total`` last).
TIMED_STEPS = (
    "generate",
    "estimate",
    "reference_mac",
    "train_fixed",
    "train_sgd",
    "verify",
    "report",
)
#: Seconds a child process of a stopped step has to end on SIGTERM before it gets SIGKILL.
_KILL_GRACE = 5.0

Progress = Callable[[str], None]


def _training_plot(path: Path, fixed, sgd, name: str) -> None:
    from matplotlib.figure import Figure  # 0.3 s to import: only the flow's plots need it

    fig = Figure(figsize=(6.4, 3.8), dpi=120)
    ax = fig.add_subplot()
    for result, label, style in (
        (fixed, "PB, hardware fixed point (bit-exact)", "o-"),
        (sgd, f"SGD float, batch {sgd.config['optimizer']['reference_batch']}", "s--"),
    ):
        epochs = [h.epoch for h in result.history]
        ax.plot(epochs, [100 * h.test_accuracy for h in result.history], style, label=label)
    from matplotlib.ticker import MaxNLocator  # (as above)

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{name}: training curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def _resources_plot(path: Path, estimate, name: str) -> None:
    from matplotlib.figure import Figure  # 0.3 s to import: only the flow's plots need it

    keys = [k for k in ("lut", "ff", "dsp", "bram_bits") if k in estimate.used]
    share = [100 * estimate.used[k] / max(1, estimate.available[k]) for k in keys]
    fig = Figure(figsize=(6.4, 3.2), dpi=120)
    ax = fig.add_subplot()
    bars = ax.barh(keys, share, color=["#c44" if s > 100 else "#48a" for s in share])
    for bar, k, s in zip(bars, keys, share, strict=True):
        ax.text(
            min(s, 100) + 1,
            bar.get_y() + bar.get_height() / 2,
            f"{estimate.used[k]:,} / {estimate.available[k]:,} ({s:.0f}%)",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, 140)
    ax.axvline(100, color="k", lw=0.8)
    ax.set_xlabel(f"% of {estimate.device}")
    routed = estimate.fmax_mhz is not None and not any(
        "stopped" in n or "yosys" in n.lower() for n in estimate.notes
    )
    source = "after place and route" if routed else "(Yosys counts)"
    ax.set_title(f"{name}: resources {source}")
    fig.tight_layout()
    fig.savefig(path)


def is_flow_output(path: Path) -> bool:
    """Whether ``path`` holds an earlier output of ``pbhw flow`` (its ``summary.json``)."""
    try:
        summary = json.loads((Path(path) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and _SUMMARY_KEYS <= set(summary)


def check_flow(
    config: Config,
    out_dir: Path,
    *,
    verify_samples: int | None = None,
    simulator: str = "verilator",
    pnr_timeout: float | None = None,
    pnr_seed: int | None = None,
) -> None:
    """Everything :func:`run_flow` can check before its work starts (in seconds); raises an
    :class:`~pbhw.core.errors.InputError` naming the option or key. ``pnr_timeout`` is in
    seconds; the messages name the command's options."""
    if verify_samples is not None and (
        isinstance(verify_samples, bool)
        or not isinstance(verify_samples, int)
        or verify_samples < 1
    ):
        raise UserError(f"--verify-samples must be a positive integer, not {verify_samples!r}")
    if pnr_timeout is not None and not (math.isfinite(pnr_timeout) and pnr_timeout > 0):
        raise UserError(f"pnr_timeout must be a positive number of seconds, not {pnr_timeout}")
    if pnr_seed is not None and (
        isinstance(pnr_seed, bool) or not isinstance(pnr_seed, int) or pnr_seed < 1
    ):
        raise UserError(f"--pnr-seed must be a positive integer, not {pnr_seed!r}")
    if simulator not in SIMULATORS:
        raise UserError(f"--simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    check_output_dir(out_dir, "-o", "pbhw flow", is_flow_output, replaced=True)
    fixed_plan(config)  # what the generator refuses outright: sgd, weight stashing, constants
    device = config_device(config)
    data = check_trainable(config.replace({"train.arith": "fixed"}))
    check_trainable(config.replace({"train.arith": "float", "optimizer.algorithm": "sgd"}))
    if verify_samples is not None and verify_samples > len(data.y_train):
        raise UserError(
            f"--verify-samples must be at most the {len(data.y_train)} training samples of "
            f"{config.train.dataset}, not {verify_samples}"
        )
    simulator_tool(simulator)  # ToolError if it is not installed
    require_tools(device)


def full_run_seconds(predicted_cycles_per_sample: int, samples: int) -> float:
    """Predicted simulation time of a whole training run of ``samples`` samples (all epochs) on
    the compiled harness, at :data:`FULL_RUN_CYCLES_PER_SECOND`."""
    return predicted_cycles_per_sample * samples / FULL_RUN_CYCLES_PER_SECOND


def run_flow(
    config: Config,
    out_dir: Path,
    *,
    verify_samples: int | None = None,
    simulator: str = "verilator",
    progress: Progress | None = None,
    pnr_timeout: float | None = None,
    pnr_seed: int | None = None,
) -> dict[str, Any]:
    """Check every argument (:func:`check_flow`), run every step into a staging folder and
    rename it to ``out_dir`` (replacing an earlier flow output); returns the numbers the report
    shows. ``verify_samples`` asks for a short check of that many samples; by default (None)
    the whole training run is verified when :func:`full_run_seconds` is within
    :data:`FULL_RUN_SECONDS` on Verilator, else :data:`VERIFY_SAMPLES` samples. ``pnr_timeout``
    is in seconds; ``pnr_seed`` is nextpnr's placement seed (None: nextpnr's own), which the
    report names. ``progress`` is only ever called from the calling thread. On any failure
    nothing is left behind (an earlier output in ``out_dir`` stays as it was), no step of the
    flow is still running, and the first error is raised."""

    started = time.perf_counter()
    out_dir = Path(out_dir)
    options = dict(verify_samples=verify_samples, simulator=simulator, pnr_seed=pnr_seed)
    check_flow(config, out_dir, pnr_timeout=pnr_timeout, **options)
    staging, created = make_staging_dir(out_dir)
    try:
        summary = _run_steps(
            config,
            staging,
            started=started,
            progress=progress,
            pnr_timeout=pnr_timeout,
            **options,
        )
        replace_dir(staging, out_dir)
    except BaseException:
        discard_staging_dir(staging, created)
        raise
    return summary


class _Stopped(Exception):
    """A step stops at a progress point because the step beside it failed or was stopped."""


def _child_pids(pid: int, task: int | None = None) -> list[int]:
    """The child processes of thread ``task`` of process ``pid`` (all its threads' if None),
    from ``/proc`` (Linux); none where it cannot be read."""
    base = Path(f"/proc/{pid}/task")
    try:
        tasks = [str(task)] if task is not None else os.listdir(base)
    except OSError:
        return []
    children = []
    for name in tasks:
        try:
            text = (base / name / "children").read_text()
        except OSError:
            continue
        children += [int(p) for p in text.split()]
    return children


def _kill_children(thread: threading.Thread, signum: int) -> None:
    """Send ``signum`` to every process ``thread`` started, and to their descendants (the
    whole tree is listed first, so that none is missed by being handed to init)."""
    if thread.native_id is None:
        return
    tree, todo = [], _child_pids(os.getpid(), thread.native_id)
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += _child_pids(pid)
    for pid in tree:
        try:
            os.kill(pid, signum)
        except OSError:  # ended meanwhile (or not ours to signal)
            pass


class _Beside:
    """``work(progress)`` run in a thread of its own beside the calling thread's steps.

    Its progress lines are queued and printed by the calling thread (:meth:`show`), each
    prefixed with ``[name]``; its result or error is kept for the calling thread. Once told to
    stop (:meth:`stop`), the work raises :class:`_Stopped` at its next progress line, and the
    processes it runs are killed."""

    def __init__(self, name: str, work: Callable[[Progress], Any]) -> None:
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self.failed_at: float | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False  # (the calling thread has taken the end of the lines)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(work,), name=f"pbhw flow: {name}", daemon=True
        )
        self._thread.start()

    def _say(self, message: str) -> None:
        if self._stop.is_set():
            raise _Stopped(f"{self.name} stopped")
        self._lines.put(message)

    def _main(self, work: Callable[[Progress], Any]) -> None:
        try:
            self.result = work(self._say)
        except BaseException as error:  # handed to the calling thread
            self.failed_at = time.monotonic()
            self.error = error
        finally:
            self._lines.put(None)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def show(self, say: Progress, *, wait: bool = False) -> None:
        """Print the lines queued so far; with ``wait``, every line until the work ends. Then
        raise :class:`_Stopped` if the work failed."""
        while not self._ended:
            try:
                line = self._lines.get(timeout=0.5) if wait else self._lines.get_nowait()
            except queue.Empty:
                if wait:
                    continue
                break
            if line is None:
                self._ended = True
            else:
                say(f"[{self.name}] {line}")
        if self.error is not None:
            raise _Stopped(f"{self.name} failed")

    def stop(self) -> None:
        """Stop the work and wait for its thread to end: its running child processes get
        SIGTERM (and SIGKILL after :data:`_KILL_GRACE` seconds), until the thread is gone."""
        self._stop.set()
        kill_at = time.monotonic() + _KILL_GRACE
        while self._thread.is_alive():
            late = time.monotonic() > kill_at
            _kill_children(self._thread, signal.SIGKILL if late else signal.SIGTERM)
            self._thread.join(0.1)

    def first_error(self, error: BaseException, failed_at: float) -> BaseException:
        """The error to raise when the calling thread failed with ``error`` at ``failed_at``
        (and :meth:`stop` has run): the work's if it failed first, else ``error``. A
        KeyboardInterrupt is always the caller's."""
        if isinstance(error, KeyboardInterrupt) or self.error is None:
            return error
        assert self.failed_at is not None
        if isinstance(self.error, _Stopped) or self.failed_at > failed_at:
            return error
        return self.error


def _run_steps(
    config: Config,
    out_dir: Path,
    *,
    started: float,
    verify_samples: int | None,
    simulator: str,
    progress: Progress | None,
    pnr_timeout: float | None,
    pnr_seed: int | None,
) -> dict[str, Any]:
    say = progress or (lambda message: None)
    timings: dict[str, float] = {}

    def timed(into: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        into[name] = time.perf_counter() - start
        return value

    say("1/5 generating Verilog ...")
    generated = timed(timings, "generate", lambda: generate(config, out_dir / "rtl"))

    def synthesis(note: Progress) -> tuple[Any, dict[str, float]]:
        """Step 2, in its own thread: touches nothing of the other steps (its files are in
        the estimate cache and temporary folders; the calling thread writes estimate.json)."""
        own: dict[str, float] = {}
        note(
            f"2/5 synthesis and place-and-route for {config.hardware.device}, beside "
            "training and verification ..."
        )
        est = timed(
            own,
            "estimate",
            lambda: estimate(
                config, progress=note, pnr_timeout=pnr_timeout, seed=pnr_seed, generated=generated
            ),
        )
        fmax = "no Fmax" if est.fmax_mhz is None else f"Fmax {est.fmax_mhz:.1f} MHz"
        note(f"{fmax}; fits: {est.fits}")
        return est, own

    beside = _Beside("estimate", synthesis)
    try:

        def step_say(step: str) -> Progress:
            def step_progress(message: str) -> None:
                beside.show(say)  # the other step's lines so far, and its failure
                say(f"[{step}] {message}")

            return step_progress

        fixed, sgd, verified = _train_and_verify(
            config,
            out_dir,
            generated,
            timings,
            timed,
            verify_samples=verify_samples,
            simulator=simulator,
            checkpoint=lambda: beside.show(say),
            step_say=step_say,
        )
        # The MAC's place and route is short; here it runs beside the design's, not after it.
        say_mac = step_say("mac")
        say_mac("the reference MAC for the figures of merit ...")
        mac = timed(
            timings, "reference_mac", lambda: reference_mac(config, seed=pnr_seed, progress=say_mac)
        )
        if beside.running:
            say("waiting for step 2 (synthesis and place-and-route) ...")
        beside.show(say, wait=True)
    except BaseException as error:
        failed_at = time.monotonic()
        beside.stop()
        first = beside.first_error(error, failed_at)
        if first is error:
            raise
        raise first from None
    est, own = beside.result
    timings.update(own)
    write_json(out_dir / "estimate.json", est.to_json())

    say("5/5 writing the report ...")
    start = time.perf_counter()
    _training_plot(out_dir / "training.png", fixed, sgd, config.name)
    _resources_plot(out_dir / "resources.png", est, config.name)
    timings["report"] = time.perf_counter() - start
    ordered = {name: timings[name] for name in TIMED_STEPS}
    ordered["total"] = time.perf_counter() - started
    summary = {
        "config": config.to_dict(),
        "train_fixed": fixed.to_json(),
        "train_sgd": sgd.to_json(),
        "manifest": generated.manifest.to_json(),
        "verify": verified,
        "estimate": est.to_json(),
        "reference_mac": mac,
        "pnr_seed": pnr_seed,
        "timings": ordered,
    }
    (out_dir / "report.md").write_text(render_flow_report(summary))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _train_and_verify(
    config: Config,
    out_dir: Path,
    generated: Generated,
    timings: dict[str, float],
    timed: Callable[..., Any],
    *,
    verify_samples: int | None,
    simulator: str,
    checkpoint: Callable[[], None],
    step_say: Callable[[str], Progress],
) -> tuple[Any, Any, dict[str, Any]]:
    """Steps 3 and 4 in the calling thread; ``checkpoint`` is called after every epoch of
    training and ``step_say(step)`` prints a progress line of ``step`` (both stop the steps
    when step 2 failed)."""
    fixed_cfg = config.replace({"train.arith": "fixed"})
    sgd_cfg = config.replace({"train.arith": "float", "optimizer.algorithm": "sgd"})
    manifest = generated.manifest
    say = step_say("train")
    say(f"3/5 training {config.name} in fixed point (bit-exact) on {config.train.dataset} ...")
    fixed = timed(timings, "train_fixed", lambda: train(fixed_cfg, on_epoch=lambda _: checkpoint()))
    write_json(out_dir / "train_fixed.json", fixed.to_json())
    say(f"test accuracy {100 * fixed.test_accuracy:.2f} %; float SGD baseline ...")
    sgd = timed(timings, "train_sgd", lambda: train(sgd_cfg, on_epoch=lambda _: checkpoint()))
    write_json(out_dir / "train_sgd.json", sgd.to_json())
    say(f"baseline {100 * sgd.test_accuracy:.2f} %")

    say = step_say("verify")
    predicted = full_run_seconds(manifest.predicted_cycles_per_sample, fixed.samples)
    full_run = verify_samples is None and simulator == "verilator"
    full_run = full_run and predicted <= FULL_RUN_SECONDS
    verify_samples = VERIFY_SAMPLES if verify_samples is None else verify_samples
    if full_run:
        say(
            f"4/5 verifying the whole training run ({fixed.samples} samples, predicted "
            f"{predicted:.0f} s of simulation) on the compiled Verilator harness ..."
        )
        checked = timed(
            timings,
            "verify",
            lambda: verify_epochs(
                config, epochs=config.train.epochs, generated=generated, progress=say
            ),
        )
    else:
        say(f"4/5 verifying {verify_samples} samples against the golden model on {simulator} ...")
        checked = timed(
            timings,
            "verify",
            lambda: verify(
                config,
                samples=verify_samples,
                simulator=simulator,
                generated=generated,
                progress=say,
            ),
        )
    verified = checked.to_json()
    verified["full_run"] = {
        "chosen": full_run,
        "predicted_seconds": predicted,
        "threshold_seconds": FULL_RUN_SECONDS,
        "cycles_per_second_assumed": FULL_RUN_CYCLES_PER_SECOND,
        # the fixed-point trainer's test accuracy, which the golden model of the RTL run
        # must reproduce (same samples, same order)
        "trainer_test_accuracy": fixed.test_accuracy,
    }
    write_json(out_dir / "verify.json", verified)
    say(checked.summary())
    return fixed, sgd, verified
