"""The control of a stage: its steps' FSM and where the row pass stands."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Sequencer"]


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    return value


class Sequencer(wiring.Component):
    """The steps of one stage, and the position of its row pass.

    A step: IDLE until both input tokens are there (``seen``), taken the next cycle (``take``, a
    register, so the producers' valid bits reach one register and the many loads of a take start
    at one); LOAD (``loading``: the vectors load, row 0 is addressed); PASS (``pass_on``: row
    ``row`` arrives from memory, one per cycle, ``rows`` cycles); DRAIN (``drain`` cycles);
    FINISH, until the previous outputs are taken (``finish``: the outputs are offered, the step
    counter advances). Stages 2 and on treat their first forward token, and every stage its
    first error token, as a bubble (no sample has reached them yet).

    Latency: the registers (``take``, ``row``, ``kbase``, ``base_row``, ``wrap``, ``label``,
    the bubbles, ``step``) change the cycle after the state that sets them; ``read_addr`` is the
    row to read in the next cycle (the row pass's from a take on, else ``dbg_addr``), and
    ``moving_ahead`` is set two cycles before a row-pass cycle, the lead of two levels of
    register copies.

    Parameters
    ----------
    rows : int
        Rows of the row pass.
    lanes, cols : int
        Lanes ``P`` and columns ``N`` (inputs plus bias) of the stage.
    n_out : int
        Outputs (rows of the weight matrix).
    drain : int
        Cycles of DRAIN.
    first_stage : bool
        Stage 1: its forward tokens are never bubbles at reset.
    label_bits : int
        Width of a forward token's label.

    Attributes
    ----------
    fwd_i_valid, fwd_i_bubble, fwd_i_label : In
        The forward input stream's valid bit and its payload's bubble and label.
    fwd_i_ready : Out(1)
    err_i_valid, err_i_bubble : In(1)
        The error input stream's valid bit and its payload's bubble.
    err_i_ready : Out(1)
    outputs_free : In(1)
        No output token waits to be taken.
    dbg_addr : In(range(max(2, rows)))
        The row the debug port reads outside a row pass.
    idle : Out(1)
        Not in a row pass (waiting for tokens, or for the outputs to be taken).
    seen, take, loading, pass_on, finish : Out(1)
        See above.
    fwd_i_is_bubble : Out(1)
        The forward token offered now is a bubble (its own bit, or the first at reset).
    fwd_bubble, err_bubble, label : Out
        The step's: latched at the take.
    row : Out(range(rows + 1))
        The row arriving from memory (during PASS).
    kbase : Out(range(rows * lanes + 1))
        The flat element index of lane 0 in that row.
    base_row : Out
        The weight row (output) of lane 0's element.
    carry : Out(lanes)
        Bit ``p``: lane ``p``'s element is in weight row ``base_row + p // cols + 1`` (not
        ``+ 0``).
    wrap : Out(1)
        This pass cycle moves the column offset past the last column (``base_row`` advances by
        ``lanes // cols + 1``, not ``lanes // cols``).
    wrap_next : Out(1)
        ``wrap`` of the next cycle.
    moving_ahead : Out(1)
        The cycle after next is a row-pass cycle.
    read_addr : Out(range(max(2, rows)))
        The row to read next cycle.
    step : Out(32)
        Steps completed.
    """

    def __init__(
        self,
        *,
        rows: int,
        lanes: int,
        cols: int,
        n_out: int,
        drain: int,
        first_stage: bool,
        label_bits: int,
    ):
        self._rows = _positive("Rows", rows)
        self._lanes = _positive("Lanes", lanes)
        self._cols = _positive("Cols", cols)
        self._n_out = _positive("N_out", n_out)
        self._drain = _positive("Drain", drain)
        if not isinstance(first_stage, bool):
            raise TypeError(f"First_stage must be a bool, not {first_stage!r}")
        self._first_stage = first_stage
        addr = range(max(2, rows))
        super().__init__(
            {
                "fwd_i_valid": In(1),
                "fwd_i_bubble": In(1),
                "fwd_i_label": In(_positive("Label_bits", label_bits)),
                "fwd_i_ready": Out(1),
                "err_i_valid": In(1),
                "err_i_bubble": In(1),
                "err_i_ready": Out(1),
                "outputs_free": In(1),
                "dbg_addr": In(addr),
                "idle": Out(1),
                "seen": Out(1),
                "take": Out(1),
                "loading": Out(1),
                "pass_on": Out(1),
                "finish": Out(1),
                "fwd_i_is_bubble": Out(1),
                "fwd_bubble": Out(1),
                "err_bubble": Out(1),
                "label": Out(label_bits),
                "row": Out(range(rows + 1)),
                "kbase": Out(range(rows * lanes + 1)),
                "base_row": Out(range(n_out + lanes // cols + 2)),
                "carry": Out(lanes),
                "wrap": Out(1),
                "wrap_next": Out(1),
                "moving_ahead": Out(1),
                "read_addr": Out(addr),
                "step": Out(32),
            }
        )

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def drain(self) -> int:
        return self._drain

    def elaborate(self, platform):
        m = Module()
        row, next_row, more_after = self._row_counters(m)
        wrap_after = self._position(m)
        self._fsm(m, row)
        # The next read address, loaded into registers: the pass's rows from a take on (no
        # compare before it: next_row and more_after are registers), else the debug address.
        pass_more = self.pass_on & more_after
        loading_more = self.loading & (self._rows > 1)
        m.d.comb += self.read_addr.eq(self.dbg_addr)
        with m.If(self.take):
            m.d.comb += self.read_addr.eq(0)
        with m.If(loading_more):
            m.d.comb += self.read_addr.eq(1)
        with m.If(pass_more):
            m.d.comb += self.read_addr.eq(next_row + 1)
        # LOAD follows a take, PASS follows LOAD, and PASS goes on while rows remain.
        m.d.comb += self.moving_ahead.eq(self.take | loading_more | pass_more)
        m.d.comb += self.wrap_next.eq(
            Mux(self.loading, self._wraps(0), Mux(self.pass_on, wrap_after, self.wrap))
        )
        return m

    def _row_counters(self, m: Module):
        """``row``, and registers kept in step with it from which the next read address is
        loaded: the row after it, and whether the one after that exists."""
        rows = self._rows
        row = Signal(range(rows + 1))
        next_row = Signal(range(rows + 2), init=1)
        more_after = Signal(init=int(2 < rows))
        m.d.comb += self.row.eq(row)
        with m.If(self.loading):
            m.d.sync += [row.eq(0), next_row.eq(1), more_after.eq(2 < rows)]
        with m.If(self.pass_on):
            m.d.sync += [
                row.eq(row + 1),
                next_row.eq(next_row + 1),
                more_after.eq(next_row + 2 < rows),
            ]
        return row, next_row, more_after

    def _advanced(self, col: int) -> int:
        return (col + self._lanes % self._cols) % self._cols

    def _wraps(self, col: int) -> bool:
        return col + self._lanes % self._cols >= self._cols

    def _position(self, m: Module) -> Signal:
        """Column offset, weight row, element index and the lanes' carries; returns the wrap
        after the next advance (a register, like ``wrap``)."""
        P, N = self._lanes, self._cols
        base_col = Signal(range(N))
        base_row = Signal(range(self._n_out + P // N + 2))
        kbase = Signal(range(self._rows * P + 1))
        m.d.comb += [self.base_row.eq(base_row), self.kbase.eq(kbase)]
        # wrap, and the wrap after the next advance: registers loaded from tables over base_col
        # (LOAD sets it to 0, PASS advances it), so no adder chain sits before their loads.
        wrap = Signal(name="wrap", init=int(self._wraps(0)))
        wrap_after = Signal(name="wrap_after", init=int(self._wraps(self._advanced(0))))
        m.d.comb += self.wrap.eq(wrap)

        def table(f):
            return Const(sum(int(f(c)) << c for c in range(N)), N).bit_select(base_col, 1)

        advanced, wraps = self._advanced, self._wraps
        m.d.sync += [
            wrap.eq(
                Mux(
                    self.loading,
                    wraps(0),
                    Mux(self.pass_on, table(lambda c: wraps(advanced(c))), wrap),
                )
            ),
            wrap_after.eq(
                Mux(
                    self.loading,
                    wraps(advanced(0)),
                    Mux(self.pass_on, table(lambda c: wraps(advanced(advanced(c)))), wrap_after),
                )
            ),
        ]
        with m.If(self.loading):
            m.d.sync += [base_col.eq(0), base_row.eq(0), kbase.eq(0)]
        with m.If(self.pass_on):
            m.d.sync += [
                base_col.eq(Mux(wrap, base_col + P % N - N, base_col + P % N)),
                base_row.eq(base_row + P // N + wrap),
                kbase.eq(kbase + P),
            ]
        for p in range(P):
            m.d.comb += self.carry[p].eq(base_col >= N - p % N)
        return wrap_after

    def _fsm(self, m: Module, row: Signal) -> None:
        first_stage = self._first_stage
        take, first, step = Signal(), Signal(init=1), Signal(32)
        drain = Signal(range(max(2, self._drain)))
        fwd_bubble, err_bubble, label = Signal(), Signal(), Signal(len(self.label))
        m.d.comb += [
            self.take.eq(take),
            self.step.eq(step),
            self.fwd_bubble.eq(fwd_bubble),
            self.err_bubble.eq(err_bubble),
            self.label.eq(label),
            self.fwd_i_is_bubble.eq(self.fwd_i_bubble | (first & (not first_stage))),
        ]
        with m.FSM(name="step"):
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(~take)
                fwd_have = self.fwd_i_valid | (first & (not first_stage))
                err_have = self.err_i_valid | first
                # A token's valid holds until it is taken: seen in one cycle, taken in the next.
                m.d.comb += self.seen.eq(fwd_have & err_have & ~take)
                m.d.sync += take.eq(self.seen)
                with m.If(take):
                    m.d.comb += [
                        self.fwd_i_ready.eq(~first | first_stage),
                        self.err_i_ready.eq(~first),
                    ]
                    m.d.sync += [
                        fwd_bubble.eq(self.fwd_i_is_bubble),
                        err_bubble.eq(self.err_i_bubble | first),
                        label.eq(self.fwd_i_label),
                    ]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.loading.eq(1)
                m.next = "PASS"
            with m.State("PASS"):
                m.d.comb += self.pass_on.eq(1)
                m.d.sync += drain.eq(0)
                with m.If(row == self._rows - 1):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == self._drain - 1):
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += [self.finish.eq(self.outputs_free), self.idle.eq(1)]
                with m.If(self.outputs_free):
                    m.d.sync += [step.eq(step + 1), first.eq(0)]
                    m.next = "IDLE"
