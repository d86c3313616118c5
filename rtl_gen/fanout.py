"""Fan-out: register copies of a value that reaches many loads, each copy reaching at most
:data:`FANOUT` of them.

An enable (or a memory address) that reaches thousands of registers is the slowest net of a
large design; :func:`replicated` computes it a cycle ahead and spreads it over register copies,
:func:`replicated_tree` over two levels of copies. Synthesis merges identical registers, so
each copy is kept distinct by a term that is always 0 but not provably so without a SAT proof
(:func:`_copies`). The copies have no reset: each is loaded every cycle, so it follows its
source a cycle late through a reset too.
"""

from __future__ import annotations

import math
import operator
from functools import reduce

from amaranth.hdl import Cat, Module, Mux, Signal, Value

__all__ = ["FANOUT", "free_enables", "replicated", "replicated_tree", "selected"]

#: Loads one replicated register drives.
FANOUT = 64


def replicated(m: Module, next_value, loads: int, name: str, *, init: int = 0) -> list[Signal]:
    """Copies of a register whose next value is ``next_value``: each copy is ``next_value``
    1 cycle later. One copy per :data:`FANOUT` of ``loads``: ``copies[j * len(copies) // loads]``
    is the copy for load ``j``. The copies start at ``init`` and have no reset."""
    next_value = Value.cast(next_value)
    return _copies(m, [next_value], max(1, -(-loads // FANOUT)), name, init)


def replicated_tree(
    m: Module, value_ahead, loads: int, name: str, *, init: int = 0
) -> list[Signal]:
    """Like :func:`replicated`, through two levels of registers: ``copies[k]`` is
    ``value_ahead`` 2 cycles later. About ``sqrt(copies)`` first-level registers each feed a
    group of copies, so each register-to-register hop spans about half the distance from the
    source to the farthest load (for an enable that reaches a whole stage)."""
    count = max(1, -(-loads // FANOUT))
    firsts = math.isqrt(count - 1) + 1  # ceil(sqrt(count))
    level = replicated(m, value_ahead, firsts * FANOUT, f"{name}_l1", init=init)
    return _copies(m, level, count, name, init)


def _copies(m: Module, sources, count: int, name: str, init: int) -> list[Signal]:
    """``count`` registers, copy ``k`` loading ``sources[k * len(sources) // count]``.

    Each copy's next value clears on a register of its own that is always 0 (it starts at 0 and
    is only ever ANDed with a bit of the copy itself), so synthesis cannot merge the copies; a
    shared input ANDed in instead would be one net to every copy of the design."""
    copies = []
    for k in range(count):
        never = Signal(name=f"{name}_never{k}", reset_less=True)
        source = sources[k * len(sources) // count]
        copy = Signal(source.shape(), name=f"{name}_copy{k}", init=init, reset_less=True)
        m.d.sync += [never.eq(never & copy[0]), copy.eq(Mux(never, 0, source))]
        copies.append(copy)
    return copies


def free_enables(m: Module, port, sets, loads: int, name: str) -> list[Signal]:
    """:func:`replicated` copies of "no token waits on stream ``port`` next cycle" (``sets``
    offers one, the consumer's ``ready`` takes it), 1 cycle later: the enables of a payload
    register that follows its source until its token is offered, and holds it until the token
    is taken."""
    waits_next = sets | (port.valid & ~port.ready)
    return replicated(m, ~waits_next, loads, name, init=1)


def selected(m: Module, choices, name: str) -> Value:
    """The OR of ``value & select`` over ``choices``, pairs of a value and a 1-bit select, with
    each select taken from :func:`replicated` copies (1 cycle late), each gating at most
    :data:`FANOUT` bits of its value: a multiplexer whose select is a register near its bits,
    for a select that holds for more than a cycle (a debug request) and would otherwise reach
    every bit of every value. The result is as wide as the widest value; no select set gives 0.
    """
    terms = []
    for k, (value, select) in enumerate(choices):
        value = Value.cast(value)
        width = len(value)
        copies = replicated(m, select, width, f"{name}{k}_sel")
        terms.append(Cat(*(value[n] & copies[n * len(copies) // width] for n in range(width))))
    return reduce(operator.or_, terms)
