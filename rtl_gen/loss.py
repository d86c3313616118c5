"""The loss unit: the last stage's outputs and the label to the first error vector.

``mse`` is one requantizer per output (``delta = RQ(y - onehot)``). ``softmax_ce`` is the small
circuit of ``docs/numerics.md``: a maximum, then one output per cycle through a pipeline of a
product, a 256-entry ``2**(j/256)`` table and a shifter (summing ``S``), then one restoring
divider per output, all side by side, one quotient bit per cycle; then one requantizer per
output as for ``mse``.
The unit also emits, per sample, the result token: label, prediction (the first maximum, as a
registered comparator tree finds it), the output codes and the error codes. The loss value
itself is a reporting quantity computed on the host from the output codes.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from pbhw.core.config import Loss, RoleFormat
from pbhw.core.constants import EXP2_TABLE, LOG2E_Q16, stream_id
from pbhw.core.datapath import span_width
from pbhw.core.fixed import FixedFormat, Rounding
from rtl_gen.counters import COUNTER_BITS
from rtl_gen.fanout import free_enables
from rtl_gen.pipeline import Delays, pipelined_sum, sum_levels
from rtl_gen.products import LATENCY as PRODUCT_LATENCY
from rtl_gen.requantizer import Requantizer, shape_of
from rtl_gen.target import GENERIC, Multiplier
from rtl_gen.threefry import Threefry2x32, pipelined_latency
from rtl_gen.tokens import error_token, forward_token, label_bits

__all__ = ["EXP_DEPTH", "LossUnit", "result_token"]

#: softmax_ce: cycles from a class's index to its 2**x term (difference, product, table, shift).
EXP_DEPTH = 1 + PRODUCT_LATENCY + 1


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
    multiplier : Multiplier
        The device's hard multiplier (:class:`rtl_gen.target.Multiplier`; ``softmax_ce``'s one
        product is cut to fit). Default: a generic 18 x 18 multiplier left to synthesis.

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
        multiplier: Multiplier = GENERIC,
    ):
        if not isinstance(kind, Loss):
            raise TypeError(f"Kind must be a Loss, not {kind!r}")
        if not isinstance(multiplier, Multiplier):
            raise TypeError(f"Multiplier must be a Multiplier, not {multiplier!r}")
        self._kind = kind
        self._y_role = y_role
        self._error_role = error_role
        self._classes = classes
        self._stage = stage
        self._seed = seed
        self._multiplier = multiplier
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
    def multiplier_pieces(self) -> list[tuple[int, int]]:
        """Operand widths of the hard-multiplier pieces of the unit's one product (softmax:
        ``d * log2 e``, ``d`` two bits wider than the output format), as the manifest counts
        them."""
        if self._kind is not Loss.SOFTMAX_CE:
            return []
        return self._multiplier.pieces(self._y_role.format.width + 2, ("constant", LOG2E_Q16))

    @property
    def argmax_levels(self) -> int:
        """Registered levels of the comparator tree that finds the first maximum."""
        return (self._classes - 1).bit_length()

    @property
    def wait(self) -> int:
        """Cycles between taking a token and using the maximum: the tree's levels, and with
        ``mse`` and stochastic rounding at least the pipelined random words' latency."""
        wait = max(1, self.argmax_levels)  # the registered saturation flags need a cycle
        if self._kind is Loss.MSE and self._error_role.rounding is Rounding.STOCHASTIC:
            wait = max(wait, pipelined_latency())
        return wait

    @property
    def latency(self) -> int:
        """Cycles from taking a sample's token to offering its error token."""
        if self._kind is Loss.MSE:
            return 2 + self.wait
        # the exponentials (classes + EXP_DEPTH + 1), loading the dividers (1), one cycle per
        # quotient bit, and the cycle that sees them done
        quotient_bits = self._error_role.format.frac + 2
        return 2 + self.wait + self._classes + EXP_DEPTH + 1 + 1 + quotient_bits + 1

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
        y = [Signal(shape_of(yf), name=f"y{o}", reset_less=True) for o in range(n)]
        label = Signal(label_bits(n))
        bubble = Signal()
        delta = [Signal(shape_of(ef), name=f"delta{o}") for o in range(n)]

        with m.If(self.err_o.ready):
            m.d.sync += self.err_o.valid.eq(0)
        with m.If(self.result.ready):
            m.d.sync += self.result.valid.eq(0)

        best, best_y = self._argmax(m, y)
        waited = Signal(range(self.wait + 1))

        emit = Signal()
        # The payloads are reset-less registers (loaded before their valid is set).
        err_payload = Signal(self.err_o.payload.shape(), reset_less=True)
        result_payload = Signal(self.result.payload.shape(), reset_less=True)
        m.d.comb += [
            self.err_o.payload.eq(err_payload),
            self.result.payload.eq(result_payload),
        ]
        with m.If(emit):
            m.d.sync += [
                self.err_o.valid.eq(1),
                self.result.valid.eq(~bubble),
                step.eq(step + 1),
            ]
        # The payloads follow their sources while no token waits (the sources are final at
        # the emit, when valid is set), so their enables are registers, replicated.
        err_bits, result_bits = len(err_payload.as_value()), len(result_payload.as_value())
        err_free = free_enables(m, self.err_o, emit, err_bits, "err_free")
        result_free = free_enables(m, self.result, emit & ~bubble, result_bits, "result_free")
        with m.If(err_free[0]):
            m.d.sync += err_payload.bubble.eq(bubble)
        with m.If(result_free[0]):
            m.d.sync += [result_payload.label.eq(label), result_payload.prediction.eq(best)]
        for o in range(n):
            with m.If(err_free[o * len(err_free) // n]):
                m.d.sync += err_payload.e[o].eq(delta[o])
            with m.If(result_free[o * len(result_free) // n]):
                m.d.sync += [
                    result_payload.y[o].eq(y[o]),
                    result_payload.delta[o].eq(delta[o]),
                ]

        free = ~self.err_o.valid & ~self.result.valid
        compute = Signal()  # softmax_ce: its sequence runs
        after_wait = "EMIT" if self._kind is Loss.MSE else "COMPUTE"
        if self._kind is Loss.MSE:
            lo, hi = yf.min_code - (1 << yf.frac), yf.max_code
            src = FixedFormat(span_width(lo, hi), yf.frac)
            error_in = [y[o] for o in range(n)]
        else:
            src = FixedFormat(ef.frac + 4, ef.frac)
            error_in, softmax_done = self._softmax(m, y, best_y, compute)
        # One requantizer per output: delta = RQ(error_in - onehot).
        events = []
        for o in range(n):
            rq = self._rounder(m, f"rq{o}", src, o, step, pipelined=True)
            unit = 1 << src.frac
            m.d.comb += [rq.i.eq(error_in[o] - Mux(label == o, unit, 0)), delta[o].eq(rq.o)]
            events.append(rq.saturated & ~bubble)
        # Saturation events: the flags are registered (the outputs are stable from a cycle
        # after the take until the emit, at least a cycle later) and counted at the emit by a
        # pipelined sum.
        flags = Signal(n, reset_less=True)
        m.d.sync += flags.eq(Cat(*events))
        at_emit = [flags[o] & emit for o in range(n)]
        emitted = pipelined_sum(
            m, at_emit, range(n + 1), sum_levels(n), "emitted", reset_less=False
        )
        m.d.sync += count.eq(count + emitted)
        with m.FSM(name="loss"):
            with m.State("IDLE"):
                with m.If(self.fwd_i.valid):
                    m.d.comb += self.fwd_i.ready.eq(1)
                    self._take(m, y, label, bubble)
                    m.d.sync += waited.eq(0)
                    m.next = "WAIT" if self.wait else after_wait
            with m.State("WAIT"):
                m.d.sync += waited.eq(waited + 1)
                with m.If(waited == self.wait - 1):
                    m.next = after_wait
            if self._kind is not Loss.MSE:
                with m.State("COMPUTE"):
                    m.d.comb += compute.eq(1)
                    with m.If(softmax_done):
                        m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(free):
                    m.d.comb += emit.eq(1)
                    m.next = "IDLE"
        return m

    def _argmax(self, m: Module, y):
        """The first maximum of ``y`` and its index, :attr:`argmax_levels` cycles later: a tree
        of comparators with a register per level (the left operand always has the lower
        indices, so ties keep the first)."""
        n, yf = self._classes, self._y_role.format
        level = [(Const(o, label_bits(n)), y[o]) for o in range(n)]
        for depth in range(self.argmax_levels):
            pairs = []
            for j in range(0, len(level), 2):
                (ia, ya), (ib, yb) = level[j], level[j + 1] if j + 1 < len(level) else level[j]
                sig_b = Signal(label_bits(n), name=f"best{depth}_{j // 2}", reset_less=True)
                sig_y = Signal(shape_of(yf), name=f"max{depth}_{j // 2}", reset_less=True)
                if j + 1 < len(level):
                    better = yb > ya
                    m.d.sync += [sig_b.eq(Mux(better, ib, ia)), sig_y.eq(Mux(better, yb, ya))]
                else:
                    m.d.sync += [sig_b.eq(ia), sig_y.eq(ya)]
                pairs.append((sig_b, sig_y))
            level = pairs
        return level[0]

    def _softmax(self, m, y, best_y, start):
        """The softmax probabilities ``p[o] = floor(2**f(E) * e[o] / S)`` (docs/numerics.md) as
        codes, and a flag that they are ready: a sequence that runs while ``start`` is held.

        ``e[o]`` streams through a pipeline (difference to the maximum; the product with
        ``log2 e``; the table read; the shift), one output per cycle, summing ``S``; then ``n``
        restoring dividers run side by side, one quotient bit per cycle."""
        n = self._classes
        yf, ef = self._y_role.format, self._error_role.format
        later = Delays(m)
        control = Delays(m, reset_less=False)
        table = Memory(shape=unsigned(16), depth=256, init=[int(v) for v in EXP2_TABLE])
        m.submodules.exp2 = table
        lookup = table.read_port(transparent_for=())
        running = Signal()  # the exponential sequence is issuing classes
        idx = Signal(range(n + 1))
        count = Signal(range(n + EXP_DEPTH + 2))
        exps = [Signal(16, name=f"e{o}", reset_less=True) for o in range(n)]
        total = Signal(16 + n.bit_length() + 1)
        # Cycle 0: the difference to the maximum (the maximum is ready when COMPUTE starts).
        y_at = Signal(shape_of(yf))
        with m.Switch(idx):
            for o in range(n):
                with m.Case(o):
                    m.d.comb += y_at.eq(y[o])
        d = Signal(signed(yf.width + 2), reset_less=True)
        m.d.sync += d.eq(y_at - best_y)
        # Cycles 1-2: t = (d * log2 e) >> (f(Y) + 8), the table index and the shift.
        product = self._multiplier.product(m, d, LOG2E_Q16, "log2e", latency=PRODUCT_LATENCY)
        t = Signal(signed(len(d) + LOG2E_Q16.bit_length() + 1))
        m.d.comb += t.eq(product >> (yf.frac + 16 - 8))
        neg_k = Signal(len(t) + 1)
        m.d.comb += [neg_k.eq(-(t >> 8)), lookup.addr.eq(t[:8])]
        # Cycle 4: the table's word, shifted; summed into S.
        neg_k_r = later(neg_k, 1, "neg_k")
        e = Signal(16)
        m.d.comb += e.eq(Mux(neg_k_r >= 16, 0, lookup.data >> neg_k_r[:5]))
        arrive = control(running, EXP_DEPTH, "running")
        at = later(idx, EXP_DEPTH, "idx")
        with m.If(arrive):
            m.d.sync += total.eq(total + e)
            for o in range(n):
                with m.If(at == o):
                    m.d.sync += exps[o].eq(e)

        # The dividers: D = e << f(E), quotient of f(E) + 2 bits (e <= S, so it fits); the
        # remainder starts as D's bits above the quotient's (less than S).
        q = ef.frac + 2
        quotients, bit = [], Signal(range(q + 1))
        dividing = Signal()
        phase = Signal(2)  # 0 exponentials, 1 load dividers, 2 divide, 3 done
        done = Signal()
        m.d.comb += done.eq(phase == 3)
        for o in range(n):
            dividend = Cat(Const(0, ef.frac), exps[o])
            rem = Signal(len(total) + 1, name=f"rem{o}", reset_less=True)
            low = Signal(q, name=f"low{o}", reset_less=True)
            quo = Signal(q, name=f"quo{o}", reset_less=True)
            trial = Cat(low[-1], rem)
            fits = trial >= total
            with m.If(start & (phase == 1)):
                m.d.sync += [rem.eq(dividend[q:]), low.eq(dividend[:q]), quo.eq(0)]
            with m.If(dividing):
                m.d.sync += [
                    rem.eq(Mux(fits, trial - total, trial)),
                    low.eq(low << 1),
                    quo.eq(Cat(fits, quo)),
                ]
            quotients.append(quo)
        m.d.comb += dividing.eq(start & (phase == 2))
        with m.If(~start):
            m.d.sync += [phase.eq(0), idx.eq(0), count.eq(0), total.eq(0), bit.eq(0)]
        with m.Elif(phase == 0):
            m.d.sync += count.eq(count + 1)
            m.d.comb += running.eq(count < n)
            with m.If(count < n):
                m.d.sync += idx.eq(idx + 1)
            with m.If(count == n + EXP_DEPTH):
                m.d.sync += phase.eq(1)
        with m.Elif(phase == 1):
            m.d.sync += phase.eq(2)
        with m.Elif(phase == 2):
            m.d.sync += bit.eq(bit + 1)
            with m.If(bit == q - 1):
                m.d.sync += phase.eq(3)
        return quotients, done

    def _take(self, m, y, label, bubble):
        payload = self.fwd_i.payload
        m.d.sync += [label.eq(payload.label), bubble.eq(payload.bubble)]
        m.d.sync += [y[o].eq(payload.x[o]) for o in range(self._classes)]
