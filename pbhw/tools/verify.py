"""``pbhw verify``: simulate the generated Verilog and compare it with the golden model bit for bit.

The samples are the first ``N`` training samples of the config's dataset. The golden trace
(:func:`golden.trace.run_trace`) fixes every forward and error token of every stage and step, every
loss error and prediction, and the final W, V and saturation counters; the cocotb testbench
``pbhw/tools/testbench/network.py`` records the same from the RTL under Verilator or Icarus, and
:func:`golden.compare.first_mismatch` names the first difference.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from amaranth.lib import data

from golden.compare import Observed, first_mismatch
from golden.trace import Trace, run_trace
from pbhw.core.config import Config, ConfigError
from pbhw.core.datasets import load
from pbhw.tools.toolchain import sim_build, sim_test
from pbhw.tools.train import check_fits
from rtl_gen.design import build_design
from rtl_gen.generate import Generated, top_name, verilog_text
from rtl_gen.top import DEBUG_LATENCY

__all__ = ["VerifyResult", "observe", "run_rtl", "unpack_row", "verify"]


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
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
    res_layout = net.results.payload.shape()
    for v in raw["results"]:
        r = data.Const(res_layout, v)
        seen.results.append(
            (
                int(r.label),
                int(r.prediction),
                [int(r.delta[k]) for k in range(res_layout.members["delta"].length)],
            )
        )
    weights, velocities = [], []
    for st, (w_rows, v_rows) in zip(net.stages, raw["memories"], strict=True):
        for rows, bits, fmt, out in (
            (w_rows, st.weight_bits, st.plan.formats.weight.format, weights),
            (v_rows, st.velocity_bits, st.plan.formats.velocity.format, velocities),
        ):
            codes = [c for row in rows for c in unpack_row(row, bits, fmt.signed, st.lanes)]
            out.append(codes[: st.weights])
    seen.weights, seen.velocities = weights, velocities
    names = net.counter_names()
    seen.saturation = {
        name: (raw["saturation"] >> (32 * k)) & 0xFFFFFFFF for k, name in enumerate(names)
    }
    return seen, raw["taken"]


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
) -> tuple[Observed, list[int], dict[str, Any]]:
    """Build (or reuse) the simulation model of ``design`` and run the trace's samples.

    ``verilog`` is the design's Verilog with module ``top`` when the caller has it already (as
    :func:`rtl_gen.generate.generate` wrote it); by default the design is converted here."""

    top = top or top_name(design.config)
    net = design.network
    layout = net.samples.payload.shape()
    payloads = [
        layout.const({"bubble": 0, "label": int(label), "x": [int(v) for v in row]})
        .as_value()
        .value
        for row, label in zip(trace.inputs, trace.labels, strict=True)
    ]
    n_in = design.plan.stages[0].n_in
    bubble = layout.const({"bubble": 1, "label": 0, "x": [0] * n_in}).as_value().value
    payloads += [bubble] * (2 * len(net.stages) - 1)
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
    start = time.perf_counter()
    if verilog is None:
        verilog = verilog_text(design, top)
    build = sim_build(verilog, top, simulator=simulator)
    build_seconds = time.perf_counter() - start
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
) -> VerifyResult:
    """Generate, simulate and compare ``samples`` samples (the dataset's, or ``x``/``labels``).

    ``generated`` is ``config``'s design as :func:`rtl_gen.generate.generate` returned it: its
    design and Verilog are simulated as they are, instead of building and converting the design
    again (``pbhw flow`` generates once); a design of another config is refused (ValueError)."""
    if generated is None:
        design, verilog, top = build_design(config), None, None
    else:
        generated.check_config(config)
        design, verilog, top = generated.design, generated.verilog, generated.manifest.top
    if x is None:
        x, labels = dataset_samples(config, samples)
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
    )
    found = first_mismatch(trace, seen)
    n = len(trace.labels)
    return VerifyResult(
        config=config.name,
        simulator=simulator,
        bit_exact=found is None,
        mismatch=None if found is None else str(found),
        samples=n,
        steps=trace.steps,
        measured_cycles_per_sample=steady_cycles_per_sample(taken, n),
        predicted_cycles_per_sample=design.network.predicted_cycles_per_sample,
        sim_seconds=info["sim_seconds"],
        build_seconds=info["build_seconds"],
        rebuilt=info["rebuilt"],
        cycles=(taken[-1] if taken else 0),
    )
