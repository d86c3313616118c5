"""One pipeline stage: weights, velocities, the input stash and ``P`` lanes.

Per step the stage consumes one forward token (its input vector) and one error token (the error
of its outputs, ``delta_l``), streams every weight once in rows of ``P`` lanes, and emits one
forward token (its outputs) and, after stage 1, one error token (``delta_{l-1}``). Per weight
element ``k = c * P + p`` (row-major over ``N_out x N_cols``, ``N_cols = N_in + bias``) lane
``p`` does, in the cycle that row ``c`` arrives from memory:

* the forward MAC on the predicted weight ``w_hat * x[i]`` into output ``o``'s row sum;
* the backward MAC on the current weight ``w * dz[o]`` into input ``i``'s column sum;
* the gradient, velocity and weight update of :class:`~rtl_gen.update.UpdateUnit`, written back
  to the same row (only when the step has a backward, i.e. outside fill and drain).

Lane ``p`` needs ``x[i]`` and adds into column ``i`` for ``i = (base + p) mod N_cols``: instead of
a multiplexer per lane, the input vectors and the column sums sit in rings of registers that rotate
by ``P`` places per cycle, so lane ``p`` always reads and adds at ring position ``p mod N_cols``.
Rows advance by ``P // N_cols`` or one more per cycle, so ``dz[o]`` comes from a shift register
at one of two offsets. Rows complete in order; each completed row is rounded to the activation
format right away. The bit-level arithmetic is ``docs/numerics.md``; the golden model is
:class:`golden.fixed_arith.FixedArithmetic`.

A step takes ``ceil(N_out * N_cols / P) + OVERHEAD + drain`` cycles when its tokens are ready:
one to see both tokens, one to take them, one to load the vectors (and write the stash), the row
pass, the drain of the lane pipeline (:attr:`Stage.pipeline`), one to hand over the outputs.
"""

from __future__ import annotations

import math

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from pbhw.core.config import RoleFormat, WeightPrediction
from pbhw.core.constants import stream_id
from pbhw.core.datapath import (
    PREDICTION_LATENCY,
    UPDATE_LATENCY,
    UPDATE_PIPELINE,
    StageDatapath,
    stage_datapath,
)
from pbhw.core.fixed import FixedFormat, Rounding
from pbhw.core.plan import StagePlan
from rtl_gen.fanout import FANOUT, free_enables, replicated, replicated_tree
from rtl_gen.pipeline import Delays, pipelined_sum, sum_levels
from rtl_gen.products import LATENCY as PRODUCT_LATENCY
from rtl_gen.requantizer import Requantizer, shape_of
from rtl_gen.target import GENERIC, Multiplier
from rtl_gen.threefry import Threefry2x32, pipelined_latency
from rtl_gen.update import UpdateUnit, check_shift_constants

__all__ = [
    "COUNTER_ROLES",
    "OVERHEAD",
    "Stage",
    "error_token",
    "forward_token",
    "label_bits",
]

#: Cycles a step takes beyond its row pass (see both tokens, take them, read the stash, hand
#: over).
OVERHEAD = 4
#: The saturation counters of a stage, in the order of its ``saturation`` port.
COUNTER_ROLES = ("activation", "error", "gradient", "velocity", "weight", "prediction")
#: Width of every saturation counter (it wraps after 2**32 - 1 events).
COUNTER_BITS = 32


def label_bits(classes: int) -> int:
    return max(1, (classes - 1).bit_length())


def forward_token(n: int, fmt: FixedFormat, classes: int) -> data.StructLayout:
    """A forward token: a vector of ``n`` codes of ``fmt``, the sample's label, and ``bubble``
    (set during fill and drain, when the step carries no sample)."""
    return data.StructLayout(
        {
            "bubble": 1,
            "label": label_bits(classes),
            "x": data.ArrayLayout(shape_of(fmt), n),
        }
    )


def error_token(n: int, fmt: FixedFormat) -> data.StructLayout:
    """An error token: ``n`` error codes of ``fmt`` and ``bubble``."""
    return data.StructLayout({"bubble": 1, "e": data.ArrayLayout(shape_of(fmt), n)})


def _pack(codes, width: int) -> int:
    """Codes (two's complement, ``width`` bits each) packed little-end first into one int."""
    out = 0
    for n, code in enumerate(codes):
        out |= (int(code) & ((1 << width) - 1)) << (n * width)
    return out


class Stage(wiring.Component):
    """One PB pipeline stage with ``lanes`` weight lanes.

    Parameters
    ----------
    plan : StagePlan
        The stage's derived plan (sizes, delay, horizon, formats, quantized constants).
    x_role : RoleFormat
        The role of the input vector: the previous stage's activation (stage 1: its own).
    error_out : RoleFormat or None
        The previous stage's error role, the format of the error this stage sends back;
        ``None`` for stage 1, which sends none.
    classes : int
        Number of classes (sets the label width carried by the forward tokens).
    bias : bool
        Whether the stage has a bias column.
    prediction : WeightPrediction
        The weight prediction of the config (``none`` when the horizon is 0).
    seed : int
        The config's seed: the key of every stochastic rounding point.
    lanes : int
        Number of lanes ``P`` (any value from 1 to the number of weights).
    init : numpy.ndarray
        Initial weight codes, ``[N_out, N_cols]`` (the memory init contents).
    multiplier : Multiplier
        The device's hard multiplier (:class:`rtl_gen.target.Multiplier`): every product is cut
        into pieces that fit its ports. Default: a generic 18 x 18 multiplier left to synthesis.

    Attributes
    ----------
    fwd_i : In(stream of forward tokens of N_in codes)
    fwd_o : Out(stream of forward tokens of N_out codes)
    err_i : In(stream of error tokens of N_out codes)
    err_o : Out(stream of error tokens of N_in codes); absent for stage 1.
    idle : Out(1)
        Not in a row pass (waiting for tokens, or for its outputs to be taken); the debug
        port reads only then.
    dbg_addr : In(range(rows)), dbg_mem : In(2)
        Debug read of row ``dbg_addr`` of memory ``dbg_mem`` (0 = W, 1 = V, 2 = w_prev).
    dbg_data : Out(row bits)
        The row, valid three cycles after ``dbg_addr`` (the address register, the memory read,
        then a register) while ``idle``; lane ``p`` at bits ``[p * width, (p + 1) * width)``.
    saturation : Out(array of COUNTER_BITS)
        Overflow events per role of :data:`COUNTER_ROLES`.
    step : Out(32)
        Steps completed.
    """

    def __init__(
        self,
        *,
        plan: StagePlan,
        x_role: RoleFormat,
        error_out: RoleFormat | None,
        classes: int,
        bias: bool,
        prediction: WeightPrediction,
        seed: int,
        lanes: int,
        init: np.ndarray,
        multiplier: Multiplier = GENERIC,
    ):
        if not isinstance(plan, StagePlan):
            raise TypeError(f"Plan must be a StagePlan, not {plan!r}")
        if not isinstance(lanes, int) or isinstance(lanes, bool):
            raise TypeError(f"Lanes must be a positive integer, not {lanes!r}")
        if not isinstance(multiplier, Multiplier):
            raise TypeError(f"Multiplier must be a Multiplier, not {multiplier!r}")
        cols = plan.n_in + int(bias)
        if not 1 <= lanes <= plan.n_out * cols:
            raise ValueError(
                f"Lanes must be between 1 and the stage's {plan.n_out * cols} weights, "
                f"not {lanes!r}"
            )
        if (error_out is None) != (plan.index == 1):
            raise ValueError("Only stage 1 sends no error back (error_out must be None there)")
        init = np.asarray(init)
        if init.shape != (plan.n_out, cols):
            raise ValueError(f"Init must have shape {(plan.n_out, cols)}, not {init.shape}")
        self._plan = plan
        self._x_role = x_role
        self._error_out = error_out
        self._classes = classes
        self._bias = bias
        self._prediction = prediction if plan.horizon else WeightPrediction.NONE
        self._seed = seed
        self._lanes = lanes
        self._cols = cols
        self._init = init
        self._multiplier = multiplier
        fm = plan.formats
        self.update_args = dict(
            formats=fm,
            momentum=plan.coefficients["momentum"].code,
            eta_a=plan.coefficients["eta_a"].code,
            eta_b=plan.coefficients["eta_b"].code,
            prediction=self._prediction,
            eta_t=plan.coefficients["eta_T"].code if "eta_T" in plan.coefficients else 0,
            horizon=plan.horizon,
            x_format=x_role.format,
            pipelined=True,
            multiplier=multiplier,
        )
        # Every width, shift and product of the stage; a bad width or constant fails here.
        self._datapath = stage_datapath(
            plan,
            x_format=x_role.format,
            bias=bias,
            prediction=prediction,
            multiplier_ports=multiplier.ports,
        )
        check_shift_constants(self._datapath.update)
        self._schedule()

        members = {
            "fwd_i": In(stream.Signature(forward_token(plan.n_in, x_role.format, classes))),
            "fwd_o": Out(
                stream.Signature(forward_token(plan.n_out, fm.activation.format, classes))
            ),
            "err_i": In(stream.Signature(error_token(plan.n_out, fm.error.format))),
            "idle": Out(1),
            "dbg_addr": In(range(max(2, self.rows))),
            "dbg_mem": In(2),
            "dbg_data": Out(self.row_bits),
            "saturation": Out(data.ArrayLayout(COUNTER_BITS, len(COUNTER_ROLES))),
            "step": Out(32),
        }
        if error_out is not None:
            members["err_o"] = Out(stream.Signature(error_token(plan.n_in, error_out.format)))
        super().__init__(members)

    # ------------------------------------------------------------------ published properties

    @property
    def plan(self) -> StagePlan:
        return self._plan

    @property
    def datapath(self) -> StageDatapath:
        """Accumulators, products and constants (:func:`pbhw.core.datapath.stage_datapath`)."""
        return self._datapath

    @property
    def multiplier(self) -> Multiplier:
        return self._multiplier

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def cols(self) -> int:
        return self._cols

    @property
    def weights(self) -> int:
        return self._plan.n_out * self._cols

    @property
    def rows(self) -> int:
        """Memory rows, i.e. cycles of the row pass: ``ceil(weights / lanes)``."""
        return math.ceil(self.weights / self._lanes)

    @property
    def cycles_per_step(self) -> int:
        return self.rows + OVERHEAD + self.drain

    @property
    def drain(self) -> int:
        """Cycles between the last row read and the hand-over: the lane pipeline's depth."""
        return self._at["drain"]

    @property
    def counter_lag(self) -> int:
        """Cycles from a saturation event to its counter (a pipelined sum of the flags; the
        error flags are registered first)."""
        flags = max(self._lanes, (self._cols - 1 + self._lanes) // self._cols)
        lag = 1 + sum_levels(flags)
        if self._error_out is not None:
            lag = max(lag, 2 + sum_levels(self._plan.n_in))
        return lag

    @property
    def pipeline(self) -> dict[str, int]:
        """Cycle, after a row is read, at which each part of the lane pipeline acts
        (``docs/hardware.md``): ``update`` (unit inputs), ``predicted`` (w_hat), ``forward``
        (products registered), ``row_sum``, ``activation`` (rounded, z written), ``backward``
        (column sums), ``write`` (W and V written back), ``drain``."""
        return dict(self._at)

    def _schedule(self) -> None:
        """Cycle (after its row is read) at which each part of a row's pipeline acts."""
        fm = self._plan.formats
        words = pipelined_latency()
        act_stochastic = fm.activation.rounding is Rounding.STOCHASTIC
        err_stochastic = (
            self._error_out is not None and self._error_out.rounding is Rounding.STOCHASTIC
        )
        # Group sums of the forward products: a pipelined sum over a group's lanes.
        P, N = self._lanes, self._cols
        self._groups = (N - 1 + P - 1) // N + 1  # distinct row offsets of the lanes in a cycle
        terms = max(
            sum(1 for p in range(P) if r in (p // N, p // N + 1)) for r in range(self._groups)
        )
        self._sum_levels = sum_levels(terms)
        # A row is registered once after the memory (cycle 1) before anything uses it; the
        # unit's inputs wait until the earliest random word of a lane is ready, and the
        # activation rounding must not come before its word either.
        update = self._datapath.update
        pre = max([words - UPDATE_PIPELINE[p] for p in update.stochastic_points] + [1])
        # operand register, forward product, group sums, row sum: the activation rounds that
        # long after w_hat
        tail = 1 + PRODUCT_LATENCY + self._sum_levels + 1
        if act_stochastic:
            pre = max(pre, words - PREDICTION_LATENCY - tail)
        at = {"update": pre, "predicted": pre + PREDICTION_LATENCY}
        at["forward"] = at["predicted"] + 1 + PRODUCT_LATENCY
        at["row_sum"] = at["forward"] + self._sum_levels
        at["round"] = at["row_sum"] + 1
        at["activation"] = at["round"] + 1
        at["backward"] = 1 + PRODUCT_LATENCY
        at["write"] = pre + UPDATE_LATENCY
        at["drain"] = max(at["activation"], at["write"], at["backward"])
        if err_stochastic:  # the error words (of the step counter) settle during the step
            at["drain"] = max(at["drain"], words)
        self._words = words
        self._at = at

    @property
    def weight_bits(self) -> int:
        return self._plan.formats.weight.format.width

    @property
    def velocity_bits(self) -> int:
        return self._plan.formats.velocity.format.width

    @property
    def row_bits(self) -> int:
        return self._lanes * max(self.weight_bits, self.velocity_bits)

    @property
    def has_w_prev(self) -> bool:
        return self._prediction is WeightPrediction.WEIGHT_DIFFERENCE

    @property
    def memory_bits(self) -> dict[str, int]:
        lanes_rows = self._lanes * self.rows
        stash = (self._plan.delay + 1) * (
            self._plan.n_in * self._x_role.format.width + (self._plan.n_out if self._relu else 0)
        )
        return {
            "weight": lanes_rows * self.weight_bits,
            "velocity": lanes_rows * self.velocity_bits,
            "w_prev": lanes_rows * self.weight_bits if self.has_w_prev else 0,
            "stash": stash,
        }

    @property
    def multipliers(self) -> dict[str, int]:
        """Data multipliers (forward, backward, gradient per lane; stage 1 has no backward)
        and multipliers by a constant (the update's coefficients)."""
        data_per_lane = 3 if self._error_out is not None else 2
        return {
            "data": data_per_lane * self._lanes,
            "coefficient": self._datapath.update.coefficient_multipliers * self._lanes,
        }

    @property
    def _relu(self) -> bool:
        return self._plan.relu

    def memory_init(self) -> dict[str, list[int]]:
        """Packed rows of each memory's init contents (W from ``init``; V zero)."""
        flat = np.zeros(self.rows * self._lanes, dtype=np.int64)
        flat[: self.weights] = self._init.reshape(-1)
        w_rows = [
            _pack(flat[r * self._lanes : (r + 1) * self._lanes], self.weight_bits)
            for r in range(self.rows)
        ]
        out = {"w": w_rows, "v": [0] * self.rows}
        if self.has_w_prev:
            out["w_prev"] = list(w_rows)
        return out

    # ------------------------------------------------------------------ elaboration

    def _random(self, m: Module, name: str, role: str, step, index) -> Signal:
        """The element's 32-bit word of stream ``16 * stage + role``, :attr:`_words` cycles
        after ``index`` (a pipelined Threefry; ``step`` is constant during a step)."""
        tf = Threefry2x32(pipelined=True)
        m.submodules[f"rng_{name}"] = tf
        m.d.comb += [
            tf.k0.eq(self._seed & 0xFFFFFFFF),
            tf.k1.eq(stream_id(self._plan.index, role)),
            tf.c0.eq(step),
            tf.c1.eq(index),
        ]
        return tf.x0

    def _rounder(
        self, m: Module, name: str, src: FixedFormat, role: RoleFormat, rng_role: str, step, index
    ):
        """A requantizer into ``role``; a stochastic one rounds with the word of ``index``
        given :attr:`_words` cycles earlier."""
        rq = Requantizer(src=src, dst=role.format, rounding=role.rounding, overflow=role.overflow)
        m.submodules[f"rq_{name}"] = rq
        if role.rounding is Rounding.STOCHASTIC:
            m.d.comb += rq.random.eq(self._random(m, name, rng_role, step, index))
        return rq

    def elaborate(self, platform):  # noqa: C901 - one datapath, read top to bottom
        m = Module()
        plan, fm = self._plan, self._plan.formats
        P, N, n_in, n_out = self._lanes, self._cols, plan.n_in, plan.n_out
        first_stage = plan.index == 1
        sends_error = self._error_out is not None
        xf, wf, vf, ef = self._x_role.format, fm.weight.format, fm.velocity.format, fm.error.format
        one = 1 << xf.frac  # the bias column's input, the code of 1 (the config checks it fits)
        wb, vb = wf.width, vf.width

        # ---- memories: one row of P lanes per address
        init = self.memory_init()
        mem_w = Memory(shape=unsigned(P * wb), depth=self.rows, init=init["w"])
        mem_v = Memory(shape=unsigned(P * vb), depth=self.rows, init=init["v"])
        m.submodules.mem_w, m.submodules.mem_v = mem_w, mem_v
        rd_w, wr_w = mem_w.read_port(transparent_for=()), mem_w.write_port()
        rd_v, wr_v = mem_v.read_port(transparent_for=()), mem_v.write_port()
        rd_p = wr_p = None
        if self.has_w_prev:
            mem_p = Memory(shape=unsigned(P * wb), depth=self.rows, init=init["w_prev"])
            m.submodules.mem_p = mem_p
            rd_p, wr_p = mem_p.read_port(transparent_for=()), mem_p.write_port()

        depth = plan.delay + 1
        # The input stash, in slices of at most FANOUT bits: each slice's write enable is its
        # own replicated register (a wide memory's one enable reaches every RAM cell).
        per_slice = max(1, FANOUT // xf.width)
        stash_slices = []
        for lo in range(0, n_in, per_slice):
            hi = min(n_in, lo + per_slice)
            mem = Memory(shape=unsigned((hi - lo) * xf.width), depth=depth, init=[])
            m.submodules[f"stash_x{lo}"] = mem
            stash_slices.append((lo, hi, mem.read_port(transparent_for=()), mem.write_port()))
        sm_rd = sm_wr = None
        if self._relu:
            stash_m = Memory(shape=unsigned(n_out), depth=depth, init=[])
            m.submodules.stash_m = stash_m
            sm_rd, sm_wr = stash_m.read_port(transparent_for=()), stash_m.write_port()

        # ---- control state
        step = Signal(32)
        first = Signal(init=1)
        slot_w = Signal(range(depth))
        slot_r = Signal(range(depth), init=1 % depth)
        row = Signal(range(self.rows + 1))
        # The row after `row`, and whether the one after that exists: registers kept in step
        # with `row`, from which the next read address is loaded (no compare before it).
        next_row = Signal(range(self.rows + 2), init=1)
        more_after = Signal(init=int(2 < self.rows))
        fwd_bubble, err_bubble = Signal(), Signal()
        label = Signal(len(self.fwd_i.payload.label))
        base_col = Signal(range(N))
        base_row = Signal(range(n_out + P // N + 2))
        kbase = Signal(range(self.rows * P + 1))
        drain = Signal(range(max(2, self._at["drain"])))
        m.d.comb += self.step.eq(step)

        # ---- vectors: input rings (current and stashed x, bias column included), the error,
        # dz by row offset, output codes, column sums
        def ring(name, shape):
            return [Signal(shape, name=f"{name}{j}", reset_less=True) for j in range(N)]

        x_ring, xg_ring = ring("x", shape_of(xf)), ring("xg", shape_of(xf))
        # Datapath registers are reset-less: each is loaded before it is used (docs/hardware.md).
        dz_sr = [Signal(shape_of(ef), name=f"dz{o}", reset_less=True) for o in range(n_out)]
        z_out = [
            Signal(shape_of(fm.activation.format), name=f"z{o}", reset_less=True)
            for o in range(n_out)
        ]
        fwd_acc = self._datapath.forward.format
        bwd_acc = self._datapath.backward.format if sends_error else None
        bacc = [
            Signal(signed(bwd_acc.width), name=f"bacc{j}", reset_less=True)
            for j in range(N if sends_error else 0)
        ]
        cur = Signal(signed(fwd_acc.width), reset_less=True)
        counts = [Signal(COUNTER_BITS, name=f"count_{r}") for r in COUNTER_ROLES]
        for n, c in enumerate(counts):
            m.d.comb += self.saturation[n].eq(c)

        events = {role: [] for role in COUNTER_ROLES}  # 1-bit overflow events per cycle

        # ---- output registers (valid held until taken; the payloads are reset-less)
        fwd_payload = Signal(self.fwd_o.payload.shape(), reset_less=True)
        m.d.comb += self.fwd_o.payload.eq(fwd_payload)
        if sends_error:
            err_payload = Signal(self.err_o.payload.shape(), reset_less=True)
            m.d.comb += self.err_o.payload.eq(err_payload)
        with m.If(self.fwd_o.ready):
            m.d.sync += self.fwd_o.valid.eq(0)
        if sends_error:
            with m.If(self.err_o.ready):
                m.d.sync += self.err_o.valid.eq(0)
        outputs_free = ~self.fwd_o.valid
        if sends_error:
            outputs_free &= ~self.err_o.valid

        # ---- lanes: a row read at cycle 0 flows through the lane pipeline (self.pipeline);
        # everything it carries is delayed along with it.
        pass_on = Signal()  # a row arrives from memory this cycle
        finish = Signal()  # the step hands over its outputs this cycle
        loading = Signal()  # the stash is read; row 0 is addressed
        # Both input tokens are taken this cycle (LOAD follows): a register, set the cycle after
        # both are seen, so that the producers' valid bits reach one register here and the many
        # loads of `take` (the replicated enables, ready) start at a register.
        take = Signal()
        seen = Signal()  # both tokens are seen: `take` next cycle
        fwd_is_bubble = Signal()
        m.d.comb += fwd_is_bubble.eq(self.fwd_i.payload.bubble | (first & (not first_stage)))
        at = self._at
        later = Delays(m)  # later(value as of the row's cycle 0, n, name): n cycles later
        control = Delays(m, reset_less=False)  # the same for the valid bit, which is reset

        def valid(n):
            return control(pass_on, n, "row_valid")

        lane_w, lane_v, lane_wp, lane_k = [], [], [], []
        for p in range(P):

            def field(port, bits, fmt, p=p):
                raw = port.data[p * bits : (p + 1) * bits]
                return raw.as_signed() if fmt.signed else raw

            lane_w.append(field(rd_w, wb, wf))
            lane_v.append(field(rd_v, vb, vf))
            lane_wp.append(field(rd_p, wb, wf) if rd_p is not None else None)
            k = Signal(range(self.rows * P + P), name=f"k{p}")
            m.d.comb += k.eq(kbase + p)
            lane_k.append(k)

        # Lanes p >= always_valid hold padding in the last row.
        always_valid = self.weights - (self.rows - 1) * P
        pre = at["update"]
        fprod, bprod, new_w, new_v, sat = [], [], [], [], []
        off_carry = []  # lane p's row is base_row + p // N + carry (as of cycle 0)
        for p in range(P):
            k_valid = Signal(name=f"valid{p}")
            m.d.comb += k_valid.eq(lane_k[p] < self.weights)
            carry = Signal(name=f"carry{p}")
            m.d.comb += carry.eq(base_col >= N - p % N)
            off_carry.append((p // N, carry))
            unit = UpdateUnit(**self.update_args)
            m.submodules[f"lane{p}"] = unit
            d0 = p // N
            dz = Signal(shape_of(ef), name=f"lane_dz{p}")
            hi = dz_sr[d0 + 1] if d0 + 1 < n_out else Const(0, shape_of(ef))
            lo = dz_sr[d0] if d0 < n_out else Const(0, shape_of(ef))
            m.d.comb += dz.eq(Mux(carry, hi, lo))
            m.d.comb += [
                unit.dz.eq(later(dz, pre, f"dz{p}")),
                unit.x.eq(later(xg_ring[p % N], pre, f"xg{p}")),
                unit.w.eq(later(lane_w[p], pre, f"w{p}")),
                unit.v.eq(later(lane_v[p], pre, f"v{p}")),
            ]
            if self.has_w_prev:
                m.d.comb += unit.w_prev.eq(later(lane_wp[p], pre, f"wp{p}"))
            for point, stage_at in unit.random_stage.items():
                index = later(lane_k[p], pre + stage_at - self._words, f"k{p}")
                word = self._random(m, f"{point}{p}", point, step, index)
                m.d.comb += getattr(unit, f"random_{point}").eq(word)
            # Forward product on the predicted weight, registered: at["forward"]. The operands
            # are registered once more: the lane's hard multipliers may sit far from its unit.
            h = at["predicted"]
            f = Signal(signed(fwd_acc.width), name=f"fprod{p}")
            w_h = later(unit.w_hat, 1, f"w_hat{p}")
            x_h = later(x_ring[p % N], h + 1, f"x{p}")
            mul = self._multiplier
            # Invalid lanes give 0: the product register's own reset (not a mask before the sum).
            keep = later(k_valid, at["forward"] - 1, f"kv{p}")
            product = mul.product(m, w_h, x_h, f"forward{p}", keep=keep)
            m.d.comb += f.eq(product)
            fprod.append(f)
            if sends_error:  # backward product on the current weight, from the row register
                b = Signal(signed(bwd_acc.width), name=f"bprod{p}")
                w_b, dz_b = later(lane_w[p], 1, f"w{p}"), later(dz, 1, f"dz{p}")
                keep = later(k_valid, at["backward"] - 1, f"kv{p}")
                product = mul.product(m, w_b, dz_b, f"backward{p}", keep=keep)
                m.d.comb += b.eq(product)
                bprod.append(b)
            u = at["write"]
            if p < always_valid:
                new_w.append(unit.w_new)
                new_v.append(unit.v_new)
            else:
                kv = later(k_valid, u, f"kv{p}")
                new_w.append(Mux(kv, unit.w_new, later(lane_w[p], u, f"w{p}")))
                new_v.append(Mux(kv, unit.v_new, later(lane_v[p], u, f"v{p}")))
            sat.append((later(k_valid, u, f"kv{p}"), later(k_valid, h, f"kv{p}"), unit.saturated))

        # ---- row sums: lanes grouped by their row offset r = p // N + carry_p. The group sums
        # are registered (at["row_sum"]), then added to the running sum ``cur``.
        groups = self._groups
        fwd_at, sum_at = at["forward"], at["row_sum"]
        partial = []
        for r in range(groups):  # the group sums take self._sum_levels registered levels
            terms = []
            for p, (d0, carry) in enumerate(off_carry):
                if r in (d0, d0 + 1):
                    carry_f = later(carry, fwd_at, f"carry{p}")
                    terms.append(Mux(carry_f if d0 + 1 == r else ~carry_f, fprod[p], 0))
            shape = signed(fwd_acc.width)
            partial.append(pipelined_sum(m, terms, shape, self._sum_levels, f"partial{r}"))
        sums = []
        for r in range(groups):
            s = Signal(signed(fwd_acc.width), name=f"rowsum{r}")
            m.d.comb += s.eq(partial[r] + cur if r == 0 else partial[r])
            sums.append(s)
        # Rows finished by a row read: base_row .. base_row + adv - 1.
        adv_lo = P // N

        # wrap: a pass cycle moves base_col past the last column. It and the wrap after the next
        # advance are registers, loaded from tables over base_col (LOAD sets base_col to 0,
        # PASS advances it, other states keep it): no adder chain before their many loads.
        def advanced(col: int) -> int:
            return (col + P % N) % N

        def wraps(col: int) -> bool:
            return col + P % N >= N

        def table(f):
            return Const(sum(int(f(c)) << c for c in range(N)), N).bit_select(base_col, 1)

        wrap = Signal(name="wrap", init=int(wraps(0)))
        wrap_after = Signal(name="wrap_after", init=int(wraps(advanced(0))))
        m.d.sync += [
            wrap.eq(
                Mux(loading, wraps(0), Mux(pass_on, table(lambda c: wraps(advanced(c))), wrap))
            ),
            wrap_after.eq(
                Mux(
                    loading,
                    wraps(advanced(0)),
                    Mux(pass_on, table(lambda c: wraps(advanced(advanced(c)))), wrap_after),
                )
            ),
        ]
        wrap_s = later(wrap, sum_at, "wrap")
        base_row_s = later(base_row, sum_at, "base_row")
        adv = Signal(range(adv_lo + 2))
        m.d.comb += adv.eq(adv_lo + wrap_s)
        with m.If(valid(sum_at)):
            # The running sum of the row in progress: rows base_row + adv onwards.
            m.d.sync += cur.eq(
                Mux(
                    wrap_s,
                    sums[adv_lo + 1] if adv_lo + 1 < groups else 0,
                    sums[adv_lo] if adv_lo < groups else 0,
                )
            )

        # Rows finished are registered (at["round"]), rounded into a register, then written
        # to their z (at["activation"]): the rounded value reaches every z register.
        act = fm.activation
        round_at = at["round"]
        for r in range((N - 1 + P) // N):
            done = Signal(name=f"done{r}")
            m.d.sync += done.eq(valid(sum_at) & (r < adv) & (base_row_s + r < n_out))
            out_row = Signal(range(n_out + P // N + 2), name=f"done_row{r}", reset_less=True)
            m.d.sync += out_row.eq(base_row_s + r)
            total = Signal(signed(fwd_acc.width), name=f"total{r}", reset_less=True)
            m.d.sync += total.eq(sums[r])
            index = later(base_row, round_at - self._words, "base_row") + r
            rq = self._rounder(m, f"act{r}", fwd_acc, act, "activation", step, index)
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
                    m.d.sync += z_out[o].eq(y_reg)
            events["activation"].append(written & ~fwd_bubble & sat_reg)
        upd_on, pre_on = valid(at["write"]), valid(at["predicted"])
        for kv_u, kv_h, flags in sat:
            for point in ("gradient", "velocity", "weight"):
                events[point].append(upd_on & kv_u & ~err_bubble & getattr(flags, point))
            events["prediction"].append(pre_on & kv_h & ~fwd_bubble & flags.prediction)

        # ---- write-back, at["write"] cycles after the read (a row is not read again before
        # the next step, which starts after the drain)
        update = valid(at["write"]) & ~err_bubble
        row_u = later(row, at["write"], "row")
        m.d.comb += [
            wr_w.addr.eq(row_u),
            wr_w.data.eq(Cat(*[w.as_unsigned()[:wb] for w in new_w])),
            wr_w.en.eq(Mux(update, (1 << len(wr_w.en)) - 1, 0)),
            wr_v.addr.eq(row_u),
            wr_v.data.eq(Cat(*[v.as_unsigned()[:vb] for v in new_v])),
            wr_v.en.eq(Mux(update, (1 << len(wr_v.en)) - 1, 0)),
        ]
        if wr_p is not None:  # the weight before this update, at the read
            m.d.comb += [
                wr_p.addr.eq(row),
                wr_p.data.eq(rd_w.data),
                wr_p.en.eq(Mux(pass_on & ~err_bubble, (1 << len(wr_p.en)) - 1, 0)),
            ]
        # ---- the rings, dz, column sums and output payload: their enables are replicated
        # registers (rtl_gen.fanout.replicated), each reaching at most FANOUT registers.
        # The input vectors and dz load in LOAD, from payloads their producers hold until then;
        # their enables are `seen` two cycles later, through two levels of copies.
        ring_bits = 2 * N * xf.width
        load_en = replicated_tree(m, seen, ring_bits, "ring_load")
        # The cycle after next is a row-pass cycle: LOAD follows a take, PASS follows LOAD, and
        # PASS goes on while rows remain. The rotate and dz-shift enables reach a whole stage,
        # so they go through two levels of registers.
        going_pass_ahead = Signal()
        m.d.comb += going_pass_ahead.eq(take | (loading & (self.rows > 1)) | (pass_on & more_after))
        rotate_en = replicated_tree(m, going_pass_ahead, ring_bits, "ring_rotate")
        stashed = data.View(
            data.ArrayLayout(shape_of(xf), n_in), Cat(*[rd.data for *_, rd, _ in stash_slices])
        )
        # The stash is written in LOAD (the payload is still held), slot by slot.
        stash_we = replicated_tree(m, seen & ~fwd_is_bubble, len(stash_slices) * FANOUT, "stash_we")
        # The read and write slots, one copy per slice (a stash in LUT RAM: the address reaches
        # every cell).
        slot_r_next = Mux(finish, Mux(slot_r == depth - 1, 0, slot_r + 1), slot_r)
        slot_r_copies = replicated(
            m, slot_r_next, len(stash_slices) * FANOUT, "slot_r", init=1 % depth
        )
        slot_w_next = Mux(finish, Mux(slot_w == depth - 1, 0, slot_w + 1), slot_w)
        slot_w_copies = replicated(m, slot_w_next, len(stash_slices) * FANOUT, "slot_w")
        for n, (lo, hi, rd, wr) in enumerate(stash_slices):
            m.d.comb += [
                rd.addr.eq(slot_r_copies[n]),
                wr.addr.eq(slot_w_copies[n]),
                wr.data.eq(self.fwd_i.payload.x.as_value()[lo * xf.width : hi * xf.width]),
                wr.en.eq(stash_we[n * len(stash_we) // len(stash_slices)]),
            ]
        for j in range(N):
            c = j * len(load_en) // N
            src = (j + P) % N
            with m.If(load_en[c]):
                m.d.sync += [
                    x_ring[j].eq(self.fwd_i.payload.x[j] if j < n_in else one),
                    xg_ring[j].eq(stashed[j] if j < n_in else one),
                ]
            with m.Elif(rotate_en[c]):
                m.d.sync += [x_ring[j].eq(x_ring[src]), xg_ring[j].eq(xg_ring[src])]
        # dz shifts by the rows that advanced.
        dz_bits = n_out * ef.width
        dz_load = replicated_tree(m, seen, dz_bits, "dz_load")
        dz_shift = replicated_tree(m, going_pass_ahead, dz_bits, "dz_shift")

        # Next cycle's wrap, for the far-reaching copies: one mux behind registers.
        wrap_next = Mux(loading, wraps(0), Mux(pass_on, wrap_after, wrap))
        dz_wrap = replicated(m, wrap_next, dz_bits, "dz_wrap")
        for o in range(n_out):
            c = o * len(dz_load) // n_out
            keep = sm_rd.data[o] if self._relu else 1
            lo = dz_sr[o + adv_lo] if o + adv_lo < n_out else 0
            hi = dz_sr[o + adv_lo + 1] if o + adv_lo + 1 < n_out else 0
            with m.If(dz_load[c]):
                m.d.sync += dz_sr[o].eq(Mux(keep, self.err_i.payload.e[o], 0))
            with m.Elif(dz_shift[c]):
                m.d.sync += dz_sr[o].eq(Mux(dz_wrap[c], hi, lo))
        if sends_error:  # cleared in LOAD; a row's products arrive at["backward"] after its read
            column_bits = N * bwd_acc.width
            clear = replicated_tree(m, seen, column_bits, "columns_clear")
            add = replicated(m, valid(at["backward"] - 1), column_bits, "columns_add")
            for j in range(N):
                c = j * len(clear) // N
                src = (j + P) % N
                adds = [bprod[q] for q in range(P) if q % N == src]
                with m.If(clear[c]):
                    m.d.sync += bacc[j].eq(0)
                with m.Elif(add[c]):
                    m.d.sync += bacc[j].eq(sum(adds, bacc[src]))
        # The forward payload follows z while no token waits (final at the finish).
        fwd_bits = n_out * fm.activation.format.width + 1
        fwd_free = free_enables(m, self.fwd_o, finish, fwd_bits, "fwd_free")
        with m.If(fwd_free[0]):
            m.d.sync += [fwd_payload.bubble.eq(fwd_bubble), fwd_payload.label.eq(label)]
        for o in range(n_out):
            with m.If(fwd_free[o * len(fwd_free) // n_out]):
                m.d.sync += fwd_payload.x[o].eq(z_out[o])

        # ---- FSM
        with m.FSM(name="stage"):
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(~take)
                fwd_have = self.fwd_i.valid | (first & (not first_stage))
                err_have = self.err_i.valid | first
                # A token's valid holds until it is taken: seen in one cycle, taken in the next.
                m.d.comb += seen.eq(fwd_have & err_have & ~take)
                m.d.sync += take.eq(seen)
                with m.If(take):
                    m.d.comb += [
                        self.fwd_i.ready.eq(~first | first_stage),
                        self.err_i.ready.eq(~first),
                    ]
                    m.d.sync += [
                        fwd_bubble.eq(fwd_is_bubble),
                        err_bubble.eq(self.err_i.payload.bubble | first),
                        label.eq(self.fwd_i.payload.label),
                    ]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += loading.eq(1)
                m.d.sync += [
                    row.eq(0),
                    next_row.eq(1),
                    more_after.eq(2 < self.rows),
                    base_col.eq(0),
                    base_row.eq(0),
                    kbase.eq(0),
                    cur.eq(0),
                ]
                m.next = "PASS"
            with m.State("PASS"):
                m.d.comb += pass_on.eq(1)
                m.d.sync += [
                    base_col.eq(Mux(wrap, base_col + P % N - N, base_col + P % N)),
                    base_row.eq(base_row + adv_lo + wrap),
                    kbase.eq(kbase + P),
                    row.eq(row + 1),
                    next_row.eq(next_row + 1),
                    more_after.eq(next_row + 2 < self.rows),
                    drain.eq(0),
                ]
                with m.If(row == self.rows - 1):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == self.drain - 1):
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += [finish.eq(outputs_free), self.idle.eq(1)]
                with m.If(outputs_free):
                    m.d.sync += self.fwd_o.valid.eq(1)
                    if self._relu:
                        m.d.comb += [
                            sm_wr.addr.eq(slot_w),
                            sm_wr.data.eq(Cat(*[z != 0 for z in z_out])),
                            sm_wr.en.eq(~fwd_bubble),
                        ]
                    m.d.sync += [
                        step.eq(step + 1),
                        first.eq(0),
                        slot_w.eq(Mux(slot_w == depth - 1, 0, slot_w + 1)),
                        slot_r.eq(Mux(slot_r == depth - 1, 0, slot_r + 1)),
                    ]
                    m.next = "IDLE"

        # ---- backward error: round the column sums; after the pass column i sits at ring
        # position (i - rows * P) mod N
        if sends_error:
            shift = (self.rows * P) % N
            with m.If(finish):
                m.d.sync += self.err_o.valid.eq(1)
            # The payload follows the rounded column sums while no token waits (final at the
            # finish, when valid is set), so its enable is a register, replicated.
            err_bits = n_in * len(err_payload.e[0]) + 1
            err_free = free_enables(m, self.err_o, finish, err_bits, "err_free")
            with m.If(err_free[0]):
                m.d.sync += err_payload.bubble.eq(err_bubble)
            # The saturation flags are registered beside their rounders before they are counted
            # (the column sums sit all over the stage, far from the events' sum).
            err_counted = Signal(name="err_counted")
            m.d.sync += err_counted.eq(finish & ~err_bubble)
            for i in range(n_in):
                rq = self._rounder(m, f"err{i}", bwd_acc, self._error_out, "error", step, i)
                m.d.comb += rq.i.eq(bacc[(i - shift) % N])
                with m.If(err_free[i * len(err_free) // n_in]):
                    m.d.sync += err_payload.e[i].eq(rq.o)
                sat_i = Signal(name=f"err_sat{i}", reset_less=True)
                m.d.sync += sat_i.eq(rq.saturated)
                events["error"].append(err_counted & sat_i)

        # Events are counted a few cycles after they happen (a pipelined sum first).
        for role, flags in events.items():
            if flags:
                c = counts[COUNTER_ROLES.index(role)]
                shape = range(len(flags) + 1)
                levels = sum_levels(len(flags))
                events_sum = pipelined_sum(
                    m, flags, shape, levels, f"events_{role}", reset_less=False
                )
                m.d.sync += c.eq(c + events_sum)

        # ---- memory reads: the row pass, else the debug port. The address is a register (one
        # copy per memory), loaded a cycle ahead: row 0 for LOAD after a take, then row 1, then
        # each next row while rows remain; otherwise the debug address of the cycle before.
        rd_next = Signal(range(max(2, self.rows)))
        m.d.comb += rd_next.eq(self.dbg_addr)
        with m.If(take):
            m.d.comb += rd_next.eq(0)
        with m.If(loading & (self.rows > 1)):
            m.d.comb += rd_next.eq(1)
        with m.If(pass_on & more_after):
            m.d.comb += rd_next.eq(next_row + 1)
        ports = [rd_w, rd_v] + ([rd_p] if rd_p is not None else [])
        rd_addr = replicated(m, rd_next, len(ports) * FANOUT, "rd_addr")
        m.d.comb += [port.addr.eq(rd_addr[n]) for n, port in enumerate(ports)]
        if sm_rd is not None:
            m.d.comb += sm_rd.addr.eq(slot_r)
        dbg_row = Signal(self.row_bits, reset_less=True)  # registered: off the RAM's path
        m.d.comb += self.dbg_data.eq(dbg_row)
        with m.Switch(self.dbg_mem):
            for n, port in enumerate(ports):
                with m.Case(n):
                    m.d.sync += dbg_row.eq(port.data)
        return m
