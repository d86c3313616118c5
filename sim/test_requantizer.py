"""Requantizer in Verilog against pbhw.core.fixed.requantize: every rounding and overflow mode.

One design holds a requantizer per (format pair, rounding, overflow), so one build covers them
all; each format pair sees every code of its source (random codes for the wide one) with random
words, including those at which stochastic rounding flips. Runs on every simulator, with idle
cycles and back-pressure.
"""

import random

import pytest
import torch
from amaranth.hdl import Module, Shape, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.fixed import FixedFormat, Overflow, Rounding, overflow_to, requantize, shift_round
from pbhw.tools.toolchain import SIMULATORS, verilog_of
from rtl_gen.requantizer import Requantizer
from sim.codes import fields_of, pack_fields
from sim.runner import build_or_skip, run_stream
from sim.shell import StreamShell

U32 = 0xFFFF_FFFF
MODES = [(r, o) for r in Rounding for o in Overflow]

# (src, dst): right shifts by 1 and 3, beyond the source width, beyond 32 bits, a left shift
# beyond the destination, widening, and a wide accumulator; signed and unsigned on both sides.
FORMATS = [
    (FixedFormat(7, 3), FixedFormat(4, 2)),
    (FixedFormat(7, 5, signed=False), FixedFormat(4, 2)),
    (FixedFormat(7, 9), FixedFormat(4, 0, signed=False)),
    (FixedFormat(7, 40), FixedFormat(4, 0)),
    (FixedFormat(7, 0, signed=False), FixedFormat(4, 6, signed=False)),
    (FixedFormat(4, 3), FixedFormat(7, 1)),
    (FixedFormat(24, 12), FixedFormat(8, 4)),
]


def _shape(fmt: FixedFormat) -> Shape:
    return signed(fmt.width) if fmt.signed else unsigned(fmt.width)


def _port(k: int, rounding: Rounding, overflow: Overflow) -> str:
    return f"{k}_{rounding.value}_{overflow.value}"


class RequantizerBank(wiring.Component):
    """One :class:`Requantizer` per format pair and mode; pair ``k`` reads ``i{k}`` and
    ``random{k}`` and drives ``o{k}_<rounding>_<overflow>`` and ``sat{k}_<rounding>_<overflow>``."""

    def __init__(self, formats):
        self._formats = formats
        members = {}
        for k, (src, dst) in enumerate(formats):
            members[f"i{k}"] = In(_shape(src))
            members[f"random{k}"] = In(32)
            for rounding, overflow in MODES:
                members[f"o{_port(k, rounding, overflow)}"] = Out(_shape(dst))
                members[f"sat{_port(k, rounding, overflow)}"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for k, (src, dst) in enumerate(self._formats):
            for rounding, overflow in MODES:
                rq = Requantizer(src=src, dst=dst, rounding=rounding, overflow=overflow)
                m.submodules[f"rq{_port(k, rounding, overflow)}"] = rq
                m.d.comb += rq.i.eq(getattr(self, f"i{k}"))
                if rounding is Rounding.STOCHASTIC:
                    m.d.comb += rq.random.eq(getattr(self, f"random{k}"))
                m.d.comb += [
                    getattr(self, f"o{_port(k, rounding, overflow)}").eq(rq.o),
                    getattr(self, f"sat{_port(k, rounding, overflow)}").eq(rq.saturated),
                ]
        return m


def stimulus(src: FixedFormat, dst: FixedFormat, rng: random.Random) -> list[tuple[int, int]]:
    """(code, word) pairs: every code (or 400 random ones of a wide format) with extreme words,
    random words and the words at and around which stochastic rounding flips."""
    if src.width <= 8:
        codes = list(range(src.min_code, src.max_code + 1))
    else:
        codes = [src.min_code, src.max_code, 0, -1, 1] + [
            rng.randrange(src.min_code, src.max_code + 1) >> rng.randrange(src.width)
            for _ in range(395)
        ]
    shift = src.frac - dst.frac
    cases = []
    for code in codes:
        words = [0, 1, 1 << 31, U32] + [rng.getrandbits(32) for _ in range(2)]
        if shift > 0:
            dropped = code % (1 << shift)
            flip = dropped << (32 - shift) if shift < 32 else dropped >> (shift - 32)
            words += [w for w in (flip - 1, flip) if 0 <= w <= U32]
        cases += [(code, word) for word in words]
    return cases


def expected(src, dst, codes, words):
    """(codes, saturated) of each mode, from pbhw.core.fixed."""
    result = {}
    for rounding, overflow in MODES:
        shift = src.frac - dst.frac
        if rounding is Rounding.STOCHASTIC and shift > 0:
            rounded = shift_round(codes, shift, rounding, random=words)
            out, sat = overflow_to(rounded, dst, overflow)
        else:  # with nothing dropped every rounding agrees and no word is used
            mode = Rounding.FLOOR if rounding is Rounding.STOCHASTIC else rounding
            out, sat = requantize(codes, src, dst, mode, overflow, return_saturated=True)
        result[rounding, overflow] = (out.tolist(), sat.int().tolist())
    return result


@pytest.mark.parametrize("sim", SIMULATORS)
def test_every_mode_matches_golden_model(sim):
    shell = StreamShell(RequantizerBank(FORMATS))
    build = build_or_skip(verilog_of(shell, "requantizer_bank"), "requantizer_bank", sim=sim)
    in_fields = fields_of(shell.i.payload.shape())
    out_fields = fields_of(shell.o.payload.shape())

    rng = random.Random(2024)
    series = [stimulus(src, dst, rng) for src, dst in FORMATS]
    count = max(len(s) for s in series)
    series = [(s * (count // len(s) + 1))[:count] for s in series]  # shorter ones repeat
    inputs = [{} for _ in range(count)]
    outputs = [{} for _ in range(count)]
    for k, ((src, dst), cases) in enumerate(zip(FORMATS, series, strict=True)):
        codes = torch.tensor([code for code, _ in cases])
        words = torch.tensor([word for _, word in cases])
        for n, (code, word) in enumerate(cases):
            inputs[n][f"i{k}"] = code
            inputs[n][f"random{k}"] = word
        for (rounding, overflow), (out, sat) in expected(src, dst, codes, words).items():
            port = _port(k, rounding, overflow)
            for n in range(count):
                outputs[n][f"o{port}"] = out[n]
                outputs[n][f"sat{port}"] = sat[n]

    run_stream(
        build,
        "every_mode",
        inputs=[pack_fields(x, in_fields) for x in inputs],
        expected=[pack_fields(y, out_fields) for y in outputs],
        input_fields=in_fields,
        output_fields=out_fields,
    )
