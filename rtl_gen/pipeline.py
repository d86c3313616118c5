"""Pipeline plumbing: named delay lines that keep values in step with a pipeline, and sums of
many terms cut into registered levels.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal, Value

__all__ = ["SUM_FAN_IN", "Delays", "pipelined_sum", "sum_levels"]

#: Terms a pipelined sum adds per registered level (two levels of adders).
SUM_FAN_IN = 4


class Delays:
    """Named delay lines in ``m``'s sync domain: ``delays(value, n, name)`` is ``value`` ``n``
    cycles later (``n`` registers; ``n = 0`` is ``value`` itself).

    A name is one line: asking again for the same name (with the same value) reuses its
    registers. Datapath lines are ``reset_less`` (the default): their contents only matter under
    a valid bit that is reset, and a reset net reaching every pipeline register would be the
    slowest net of the design."""

    def __init__(self, m: Module, *, reset_less: bool = True):
        self._m = m
        self._reset_less = reset_less
        self._chains: dict[str, list] = {}

    def __call__(self, value, n: int, name: str):
        chain = self._chains.setdefault(name, [value])
        while len(chain) <= n:
            sig = Signal(
                Value.cast(value).shape(),
                name=f"{name}_d{len(chain)}",
                reset_less=self._reset_less,
            )
            self._m.d.sync += sig.eq(chain[-1])
            chain.append(sig)
        return chain[n]


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
