"""Tests for rtl_gen.target: the device's hard multiplier, resolved once."""

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal, signed

from pbhw.core.devices import PRIMITIVES, load_device
from rtl_gen.products import LATENCY
from rtl_gen.resources import MODELS, models_for
from rtl_gen.target import GENERIC, Multiplier


def test_from_device_takes_ports_and_primitive():
    ecp5 = load_device("ecp5-85k")
    assert Multiplier.from_device(ecp5) == Multiplier(ports=(18, 18), primitive="MULT18X18D")
    assert Multiplier.from_device(ecp5, primitives=False) == GENERIC
    xilinx = Multiplier.from_device(load_device("xc7a35t"))
    assert (xilinx.ports, xilinx.primitive, xilinx.models) == ((25, 18), None, ())


def test_generic_is_18x18_without_primitive():
    assert (GENERIC.ports, GENERIC.primitive, GENERIC.latency) == ((18, 18), None, LATENCY)
    assert hash(GENERIC) == hash(Multiplier())
    assert repr(GENERIC) == "Multiplier(ports=(18, 18), primitive=None)"


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_every_primitive_builds_and_names_its_model(primitive):
    mul = Multiplier(primitive=primitive)
    assert mul.models == (MODELS / f"{primitive}.v",)
    m = Module()
    a, b = Signal(signed(20)), Signal(signed(16))
    out = Signal(signed(36))
    m.d.comb += out.eq(mul.product(m, a, b, "p"))
    text = verilog.convert(m, ports=[a, b, out], name="t")
    assert models_for(text) == list(mul.models)


def test_piece_needs_a_primitive():
    m = Module()
    m._MustUse__silence = True
    with pytest.raises(ValueError, match=r"must have a primitive to build a piece, not None"):
        GENERIC.piece(m, Signal(signed(8)), Signal(signed(8)), "p")


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match=r"Ports must be a tuple of two integers greater than 1"):
        Multiplier(ports=[18, 18])
    with pytest.raises(TypeError, match=r"Ports must be .*, not \(18, 1\)"):
        Multiplier(ports=(18, 1))
    with pytest.raises(TypeError, match=r"Primitive must be a string or None, not 5"):
        Multiplier(primitive=5)
    with pytest.raises(ValueError, match=r"Primitive must be one of .* or None, not 'DSP48E1'"):
        Multiplier(primitive="DSP48E1")
    with pytest.raises(ValueError, match=r"Ports must be at most 18 bits wide for MULT18X18D"):
        Multiplier(ports=(25, 18), primitive="MULT18X18D")
    with pytest.raises(TypeError, match=r"Device must be a Device, not 'ecp5-85k'"):
        Multiplier.from_device("ecp5-85k")
    with pytest.raises(TypeError):
        Multiplier((18, 18))  # keyword-only
