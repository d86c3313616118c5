"""rtl_gen.pipeline.Delays: lines through block RAM shift exactly as register chains do."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from rtl_gen.pipeline import RAM_DEPTH, RAM_MIN_BITS, RAM_MIN_DELAY, Delays


def _run(taps: list[int], width: int, ram: bool, cycles: int = 60):
    """Outputs of one line with ``taps`` (asked for in that order) over ``cycles`` cycles of
    random input, and the RAMs the line took."""
    m = Module()
    x = Signal(signed(width))
    later = Delays(m, ram=ram)
    outs = [later(x, n, "x") for n in taps]
    rng = random.Random(width * 1000 + sum(taps))
    inputs = [rng.randrange(-(1 << (width - 1)), 1 << (width - 1)) for _ in range(cycles)]
    seen: list[list[int]] = []

    async def bench(ctx):
        for value in inputs:
            ctx.set(x, value)
            await ctx.delay(1e-9)
            seen.append([ctx.get(o) for o in outs])
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return inputs, seen, later.memories


@pytest.mark.parametrize(
    "taps",
    [[6], [8], [RAM_DEPTH + 1], [6, 1, 13], [13, 3, 6], [5, 2, 9, 17], [4], [1, 2, 3]],
)
def test_ram_lines_match_register_lines_tap_for_tap(taps):
    inputs, ram_out, memories = _run(taps, 16, ram=True)
    _, reg_out, none = _run(taps, 16, ram=False)
    assert none == []
    # Past the fill, every tap is the input n cycles before.
    for t in range(max(taps), len(inputs)):
        assert ram_out[t] == reg_out[t] == [inputs[t - n] for n in taps]
    # Stretches beyond the last tap of at least RAM_MIN_DELAY cycles took a RAM.
    ends, stretches = 0, []
    for n in taps:
        if n > ends:
            stretches.append(n - ends)
            ends = n
    expected = [(16, c) for c in stretches if RAM_MIN_DELAY <= c <= RAM_DEPTH + 1]
    assert memories == expected


def test_narrow_lines_stay_registers():
    width = RAM_MIN_BITS // (RAM_MIN_DELAY - 1) - 1
    assert _run([RAM_MIN_DELAY], width, ram=True)[2] == []
