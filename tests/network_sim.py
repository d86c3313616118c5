"""Run a generated network in Amaranth's simulator and observe it like the cocotb benches do.

Used by the fast ``tests/`` checks of the generators; ``sim/`` runs the same comparison
(``golden.compare``) on the Verilog under Verilator.
"""

from __future__ import annotations

import numpy as np
import torch
from amaranth.sim import Simulator

from golden.compare import Observed
from golden.trace import Trace, run_trace
from pbhw.tools.verify import unpack_row
from rtl_gen.design import Design
from rtl_gen.top import DEBUG_LATENCY


def random_samples(design: Design, samples: int, seed: int = 0):
    plan = design.plan
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.uniform(-1, 1, (samples, plan.stages[0].n_in)))
    y = rng.integers(0, plan.stages[-1].n_out, samples)
    return x, y


def simulate(
    design: Design,
    trace: Trace,
    *,
    idle_seed: int | None = None,
    max_cycles: int = 200_000,
) -> tuple[Observed, list[int]]:
    """Feed the trace's input codes (then ``2L - 1`` bubbles), record every inter-stage token
    and result, read back W, V and the counters through the debug port.

    With ``idle_seed``, the sample stream has random idle cycles and the result stream random
    back-pressure. Returns the observation and the cycles at which samples were taken."""
    net = design.network
    L = len(net.stages)
    n_in = design.plan.stages[0].n_in
    seen = Observed([[] for _ in range(L)], [[] for _ in range(L)])
    taken: list[int] = []
    rng = np.random.default_rng(idle_seed) if idle_seed is not None else None
    watched = [("fwd", i, s.fwd_o) for i, s in enumerate(net.stages)]
    watched += [("err", i, s.err_o) for i, s in enumerate(net.stages) if i]
    signals = [x for _, _, st in watched for x in (st.valid, st.ready, st.payload)]
    signals += [net.results.valid, net.results.ready, net.results.payload]
    signals += [net.samples.valid, net.samples.ready]
    done = []

    async def drive(ctx):
        feed = [
            (0, int(label), [int(v) for v in row])
            for row, label in zip(trace.inputs, trace.labels, strict=True)
        ]
        feed += [(1, 0, [0] * n_in)] * (2 * L - 1)
        for bubble, label, xs in feed:
            while rng is not None and rng.random() < 0.3:
                ctx.set(net.samples.valid, 0)
                await ctx.tick()
            ctx.set(net.samples.payload, {"bubble": bubble, "label": label, "x": xs})
            ctx.set(net.samples.valid, 1)
            await ctx.tick().until(net.samples.ready)
        ctx.set(net.samples.valid, 0)
        # Drained when the results are out and every stage stays idle for longer than any
        # wait between two of its steps (a stage is briefly idle between steps).
        quiet, needed = 0, net.quiet_cycles
        for _ in range(max_cycles):
            await ctx.tick()
            quiet = quiet + 1 if ctx.get(net.idle) else 0
            if quiet > needed and len(seen.results) == len(trace.labels):
                break
        weights, velocities = [], []
        for i, st in enumerate(net.stages):
            for mem, width, out in (
                (0, st.weight_bits, weights),
                (1, st.velocity_bits, velocities),
            ):
                fmt_signed = st.plan.formats.weight if mem == 0 else st.plan.formats.velocity
                vals: list[int] = []
                for r in range(st.rows):
                    ctx.set(net.dbg_stage, i)
                    ctx.set(net.dbg_mem, mem)
                    ctx.set(net.dbg_addr, r)
                    await ctx.tick().repeat(DEBUG_LATENCY)
                    vals += unpack_row(
                        ctx.get(net.dbg_data), width, fmt_signed.format.signed, st.lanes
                    )
                out.append(vals[: st.weights])
        seen.weights, seen.velocities = weights, velocities
        seen.saturation = dict(
            zip(net.counter_names(), [int(v) for v in ctx.get(net.saturation)], strict=True)
        )
        done.append(True)

    async def monitor(ctx):
        cycle = 0
        while True:
            if rng is not None:
                ctx.set(net.results.ready, int(rng.random() < 0.7))
            else:
                ctx.set(net.results.ready, 1)
            values = (await ctx.tick().sample(*signals))[2:]
            for n, (kind, i, _) in enumerate(watched):
                valid, ready, payload = values[3 * n : 3 * n + 3]
                if valid and ready:
                    codes = payload.x if kind == "fwd" else payload.e
                    target = seen.forward if kind == "fwd" else seen.error
                    target[i].append((int(payload.bubble), [int(c) for c in codes]))
            valid, ready, payload = values[-5:-2]
            if valid and ready:
                seen.results.append(
                    (int(payload.label), int(payload.prediction), [int(c) for c in payload.delta])
                )
            if values[-2] and values[-1]:
                taken.append(cycle)
            cycle += 1

    sim = Simulator(net)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_process(monitor)
    sim.run()
    if not done:
        raise AssertionError(f"the network did not drain within {max_cycles} cycles")
    return seen, taken


def trace_for(design: Design, samples: int, seed: int = 0) -> Trace:
    x, y = random_samples(design, samples, seed)
    return run_trace(design.plan, x, y)
