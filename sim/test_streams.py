"""The stream helpers and the stream testbench on a tiny design: every payload arrives once and
in order whatever the idle cycles and back-pressure, and a wrong output is reported by vector and
field. The payload is an array, packed with sim.codes."""

import random

import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from pbhw.tools.toolchain import verilog_of
from sim.codes import fields_of, pack, pack_fields
from sim.runner import build_or_skip, run_stream
from sim.shell import StreamShell

WIDTH, COUNT = 6, 3


class Negate(wiring.Component):
    """``y[k] = -a[k]`` (wrapping), ``total = sum(a)``: a combinational block with array ports."""

    a: In(data.ArrayLayout(signed(WIDTH), COUNT))
    y: Out(data.ArrayLayout(signed(WIDTH), COUNT))
    total: Out(signed(WIDTH + 2))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.y[k].eq(-self.a[k]) for k in range(COUNT)]
        m.d.comb += self.total.eq(sum(self.a[k] for k in range(COUNT)))
        return m


def wrap(value):
    return (value + (1 << (WIDTH - 1))) % (1 << WIDTH) - (1 << (WIDTH - 1))


@pytest.fixture(scope="module")
def design():
    shell = StreamShell(Negate())
    build = build_or_skip(verilog_of(shell, "negate"), "negate")
    return build, fields_of(shell.i.payload.shape()), fields_of(shell.o.payload.shape())


def vectors(count, seed):
    rng = random.Random(seed)
    lo, hi = -(1 << (WIDTH - 1)), (1 << (WIDTH - 1)) - 1
    arrays = [[rng.randint(lo, hi) for _ in range(COUNT)] for _ in range(count)]
    inputs = [{"a": pack(a, WIDTH)} for a in arrays]
    outputs = [{"y": pack([wrap(-c) for c in a], WIDTH), "total": sum(a)} for a in arrays]
    return inputs, outputs


@pytest.mark.parametrize("idle, backpressure", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.7, 0.7)])
def test_every_payload_arrives_once_in_order(design, idle, backpressure):
    build, in_fields, out_fields = design
    inputs, outputs = vectors(200, seed=3)
    received = run_stream(
        build,
        f"order_{idle}_{backpressure}",
        inputs=[pack_fields(i, in_fields) for i in inputs],
        expected=[pack_fields(o, out_fields) for o in outputs],
        input_fields=in_fields,
        output_fields=out_fields,
        idle=idle,
        backpressure=backpressure,
    )
    assert len(received) == 200


def test_mismatch_names_vector_and_field(design):
    build, in_fields, out_fields = design
    inputs, outputs = vectors(20, seed=4)
    outputs[7]["total"] += 1
    with pytest.raises(AssertionError, match=r"vector 7 \{'a': \d+\}: total: got -?\d+, expected"):
        run_stream(
            build,
            "mismatch",
            inputs=[pack_fields(i, in_fields) for i in inputs],
            expected=[pack_fields(o, out_fields) for o in outputs],
            input_fields=in_fields,
            output_fields=out_fields,
        )
