"""Combinational requantizer: shift, round and saturate or wrap one fixed-point code.

The block computes, bit for bit, :func:`pbhw.core.fixed.requantize` of one code: the exact value
``i * 2**-src.frac`` becomes a code of ``dst`` with the given rounding and overflow modes.
``docs/numerics_random.md`` specifies the stochastic rounding rule that the comparator implements.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.fixed import FixedFormat, Overflow, Rounding, as_overflow, as_rounding

__all__ = ["Requantizer", "shape_of"]


def shape_of(fmt: FixedFormat) -> Shape:
    """The Amaranth shape of a code of ``fmt``."""
    return signed(fmt.width) if fmt.signed else unsigned(fmt.width)


class Requantizer(wiring.Component):
    """Convert a code of ``src`` into a code of ``dst``; purely combinational.

    Parameters
    ----------
    src : FixedFormat
        Format of the input code (typically an accumulator).
    dst : FixedFormat
        Format of the output code.
    rounding : Rounding or str
        Rounding mode used when ``dst.frac < src.frac`` drops bits.
    overflow : Overflow or str
        What happens to a rounded value outside the code range of ``dst``.

    Attributes
    ----------
    i : In(src shape)
        Input code.
    o : Out(dst shape)
        Output code, equal to ``requantize(i, src, dst, rounding, overflow)``.
    saturated : Out(1)
        The rounded value lay outside the range of ``dst`` (it was clamped or wrapped).
    random : In(32)
        Only with :attr:`Rounding.STOCHASTIC`: the element's 32-bit random word. It is present
        even when no bits are dropped, so that the interface depends only on the rounding mode.

    Raises
    ------
    TypeError
        If ``src`` or ``dst`` is not a :class:`FixedFormat`, or a mode has the wrong type.
    ValueError
        If a mode is a string that names no mode.
    """

    #: Combinational: the output follows the input within the same cycle.
    latency = 0

    def __init__(self, *, src: FixedFormat, dst: FixedFormat, rounding, overflow):
        if not isinstance(src, FixedFormat):
            raise TypeError(f"Source format must be a FixedFormat, not {src!r}")
        if not isinstance(dst, FixedFormat):
            raise TypeError(f"Destination format must be a FixedFormat, not {dst!r}")
        self._src = src
        self._dst = dst
        self._rounding = as_rounding(rounding)
        self._overflow = as_overflow(overflow)

        members = {
            "i": In(shape_of(src)),
            "o": Out(shape_of(dst)),
            "saturated": Out(1),
        }
        if self._rounding is Rounding.STOCHASTIC:
            members["random"] = In(32)
        super().__init__(members)

    @property
    def src(self) -> FixedFormat:
        return self._src

    @property
    def dst(self) -> FixedFormat:
        return self._dst

    @property
    def rounding(self) -> Rounding:
        return self._rounding

    @property
    def overflow(self) -> Overflow:
        return self._overflow

    def _round_right(self, m, x, shift):
        """``(down, up)`` with ``down + up`` = ``x / 2**shift`` rounded to an integer, for
        ``shift >= 1``: ``down`` the floor, ``up`` one bit; ``x`` is signed."""
        width = len(x)
        # Beyond width + 32 the dropped bits above the comparator window are all sign bits, and
        # every rounding decision below looks only at those, so a larger shift changes nothing.
        shift = min(shift, width + 32)
        extended = Signal(signed(width + shift), name="extended")
        m.d.comb += extended.eq(x)
        dropped = extended[:shift]  # D: the discarded bits, read as an unsigned fraction
        down = extended[shift:].as_signed()  # floor(x / 2**shift)

        if self._rounding is Rounding.FLOOR:
            up = Const(0, 1)
        elif self._rounding is Rounding.TOWARD_ZERO:
            up = down[-1] & dropped.any()
        elif self._rounding is Rounding.HALF_UP:
            up = dropped[-1]
        elif self._rounding is Rounding.HALF_EVEN:
            up = dropped[-1] & (dropped[:-1].any() | down[0])
        else:
            # r < F with F the top 32 dropped bits zero-padded below is the same as comparing
            # the top min(shift, 32) bits of r with the top min(shift, 32) bits of D.
            bits = min(shift, 32)
            up = self.random[32 - bits :] < dropped[shift - bits :]

        floor = Signal(signed(len(down)), name="floor")
        round_up = Signal(name="round_up")
        m.d.comb += [floor.eq(down), round_up.eq(up)]
        return floor, round_up

    def _shift_left(self, m, x, shift):
        """``x * 2**shift`` exactly, for ``shift >= 0``; ``x`` is signed."""
        # A non-zero x shifted by dst.width + 1 or more is out of range with the same sign and
        # zero low bits whatever the shift, so a larger shift changes neither output.
        shift = min(shift, self._dst.width + 1)
        shifted = Signal(signed(len(x) + shift), name="shifted")
        m.d.comb += shifted.eq(Cat(Const(0, shift), x).as_signed())
        return shifted

    def elaborate(self, platform):
        m = Module()

        # One extra bit makes an unsigned input signed without changing its value.
        x = Signal(signed(self._src.width + 1), name="x")
        m.d.comb += x.eq(self.i)

        shift = self._src.frac - self._dst.frac
        dst = self._dst
        if shift > 0:
            # Range checks on the floor and the round-up bit, side by side with the addition
            # (which only the kept low bits need): value = down + up, up in {0, 1}.
            down, up = self._round_right(m, x, shift)
            too_high = (down > dst.max_code) | ((down == dst.max_code) & up)
            too_low = (down < dst.min_code - 1) | ((down == dst.min_code - 1) & ~up)
            if len(down) + 1 > dst.width:
                value = Signal(dst.width, name="rounded")
                m.d.comb += value.eq(down[: dst.width] + up)
            else:
                value = Signal(signed(len(down) + 1), name="rounded")
                m.d.comb += value.eq(down + up)
        else:
            value = self._shift_left(m, x, -shift)
            too_high = value > dst.max_code
            too_low = value < dst.min_code
        m.d.comb += self.saturated.eq(too_high | too_low)
        # `value` keeps its low dst.width bits (wrap), or is sign-extended when the destination
        # is the wider one.
        if self._overflow is Overflow.SATURATE:
            m.d.comb += self.o.eq(Mux(too_high, dst.max_code, Mux(too_low, dst.min_code, value)))
        else:
            m.d.comb += self.o.eq(value)
        return m
