"""Tests for rtl_gen.threefry against pbhw.core.fixed.threefry2x32."""

import random

import pytest
from amaranth.back import verilog
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from pbhw_testing import raises_in_init

from pbhw.core.fixed import THREEFRY_ROUNDS, threefry2x32
from rtl_gen.threefry import Threefry2x32


def simulate(dut, inputs):
    """x0 of ``dut`` for each (k0, k1, c0, c1) in ``inputs``, all in one simulation."""
    outputs = []

    async def testbench(ctx):
        for k0, k1, c0, c1 in inputs:
            ctx.set(dut.k0, k0)
            ctx.set(dut.k1, k1)
            ctx.set(dut.c0, c0)
            ctx.set(dut.c1, c1)
            outputs.append(ctx.get(dut.x0))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    return outputs


def test_init():
    dut = Threefry2x32()
    assert dut.rounds == THREEFRY_ROUNDS
    assert dut.latency == 0
    Fragment.get(dut, None)
    dut = Threefry2x32(rounds=20)
    assert dut.rounds == 20
    Fragment.get(dut, None)


def test_init_wrong_rounds_type():
    with raises_in_init(TypeError, match=r"Rounds must be a non-negative integer, not 13\.0"):
        Threefry2x32(rounds=13.0)
    with raises_in_init(TypeError, match=r"Rounds must be a non-negative integer, not True"):
        Threefry2x32(rounds=True)


def test_init_wrong_rounds_value():
    with raises_in_init(ValueError, match=r"Rounds must be a non-negative integer, not -1"):
        Threefry2x32(rounds=-1)


def test_pbhw_rounds_known_answer():
    assert simulate(Threefry2x32(), [(0, 0, 0, 0)]) == [0x9D1C5EC6]


# Random123 kat_vectors for threefry2x32_20 (ctr, key -> first output word).
@pytest.mark.parametrize(
    ("k0", "k1", "c0", "c1", "x0"),
    [
        (0, 0, 0, 0, 0x6B200159),
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0x1CB996FC),
        (0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3, 0xC4923A9C),
    ],
)
def test_random123_known_answer(k0, k1, c0, c1, x0):
    assert simulate(Threefry2x32(rounds=20), [(k0, k1, c0, c1)]) == [x0]


@pytest.mark.parametrize("rounds", [0, 1, 4, 5, THREEFRY_ROUNDS, 20])
def test_matches_golden_model(rounds):
    rng = random.Random(rounds)
    inputs = [(0, 0, 0, 0), (0xFFFFFFFF,) * 4]
    inputs += [tuple(rng.getrandbits(32) for _ in range(4)) for _ in range(50)]
    expected = [int(threefry2x32(*words, rounds=rounds)[0]) for words in inputs]
    assert simulate(Threefry2x32(rounds=rounds), inputs) == expected


def test_converts_to_verilog():
    text = verilog.convert(Threefry2x32(), name="threefry2x32")
    assert "module threefry2x32" in text
    assert "*" not in text.replace("(*", "").replace("*)", "").replace("/*", "").replace("*/", "")


@pytest.mark.parametrize("rounds", [0, 1, 4, 5, THREEFRY_ROUNDS])
def test_pipelined_takes_a_counter_every_cycle(rounds):
    dut = Threefry2x32(rounds=rounds, pipelined=True)
    assert dut.latency == max(1, -(-rounds // 2))
    rng = random.Random(rounds)
    key = (rng.getrandbits(32), rng.getrandbits(32))
    counters = [(rng.getrandbits(32), rng.getrandbits(32)) for _ in range(30)]
    expected = [int(threefry2x32(*key, *c, rounds=rounds)[0]) for c in counters]
    outputs = []

    async def testbench(ctx):
        ctx.set(dut.k0, key[0])
        ctx.set(dut.k1, key[1])
        for n in range(len(counters) + dut.latency):
            if n < len(counters):
                ctx.set(dut.c0, counters[n][0])
                ctx.set(dut.c1, counters[n][1])
            await ctx.tick()
            if n + 1 >= dut.latency:
                outputs.append(ctx.get(dut.x0))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert outputs[: len(counters)] == expected


def test_pipelined_wrong_type():
    with raises_in_init(TypeError, match=r"Pipelined must be a bool, not 1"):
        Threefry2x32(pipelined=1)
