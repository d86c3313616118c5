"""The pytest side of a testbench: build a design once per content hash and run a cocotb test.

Typical use from a ``sim/test_*.py`` file::

    shell = StreamShell(MyBlock(...))
    build = build_or_skip(verilog_of(shell, "my_block"), "my_block")
    received = run_stream(build, "my_case", inputs=[...], expected=[...],
                          input_fields=fields_of(shell.i.payload.shape()),
                          output_fields=fields_of(shell.o.payload.shape()))

The simulator is ``PBHW_SIM`` (``verilator`` by default, or ``icarus``); a missing simulator skips
the test with the reason. Builds live in ``<repo>/sim_build/<simulator>/<hash>/`` and are reused
while the Verilog, the waiver file, the simulator and the build arguments are unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from pbhw.tools.toolchain import (
    SIMULATORS,
    SimBuild,
    ToolError,
    sim_build,
    sim_test,
    simulator_tool,
)
from sim.codes import Field

__all__ = ["simulator", "build_or_skip", "run_stream"]


def simulator() -> str:
    """The simulator chosen by the environment variable ``PBHW_SIM`` (default ``verilator``).

    Raises
    ------
    ValueError
        If ``PBHW_SIM`` names no supported simulator.
    """
    name = os.environ.get("PBHW_SIM", "verilator")
    if name not in SIMULATORS:
        raise ValueError(f"PBHW_SIM must be one of {', '.join(SIMULATORS)}, not {name!r}")
    return name


def build_or_skip(
    verilog: str, top: str, *, sim: str | None = None, build_args: Sequence[str] = ()
) -> SimBuild:
    """:func:`pbhw.tools.toolchain.sim_build` for ``sim`` (default :func:`simulator`), skipping the
    calling test when that simulator is not installed."""
    sim = simulator() if sim is None else sim
    try:
        simulator_tool(sim)
    except ToolError as error:
        pytest.skip(f"{sim} unavailable: {error}")
    return sim_build(verilog, top, simulator=sim, build_args=build_args)


def _run_dir(build: SimBuild, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return build.directory / "runs" / safe


def run_stream(
    build: SimBuild,
    name: str,
    *,
    inputs: Sequence[int],
    expected: Sequence[int],
    input_fields: Sequence[Field],
    output_fields: Sequence[Field],
    compare: Sequence[str] | None = None,
    idle: float = 0.3,
    backpressure: float = 0.3,
    seed: int = 1,
) -> list[int]:
    """Run :mod:`sim.tb_stream` on a build: one input payload in, one output payload out, each.

    Parameters
    ----------
    build : SimBuild
        A design with stream ports ``i`` and ``o`` and ``clk``/``rst`` (e.g. a
        :class:`sim.shell.StreamShell`).
    name : str
        Names the run directory ``<build>/runs/<name>`` (one per pytest test).
    inputs, expected : sequence of int
        Flattened input payloads, and the output payloads the model predicts for them.
    input_fields, output_fields : sequence of Field
        The payload layouts (:func:`sim.codes.fields_of`), for readable mismatch reports.
    compare : sequence of str, optional
        Output fields checked exactly in the testbench; all by default.
    idle, backpressure : float
        Probabilities of an idle input cycle and of a cycle without ``ready`` at the output.
    seed : int
        Seed of idle cycles and back-pressure.

    Returns
    -------
    list of int
        Every received output payload.

    Raises
    ------
    AssertionError
        If an output differs (the message names the first vector, its inputs and the fields).
    """
    if len(inputs) != len(expected):
        raise ValueError(f"{len(inputs)} inputs but {len(expected)} expected outputs")
    run_dir = _run_dir(build, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, received_path = run_dir / "spec.json", run_dir / "received.json"
    received_path.unlink(missing_ok=True)
    spec = {
        "inputs": [int(x) for x in inputs],
        "expected": [int(x) for x in expected],
        "input_fields": [dataclasses.asdict(f) for f in input_fields],
        "output_fields": [dataclasses.asdict(f) for f in output_fields],
        "compare": [f.name for f in output_fields] if compare is None else list(compare),
        "idle": idle,
        "backpressure": backpressure,
        "seed": seed,
        "received": str(received_path),
    }
    spec_path.write_text(json.dumps(spec))
    sim_test(
        build,
        "sim.tb_stream",
        test_dir=run_dir,
        extra_env={"PBHW_STREAM_SPEC": str(spec_path)},
    )
    return json.loads(received_path.read_text())
