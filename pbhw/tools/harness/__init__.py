"""The compiled harness: a Verilator C++ main that drives a whole network at Verilator's speed.

``harness.cpp`` (package data beside this module) is compiled with the design by
``verilator --cc --exe --build`` with :data:`VERILATOR_FLAGS` and no ``--public-flat-rw`` or
``--vpi``: only the top's ports are accessed. Python encodes the stimulus (every sample payload,
and the pauses at which the harness waits until the network is quiet and reads every W/V row and
the saturation counters through the debug port), the harness streams it, and Python decodes the
trace it writes. The formats of both files are in ``docs/verification.md``.

A build with Verilator's ``--trace-fst`` or ``--trace`` (:data:`WAVE_FLAGS`, a separate cached
build: tracing makes the model slower) also dumps a window of cycles to an FST or VCD file.

Builds are cached like :func:`pbhw.tools.toolchain.sim_build`: ``<BUILD_ROOT>/harness/<hash>``
with the hash over the Verilog, the waiver and models, the harness source, the flags and the
Verilator version; a new build bounds the cache (:func:`pbhw.tools.toolchain.prune_builds`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from pbhw.core.errors import ToolError
from pbhw.tools.toolchain import (
    _STAMP,
    build_directory,
    build_lock,
    make_flags,
    prune_builds,
    verilator,
)
from rtl_gen.resources import WAIVER, models_for

__all__ = [
    "SOURCE",
    "VERILATOR_FLAGS",
    "WAVE_FLAGS",
    "HarnessBuild",
    "HarnessTrace",
    "Pause",
    "build_harness",
    "run_harness",
    "to_words",
    "from_words",
]

#: The harness's C++ source.
SOURCE = resources.files(__package__) / "harness.cpp"

#: Verilator's flags for the harness build: its strongest optimisation, X assignments resolved
#: the fastest way (the datapath registers have no reset by design; their first values are never
#: used, which tests/test_harness.py checks by running with random initial values), and one
#: thread (``--threads 2`` runs 16x slower on a 2-core machine).
VERILATOR_FLAGS = ("-O3", "--x-assign", "fast", "--x-initial", "unique")

#: Verilator's tracing flags by the suffix of the waveform file: FST or VCD.
WAVE_FLAGS = {".fst": ("--trace-fst",), ".vcd": ("--trace",)}

_STIMULUS_MAGIC = 0x53484250  # "PBHS", little-endian
_TRACE_MAGIC = 0x54484250  # "PBHT"
_STIMULUS_VERSION = 1
_TRACE_VERSION = 2
_EXECUTABLE = "harness"


@dataclass(frozen=True)
class HarnessBuild:
    """A compiled harness: its directory and whether this call compiled it."""

    top: str
    directory: Path
    rebuilt: bool

    @property
    def executable(self) -> Path:
        return self.directory / _EXECUTABLE


@dataclass(frozen=True)
class Pause:
    """Where the harness stops feeding samples and reads the memories: once ``payloads``
    payloads are accepted and ``results`` results taken, and the network is quiet: ``drained``
    (every sample has left) when ``idle`` has held for the quiet cycles, else when no token has
    moved on the ports for the settle cycles."""

    payloads: int
    results: int
    drained: bool


@dataclass
class HarnessTrace:
    """What a harness run observed (raw integers; :mod:`pbhw.tools.verify` decodes them).

    ``taken[k]`` is the cycle at which payload ``k`` was accepted, ``results`` every result
    payload in order, ``result_cycles[k]`` the cycle at which result ``k`` was taken,
    ``memories[p][s][m]`` the rows of memory ``m`` (0: W, 1: V) of stage ``s`` at pause ``p``,
    ``saturation[p]`` the counters' port at pause ``p``, ``pause_cycles[p]`` the cycle the
    reading began, ``cycles`` the cycles simulated after reset. ``seconds`` is the harness
    process's wall time, ``loop_seconds`` the part of it spent simulating (without start-up and
    the stimulus and trace files)."""

    taken: np.ndarray
    results: list[int]
    memories: list[list[list[list[int]]]]
    saturation: list[int]
    pause_cycles: list[int]
    cycles: int
    result_cycles: np.ndarray
    seconds: float = 0.0
    loop_seconds: float = 0.0


def to_words(value: int, words: int) -> list[int]:
    """An unsigned integer as ``words`` 32-bit words, lowest first (a Verilator ``VlWide``)."""
    if value < 0 or value >> (32 * words):
        raise ValueError(f"{value} does not fit in {words} words")
    return [(value >> (32 * k)) & 0xFFFFFFFF for k in range(words)]


def from_words(words: Sequence[int]) -> int:
    """The unsigned integer of 32-bit words, lowest first."""
    return sum(int(w) << (32 * k) for k, w in enumerate(words))


def _words_of(bits: int) -> int:
    """Words of a Verilator port of ``bits`` bits (CData/SData/IData: 1, QData: 2, VlWide)."""
    return 1 if bits <= 32 else 2 if bits <= 64 else (bits + 31) // 32


def _hash(verilog: str, top: str, flags: Sequence[str], source: str) -> str:
    tool = verilator()
    recipe = {
        "verilog": verilog,
        "top": top,
        "version": tool.version_string,
        "executable": str(tool.executable),
        "waiver": WAIVER.read_text(),
        "models": [p.read_text() for p in models_for(verilog)],
        "harness": source,
        "flags": list(flags),
        "makeflags": make_flags(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_harness(
    verilog: str,
    top: str,
    *,
    flags: Sequence[str] = VERILATOR_FLAGS,
    source: str | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> HarnessBuild:
    """Compile the harness with ``verilog`` (top module ``top``), reusing an identical build.

    ``source`` is another C++ main to build the same way instead of :data:`SOURCE` (the
    benchmark's bare clock loop, ``bench/sim_speed.py``).

    Raises
    ------
    ToolError
        If Verilator is missing or the build fails (the message holds the end of its log).
    """
    source = SOURCE.read_text() if source is None else source
    digest = _hash(verilog, top, flags, source)
    directory = build_directory("harness", digest, root)
    with build_lock(directory):
        return _build_locked(verilog, top, flags, source, directory, progress)


def _build_locked(
    verilog: str,
    top: str,
    flags: Sequence[str],
    source: str,
    directory: Path,
    progress: Callable[[str], None] | None,
) -> HarnessBuild:
    tool = verilator()
    stamp = directory / _STAMP
    if stamp.is_file():
        stamp.touch()  # used now: the cache bound keeps the most recently used builds
        return HarnessBuild(top, directory, rebuilt=False)
    directory.mkdir(parents=True, exist_ok=True)
    design = directory / f"{top}.v"
    design.write_text(verilog)
    cpp = directory / "harness.cpp"
    cpp.write_text(source)
    command = [
        str(tool.executable),
        "--cc",
        "--exe",
        "--build",
        "-j",
        "2",
        *flags,
        "--prefix",
        "Vnet",
        "--top-module",
        top,
        "-Mdir",
        str(directory / "obj"),
        "-o",
        str(directory / _EXECUTABLE),
        str(WAIVER),
        *(str(p) for p in models_for(verilog)),
        str(design),
        str(cpp),
    ]
    env = {**os.environ, **tool.env()}
    env["MAKEFLAGS"] = make_flags()
    if progress is not None:
        progress(f"building the compiled harness of {top} in {directory} ...")
    log = directory / "build.log"
    with log.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0 or not (directory / _EXECUTABLE).is_file():
        text = log.read_text(errors="replace")
        if "--trace-fst" in flags and "lz4.h" in text:
            raise ToolError(
                "Verilator's FST writer needs the LZ4 headers (Debian/Ubuntu: apt install "
                "liblz4-dev); write a .vcd file instead, or install them"
            )
        tail = "\n".join(text.splitlines()[-40:])
        raise ToolError(f"Verilator build of the harness of {top} failed:\n{tail}")
    # The generated C++ and object files (about 150 MB for the default example) are needed no
    # more: the executable is the build.
    shutil.rmtree(directory / "obj", ignore_errors=True)
    stamp.write_text(json.dumps({"top": top, "tool": tool.version_string}) + "\n")
    prune_builds(directory.parent.parent, keep_also=directory)
    return HarnessBuild(top, directory, rebuilt=True)


def run_harness(
    build: HarnessBuild,
    payloads: Sequence[int],
    payload_bits: int,
    *,
    rows: Sequence[int],
    pauses: Sequence[Pause],
    quiet_cycles: int,
    settle_cycles: int,
    debug_latency: int,
    stall_cycles: int,
    result_bits: int,
    debug_bits: int,
    counter_bits: int,
    idle: float = 0.0,
    backpressure: float = 0.0,
    seed: int = 0,
    plusargs: Sequence[str] = (),
    waves: str | os.PathLike[str] | None = None,
    waves_window: tuple[int, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> HarnessTrace:
    """Stream ``payloads`` (unsigned integers of ``payload_bits`` bits) through the harness.

    ``rows`` are the memory rows per stage; the ``*_bits`` are the widths of the results,
    ``dbg_data`` and ``saturation`` ports (checked against the compiled model). ``idle`` is the
    probability of an idle cycle before a payload, ``backpressure`` that of ``results`` not being
    ready, from generators seeded with ``seed`` and ``seed + 1``. ``plusargs`` go to the Verilated
    model (e.g. ``+verilator+rand+reset+2``). ``waves`` is a waveform file to which a build with
    tracing (:data:`WAVE_FLAGS`) dumps the cycles in ``waves_window``, ``[from, to)`` (by
    default all of them).

    Raises
    ------
    ToolError
        If the harness fails (e.g. the network stalls for ``stall_cycles`` cycles).
    """
    words = _words_of(payload_bits)
    header = [
        _STIMULUS_MAGIC,
        _STIMULUS_VERSION,
        words,
        len(payloads),
        len(rows),
        *rows,
        len(pauses),
    ]
    for p in pauses:
        header += [p.payloads, p.results, int(p.drained)]
    body = np.zeros((len(payloads), words), dtype="<u4")
    for k, value in enumerate(payloads):
        body[k] = to_words(value, words)
    with tempfile.TemporaryDirectory(prefix="pbhw-harness-") as tmp:
        stimulus, trace = Path(tmp) / "stimulus.bin", Path(tmp) / "trace.bin"
        with stimulus.open("wb") as out:
            out.write(np.asarray(header, dtype="<u4").tobytes())
            out.write(body.tobytes())
        command = [
            str(build.executable),
            f"stimulus={stimulus}",
            f"trace={trace}",
            f"idle={idle!r}",
            f"backpressure={backpressure!r}",
            f"seed={seed}",
            f"quiet={quiet_cycles}",
            f"settle={settle_cycles}",
            f"debug_latency={debug_latency}",
            f"stall={stall_cycles}",
            *plusargs,
        ]
        if waves is not None:
            start_cycle, end_cycle = waves_window or (0, 2**64 - 1)
            command += [f"waves={waves}", f"waves_from={start_cycle}", f"waves_to={end_cycle}"]
        start = time.perf_counter()
        loop_seconds = float("nan")
        with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
            errors = []
            for line in proc.stderr:
                fields = line.split()
                if fields[:2] == ["pbhw-harness:", "progress"] and progress is not None:
                    done, total, cycles = (int(v) for v in fields[2:5])
                    rate = cycles / max(time.perf_counter() - start, 1e-9)
                    progress(f"  {done}/{total} payloads, {cycles:,} cycles, {rate:,.0f} cycles/s")
                elif fields[:2] == ["pbhw-harness:", "done"]:
                    loop_seconds = float(fields[3])
                elif fields[:2] != ["pbhw-harness:", "pause"]:
                    errors.append(line.rstrip())
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise ToolError(
                f"the compiled harness of {build.top} failed (exit {proc.returncode}):\n"
                + "\n".join(errors[-20:])
            )
        raw = np.fromfile(trace, dtype="<u4")
    trace = _decode(raw, rows, result_bits, debug_bits, counter_bits)
    trace.seconds, trace.loop_seconds = seconds, loop_seconds
    return trace


def _decode(
    raw: np.ndarray,
    rows: Sequence[int],
    result_bits: int,
    debug_bits: int,
    counter_bits: int,
) -> HarnessTrace:
    magic, version, result_words, debug_words, counter_words, taken, results, pauses = raw[:8]
    if magic != _TRACE_MAGIC or version != _TRACE_VERSION:
        raise ToolError(f"the compiled harness wrote no version {_TRACE_VERSION} trace")
    for name, got, bits in (
        ("results", result_words, result_bits),
        ("dbg_data", debug_words, debug_bits),
        ("saturation", counter_words, counter_bits),
    ):
        if got != _words_of(bits):
            raise ToolError(f"the harness's {name} port has {got} words, not {_words_of(bits)}")
    at = 8

    def take(count: int) -> np.ndarray:
        nonlocal at
        out = raw[at : at + count]
        if len(out) != count:
            raise ToolError("the compiled harness's trace is truncated")
        at += count
        return out

    def cycles_of(count: int) -> np.ndarray:
        w = take(2 * count).astype(np.uint64).reshape(count, 2)
        return w[:, 0] | (w[:, 1] << np.uint64(32))

    cycles = int(cycles_of(1)[0])
    taken_cycles = cycles_of(int(taken)).astype(np.int64)
    pause_cycles = [int(c) for c in cycles_of(int(pauses))]
    result_cycles = cycles_of(int(results)).astype(np.int64)
    result_rows = take(int(results) * int(result_words)).reshape(int(results), int(result_words))
    result_values = [from_words(r) for r in result_rows]
    memories, saturation = [], []
    for _ in range(int(pauses)):
        stages = []
        for n in rows:
            stages.append(
                [
                    [from_words(r) for r in take(n * int(debug_words)).reshape(n, -1)]
                    for _ in range(2)
                ]
            )
        memories.append(stages)
        saturation.append(from_words(take(int(counter_words))))
    if at != len(raw):
        raise ToolError("the compiled harness's trace has trailing words")
    return HarnessTrace(
        taken_cycles, result_values, memories, saturation, pause_cycles, cycles, result_cycles
    )
