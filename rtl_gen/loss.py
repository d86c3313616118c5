"""The loss unit: the last stage's outputs and the label to the first error vector.

``mse`` is one requantizer per output (``delta = RQ(y - onehot)``). ``softmax_ce`` is the small
circuit of ``docs/numerics.md``: a maximum, then one output per cycle through a 256-entry
``2**(j/256)`` table and a shifter (summing ``S``), then one output per cycle through a divider.
The unit also emits, per sample, the result token: label, prediction (the first maximum, as a
registered comparator tree finds it), the output codes and the error codes. The loss value
itself is a reporting quantity computed on the host from the output codes.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixed_arith import EXP2_TABLE, LOG2E_Q16, stream_id
from pbhw.config import Loss, RoleFormat
from pbhw.fixed import FixedFormat, Rounding
from rtl_gen.requantizer import Requantizer, shape_of, span_width
from rtl_gen.stage import COUNTER_BITS, error_token, forward_token, label_bits
from rtl_gen.threefry import Threefry2x32, pipelined_latency

__all__ = ["LossUnit", "result_token"]


def result_token(classes: int, y_fmt: FixedFormat, e_fmt: FixedFormat) -> data.StructLayout:
    """Per sample: its label, the predicted class, the output codes and the loss error codes."""
    return data.StructLayout(
        {
            "label": label_bits(classes),
            "prediction": label_bits(classes),
            "y": data.ArrayLayout(shape_of(y_fmt), classes),
            "delta": data.ArrayLayout(shape_of(e_fmt), classes),
        }
    )


class LossUnit(wiring.Component):
    """Turn stage ``L``'s forward token into the error token of stage ``L``'s next step.

    Parameters
    ----------
    kind : Loss
        ``mse`` or ``softmax_ce``.
    y_role, error_role : RoleFormat
        Stage ``L``'s activation and error roles.
    classes : int
        Number of outputs.
    stage : int
        ``L`` (the loss error's stochastic stream is ``16 * L + 7``).
    seed : int
        The config's seed.

    Attributes
    ----------
    fwd_i : In(stream of forward tokens)
    err_o : Out(stream of error tokens); a bubble in gives a bubble out.
    result : Out(stream of :func:`result_token`), one per sample (none for bubbles).
    saturation : Out(COUNTER_BITS)
        Overflow events of the loss error.
    """

    def __init__(
        self,
        *,
        kind: Loss,
        y_role: RoleFormat,
        error_role: RoleFormat,
        classes: int,
        stage: int,
        seed: int,
    ):
        if not isinstance(kind, Loss):
            raise TypeError(f"Kind must be a Loss, not {kind!r}")
        self._kind = kind
        self._y_role = y_role
        self._error_role = error_role
        self._classes = classes
        self._stage = stage
        self._seed = seed
        yf, ef = y_role.format, error_role.format
        super().__init__(
            {
                "fwd_i": In(stream.Signature(forward_token(classes, yf, classes))),
                "err_o": Out(stream.Signature(error_token(classes, ef))),
                "result": Out(stream.Signature(result_token(classes, yf, ef))),
                "saturation": Out(COUNTER_BITS),
            }
        )

    @property
    def argmax_levels(self) -> int:
        """Registered levels of the comparator tree that finds the first maximum."""
        return (self._classes - 1).bit_length()

    @property
    def wait(self) -> int:
        """Cycles between taking a token and using the maximum: the tree's levels, and with
        ``mse`` and stochastic rounding at least the pipelined random words' latency."""
        wait = self.argmax_levels
        if self._kind is Loss.MSE and self._error_role.rounding is Rounding.STOCHASTIC:
            wait = max(wait, pipelined_latency())
        return wait

    @property
    def latency(self) -> int:
        """Cycles from taking a sample's token to offering its error token."""
        if self._kind is Loss.MSE:
            return 2 + self.wait
        return 2 * self._classes + 3 + self.wait

    def _rounder(self, m, name, src, index, step, pipelined=False):
        role = self._error_role
        # With no bits to drop every rounding mode is the identity: no random word needed.
        rounding = role.rounding if src.frac > role.format.frac else Rounding.HALF_EVEN
        rq = Requantizer(src=src, dst=role.format, rounding=rounding, overflow=role.overflow)
        m.submodules[name] = rq
        if rounding is Rounding.STOCHASTIC:
            tf = Threefry2x32(pipelined=pipelined)  # pipelined: inputs held for its latency
            m.submodules[f"{name}_rng"] = tf
            m.d.comb += [
                tf.k0.eq(self._seed & 0xFFFFFFFF),
                tf.k1.eq(stream_id(self._stage, "loss")),
                tf.c0.eq(step),
                tf.c1.eq(index),
                rq.random.eq(tf.x0),
            ]
        return rq

    def elaborate(self, platform):
        m = Module()
        n = self._classes
        yf, ef = self._y_role.format, self._error_role.format
        step = Signal(32)
        count = Signal(COUNTER_BITS)
        m.d.comb += self.saturation.eq(count)
        y = [Signal(shape_of(yf), name=f"y{o}") for o in range(n)]
        label = Signal(label_bits(n))
        bubble = Signal()
        delta = [Signal(shape_of(ef), name=f"delta{o}") for o in range(n)]

        with m.If(self.err_o.ready):
            m.d.sync += self.err_o.valid.eq(0)
        with m.If(self.result.ready):
            m.d.sync += self.result.valid.eq(0)

        # Prediction: the first maximum, by a tree of comparators with a register per level
        # (the left operand always has the lower indices, so ties keep the first).
        level = [(Const(o, label_bits(n)), y[o]) for o in range(n)]
        for depth in range(self.argmax_levels):
            pairs = []
            for j in range(0, len(level), 2):
                (ia, ya), (ib, yb) = level[j], level[j + 1] if j + 1 < len(level) else level[j]
                sig_b = Signal(label_bits(n), name=f"best{depth}_{j // 2}")
                sig_y = Signal(shape_of(yf), name=f"max{depth}_{j // 2}")
                if j + 1 < len(level):
                    better = yb > ya
                    m.d.sync += [sig_b.eq(Mux(better, ib, ia)), sig_y.eq(Mux(better, yb, ya))]
                else:
                    m.d.sync += [sig_b.eq(ia), sig_y.eq(ya)]
                pairs.append((sig_b, sig_y))
            level = pairs
        best, best_y = level[0]
        waited = Signal(range(self.wait + 1))

        emit = Signal()
        with m.If(emit):
            m.d.sync += [
                self.err_o.valid.eq(1),
                self.err_o.payload.bubble.eq(bubble),
                self.result.valid.eq(~bubble),
                self.result.payload.label.eq(label),
                self.result.payload.prediction.eq(best),
                step.eq(step + 1),
            ]
            for o in range(n):
                m.d.sync += [
                    self.err_o.payload.e[o].eq(delta[o]),
                    self.result.payload.y[o].eq(y[o]),
                    self.result.payload.delta[o].eq(delta[o]),
                ]

        free = ~self.err_o.valid & ~self.result.valid
        if self._kind is Loss.MSE:
            lo, hi = yf.min_code - (1 << yf.frac), yf.max_code
            src = FixedFormat(span_width(lo, hi), yf.frac)
            events = []
            for o in range(n):
                rq = self._rounder(m, f"rq{o}", src, o, step, pipelined=True)
                one = Mux(label == o, 1 << yf.frac, 0)
                m.d.comb += [rq.i.eq(y[o] - one), delta[o].eq(rq.o)]
                events.append(rq.saturated & ~bubble)
            # Saturation events are counted a cycle after the emit (the sum is registered).
            emitted = Signal(range(n + 1))
            m.d.sync += [
                emitted.eq(Mux(emit, sum(events[1:], events[0]), 0)),
                count.eq(count + emitted),
            ]
            with m.FSM(name="loss"):
                with m.State("IDLE"):
                    with m.If(self.fwd_i.valid):
                        m.d.comb += self.fwd_i.ready.eq(1)
                        self._take(m, y, label, bubble)
                        m.d.sync += waited.eq(0)
                        m.next = "WAIT" if self.wait else "EMIT"
                with m.State("WAIT"):
                    m.d.sync += waited.eq(waited + 1)
                    with m.If(waited == self.wait - 1):
                        m.next = "EMIT"
                with m.State("EMIT"):
                    with m.If(free):
                        m.d.comb += emit.eq(1)
                        m.next = "IDLE"
            return m

        # softmax_ce
        table = Memory(shape=unsigned(16), depth=256, init=[int(v) for v in EXP2_TABLE])
        m.submodules.exp2 = table
        lookup = table.read_port(domain="comb")
        idx = Signal(range(n + 1))
        ymax = Signal(shape_of(yf))
        exps = [Signal(16, name=f"e{o}") for o in range(n)]
        total = Signal(16 + n.bit_length() + 1)
        y_at = Signal(shape_of(yf))
        e_at = Signal(16)
        with m.Switch(idx):
            for o in range(n):
                with m.Case(o):
                    m.d.comb += [y_at.eq(y[o]), e_at.eq(exps[o])]
        d = Signal(signed(yf.width + 2))
        m.d.comb += d.eq(y_at - ymax)
        t = Signal(signed(len(d) + LOG2E_Q16.bit_length() + 1))
        m.d.comb += t.eq((d * LOG2E_Q16) >> (yf.frac + 16 - 8))
        neg_k = Signal(len(t) + 1)
        m.d.comb += [neg_k.eq(-(t >> 8)), lookup.addr.eq(t[:8])]
        e = Signal(16)
        m.d.comb += e.eq(Mux(neg_k >= 16, 0, lookup.data >> neg_k[:5]))
        p = Signal(ef.frac + 2)
        m.d.comb += p.eq((Cat(Const(0, ef.frac), e_at)) // total)
        rq = self._rounder(m, "rq", FixedFormat(ef.frac + 4, ef.frac), idx, step)
        m.d.comb += rq.i.eq(p - Mux(label == idx, 1 << ef.frac, 0))
        with m.FSM(name="loss"):
            with m.State("IDLE"):
                with m.If(self.fwd_i.valid):
                    m.d.comb += self.fwd_i.ready.eq(1)
                    self._take(m, y, label, bubble)
                    m.d.sync += waited.eq(0)
                    m.next = "WAIT" if self.wait else "MAX"
            with m.State("WAIT"):
                m.d.sync += waited.eq(waited + 1)
                with m.If(waited == self.wait - 1):
                    m.next = "MAX"
            with m.State("MAX"):
                m.d.sync += [ymax.eq(best_y), idx.eq(0), total.eq(0)]
                m.next = "EXP"
            with m.State("EXP"):
                m.d.sync += [total.eq(total + e), idx.eq(idx + 1)]
                for o in range(n):
                    with m.If(idx == o):
                        m.d.sync += exps[o].eq(e)
                with m.If(idx == n - 1):
                    m.d.sync += idx.eq(0)
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.sync += idx.eq(idx + 1)
                for o in range(n):
                    with m.If(idx == o):
                        m.d.sync += delta[o].eq(rq.o)
                with m.If(~bubble & rq.saturated):
                    m.d.sync += count.eq(count + 1)
                with m.If(idx == n - 1):
                    m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(free):
                    m.d.comb += emit.eq(1)
                    m.next = "IDLE"
        return m

    def _take(self, m, y, label, bubble):
        payload = self.fwd_i.payload
        m.d.sync += [label.eq(payload.label), bubble.eq(payload.bubble)]
        m.d.sync += [y[o].eq(payload.x[o]) for o in range(self._classes)]
