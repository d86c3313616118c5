"""RTL throughput, multiplier utilization and simulation speed of the default example.

For each lane choice (the config's ``auto`` lanes and any given with ``--lanes``) this runs
``pbhw verify`` (Verilator, bit-exact check included) on the dataset's first samples and records:

* measured cycles per sample in steady state (spacing of accepted samples) vs the prediction;
* multiplier utilization = useful data multiplies per sample / (data multipliers x cycles per
  sample). Useful multiplies are 3 per weight (forward, backward, gradient) except in stage 1,
  which computes no backward error and so has 2 per weight and 2 multipliers per lane. The
  formula of the issue, 3 * sum(N_in * N_out) / (data multipliers x cycles), is also reported;
  it exceeds the honest figure because it credits stage 1 with multiplies it does not need;
* simulation speed: samples/s and cycles/s of the Verilator model (build time separate).

Usage: ``.venv/bin/python bench/rtl_throughput.py [--samples 200] [--lanes 6,3,1 ...]``
Writes ``bench/results/rtl_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pbhw.core.config import load
from pbhw.tools.verify import verify
from rtl_gen.design import build_design

ROOT = Path(__file__).resolve().parents[1]


def measure(config, samples: int) -> dict:
    design = build_design(config)
    design.discard()
    lanes = list(design.lanes)
    stages = design.plan.stages
    data = sum((3 if st.index > 1 else 2) * n for st, n in zip(stages, lanes, strict=True))
    useful = sum((3 if st.index > 1 else 2) * st.n_in * st.n_out for st in stages)
    issue_useful = sum(3 * st.n_in * st.n_out for st in stages)
    result = verify(config, samples=samples)
    cps = result.measured_cycles_per_sample
    return {
        "lanes": lanes,
        "bit_exact": result.bit_exact,
        "samples": result.samples,
        "data_multipliers": data,
        "measured_cycles_per_sample": cps,
        "predicted_cycles_per_sample": result.predicted_cycles_per_sample,
        "multiplier_utilization": useful / (data * cps),
        "multiplier_utilization_issue_formula": issue_useful / (data * cps),
        "throughput_samples_per_s_at_clock": config.hardware.clock_mhz * 1e6 / cps,
        "sim_samples_per_s": result.samples / result.sim_seconds,
        "sim_cycles_per_s": result.cycles / result.sim_seconds,
        "sim_seconds": result.sim_seconds,
        "build_seconds": result.build_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "mlp_digits.toml"))
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--lanes", action="append", default=[], help="e.g. 6,3,1 (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rtl_throughput.json"))
    args = parser.parse_args()
    runs = [()] + [(f"hardware.lanes=[{lanes}]",) for lanes in args.lanes]
    results = []
    for sets in runs:
        config = load(Path(args.config), sets)
        row = measure(config, args.samples)
        row["sets"] = list(sets)
        results.append(row)
        print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
