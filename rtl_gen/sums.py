"""The sums of a stage's lanes: the forward products by row (rounded into the forward token)
and the backward products by column (rounded into the error token)."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.config import RoleFormat
from pbhw.core.datapath import Accumulator
from rtl_gen.fanout import free_enables, replicated, replicated_tree
from rtl_gen.pipeline import Delays, pipelined_sum
from rtl_gen.requantizer import shape_of
from rtl_gen.rounding import RandomKey, rounder
from rtl_gen.tokens import error_token, forward_token, label_bits

__all__ = ["ColumnSums", "RowSums"]


def _check(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{name.capitalize()} must be a positive integer, not {value!r}")


#: Cycles before the ``finish`` by which :class:`ColumnSums`'s column sums must be final: the
#: payload follows the rounders directly (a stage's drain covers it). A register between the
#: rounders and the payload (1) was tried and gained nothing (docs/hardware.md, "Timing
#: history").
ERROR_LAG = 0


class RowSums(wiring.Component):
    """The forward products of a row pass summed by output row, rounded to the activation, and
    offered as the forward token.

    In a row-pass cycle lane ``p``'s element lies in row ``base_row + p // cols`` or one further
    on (its ``carry``): the lane offers its product on ``products`` or ``products_next``
    (:class:`~rtl_gen.lane.Lane`, ``straddles``: the other is 0), the products are summed by
    row offset (a pipelined sum of ``levels`` levels per group), the group of offset 0 added to
    the running sum ``cur`` of the row in progress. The rows a cycle
    completes (``base_row`` to ``base_row + lanes // cols + wrap - 1``) are registered, rounded
    into a register, then written to their ``z`` register: the rounded value reaches every
    ``z``. The token's payload follows ``z`` while no token waits, so it is final at ``finish``.

    Latency (cycles after the row is read, cycle 0, when ``valid``, ``wrap`` and ``base_row``
    are given; ``products`` at ``forward``): the group sums at
    ``forward + levels`` (``row_sum``), the rounding at ``row_sum + 1``, ``z`` written at
    ``row_sum + 2``; a stochastic rounding reads ``step`` and ``base_row`` that much earlier.
    The token is offered the cycle after ``finish``.

    Parameters
    ----------
    lanes, cols, n_out : int
        Lanes ``P``, columns ``N`` and outputs of the stage.
    accumulator : Accumulator
        The forward row sums' (:attr:`pbhw.core.datapath.StageDatapath.forward`).
    activation : RoleFormat
        The output role.
    relu : bool
        Whether outputs below 0 become 0.
    classes : int
        Classes (the token's label width).
    forward, levels : int
        Cycle of the products; registered levels of the group sums.
    key : RandomKey
        The stage's random key (stochastic rounding of the activation).

    Attributes
    ----------
    products : In(ArrayLayout(signed, lanes))
        The forward products of a row, at ``forward``, of the lanes whose element lies in row
        ``base_row + p // cols`` (0 otherwise).
    products_next : In(ArrayLayout(signed, lanes))
        The same of the lanes whose element lies one row further on (lanes ``p`` that
        :meth:`straddles`; the others' are not read).
    valid : In(1)
        A row is read (cycle 0).
    wrap, base_row : In
        The row pass's (:class:`~rtl_gen.sequencer.Sequencer`).
    start : In(1)
        A row pass starts: the running sum restarts.
    step : In(32)
    bubble, label : In
        The step's forward bubble and label.
    finish : In(1)
        Offer the token.
    fwd_o : Out(stream of forward tokens of n_out codes)
    z : Out(ArrayLayout(activation shape, n_out))
        The activations.
    saturated : Out(rows completed per cycle)
        Overflow events of the activation (not on a bubble).
    """

    def __init__(
        self,
        *,
        lanes: int,
        cols: int,
        n_out: int,
        accumulator: Accumulator,
        activation: RoleFormat,
        relu: bool,
        classes: int,
        forward: int,
        levels: int,
        key: RandomKey,
    ):
        _check(lanes=lanes, cols=cols, n_out=n_out, classes=classes, forward=forward, levels=levels)
        if not isinstance(accumulator, Accumulator):
            raise TypeError(f"Accumulator must be an Accumulator, not {accumulator!r}")
        if not isinstance(activation, RoleFormat):
            raise TypeError(f"Activation must be a RoleFormat, not {activation!r}")
        if not isinstance(key, RandomKey):
            raise TypeError(f"Key must be a RandomKey, not {key!r}")
        self._lanes, self._cols, self._n_out = lanes, cols, n_out
        self._acc, self._activation, self._relu = accumulator.format, activation, bool(relu)
        self._forward, self._levels, self._key = forward, levels, key
        self._done_rows = (cols - 1 + lanes) // cols
        acc = signed(self._acc.width)
        super().__init__(
            {
                "products": In(data.ArrayLayout(acc, lanes)),
                "products_next": In(data.ArrayLayout(acc, lanes)),
                "valid": In(1),
                "wrap": In(1),
                "base_row": In(range(n_out + lanes // cols + 2)),
                "start": In(1),
                "step": In(32),
                "bubble": In(1),
                "label": In(label_bits(classes)),
                "finish": In(1),
                "fwd_o": Out(stream.Signature(forward_token(n_out, activation.format, classes))),
                "z": Out(data.ArrayLayout(shape_of(activation.format), n_out)),
                "saturated": Out(self._done_rows),
            }
        )

    @property
    def groups(self) -> int:
        """Row offsets of the lanes in a cycle, one group sum each."""
        P, N = self._lanes, self._cols
        return (N - 1 + P - 1) // N + 1

    def straddles(self, p: int) -> bool:
        """Whether lane ``p``'s element can lie in the group after its own (``p // cols + 1``),
        so the lane offers ``products_next``."""
        return p // self._cols + 1 < self.groups

    @property
    def row_sum(self) -> int:
        """Cycle of the group sums (after the row is read)."""
        return self._forward + self._levels

    def elaborate(self, platform):
        m = Module()
        later = Delays(m)
        control = Delays(m, reset_less=False)
        valid = control(self.valid, self.row_sum, "row_valid")
        sums = self._group_sums(m, later, valid)
        z = self._round_rows(m, later, valid, sums)
        self._token(m, z)
        return m

    def _group_sums(self, m: Module, later: Delays, valid) -> list[Signal]:
        """The group sums at ``row_sum``, group 0 with the running sum added."""
        P, N = self._lanes, self._cols
        acc = signed(self._acc.width)
        partial = []
        for r in range(self.groups):
            terms = []
            for p in range(P):
                if r == p // N:
                    terms.append(self.products[p])
                elif r == p // N + 1:
                    terms.append(self.products_next[p])
            partial.append(pipelined_sum(m, terms, acc, self._levels, f"partial{r}"))
        cur = Signal(acc, reset_less=True)  # the running sum of the row in progress
        sums = []
        for r in range(self.groups):
            s = Signal(acc, name=f"rowsum{r}")
            m.d.comb += s.eq(partial[r] + cur if r == 0 else partial[r])
            sums.append(s)
        adv_lo, groups = P // N, self.groups
        wrap = later(self.wrap, self.row_sum, "wrap")
        with m.If(valid):  # rows base_row + adv onwards
            m.d.sync += cur.eq(
                Mux(
                    wrap,
                    sums[adv_lo + 1] if adv_lo + 1 < groups else 0,
                    sums[adv_lo] if adv_lo < groups else 0,
                )
            )
        with m.If(self.start):
            m.d.sync += cur.eq(0)
        return sums

    def _round_rows(self, m: Module, later: Delays, valid, sums) -> list[Signal]:
        """The ``z`` registers, written with the completed rows, rounded."""
        P, N, n_out, act = self._lanes, self._cols, self._n_out, self._activation
        z = [Signal(shape_of(act.format), name=f"z{o}", reset_less=True) for o in range(n_out)]
        adv = Signal(range(P // N + 2))
        m.d.comb += adv.eq(P // N + later(self.wrap, self.row_sum, "wrap"))
        base_row = later(self.base_row, self.row_sum, "base_row")
        round_at = self.row_sum + 1
        for r in range(self._done_rows):
            done = Signal(name=f"done{r}")
            m.d.sync += done.eq(valid & (r < adv) & (base_row + r < n_out))
            out_row = Signal(range(n_out + P // N + 2), name=f"done_row{r}", reset_less=True)
            m.d.sync += out_row.eq(base_row + r)
            total = Signal(signed(self._acc.width), name=f"total{r}", reset_less=True)
            m.d.sync += total.eq(sums[r])
            index = later(self.base_row, round_at - self._key.latency, "base_row") + r
            rq = rounder(m, f"act{r}", self._acc, act, self._key, "activation", self.step, index)
            m.d.comb += rq.i.eq(total)
            y = rq.o
            if self._relu and act.format.signed:
                y = Mux(rq.o > 0, rq.o, 0)
            y_reg = Signal(shape_of(act.format), name=f"rounded{r}", reset_less=True)
            sat_reg = Signal(name=f"rounded_sat{r}", reset_less=True)
            m.d.sync += [y_reg.eq(y), sat_reg.eq(rq.saturated)]
            written = Signal(name=f"written{r}")  # reset: a control bit
            m.d.sync += written.eq(done)
            written_row = later(out_row, 1, f"done_row{r}")
            for o in range(n_out):
                with m.If(written & (written_row == o)):
                    m.d.sync += z[o].eq(y_reg)
            m.d.comb += self.saturated[r].eq(written & ~self.bubble & sat_reg)
        for o in range(n_out):
            m.d.comb += self.z[o].eq(z[o])
        return z

    def _token(self, m: Module, z) -> None:
        """The forward token: valid from ``finish`` until taken; the payload follows ``z``
        while no token waits (its enables are replicated registers)."""
        payload = Signal(self.fwd_o.payload.shape(), reset_less=True)
        m.d.comb += self.fwd_o.payload.eq(payload)
        with m.If(self.fwd_o.ready):
            m.d.sync += self.fwd_o.valid.eq(0)
        with m.If(self.finish):
            m.d.sync += self.fwd_o.valid.eq(1)
        bits = self._n_out * self._activation.format.width + 1
        free = free_enables(m, self.fwd_o, self.finish, bits, "fwd_free")
        with m.If(free[0]):
            m.d.sync += [payload.bubble.eq(self.bubble), payload.label.eq(self.label)]
        for o in range(self._n_out):
            with m.If(free[o * len(free) // self._n_out]):
                m.d.sync += payload.x[o].eq(z[o])


class ColumnSums(wiring.Component):
    """The backward products of a row pass summed by input column, rounded to the previous
    stage's error, and offered as the error token.

    The column sums sit in a ring that rotates by ``lanes`` places when a row's products arrive,
    so lane ``p`` always adds at position ``p mod cols``; after the pass column ``i`` sits at
    position ``(i - rows * lanes) mod cols``. The ring is cleared and added to under replicated
    enables. The token's payload follows the rounded column sums while no token waits; the
    saturation flags are registered beside their rounders.

    Latency: the ring clears 2 cycles after ``clear_ahead``; a row read at cycle 0 (``valid``)
    adds its ``products`` at ``backward``. The token is offered the cycle after ``finish``, and
    its saturation events are on ``saturated`` then; its payload is the column sums as they
    were :data:`ERROR_LAG` cycles before the ``finish`` cycle, so they must be final by then.

    Parameters
    ----------
    lanes, cols, n_in, rows : int
        Lanes ``P``, columns ``N``, inputs and rows of the row pass.
    accumulator : Accumulator
        The backward column sums' (:attr:`pbhw.core.datapath.StageDatapath.backward`).
    error : RoleFormat
        The previous stage's error role.
    backward : int
        Cycle of the products.
    key : RandomKey
        The stage's random key (stochastic rounding of the error; ``step`` is constant by the
        finish).

    Attributes
    ----------
    products : In(ArrayLayout(signed, lanes))
        The backward products of a row, at ``backward``.
    valid : In(1)
        A row is read (cycle 0).
    clear_ahead : In(1)
        Clear the ring two cycles later.
    step : In(32)
    bubble : In(1)
        The step's error bubble.
    finish : In(1)
        Offer the token.
    err_o : Out(stream of error tokens of n_in codes)
    saturated : Out(n_in)
        Overflow events of the error (not on a bubble).
    """

    def __init__(
        self,
        *,
        lanes: int,
        cols: int,
        n_in: int,
        rows: int,
        accumulator: Accumulator,
        error: RoleFormat,
        backward: int,
        key: RandomKey,
    ):
        _check(lanes=lanes, cols=cols, n_in=n_in, rows=rows, backward=backward)
        if not isinstance(accumulator, Accumulator):
            raise TypeError(f"Accumulator must be an Accumulator, not {accumulator!r}")
        if not isinstance(error, RoleFormat):
            raise TypeError(f"Error must be a RoleFormat, not {error!r}")
        if not isinstance(key, RandomKey):
            raise TypeError(f"Key must be a RandomKey, not {key!r}")
        self._lanes, self._cols, self._n_in, self._rows = lanes, cols, n_in, rows
        self._acc, self._error, self._backward, self._key = accumulator.format, error, backward, key
        super().__init__(
            {
                "products": In(data.ArrayLayout(signed(self._acc.width), lanes)),
                "valid": In(1),
                "clear_ahead": In(1),
                "step": In(32),
                "bubble": In(1),
                "finish": In(1),
                "err_o": Out(stream.Signature(error_token(n_in, error.format))),
                "saturated": Out(n_in),
            }
        )

    def elaborate(self, platform):
        m = Module()
        P, N = self._lanes, self._cols
        bacc = [Signal(signed(self._acc.width), name=f"bacc{j}", reset_less=True) for j in range(N)]
        control = Delays(m, reset_less=False)
        column_bits = N * self._acc.width
        clear = replicated_tree(m, self.clear_ahead, column_bits, "columns_clear")
        adding = control(self.valid, self._backward - 1, "row_valid")
        add = replicated(m, adding, column_bits, "columns_add")
        for j in range(N):
            c = j * len(clear) // N
            src = (j + P) % N
            adds = [self.products[q] for q in range(P) if q % N == src]
            with m.If(clear[c]):
                m.d.sync += bacc[j].eq(0)
            with m.Elif(add[c]):
                m.d.sync += bacc[j].eq(sum(adds, bacc[src]))
        self._token(m, bacc)
        return m

    def _token(self, m: Module, bacc) -> None:
        """The error token: the column sums rounded, in a payload that follows them while no
        token waits (its enables are replicated registers)."""
        n_in, N = self._n_in, self._cols
        shift = (self._rows * self._lanes) % N
        payload = Signal(self.err_o.payload.shape(), reset_less=True)
        m.d.comb += self.err_o.payload.eq(payload)
        with m.If(self.err_o.ready):
            m.d.sync += self.err_o.valid.eq(0)
        with m.If(self.finish):
            m.d.sync += self.err_o.valid.eq(1)
        bits = n_in * len(payload.e[0]) + 1
        free = free_enables(m, self.err_o, self.finish, bits, "err_free")
        with m.If(free[0]):
            m.d.sync += payload.bubble.eq(self.bubble)
        counted = Signal(name="err_counted")
        m.d.sync += counted.eq(self.finish & ~self.bubble)
        for i in range(n_in):
            rq = rounder(m, f"err{i}", self._acc, self._error, self._key, "error", self.step, i)
            m.d.comb += rq.i.eq(bacc[(i - shift) % N])
            with m.If(free[i * len(free) // n_in]):
                m.d.sync += payload.e[i].eq(rq.o)
            sat = Signal(name=f"err_sat{i}", reset_less=True)
            m.d.sync += sat.eq(rq.saturated)
            m.d.comb += self.saturated[i].eq(counted & sat)
