"""Products: ``a * b`` cut into hard-multiplier-sized pieces, each piece registered twice, the
pieces summed in the next cycle; four cycles from the operands (:data:`LATENCY`).

A product wider than the device's hard multiplier is tiled by the synthesis tool into several
blocks whose outputs are added in the same cycle: on the ECP5 that adds a second multiplier
delay's worth of adders to the path. :func:`pipelined_product` tiles it itself instead: each
operand wider than its port is cut into low slices of ``port - 1`` bits (unsigned, so each fits
the port as a signed operand) and a signed top slice; every partial product is registered (one
block each), registered again in the fabric, and the shifted partials are summed and
registered in the next cycle. A product by a constant is tiled the same way over the
constant's slices, skipping zero slices and turning power-of-two slices into shifts. The
slicing rule itself is :mod:`pbhw.core.datapath` (:func:`~pbhw.core.datapath.product_pieces`
lists the blocks for the manifest and the lane cost), so the count there is what the tool sees.

:func:`fabric_product` multiplies by a constant without a hard multiplier
(``hardware.constants = "fabric"``): the registered operand, shifted once per canonical signed
digit of the constant (:func:`pbhw.core.datapath.csd_digits`, the digits the datapath plan
records), summed by a registered adder tree (:func:`pbhw.core.datapath.fabric_tree`) in three
cycles (:data:`FABRIC_LATENCY`): no hard multiplier sits far from its sum, so the two
registers around one are not needed.

With a vendor primitive (:class:`rtl_gen.target.Multiplier` chooses it from the device; ECP5:
``MULT18X18D``, :func:`hard_product`), every piece is an instance of it with its input and
output registers enabled, in the places of the operand and piece registers: same cycles, same
results, but the wires to and from the hard multiplier end in its own registers (Yosys packs no
fabric registers into an ECP5 multiplier). Simulations add the model in
:data:`rtl_gen.resources.MODELS`; ``amaranth.sim`` cannot simulate an instance, so the designs it
runs leave products to synthesis (``build_design(primitives=False)``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, Value, signed

from pbhw.core.datapath import (
    FABRIC_PRODUCT_LATENCY,
    PRODUCT_LATENCY,
    constant_ports,
    constant_slices,
    csd_digits,
    fabric_tree,
    is_shift,
    operand_slices,
)

__all__ = [
    "FABRIC_LATENCY",
    "LATENCY",
    "as_signed",
    "fabric_product",
    "hard_product",
    "pipelined_product",
]

#: Cycles from the operands to a pipelined product (:data:`pbhw.core.datapath.PRODUCT_LATENCY`).
LATENCY = PRODUCT_LATENCY
#: Cycles from the operand to a product by a constant in the fabric
#: (:data:`pbhw.core.datapath.FABRIC_PRODUCT_LATENCY`).
FABRIC_LATENCY = FABRIC_PRODUCT_LATENCY


def as_signed(value: Value) -> Value:
    """``value`` as a signed value (an unsigned one gains a zero top bit); combinational
    (0 cycles)."""
    value = Value.cast(value)
    if value.shape().signed:
        return value
    return Cat(value, Const(0, 1)).as_signed()


def hard_product(m: Module, a: Value, b: Value, name: str) -> Signal:
    """``a * b`` (signed operands of at most 18 bits) by one ECP5 ``MULT18X18D`` with its input
    and output registers enabled: the registered product, 2 cycles later."""
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
    split=None,
) -> Signal | tuple[Signal, Signal]:
    """``a * b`` (``b`` a value or an integer constant), :data:`LATENCY` (4) cycles later.

    With ``keep`` (one bit, as it is in the cycle the pieces are summed, ``LATENCY - 1`` after
    the operands), the product is 0 where ``keep`` is 0: the sum register's synchronous reset,
    which Yosys maps to the flip-flops' own reset input, so no mask sits between the product
    and the adders it feeds. With ``split`` as well (one bit, in the same cycle), two sum
    registers: the product where ``split`` is 0 and the product where it is 1, each 0
    otherwise, for two sums a product goes to one of (no select between them and the adders).

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
    # Operands registered first: the hard multiplier may sit far from their source (with a
    # primitive, these feed only the shift and narrow pieces; unused ones are removed).
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
    # Every piece registered again before the sum: the placer puts it between the (far) hard
    # multiplier and the adders.
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
    if split is not None:
        out_split = Signal(full.shape(), name=f"{name}_split", reset_less=True)
        keep = Const(1) if keep is None else keep
        m.d.sync += [
            out.eq(Mux(keep & ~split, total, 0)),
            out_split.eq(Mux(keep & split, total, 0)),
        ]
        return out, out_split
    if keep is None:
        m.d.sync += out.eq(total)
    else:
        m.d.sync += out.eq(Mux(keep, total, 0))
    return out


def fabric_product(
    m: Module, a, code: int, name: str, *, keep=None, latency: int = FABRIC_LATENCY
) -> Signal:
    """``a * code`` with no hard multiplier, ``latency`` cycles later (default
    :data:`FABRIC_LATENCY`, 3): the adder tree of :func:`pbhw.core.datapath.fabric_tree`, one
    shifted term per canonical signed digit of ``code``: the operand is registered (cycle 1),
    then every level of the tree is a registered adder of its terms, the last one the product.
    ``keep`` is as in :func:`pipelined_product` (the last register's synchronous reset).

    Each register holds its partial sum exactly, without the zero bits below its smallest
    shift (they are shifted back in at the next level), so every adder is only as wide as the
    exact range of its terms."""
    a = as_signed(a)
    full = a * Const(code)
    a_reg = Signal(a.shape(), name=f"{name}_a", reset_less=True)
    m.d.sync += a_reg.eq(a)
    levels = fabric_tree(len(a), code, latency)
    # The first level's terms: the registered operand, negated for a digit -1, at its shift.
    values = [a_reg if d > 0 else -a_reg for _, d in csd_digits(code)]
    below = levels[0]
    for depth, level in enumerate(levels[1:-1]):
        regs = []
        for n, node in enumerate(level):
            terms = [
                values[t] << (below[t].shift - node.shift)
                if below[t].shift > node.shift
                else values[t]
                for t in node.terms
            ]
            reg = Signal(signed(node.width), name=f"{name}_l{depth}_{n}", reset_less=True)
            m.d.sync += reg.eq(sum(terms[1:], terms[0]))
            regs.append(reg)
        values, below = regs, level
    out = Signal(full.shape(), name=name, reset_less=True)
    total = (
        sum(
            (v << t.shift for v, t in zip(values[1:], below[1:], strict=True)),
            values[0] << below[0].shift,
        )
        if values
        else 0
    )
    if keep is None:
        m.d.sync += out.eq(total)
    else:
        m.d.sync += out.eq(Mux(keep, total, 0))
    return out
