"""Pipelined products built on instantiated hard multipliers (``pbhw.core.devices.PRIMITIVES``),
simulated with their models (``rtl_gen/models``), against exact Python products.

One design holds a bank of products, each computed twice from the same operands: with the
primitive (``h_*``, the form synthesised for ECP5) and left to synthesis (``g_*``, the form the
amaranth.sim tests check); a product by a constant a third time in the fabric (``f_*``,
``hardware.constants = "fabric"``: shifts and adders over its canonical signed digits, in 3
cycles, registered once more).
Operands enter as a stream; the pipeline never stalls, so the output stream is the input delayed
by :data:`rtl_gen.products.LATENCY` cycles, with idle cycles kept.
"""

import random

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.config import ConstantProducts
from pbhw.core.datapath import product_pieces
from pbhw.core.devices import PRIMITIVES
from pbhw.tools.toolchain import verilog_of
from rtl_gen.products import LATENCY
from rtl_gen.resources import models_for
from rtl_gen.target import Multiplier
from sim.codes import fields_of, pack_fields, unpack_fields
from sim.runner import build_or_skip, run_stream

PORTS = (18, 18)
#: (name, a shape, b: a shape or an integer constant); pieces of 1, 2 and 4+ multipliers,
#: constants with zero, shift and multiplier slices.
CASES = [
    ("s16xs16", signed(16), signed(16)),
    ("s18xs18", signed(18), signed(18)),
    ("u16xs12", unsigned(16), signed(12)),
    ("s24xs16", signed(24), signed(16)),
    ("s37xs20", signed(37), signed(20)),
    ("s1xs8", signed(1), signed(8)),
    ("s20xc", signed(20), 3771106),
    ("s16xneg", signed(16), -(1 << 23) + 3),
    ("s12xc", signed(12), 0x10001),
    ("s25xmomentum", signed(25), 4180517),  # 0.99671 in s24.22: 7 digits
    ("s21xnegmomentum", signed(21), -4180517),
    ("u8x5555", unsigned(8), 0x555555),  # 12 digits: three-term adders
    ("s40xffffff", signed(40), 0xFFFFFF),
    ("s18xpow2", signed(18), -(1 << 22)),
    ("s10xzero", signed(10), 0),
]


class ProductBank(wiring.Component):
    """Every case of :data:`CASES`, with and without ``primitive``, and in the fabric."""

    def __init__(self, primitive):
        self._primitive = primitive
        inputs, outputs = {}, {}
        for name, a, b in CASES:
            inputs[f"a_{name}"] = a
            if not isinstance(b, int):
                inputs[f"b_{name}"] = b
            width = a.width + (b.width if not isinstance(b, int) else abs(b).bit_length() + 1) + 2
            outputs[f"g_{name}"] = outputs[f"h_{name}"] = signed(width)
            if isinstance(b, int):
                outputs[f"f_{name}"] = signed(width)
        super().__init__(
            {
                "i": In(stream.Signature(data.StructLayout(inputs))),
                "o": Out(stream.Signature(data.StructLayout(outputs))),
            }
        )

    def elaborate(self, platform):
        m = Module()
        x = self.i.payload
        for name, _, b in CASES:
            b = b if isinstance(b, int) else x[f"b_{name}"]
            kinds = [
                ("g", None, ConstantProducts.DSP),
                ("h", self._primitive, ConstantProducts.DSP),
            ]
            if isinstance(b, int):
                kinds.append(("f", self._primitive, ConstantProducts.FABRIC))
            for kind, prim, constants in kinds:
                mul = Multiplier(ports=PORTS, primitive=prim, constants=constants)
                p = mul.product(m, x[f"a_{name}"], b, f"{kind}_{name}")
                if kind == "f":  # 3 cycles in the fabric: registered up to the others' 4
                    for n in range(LATENCY - mul.constant_latency):
                        q = Signal.like(p, name=f"{kind}_{name}_d{n}")
                        m.d.sync += q.eq(p)
                        p = q
                m.d.comb += self.o.payload[f"{kind}_{name}"].eq(p)
        valid = self.i.valid
        for n in range(LATENCY):
            v = Signal(name=f"valid{n}")
            m.d.sync += v.eq(valid)
            valid = v
        m.d.comb += [self.i.ready.eq(1), self.o.valid.eq(valid)]
        return m


def _code(rng, shape):
    lo, hi = (
        (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1)
        if shape.signed
        else (0, (1 << shape.width) - 1)
    )
    return rng.choice([lo, hi, min(1, hi), max(-1, lo), rng.randint(lo, hi), rng.randint(lo, hi)])


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_hard_multiplier_products_are_exact(primitive):
    bank = ProductBank(primitive)
    text = verilog_of(bank, "product_bank")
    assert models_for(text) == list(Multiplier(primitive=primitive).models)
    assert [p.stem for p in models_for(text)] == [primitive]
    build = build_or_skip(text, "product_bank")
    in_fields = fields_of(bank.i.payload.shape())
    out_fields = fields_of(bank.o.payload.shape())
    rng = random.Random(7)
    inputs, expected = [], []
    for _ in range(300):
        values, want = {}, {}
        for name, a, b in CASES:
            values[f"a_{name}"] = _code(rng, a)
            if isinstance(b, int):
                product = values[f"a_{name}"] * b
                want[f"f_{name}"] = product
            else:
                values[f"b_{name}"] = _code(rng, b)
                product = values[f"a_{name}"] * values[f"b_{name}"]
            want[f"g_{name}"] = want[f"h_{name}"] = product
        inputs.append(pack_fields(values, in_fields))
        expected.append(pack_fields(want, out_fields))
    received = run_stream(
        build,
        f"products_{primitive}",
        inputs=inputs,
        expected=expected,
        input_fields=in_fields,
        output_fields=out_fields,
        backpressure=0.0,  # the bank's pipeline does not stall
    )
    # Every case was checked field by field; the hard multipliers really were instantiated.
    assert len(received) == len(inputs)
    assert text.count(f"{primitive} #(") == _hard_pieces()
    assert unpack_fields(received[-1], out_fields) == unpack_fields(expected[-1], out_fields)


def _hard_pieces() -> int:
    """Pieces of :data:`CASES` that take a hard multiplier, as the datapath plan lists them."""

    count = 0
    for _, a, b in CASES:
        a_bits = a.width + (not a.signed)
        spec = ("constant", b) if isinstance(b, int) else ("width", b.width + (not b.signed))
        count += sum(1 for x, y in product_pieces(a_bits, spec, PORTS) if min(x, y) >= 2)
    return count
