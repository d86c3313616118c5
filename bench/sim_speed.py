"""Simulation speed of the default example: bare Verilator loop, compiled harness, cocotb.

In one run, on the same generated Verilog:

* **bare**: a C++ main that only clocks the model (built with the harness's Verilator flags,
  :data:`pbhw.tools.harness.VERILATOR_FLAGS`), holding ``samples.valid`` high with one sample and
  ``results.ready`` high, so the network steps as fast as it can, for as many cycles as the
  harness run simulated; the ceiling for any driver of this model;
* **harness**: ``pbhw verify --epochs`` (:func:`pbhw.tools.verify.verify_epochs`), the cycles
  over the harness's time in its simulation loop (and over the process's wall time, with start-up
  and the stimulus and trace files);
* **cocotb**: ``pbhw verify --samples`` (:func:`pbhw.tools.verify.verify`) on two short runs
  (``--cocotb-samples`` and three times as many), the difference of their cycles over the
  difference of their simulation times (so the start-up of the simulator and cocotb is not
  counted; build excluded; its model is built with cocotb's ``--vpi --public-flat-rw``).

Reported in cycles/s with the ratios harness/bare (target >= 0.8) and harness/cocotb, and the
load average before and after (the machine is shared).

Usage: ``.venv/bin/python bench/sim_speed.py [--epochs 2] [--cocotb-samples 20]``
Writes ``bench/results/sim_speed.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from pbhw.core.config import load
from pbhw.tools.harness import build_harness
from pbhw.tools.toolchain import verilator
from pbhw.tools.verify import verify, verify_epochs
from rtl_gen.design import build_design
from rtl_gen.generate import top_name, verilog_text

ROOT = Path(__file__).resolve().parents[1]

BARE = r"""
// Only clocks the network: one sample held valid, results always ready.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include "Vnet.h"
#include "verilated.h"

int main(int argc, char** argv) {
    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vnet>(ctx.get());
    const unsigned long long cycles = std::strtoull(argv[1], nullptr, 10);
    top->rst = 1;
    for (int i = 0; i < 2; ++i) { top->clk = 0; top->eval(); top->clk = 1; top->eval(); }
    top->rst = 0;
    top->samples___05Fvalid = 1;
    top->results___05Fready = 1;
    unsigned long long taken = 0;
    const auto start = std::chrono::steady_clock::now();
    for (unsigned long long c = 0; c < cycles; ++c) {
        top->clk = 0;
        top->eval();
        taken += top->samples___05Fready;
        top->clk = 1;
        top->eval();
    }
    const std::chrono::duration<double> s = std::chrono::steady_clock::now() - start;
    std::printf("%llu %llu %.6f\n", cycles, taken, s.count());
    top->final();
    return 0;
}
"""


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "mlp_digits.toml"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--cocotb-samples",
        type=int,
        default=20,
        help="samples of the shorter cocotb run; 0 skips the cocotb path (its build, with every "
        "signal public, takes many minutes on a large design)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sim_speed.json"))
    args = parser.parse_args()
    config = load(Path(args.config))
    say = lambda message: print(message, file=sys.stderr)  # noqa: E731
    load_before = load_average()

    harness = verify_epochs(config, epochs=args.epochs, progress=say)
    say(harness.summary())

    design = build_design(config)
    top = top_name(config)
    bare_build = build_harness(verilog_text(design, top), top, source=BARE, progress=say)
    start = time.perf_counter()
    out = subprocess.run(
        [str(bare_build.executable), str(harness.cycles)],
        capture_output=True,
        text=True,
        check=True,
    )
    bare_wall = time.perf_counter() - start
    cycles, taken, seconds = out.stdout.split()
    bare_rate = int(cycles) / float(seconds)
    say(f"bare loop: {int(cycles):,} cycles in {float(seconds):.2f} s, {bare_rate:,.0f} cycles/s")

    # Two cocotb runs: their difference is the simulation's marginal speed, without the
    # simulator's and cocotb's start-up (seconds, which a short run would count as simulation).
    cocotb_record, cocotb_rate = None, None
    if args.cocotb_samples > 0:
        short = verify(config, samples=args.cocotb_samples)
        cocotb = verify(config, samples=3 * args.cocotb_samples)
        cocotb_rate = (cocotb.cycles - short.cycles) / (cocotb.sim_seconds - short.sim_seconds)
        say(f"{short.summary()}\n{cocotb.summary()}\ncocotb: {cocotb_rate:,.0f} cycles/s")
        cocotb_record = {
            "samples": [short.samples, cocotb.samples],
            "cycles": [short.cycles, cocotb.cycles],
            "seconds": [short.sim_seconds, cocotb.sim_seconds],
            "cycles_per_second": cocotb_rate,
            "cycles_per_second_with_start_up": cocotb.cycles / cocotb.sim_seconds,
            "bit_exact": cocotb.bit_exact,
            "build_seconds": cocotb.build_seconds,
            "rebuilt": cocotb.rebuilt,
        }

    record = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "verilator": verilator().version_string,
        "config": config.name,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "bare": {
            "cycles": int(cycles),
            "samples_taken": int(taken),
            "seconds": float(seconds),
            "wall_seconds": bare_wall,
            "cycles_per_second": bare_rate,
        },
        "harness": {
            "epochs": args.epochs,
            "samples": harness.samples,
            "cycles": harness.cycles,
            "process_seconds": harness.sim_seconds,
            "cycles_per_second": harness.sim_cycles_per_second,
            "cycles_per_second_of_the_process": harness.cycles / harness.sim_seconds,
            "bit_exact": harness.bit_exact,
            "build_seconds": harness.build_seconds,
            "rebuilt": harness.rebuilt,
        },
        "cocotb": cocotb_record,
        "harness_over_bare": harness.sim_cycles_per_second / bare_rate,
        "harness_over_cocotb": (
            None if cocotb_rate is None else harness.sim_cycles_per_second / cocotb_rate
        ),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("harness_over_bare", "harness_over_cocotb")}))


if __name__ == "__main__":
    main()
