"""Pipeline plumbing: named delay lines that keep values in step with a pipeline, and sums of
many terms cut into registered levels.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal, Value
from amaranth.lib.memory import Memory

__all__ = [
    "RAM_DEPTH",
    "RAM_MIN_BITS",
    "RAM_MIN_DELAY",
    "SUM_FAN_IN",
    "Delays",
    "pipelined_sum",
    "sum_levels",
]

#: Terms a pipelined sum adds per registered level (two levels of adders).
SUM_FAN_IN = 4
#: Words of a delay line's block RAM (``Delays(ram=True)``); a stretch is at most this + 1 cycles.
RAM_DEPTH = 16
#: The shortest stretch of a delay line ``Delays(ram=True)`` puts in a block RAM (the RAM's
#: read takes two of its cycles: the read port and an output register).
RAM_MIN_DELAY = 5
#: The fewest register bits a stretch must save (``width * (cycles - 1)``) to take a block RAM.
RAM_MIN_BITS = 64


class Delays:
    """Named delay lines in ``m``'s sync domain: ``delays(value, n, name)`` is ``value`` ``n``
    cycles later (``n = 0`` is ``value`` itself).

    A name is one line: asking again for the same name (with the same value) reuses it. Datapath
    lines are ``reset_less`` (the default): their contents only matter under a valid bit that is
    reset, and a reset net reaching every pipeline register would be the slowest net of the
    design.

    A line is a chain of registers, except with ``ram=True``: then a stretch of at least
    :data:`RAM_MIN_DELAY` cycles (at most ``RAM_DEPTH + 1``) that would hold at least
    :data:`RAM_MIN_BITS` register bits is a block RAM of :data:`RAM_DEPTH` words, written every
    cycle at a free-running counter and read ``cycles - 2`` words behind it, then registered. It
    shifts every cycle exactly as the registers would, so the values are the same; taps asked
    for inside a stretch get their own registers from the tap before it. :attr:`memories` lists
    the RAMs as ``(width, cycles)``."""

    def __init__(self, m: Module, *, reset_less: bool = True, ram: bool = False):
        self._m = m
        self._reset_less = reset_less
        self._ram = ram
        self._lines: dict[str, dict[int, Value]] = {}
        self._counter: Signal | None = None
        self.memories: list[tuple[int, int]] = []

    def __call__(self, value, n: int, name: str):
        line = self._lines.setdefault(name, {0: value})
        if n in line:
            return line[n]
        base = max(k for k in line if k < n)
        end = max(line)
        if n > end and self._ram and self._takes_ram(len(Value.cast(value)), n - end):
            base = end
            line[n] = self._ram_stretch(line[base], n - base, f"{name}_d{n}")
            return line[n]
        for k in range(base + 1, n + 1):  # no tap lies between ``base`` and ``n``
            sig = Signal(
                Value.cast(value).shape(), name=f"{name}_d{k}", reset_less=self._reset_less
            )
            self._m.d.sync += sig.eq(line[k - 1])
            line[k] = sig
        return line[n]

    @staticmethod
    def _takes_ram(width: int, cycles: int) -> bool:
        return RAM_MIN_DELAY <= cycles <= RAM_DEPTH + 1 and width * (cycles - 1) >= RAM_MIN_BITS

    def _ram_stretch(self, value, cycles: int, name: str) -> Signal:
        """``value`` ``cycles`` cycles later through a block RAM: written at the counter ``c``
        at the end of cycle ``t``, read at ``c - (cycles - 2)`` (the word written ``cycles - 2``
        cycles before), the read port's data registered once more."""
        m = self._m
        if self._counter is None:
            self._counter = Signal(range(RAM_DEPTH), name="delay_ram_addr", reset_less=True)
            m.d.sync += self._counter.eq(self._counter + 1)
        shape = Value.cast(value).shape()
        width = len(Value.cast(value))
        mem = Memory(shape=width, depth=RAM_DEPTH, init=[], attrs={"ram_style": "block"})
        m.submodules[f"{name}_ram"] = mem
        wr = mem.write_port()
        rd = mem.read_port(transparent_for=())
        m.d.comb += [
            wr.addr.eq(self._counter),
            wr.data.eq(value),
            wr.en.eq(1),
            rd.addr.eq((self._counter - (cycles - 2))[: len(self._counter)]),
        ]
        out = Signal(shape, name=name, reset_less=self._reset_less)
        m.d.sync += out.eq(rd.data)
        self.memories.append((width, cycles))
        return out


def sum_levels(terms: int) -> int:
    """Registered levels, and so cycles, :func:`pipelined_sum` takes for ``terms`` terms (at
    least one)."""
    levels, width = 1, SUM_FAN_IN
    while width < terms:
        levels, width = levels + 1, width * SUM_FAN_IN
    return levels


def pipelined_sum(
    m: Module, terms, shape, levels: int, name: str, *, reset_less: bool = True
) -> Signal:
    """The sum of ``terms`` (exact in ``shape``), ``levels`` cycles later: each level adds
    groups of :data:`SUM_FAN_IN` and registers them; ``levels >= sum_levels(len(terms))``."""
    if levels < sum_levels(len(terms)):
        raise ValueError(f"{len(terms)} terms need {sum_levels(len(terms))} levels, not {levels}")
    values = list(terms) or [Const(0)]
    for level in range(levels):
        out = []
        for n in range(0, len(values), SUM_FAN_IN):
            chunk = values[n : n + SUM_FAN_IN]
            sig = Signal(shape, name=f"{name}_l{level}_{n // SUM_FAN_IN}", reset_less=reset_less)
            m.d.sync += sig.eq(sum(chunk[1:], chunk[0]))
            out.append(sig)
        values = out
    return values[0]
