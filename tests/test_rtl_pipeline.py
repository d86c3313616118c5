"""rtl_gen.pipeline: delay lines, in registers and in memory stretches, against the input."""

import random

import pytest
from amaranth.hdl import Fragment, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from rtl_gen.pipeline import RAM_DEPTH, RAM_MIN_DELAY, Delays

# Delays asked of one line, in the order asked: rising, falling inside a memory stretch (one
# more read port, or a register right after the stretch's start), past RAM_DEPTH (two stretches)
# and stretches too short for memory.
ASKED = [3, 1, 13, 5, 14, 2, RAM_DEPTH + 9, 4, RAM_DEPTH + 11, 6]


class _Lines(wiring.Component):
    def __init__(self, ram: bool):
        self._ram = ram
        members = {"x": In(signed(11))}
        members |= {f"y{n}": Out(signed(11)) for n in ASKED}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        later = Delays(m, ram=self._ram)
        for n in ASKED:
            m.d.comb += getattr(self, f"y{n}").eq(later(self.x, n, "x"))
        return m


def _outputs(ram: bool, inputs: list[int]) -> list[dict[int, int]]:
    dut = _Lines(ram)
    seen = []

    async def testbench(ctx):
        for value in inputs:
            ctx.set(dut.x, value)
            await ctx.tick()
            seen.append({n: ctx.get(getattr(dut, f"y{n}")) for n in ASKED})

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return seen


@pytest.mark.parametrize("ram", [False, True])
def test_delay_lines_give_the_input_n_cycles_back(ram):
    rng = random.Random(7)
    inputs = [rng.randrange(-1024, 1024) for _ in range(80)]
    seen = _outputs(ram, inputs)
    start = max(ASKED)  # every line has been filled
    for t in range(start, len(inputs)):  # after tick t, x as set before tick t - n + 1
        assert seen[t] == {n: inputs[t - n + 1] for n in ASKED}, t


def test_memory_stretches_are_made_of_long_stretches_only():
    m = Module()
    later = Delays(m, ram=True)
    x = Signal(8)
    later(x, RAM_MIN_DELAY - 1, "short")
    later(x, RAM_MIN_DELAY, "long")
    later(x, RAM_DEPTH + 1, "two")
    names = set(m._named_submodules)
    assert names == {"long_ram0", "two_ram0"}
    registers = Module()
    Delays(registers)(x, RAM_DEPTH, "x")
    assert not registers._named_submodules
    for module in (m, registers):
        Fragment.get(module, None)  # elaborates (and so uses) both


def test_memory_lines_cannot_be_reset():
    m = Module()
    with pytest.raises(ValueError, match="reset_less"):
        Delays(m, reset_less=False, ram=True)
    Fragment.get(m, None)
