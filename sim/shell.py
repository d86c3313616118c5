"""A one-stage stream shell around a combinational block, so one testbench drives every unit.

The shell's input stream carries all the block's inputs as one struct payload and its output
stream all the block's outputs; one register stage with back-pressure (the pipeline of Amaranth's
``docs/stdlib/stream.rst``) sits between them. A testbench then needs only
:class:`pbhw.tools.testbench.streams.StreamDriver` and
:class:`pbhw.tools.testbench.streams.StreamMonitor`, and every unit test runs
with idle cycles and back-pressure.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamShell"]


class StreamShell(wiring.Component):
    """Register ``block`` between an input and an output stream.

    Parameters
    ----------
    block : wiring.Component
        A combinational block whose signature has only plain (non-interface) members.

    Attributes
    ----------
    i : In(stream.Signature(StructLayout of the block's inputs))
    o : Out(stream.Signature(StructLayout of the block's outputs))
    """

    latency = 1

    def __init__(self, block: wiring.Component):
        if not isinstance(block, wiring.Component):
            raise TypeError(f"Block must be a wiring.Component, not {block!r}")
        inputs, outputs = {}, {}
        for name, member in block.signature.members.items():
            if not member.is_port:
                raise TypeError(f"Block member {name!r} must be a port, not an interface")
            (inputs if member.flow is In else outputs)[name] = member.shape
        self._block = block
        super().__init__(
            {
                "i": In(stream.Signature(data.StructLayout(inputs))),
                "o": Out(stream.Signature(data.StructLayout(outputs))),
            }
        )

    @property
    def block(self) -> wiring.Component:
        return self._block

    def elaborate(self, platform):
        m = Module()
        m.submodules.block = block = self._block
        for name in self.i.payload.shape().members:
            m.d.comb += getattr(block, name).eq(self.i.payload[name])
        with m.If(~self.o.valid | self.o.ready):
            m.d.comb += self.i.ready.eq(1)
            m.d.sync += self.o.valid.eq(self.i.valid)
            for name in self.o.payload.shape().members:
                m.d.sync += self.o.payload[name].eq(getattr(block, name))
        return m
