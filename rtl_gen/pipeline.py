"""Pipeline plumbing: named delay lines that keep values in step with a pipeline, and sums of
many terms cut into registered levels.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal, Value
from amaranth.lib.memory import Memory

__all__ = ["RAM_DEPTH", "RAM_MIN_DELAY", "SUM_FAN_IN", "Delays", "pipelined_sum", "sum_levels"]

#: Words of a delay line's memory stretch (:class:`Delays` with ``ram``): the longest stretch.
RAM_DEPTH = 16
#: The shortest stretch of a delay line put in memory: shorter ones stay registers (a memory
#: stretch costs a register of its width and the memory's LUTs).
RAM_MIN_DELAY = 4

#: Terms a pipelined sum adds per registered level (two levels of adders).
SUM_FAN_IN = 4


class Delays:
    """Named delay lines in ``m``'s sync domain: ``delays(value, n, name)`` is ``value`` ``n``
    cycles later (``n = 0`` is ``value`` itself).

    A name is one line: asking again for the same name (with the same value) reuses it, and a
    line serves every delay asked of it. Datapath lines are ``reset_less`` (the default): their
    contents only matter under a valid bit that is reset, and a reset net reaching every
    pipeline register would be the slowest net of the design.

    A line is a chain of registers, one per cycle. With ``ram``, a stretch of at least
    :data:`RAM_MIN_DELAY` cycles between two delays asked of a line is instead a small memory of
    :data:`RAM_DEPTH` words written every cycle at a free-running address (one counter per
    :class:`Delays`) and read :data:`RAM_DEPTH` or fewer writes back into a register: the same
    values, cycle for cycle, in distributed RAM (on ECP5, ``TRELLIS_DPR16X4``: 16 words of 4 bits
    in the LUTs of one slice pair) instead of one flip-flop per bit and cycle. A line's contents
    cannot be reset there, so ``ram`` needs ``reset_less``."""

    def __init__(self, m: Module, *, reset_less: bool = True, ram: bool = False):
        if ram and not reset_less:
            raise ValueError("Delay lines in RAM cannot be reset; ram needs reset_less")
        self._m = m
        self._reset_less = reset_less
        self._ram = ram
        self._lines: dict[str, dict[int, Value]] = {}
        self._stretches: dict[str, list[tuple[int, int, Memory]]] = {}
        self._address: Signal | None = None

    def __call__(self, value, n: int, name: str):
        taps = self._lines.setdefault(name, {0: Value.cast(value)})
        if n in taps:
            return taps[n]
        end = max(taps)
        if n < end:  # inside a memory stretch: a register after its start, or one more read port
            start, _, mem = next(s for s in self._stretches[name] if s[0] < n < s[1])
            if n - start == 1:
                taps[n] = self._register(taps[start], f"{name}_d{n}")
            else:
                taps[n] = self._read(mem, n - start, f"{name}_d{n}")
            return taps[n]
        while end < n:
            step = min(n - end, RAM_DEPTH)
            if self._ram and step >= RAM_MIN_DELAY:
                mem = Memory(shape=taps[end].shape(), depth=RAM_DEPTH, init=[])
                self._m.submodules[f"{name}_ram{end}"] = mem
                write = mem.write_port()
                self._m.d.comb += [
                    write.addr.eq(self._counter()),
                    write.data.eq(taps[end]),
                    write.en.eq(1),
                ]
                self._stretches.setdefault(name, []).append((end, end + step, mem))
                taps[end + step] = self._read(mem, step, f"{name}_d{end + step}")
            else:
                taps[end + 1] = self._register(taps[end], f"{name}_d{end + 1}")
                step = 1
            end += step
        return taps[n]

    def _register(self, value: Value, name: str) -> Signal:
        sig = Signal(value.shape(), name=name, reset_less=self._reset_less)
        self._m.d.sync += sig.eq(value)
        return sig

    def _counter(self) -> Signal:
        """The write address of every memory stretch: one more each cycle."""
        if self._address is None:
            self._address = Signal(range(RAM_DEPTH), name="delay_address", reset_less=True)
            self._m.d.sync += self._address.eq(self._address + 1)
        return self._address

    def _read(self, mem: Memory, delay: int, name: str) -> Signal:
        """The word written ``delay`` cycles ago (``2 <= delay <= RAM_DEPTH``): the address
        ``delay - 1`` writes back, read into a register (written this cycle, a word is read as
        it was)."""
        read = mem.read_port(transparent_for=())
        out = Signal(mem.shape, name=name)
        address = self._counter()
        back = (address + (RAM_DEPTH - (delay - 1)))[: len(address)]
        self._m.d.comb += [read.addr.eq(back), out.eq(read.data)]
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
