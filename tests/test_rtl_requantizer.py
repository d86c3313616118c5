"""Tests for rtl_gen.requantizer: exhaustive over small formats against
pbhw.core.fixed.requantize."""

import itertools
import random

import pytest
import torch
from amaranth.back import verilog
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from pbhw_testing import raises_in_init

from pbhw.core.fixed import FixedFormat, Overflow, Rounding, overflow_to, requantize, shift_round
from rtl_gen.requantizer import Requantizer

DETERMINISTIC = [r for r in Rounding if r is not Rounding.STOCHASTIC]
U32 = 0xFFFF_FFFF

# (src width, src frac, dst width, dst frac): shifts right by 1, 3, beyond the source width, beyond
# 32 and beyond width + 32 (where the block clamps the shift), no shift, and left shifts within and
# beyond the destination width (clamped too); narrowing and widening.
FORMATS = [
    (7, 3, 4, 2),
    (7, 5, 4, 2),
    (7, 9, 4, 0),
    (7, 40, 4, 0),
    (7, 45, 4, 0),
    (7, 2, 4, 2),
    (7, 0, 4, 2),
    (7, 0, 4, 6),
    (4, 0, 7, 2),
    (4, 3, 7, 1),
]
SIGNEDNESS = list(itertools.product([False, True], repeat=2))


def formats(widths, signedness):
    src_width, src_frac, dst_width, dst_frac = widths
    src_signed, dst_signed = signedness
    return FixedFormat(src_width, src_frac, src_signed), FixedFormat(
        dst_width, dst_frac, dst_signed
    )


def all_codes(fmt):
    return list(range(fmt.min_code, fmt.max_code + 1))


def simulate(dut, cases):
    """(o, saturated) of ``dut`` for each (code, random word) in ``cases``, in one simulation."""
    outputs = []

    async def testbench(ctx):
        for code, word in cases:
            ctx.set(dut.i, code)
            if word is not None:
                ctx.set(dut.random, word)
            outputs.append((ctx.get(dut.o), ctx.get(dut.saturated)))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    return outputs


def as_pairs(codes, overflowed):
    return list(zip(codes.tolist(), overflowed.int().tolist(), strict=True))


def test_init():
    src, dst = FixedFormat(16, 8), FixedFormat(8, 4, signed=False)
    dut = Requantizer(src=src, dst=dst, rounding="half_up", overflow=Overflow.WRAP)
    assert dut.src == src
    assert dut.dst == dst
    assert dut.rounding is Rounding.HALF_UP
    assert dut.overflow is Overflow.WRAP
    assert dut.latency == 0
    assert dut.i.shape().signed and len(dut.i) == 16
    assert not dut.o.shape().signed and len(dut.o) == 8
    assert len(dut.saturated) == 1
    assert not hasattr(dut, "random")
    Fragment.get(dut, None)

    dut = Requantizer(src=src, dst=dst, rounding=Rounding.STOCHASTIC, overflow="saturate")
    assert len(dut.random) == 32
    Fragment.get(dut, None)


def test_init_wrong_src():
    with raises_in_init(TypeError, r"Source format must be a FixedFormat, not 16"):
        Requantizer(src=16, dst=FixedFormat(8, 4), rounding="floor", overflow="wrap")


def test_init_wrong_dst():
    with raises_in_init(TypeError, r"Destination format must be a FixedFormat, not 'u8\.4'"):
        Requantizer(src=FixedFormat(8, 4), dst="u8.4", rounding="floor", overflow="wrap")


def test_init_wrong_rounding():
    fmt = FixedFormat(8, 4)
    with raises_in_init(TypeError, r"Rounding must be a Rounding or one of .*, not 3"):
        Requantizer(src=fmt, dst=fmt, rounding=3, overflow="wrap")
    with raises_in_init(ValueError, r"Rounding must be one of .*, not 'nearest'"):
        Requantizer(src=fmt, dst=fmt, rounding="nearest", overflow="wrap")


def test_init_wrong_overflow():
    fmt = FixedFormat(8, 4)
    with raises_in_init(TypeError, r"Overflow must be an? Overflow or one of .*, not None"):
        Requantizer(src=fmt, dst=fmt, rounding="floor", overflow=None)
    with raises_in_init(ValueError, r"Overflow must be one of .*, not 'clamp'"):
        Requantizer(src=fmt, dst=fmt, rounding="floor", overflow="clamp")


def test_init_keyword_only():
    fmt = FixedFormat(8, 4)
    with raises_in_init(TypeError, r"positional argument"):
        Requantizer(fmt, fmt, "floor", "wrap")


@pytest.mark.parametrize("overflow", list(Overflow))
@pytest.mark.parametrize("signedness", SIGNEDNESS)
@pytest.mark.parametrize("widths", FORMATS)
def test_deterministic_matches_golden_model(widths, signedness, overflow):
    src, dst = formats(widths, signedness)
    codes = all_codes(src)
    for rounding in DETERMINISTIC:
        dut = Requantizer(src=src, dst=dst, rounding=rounding, overflow=overflow)
        expected = requantize(
            torch.tensor(codes), src, dst, rounding, overflow, return_saturated=True
        )
        actual = simulate(dut, [(code, None) for code in codes])
        assert actual == as_pairs(*expected), f"{rounding} {src} -> {dst}"


def boundary_words(code, shift):
    """Random words at and just below F, where the decision to round up flips."""
    if shift <= 0:
        return []
    dropped = code % (1 << shift)
    threshold = dropped << (32 - shift) if shift < 32 else dropped >> (shift - 32)
    return [w for w in (threshold - 1, threshold, threshold + 1) if 0 <= w <= U32]


@pytest.mark.parametrize("overflow", list(Overflow))
@pytest.mark.parametrize("signedness", SIGNEDNESS)
@pytest.mark.parametrize("widths", FORMATS)
def test_stochastic_matches_golden_model(widths, signedness, overflow):
    src, dst = formats(widths, signedness)
    shift = src.frac - dst.frac
    rng = random.Random(repr((widths, signedness)))
    cases = []
    for code in all_codes(src):
        words = [0, 1, 1 << 31, U32 - 1, U32] + [rng.getrandbits(32) for _ in range(3)]
        cases += [(code, word) for word in words + boundary_words(code, shift)]
    codes = torch.tensor([code for code, _ in cases])
    words = torch.tensor([word for _, word in cases])
    if shift > 0:
        rounded = shift_round(codes, shift, Rounding.STOCHASTIC, random=words)
        expected = overflow_to(rounded, dst, overflow)
    else:  # nothing is dropped, so no word is used and every rounding mode agrees
        expected = requantize(codes, src, dst, Rounding.FLOOR, overflow, return_saturated=True)
    dut = Requantizer(src=src, dst=dst, rounding=Rounding.STOCHASTIC, overflow=overflow)
    assert simulate(dut, cases) == as_pairs(*expected)


def test_wide_accumulator_spot_checks():
    src, dst = FixedFormat(40, 20), FixedFormat(12, 6)
    rng = random.Random(0)
    codes = [src.min_code, src.max_code, 0, -1, 1] + [
        rng.randrange(src.min_code, src.max_code + 1) >> rng.randrange(40) for _ in range(200)
    ]
    for rounding in DETERMINISTIC:
        dut = Requantizer(src=src, dst=dst, rounding=rounding, overflow=Overflow.SATURATE)
        expected = requantize(torch.tensor(codes), src, dst, rounding, return_saturated=True)
        assert simulate(dut, [(code, None) for code in codes]) == as_pairs(*expected)


def test_converts_to_verilog():
    dut = Requantizer(
        src=FixedFormat(24, 12),
        dst=FixedFormat(8, 4),
        rounding=Rounding.STOCHASTIC,
        overflow=Overflow.SATURATE,
    )
    text = verilog.convert(dut, name="requantizer")
    assert "module requantizer" in text
