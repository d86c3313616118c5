"""Products cut into hard-multiplier-sized pieces, registered twice, then summed: four cycles each.

A product wider than the device's hard multiplier is tiled by the synthesis tool into several
blocks whose outputs are added in the same cycle: on the ECP5 that adds a second multiplier
delay's worth of adders to the path. :func:`pipelined_product` tiles it itself instead: each
operand wider than its port is cut into low slices of ``port - 1`` bits (unsigned, so each fits
the port as a signed operand) and a signed top slice; every partial product is registered (one
block each), registered again in the fabric, and the shifted partials are summed and
registered in the next cycle. A product by a constant is tiled the same way over the
constant's slices, skipping zero slices and turning power-of-two slices into shifts. The
slicing rule itself is :mod:`pbhw.core.datapath` (:func:`~pbhw.core.datapath.product_pieces`
lists the blocks for the manifest and the lane cost), so the count there is what the tool
sees. :class:`Delays` keeps the other
operands of a pipeline in step with the products.

On a device whose file names a ``[multiplier] primitive`` (ECP5: ``MULT18X18D``),
:class:`rtl_gen.target.Multiplier` makes every piece an instance of it (:func:`hard_product`) with its input and output registers enabled, in the
places of the operand and piece registers: same cycles, same results, but the wires to and from
the hard multiplier end in its own registers. Yosys packs no fabric registers into an ECP5
multiplier, and nextpnr placed them far from it. Simulations add the model in
:data:`rtl_gen.resources.MODELS` (:func:`rtl_gen.resources.models_for`); ``amaranth.sim``
cannot simulate an instance, so the designs it runs leave products to synthesis
(``build_design(primitives=False)``).
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, Value, signed

from pbhw.core.datapath import (
    PRODUCT_LATENCY,
    constant_ports,
    constant_slices,
    is_shift,
    operand_slices,
)

__all__ = [
    "FANOUT",
    "LATENCY",
    "SUM_FAN_IN",
    "Delays",
    "as_signed",
    "pipelined_product",
    "pipelined_sum",
    "free_enables",
    "replicated_tree",
    "hard_product",
    "replicated",
    "sum_levels",
]

#: Loads one replicated enable register drives (see :func:`replicated`).
FANOUT = 64

#: Terms a pipelined sum adds per registered level (two levels of adders).
SUM_FAN_IN = 4

#: Cycles from the operands to a pipelined product (:data:`pbhw.core.datapath.PRODUCT_LATENCY`).
LATENCY = PRODUCT_LATENCY


class Delays:
    """Named delay lines in ``m``'s sync domain: ``delays(value, n, name)`` is ``value`` ``n``
    cycles later. A name is one line: asking again for the same name (with the same value)
    reuses its registers. Datapath lines are ``reset_less`` (the default): their contents only
    matter under a valid bit that is reset, and a reset net reaching every pipeline register
    would be the slowest net of the design."""

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


def replicated(m: Module, next_value, loads: int, name: str, *, init: int = 0):
    """Copies of a register whose next value is ``next_value``, one per :data:`FANOUT` of
    ``loads``: ``copies[j * len(copies) // loads]`` is the copy for load ``j``.

    An enable (or a memory address) that reaches thousands of registers is the slowest net of
    a large design; each copy reaches at most :data:`FANOUT`. Synthesis merges identical
    registers, so each copy's next value also clears on a register of its own that is always 0
    (it starts at 0 and is only ever ANDed with a bit of the copy itself) but not provably so
    without a SAT proof (an input ANDed in instead reached every such register of the design:
    an 11 ns path on the routed default example). The copies have no reset: each is loaded
    every cycle, so it follows its source a cycle late through a reset too (a part's reset
    reaching every copy was a 14 ns net on the routed default example); they start at
    ``init``.
    """
    next_value = Value.cast(next_value)
    return _copies(m, [next_value], max(1, -(-loads // FANOUT)), name, init)


def replicated_tree(m: Module, value_ahead, loads: int, name: str, *, init: int = 0):
    """Like :func:`replicated`, through two levels of registers: ``copies[k]`` is
    ``value_ahead`` two cycles later (not one). About ``sqrt(copies)`` first-level registers
    each feed a group of copies, so each register-to-register hop spans about half the distance
    from the source to the farthest load: for an enable of a large stage, where one hop took the
    whole cycle in routing (13 ns from the FSM to the farthest ring-rotate copy)."""
    count = max(1, -(-loads // FANOUT))
    firsts = math.isqrt(count - 1) + 1  # ceil(sqrt(count))
    level = replicated(m, value_ahead, firsts * FANOUT, f"{name}_l1", init=init)
    return _copies(m, level, count, name, init)


def _copies(m: Module, sources, count: int, name: str, init: int) -> list[Signal]:
    """``count`` registers, copy ``k`` loading ``sources[k * len(sources) // count]``, each kept
    distinct by its own always-zero register (:func:`replicated`)."""
    copies = []
    for k in range(count):
        never = Signal(name=f"{name}_never{k}", reset_less=True)
        source = sources[k * len(sources) // count]
        copy = Signal(source.shape(), name=f"{name}_copy{k}", init=init, reset_less=True)
        m.d.sync += [never.eq(never & copy[0]), copy.eq(Mux(never, 0, source))]
        copies.append(copy)
    return copies


def free_enables(m: Module, port, sets, loads: int, name: str):
    """:func:`replicated` copies of "no token waits on stream ``port`` next cycle" (``sets``
    offers one, the consumer's ``ready`` takes it): the enables of a payload register that
    follows its source until its token is offered, and holds it until the token is taken."""
    waits_next = sets | (port.valid & ~port.ready)
    return replicated(m, ~waits_next, loads, name, init=1)


def sum_levels(terms: int) -> int:
    """Registered levels :func:`pipelined_sum` takes for ``terms`` terms (at least one)."""
    levels, width = 1, SUM_FAN_IN
    while width < terms:
        levels, width = levels + 1, width * SUM_FAN_IN
    return levels


def pipelined_sum(
    m: Module, terms, shape, levels: int, name: str, *, reset_less: bool = True
) -> Signal:
    """The sum of ``terms`` (exact in ``shape``) after ``levels`` cycles: each level adds
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


def as_signed(value: Value) -> Value:
    """``value`` as a signed value (an unsigned one gains a zero top bit)."""
    value = Value.cast(value)
    if value.shape().signed:
        return value
    return Cat(value, Const(0, 1)).as_signed()


def hard_product(m: Module, a: Value, b: Value, name: str) -> Signal:
    """``a * b`` (signed operands of at most 18 bits) by one ECP5 ``MULT18X18D`` with its input
    and output registers enabled: the registered product, two cycles later."""
    a18 = Signal(signed(18), name=f"{name}_a")
    b18 = Signal(signed(18), name=f"{name}_b")
    m.d.comb += [a18.eq(a), b18.eq(b)]
    p36 = Signal(signed(36), name=f"{name}_p")
    bits = {f"i_A{i}": a18[i] for i in range(18)}
    bits.update({f"i_B{i}": b18[i] for i in range(18)})
    bits.update({f"o_P{i}": p36[i] for i in range(36)})
    m.submodules[name] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="CLK0",
        p_REG_INPUTB_CLK="CLK0",
        p_REG_OUTPUT_CLK="CLK0",
        p_GSR="DISABLED",
        i_SIGNEDA=Const(1),
        i_SIGNEDB=Const(1),
        i_SOURCEA=Const(0),
        i_SOURCEB=Const(0),
        i_CLK0=ClockSignal(),
        i_CE0=Const(1),
        i_RST0=Const(0),
        **bits,
    )
    out = Signal(signed(len(a) + len(b)), name=f"{name}_q")
    m.d.comb += out.eq(p36)
    return out


def _piece(value: Value, lo: int, hi: int) -> Value:
    """Bits ``lo:hi`` of signed ``value`` as a signed value (a low slice gains a zero top bit)."""
    return as_signed(value[lo:hi]) if hi < len(value) else value[lo:].as_signed()


def pipelined_product(
    m: Module,
    a,
    b,
    ports: tuple[int, int],
    name: str,
    *,
    hard=None,
    keep=None,
) -> Signal:
    """``a * b`` (``b`` a value or an integer constant), :data:`LATENCY` cycles later.

    With ``keep`` (one bit, as it is in the cycle the pieces are summed, ``LATENCY - 1`` after
    the operands), the product is 0 where ``keep`` is 0: the sum register's synchronous reset,
    which Yosys maps to the flip-flops' own reset input, so no mask sits between the product
    and the adders it feeds.

    Every piece that needs a hard multiplier is at most ``ports`` wide; the result is exact
    (as wide as the full product). With ``hard`` (a builder ``hard(m, a, b, name)`` of one
    vendor multiplier such as :func:`hard_product`, chosen by :class:`rtl_gen.target.Multiplier`),
    each such piece is an instance whose own input and output registers take the places of the
    operand and piece registers, so that no fabric register sits between the operand's source
    and the multiplier, or between the multiplier and its sum."""
    a = as_signed(a)
    if not isinstance(b, int):
        b = as_signed(b)
        if len(b) > len(a):
            a, b = b, a
    # The operands are registered first: a hard multiplier sits wherever the device has one, and
    # on a big design the wire to it from the operand's source was the longest path. With a
    # primitive, its input registers do this; the fabric registers below then only feed the
    # pieces that are shifts or too narrow for a hard multiplier (they are removed if unused).
    a_reg = Signal(a.shape(), name=f"{name}_a", reset_less=True)
    m.d.sync += a_reg.eq(a)
    if isinstance(b, int):
        full = a * Const(b)
        b_reg = None
    else:
        full = a * b
        b_reg = Signal(b.shape(), name=f"{name}_b", reset_less=True)
        m.d.sync += b_reg.eq(b)
    wide, narrow = max(ports), min(ports)
    # (a piece, b piece or constant, shift, piece of the registered operands)
    pieces = []
    if isinstance(b, int):
        port_a, port_c = constant_ports(len(a), b, ports)
        for shift, chunk in constant_slices(b, port_c):
            if is_shift(chunk):
                k = abs(chunk).bit_length() - 1
                pieces.append((None, None, shift + k, a_reg if chunk > 0 else -a_reg))
                continue
            for lo, hi in operand_slices(len(a), port_a):
                pa = _piece(a_reg, lo, hi)
                pieces.append((_piece(a, lo, hi), Const(chunk), shift + lo, pa * Const(chunk)))
    else:
        for lo, hi in operand_slices(len(a), wide):
            for lj, hj in operand_slices(len(b), narrow):
                registered = _piece(a_reg, lo, hi) * _piece(b_reg, lj, hj)
                pieces.append((_piece(a, lo, hi), _piece(b, lj, hj), lo + lj, registered))
    # Every piece is registered again before the sum: hard multipliers sit wherever the device
    # has free ones, and on the routed default example the wire from one to the sum of its
    # product was the longest path (7-8 ns of routing); the placer puts this register on the way.
    partials = []
    for n, (pa, pb, shift, registered) in enumerate(pieces):
        needs_block = pa is not None and min(len(as_signed(pa)), len(as_signed(pb))) >= 2
        if hard is not None and needs_block:
            sig = hard(m, as_signed(pa), as_signed(pb), f"{name}_part{n}")
        else:
            sig = Signal(registered.shape(), name=f"{name}_part{n}", reset_less=True)
            m.d.sync += sig.eq(registered)
        again = Signal(sig.shape(), name=f"{name}_part{n}_r", reset_less=True)
        m.d.sync += again.eq(sig)
        partials.append(again << shift if shift else again)
    out = Signal(full.shape(), name=name, reset_less=True)
    total = sum(partials[1:], partials[0]) if partials else Const(0)
    if keep is None:
        m.d.sync += out.eq(total)
    else:
        m.d.sync += out.eq(Mux(keep, total, 0))
    return out
