"""cocotb testbench of a whole generated network, driven by :mod:`pbhw.tools.verify`.

It streams the samples of a stimulus file (``PBHW_STIMULUS``, JSON written by
:func:`pbhw.tools.verify.run_rtl`) into ``samples``, then ``2L - 1`` bubbles, with optional random
idle
cycles and back-pressure on ``results``; it records every token on every inter-stage stream (the
stages' ``fwd_o`` / ``err_o`` ports inside the design), every result, the cycle of every accepted
sample, and, once the pipeline is quiet, every W/V memory row through the debug port and the
saturation counters. The raw integers go to ``PBHW_OBSERVED``; the comparison with the golden
trace happens outside the simulator (:mod:`golden.compare`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from pbhw.tools.testbench.streams import StreamDriver, StreamMonitor, start_clock_and_reset


async def _watch(dut, streams, log, cycle_of_sample, stop):
    """Record ``(valid & ready)`` transfers of internal streams, once per clock cycle."""
    handles = [
        (
            key,
            getattr(inst, f"{port}__valid"),
            getattr(inst, f"{port}__ready"),
            getattr(inst, f"{port}__payload"),
        )
        for key, inst, port in streams
    ]
    samples_valid, samples_ready = dut.samples__valid, dut.samples__ready
    cycle = 0
    while not stop:
        await FallingEdge(dut.clk)
        await ReadOnly()
        for key, valid, ready, payload in handles:
            if valid.value == 1 and ready.value == 1:
                log[key].append(int(payload.value))
        if samples_valid.value == 1 and samples_ready.value == 1:
            cycle_of_sample.append(cycle)
        cycle += 1


@cocotb.test()
async def network(dut):
    spec = json.loads(Path(os.environ["PBHW_STIMULUS"]).read_text())
    stages = spec["stages"]
    await start_clock_and_reset(dut)

    streams = []
    for i in range(stages):
        inst = getattr(dut, f"stage{i + 1}")
        streams.append((f"fwd{i}", inst, "fwd_o"))
        if i:
            streams.append((f"err{i}", inst, "err_o"))
    log = {key: [] for key, _, _ in streams}
    taken: list[int] = []
    stop: list[bool] = []
    cocotb.start_soon(_watch(dut, streams, log, taken, stop))

    driver = StreamDriver(dut, "samples", dut.clk, idle=spec["idle"], seed=spec["seed"])
    results = StreamMonitor(
        dut, "results", dut.clk, backpressure=spec["backpressure"], seed=spec["seed"] + 1
    )
    driver.send(spec["payloads"])
    got = await results.receive(spec["samples"], timeout_cycles=spec["timeout_cycles"])
    await driver.wait_done()

    # Quiet: every stage idle for longer than any wait between two of its steps.
    quiet = 0
    for _ in range(spec["timeout_cycles"]):
        await RisingEdge(dut.clk)
        quiet = quiet + 1 if dut.idle.value == 1 else 0
        if quiet > spec["quiet_cycles"]:
            break
    else:
        raise AssertionError("the pipeline did not go quiet after the drain bubbles")
    stop.append(True)

    memories = []
    for i, rows in enumerate(spec["rows"]):
        per_stage = []
        for mem in range(2):
            values = []
            for r in range(rows):
                await FallingEdge(dut.clk)
                dut.dbg_stage.value = i
                dut.dbg_mem.value = mem
                dut.dbg_addr.value = r
                for _ in range(spec["debug_latency"]):
                    await RisingEdge(dut.clk)
                await ReadOnly()
                values.append(int(dut.dbg_data.value))
            per_stage.append(values)
        memories.append(per_stage)
    await RisingEdge(dut.clk)
    out = {
        "streams": log,
        "results": got,
        "taken": taken,
        "memories": memories,
        "saturation": int(dut.saturation.value),
    }
    Path(os.environ["PBHW_OBSERVED"]).write_text(json.dumps(out))
