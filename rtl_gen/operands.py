"""The vectors the lanes of a stage read: the input rings and the error shift register."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.fixed import FixedFormat
from rtl_gen.fanout import replicated, replicated_tree
from rtl_gen.requantizer import shape_of

__all__ = ["OperandRings"]


class OperandRings(wiring.Component):
    """The input vectors (current and stashed, bias column included) in rings of registers, and
    the error ``dz = delta * mask`` in a shift register, read by every lane at fixed places.

    Lane ``p`` needs ``x[i]`` for ``i = (base + p) mod cols``: instead of a multiplexer per lane
    the rings rotate by ``lanes`` places per row-pass cycle, so lane ``p`` always reads ring
    position ``p mod cols``. The forward product needs ``x`` only ``late`` cycles after the
    row (once the predicted weight is ready): the input ring goes on rotating ``late`` cycles
    after the pass, and lane ``p`` reads it ``late`` rotations on, at position
    ``(p - late * lanes) mod cols``, so no lane holds ``x`` in a delay line. Rows advance by
    ``lanes // cols`` or one more per cycle (``wrap``), so ``dz`` shifts by that many places and
    lane ``p`` reads it at offset ``p // cols`` or one more (``carry[p]``). The enables are
    replicated registers, each reaching at most :data:`~rtl_gen.fanout.FANOUT` register bits.

    Latency: the vectors load 2 cycles after ``load_ahead``, and the rings rotate and ``dz``
    shifts 2 cycles after ``move_ahead`` (two levels of copies; the input ring also in the
    ``late`` cycles after each such cycle); ``wrap_next`` is one cycle ahead. The lane outputs
    are the registers, without logic but ``dz``'s two-way choice: ``lane_x_stashed`` and
    ``lane_dz`` as of the cycle the row is read, ``lane_x`` ``late`` cycles later.

    Parameters
    ----------
    n_in, n_out : int
        Inputs and outputs of the stage.
    cols : int
        Ring positions: ``n_in`` plus the bias column, whose input is the code of 1.
    lanes : int
        Lanes ``P``.
    late : int
        Cycles after the row is read at which the lanes read ``lane_x`` (0: with the row).
    x_format, error_format : FixedFormat
        Formats of the inputs and of the error.
    mask : bool
        Whether a ReLU mask zeroes ``dz`` where the output was 0.

    Attributes
    ----------
    x, x_stashed : In(ArrayLayout(input shape, n_in))
        The vectors to load.
    e : In(ArrayLayout(error shape, n_out))
        The error to load.
    mask : In(n_out)
        Only with ``mask``: the stashed mask of the outputs.
    load_ahead, move_ahead, wrap_next : In(1)
        See above.
    carry : In(lanes)
        Lane ``p`` reads ``dz`` one place further on.
    lane_x : Out(ArrayLayout(input shape, lanes))
        Input ring position ``(p - late * lanes) mod cols`` for lane ``p``.
    lane_x_stashed : Out(ArrayLayout(input shape, lanes))
        Stashed-input ring position ``p mod cols`` for lane ``p``.
    lane_dz : Out(ArrayLayout(error shape, lanes))
        ``dz`` at offset ``p // cols + carry[p]`` for lane ``p`` (0 past the last output).
    """

    def __init__(
        self,
        *,
        n_in: int,
        n_out: int,
        cols: int,
        lanes: int,
        late: int = 0,
        x_format: FixedFormat,
        error_format: FixedFormat,
        mask: bool,
    ):
        for name, value in (("N_in", n_in), ("N_out", n_out), ("Cols", cols), ("Lanes", lanes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TypeError(f"{name} must be a positive integer, not {value!r}")
        if not n_in <= cols <= n_in + 1:
            raise ValueError(f"Cols must be n_in or n_in + 1, not {cols!r}")
        for name, fmt in (("X_format", x_format), ("Error_format", error_format)):
            if not isinstance(fmt, FixedFormat):
                raise TypeError(f"{name} must be a FixedFormat, not {fmt!r}")
        if not isinstance(late, int) or isinstance(late, bool) or late < 0:
            raise TypeError(f"Late must be a non-negative integer, not {late!r}")
        self._n_in, self._n_out, self._cols, self._lanes = n_in, n_out, cols, lanes
        self._late = late
        self._x_format, self._error_format = x_format, error_format
        self._mask = bool(mask)
        xs, es = shape_of(x_format), shape_of(error_format)
        members = {
            "x": In(data.ArrayLayout(xs, n_in)),
            "x_stashed": In(data.ArrayLayout(xs, n_in)),
            "e": In(data.ArrayLayout(es, n_out)),
            "load_ahead": In(1),
            "move_ahead": In(1),
            "wrap_next": In(1),
            "carry": In(lanes),
            "lane_x": Out(data.ArrayLayout(xs, lanes)),
            "lane_x_stashed": Out(data.ArrayLayout(xs, lanes)),
            "lane_dz": Out(data.ArrayLayout(es, lanes)),
        }
        if mask:
            members["mask"] = In(n_out)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        self._rings(m)
        self._dz(m)
        return m

    def _rings(self, m: Module) -> None:
        P, N, n_in, xf = self._lanes, self._cols, self._n_in, self._x_format
        one = 1 << xf.frac  # the bias column's input, the code of 1 (the config checks it fits)
        x_ring = [Signal(shape_of(xf), name=f"x{j}", reset_less=True) for j in range(N)]
        xg_ring = [Signal(shape_of(xf), name=f"xg{j}", reset_less=True) for j in range(N)]
        ring_bits = N * xf.width
        load_en = replicated_tree(m, self.load_ahead, 2 * ring_bits, "ring_load")
        rotate_en = replicated_tree(m, self.move_ahead, ring_bits, "ring_rotate")
        # The input ring rotates in each rotating cycle and the ``late`` cycles after it: the
        # move's lead OR its last ``late`` values (move_ahead is one interval per pass).
        moved = [self.move_ahead]
        for n in range(self._late):
            prev = Signal(name=f"x_moved{n + 1}")
            m.d.sync += prev.eq(moved[-1])
            moved.append(prev)
        x_move_ahead = Signal()
        m.d.comb += x_move_ahead.eq(Cat(*moved).any())
        x_rotate_en = replicated_tree(m, x_move_ahead, ring_bits, "x_ring_rotate")
        for j in range(N):
            c = j * len(load_en) // N
            src = (j + P) % N
            with m.If(load_en[c]):
                m.d.sync += [
                    x_ring[j].eq(self.x[j] if j < n_in else one),
                    xg_ring[j].eq(self.x_stashed[j] if j < n_in else one),
                ]
            with m.Else():
                with m.If(x_rotate_en[j * len(x_rotate_en) // N]):
                    m.d.sync += x_ring[j].eq(x_ring[src])
                with m.If(rotate_en[j * len(rotate_en) // N]):
                    m.d.sync += xg_ring[j].eq(xg_ring[src])
        for p in range(P):
            m.d.comb += [
                self.lane_x[p].eq(x_ring[(p - self._late * P) % N]),
                self.lane_x_stashed[p].eq(xg_ring[p % N]),
            ]

    def _dz(self, m: Module) -> None:
        P, N, n_out, ef = self._lanes, self._cols, self._n_out, self._error_format
        adv_lo = P // N
        # Datapath registers are reset-less: each is loaded before it is used.
        dz_sr = [Signal(shape_of(ef), name=f"dz{o}", reset_less=True) for o in range(n_out)]
        dz_bits = n_out * ef.width
        dz_load = replicated_tree(m, self.load_ahead, dz_bits, "dz_load")
        dz_shift = replicated_tree(m, self.move_ahead, dz_bits, "dz_shift")
        dz_wrap = replicated(m, self.wrap_next, dz_bits, "dz_wrap")
        for o in range(n_out):
            c = o * len(dz_load) // n_out
            keep = self.mask[o] if self._mask else 1
            lo = dz_sr[o + adv_lo] if o + adv_lo < n_out else 0
            hi = dz_sr[o + adv_lo + 1] if o + adv_lo + 1 < n_out else 0
            with m.If(dz_load[c]):
                m.d.sync += dz_sr[o].eq(Mux(keep, self.e[o], 0))
            with m.Elif(dz_shift[c]):
                m.d.sync += dz_sr[o].eq(Mux(dz_wrap[c], hi, lo))
        zero = Const(0, shape_of(ef))
        for p in range(P):
            d0 = p // N
            hi = dz_sr[d0 + 1] if d0 + 1 < n_out else zero
            lo = dz_sr[d0] if d0 < n_out else zero
            m.d.comb += self.lane_dz[p].eq(Mux(self.carry[p], hi, lo))
