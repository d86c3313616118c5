"""cocotb test: stream every input payload through the design and check every output payload.

The pytest side (:func:`sim.runner.run_stream`) writes a JSON specification and names it in the
environment variable ``PBHW_STREAM_SPEC``::

    {"inputs": [int, ...], "expected": [int, ...],
     "input_fields": [Field, ...], "output_fields": [Field, ...], "compare": [name, ...],
     "idle": float, "backpressure": float, "seed": int, "received": "path for the outputs"}

Payloads are the flattened integers of ``i__payload`` and ``o__payload``; the design must have
one output per input, in order. The fields named in ``compare`` must match exactly; the first
mismatch names the vector, its inputs and every differing field. All received payloads are also
written to the ``received`` path for checks that need the whole run (e.g. saturation counts).
"""

import json
import os
from pathlib import Path

import cocotb

from pbhw.tools.testbench.streams import StreamDriver, StreamMonitor, start_clock_and_reset
from sim.codes import Field, unpack_fields


@cocotb.test()
async def outputs_match_model(dut):
    spec = json.loads(Path(os.environ["PBHW_STREAM_SPEC"]).read_text())
    inputs, expected = spec["inputs"], spec["expected"]
    input_fields = [Field(**f) for f in spec["input_fields"]]
    output_fields = [Field(**f) for f in spec["output_fields"]]
    compared = [f for f in output_fields if f.name in spec["compare"]]

    await start_clock_and_reset(dut)
    driver = StreamDriver(dut, "i", dut.clk, idle=spec["idle"], seed=spec["seed"])
    monitor = StreamMonitor(
        dut, "o", dut.clk, backpressure=spec["backpressure"], seed=~spec["seed"]
    )
    driver.send(inputs)
    budget = 10 * len(inputs) + 100  # generous for idle and back-pressure of p < 0.9
    received = await monitor.receive(len(expected), timeout_cycles=budget)
    Path(spec["received"]).write_text(json.dumps(received))

    for n, (got, want) in enumerate(zip(received, expected, strict=True)):
        got_fields = unpack_fields(got, compared)
        want_fields = unpack_fields(want, compared)
        if got_fields != want_fields:
            diff = ", ".join(
                f"{name}: got {got_fields[name]}, expected {want_fields[name]}"
                for name in want_fields
                if got_fields[name] != want_fields[name]
            )
            raise AssertionError(f"vector {n} {unpack_fields(inputs[n], input_fields)}: {diff}")
    assert driver.sent == len(inputs)
