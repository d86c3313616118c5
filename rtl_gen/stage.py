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

:class:`Stage` composes these components, each with its own signature and latency:

* :class:`~rtl_gen.sequencer.Sequencer`: the FSM of a step, the position of the row pass, the
  next read address;
* :class:`~rtl_gen.memories.RowMemories`: W, V (and w_prev), read a row per cycle, written
  back, read by the debug port (:class:`~rtl_gen.memories.DebugMemory`);
* :class:`~rtl_gen.memories.InputStash`: the inputs (and ReLU masks) of the last ``D + 1``
  steps;
* :class:`~rtl_gen.operands.OperandRings`: the input rings and the ``dz`` shift register;
* :class:`~rtl_gen.lane.Lane` (``P`` of them): update, forward and backward products, the
  values written back;
* :class:`~rtl_gen.sums.RowSums` and :class:`~rtl_gen.sums.ColumnSums`: the products summed
  by row and by column, rounded, and offered as the forward and the error token;
* :class:`~rtl_gen.counters.SaturationCounters`.

Every part of the lane pipeline takes what it needs as of cycle 0, the cycle a row arrives from
memory, and delays it itself (:class:`~rtl_gen.pipeline.Delays`); :attr:`Stage.pipeline` gives
the cycle at which each acts.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from amaranth.hdl import Cat, Fragment, Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.config import RoleFormat, WeightPrediction
from pbhw.core.datapath import (
    StageDatapath,
    stage_datapath,
    update_timing,
)
from pbhw.core.figures import stash_bits
from pbhw.core.fixed import Rounding
from pbhw.core.manifest import DelayMemory
from pbhw.core.plan import StagePlan
from rtl_gen.counters import COUNTER_BITS, COUNTER_ROLES, SaturationCounters
from rtl_gen.lane import Lane, lane_cycles
from rtl_gen.memories import DebugMemory, InputStash, RowMemories
from rtl_gen.operands import OperandRings
from rtl_gen.pipeline import RAM_DEPTH, Delays, sum_levels
from rtl_gen.products import LATENCY as PRODUCT_LATENCY
from rtl_gen.rounding import RandomKey
from rtl_gen.sequencer import Sequencer
from rtl_gen.sums import ERROR_LAG, ColumnSums, RowSums
from rtl_gen.target import GENERIC, Multiplier
from rtl_gen.threefry import pipelined_latency
from rtl_gen.tokens import error_token, forward_token, label_bits
from rtl_gen.update import check_shift_constants

__all__ = [
    "COUNTER_BITS",
    "COUNTER_ROLES",
    "OVERHEAD",
    "DebugMemory",
    "Stage",
    "error_token",
    "forward_token",
    "label_bits",
]

#: Cycles a step takes beyond its row pass (see both tokens, take them, read the stash, hand
#: over).
OVERHEAD = 4


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
    delay_ram : bool
        The lanes' long delay lines in block RAM (``hardware.delay_lines = "block_ram"``;
        :attr:`delay_memories`). Default: registers.

    Attributes
    ----------
    fwd_i : In(stream of forward tokens of N_in codes)
    fwd_o : Out(stream of forward tokens of N_out codes)
    err_i : In(stream of error tokens of N_out codes)
    err_o : Out(stream of error tokens of N_in codes); absent for stage 1.
    idle : Out(1)
        Not in a row pass (waiting for tokens, or for its outputs to be taken); the debug
        port reads only then.
    dbg_addr : In(range(rows)), dbg_mem : In(DebugMemory)
        Debug read of row ``dbg_addr`` of memory ``dbg_mem``.
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
        delay_ram: bool = False,
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
        self._key = RandomKey(seed=seed, stage=plan.index)
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
            delay_ram=delay_ram,
        )
        # Every width, shift and product of the stage; a bad width or constant fails here.
        self._datapath = stage_datapath(
            plan,
            x_format=x_role.format,
            bias=bias,
            prediction=prediction,
            multiplier_ports=multiplier.ports,
            constants=multiplier.constants,
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
            "dbg_mem": In(DebugMemory),
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
        (column sums), ``write_v`` (V written back), ``write`` (W written back), ``drain``."""
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
        timing = update_timing(update, self._datapath.constants)
        pre = max([words - timing.pipeline[p] for p in update.stochastic_points] + [1])
        # operand register, forward product, group sums, row sum: the activation rounds that
        # long after w_hat
        tail = 1 + PRODUCT_LATENCY + self._sum_levels + 1
        if act_stochastic:
            pre = max(pre, words - timing.prediction_latency - tail)
        lane = lane_cycles(pre, timing)
        at = {key: lane[key] for key in ("update", "predicted", "forward")}
        at["row_sum"] = at["forward"] + self._sum_levels  # RowSums
        at["round"] = at["row_sum"] + 1
        at["activation"] = at["round"] + 1
        at["backward"] = lane["backward"]
        at["write"] = lane["write"]
        at["write_v"] = lane["write_v"]
        # the column sums are final ERROR_LAG cycles before the finish, and so are their words
        at["drain"] = max(at["activation"], at["write"], at["backward"] + ERROR_LAG)
        if err_stochastic:  # the error words (of the step counter) settle during the step
            at["drain"] = max(at["drain"], words + ERROR_LAG)
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
        stash = stash_bits(self._plan, self._x_role.format.width)
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

    def elaborate(self, platform):
        m = Module()
        seq, mem, stash, ops, rows, cols = self._parts(m)
        self._connect(m, seq, mem, stash, ops, rows, cols)
        lanes = self._lanes_of(m, seq, mem, ops, rows, cols)
        # The valid bit of the row read at cycle 0, as it rides along the lane pipeline.
        control = Delays(m, reset_less=False)

        def valid(n):
            return control(seq.pass_on, n, "row_valid")

        self._write_back(m, seq, mem, lanes, valid)
        self._count(m, seq, rows, cols, lanes, valid)
        return m

    def _parts(self, m: Module):
        """The stage's components (``cols`` is None in stage 1, which sends no error)."""
        plan, fm, at = self._plan, self._plan.formats, self._at
        P, N, key = self._lanes, self._cols, self._key
        xf = self._x_role.format
        m.submodules.control = seq = Sequencer(
            rows=self.rows,
            lanes=P,
            cols=N,
            n_out=plan.n_out,
            drain=self.drain,
            first_stage=plan.index == 1,
            label_bits=label_bits(self._classes),
        )
        m.submodules.memories = mem = RowMemories(
            lanes=P,
            rows=self.rows,
            weight=fm.weight.format,
            velocity=fm.velocity.format,
            w_prev=self.has_w_prev,
            init=self.memory_init(),
        )
        m.submodules.stash = stash = InputStash(
            n_in=plan.n_in,
            x_format=xf,
            depth=plan.stash_depth,
            mask=plan.n_out if self._relu else 0,
        )
        m.submodules.operands = ops = OperandRings(
            n_in=plan.n_in,
            n_out=plan.n_out,
            cols=N,
            lanes=P,
            late=at["predicted"],
            x_format=xf,
            error_format=fm.error.format,
            mask=self._relu,
        )
        m.submodules.rows = rows = RowSums(
            lanes=P,
            cols=N,
            n_out=plan.n_out,
            accumulator=self._datapath.forward,
            activation=fm.activation,
            relu=self._relu,
            classes=self._classes,
            forward=at["forward"],
            levels=self._sum_levels,
            key=key,
        )
        cols = None
        if self._error_out is not None:
            m.submodules.columns = cols = ColumnSums(
                lanes=P,
                cols=N,
                n_in=plan.n_in,
                rows=self.rows,
                accumulator=self._datapath.backward,
                error=self._error_out,
                backward=at["backward"],
                key=key,
            )
        return seq, mem, stash, ops, rows, cols

    def _connect(self, m: Module, seq, mem, stash, ops, rows, cols) -> None:
        """The stage's ports, and the parts to the control and to each other."""
        fwd_i, err_i = self.fwd_i, self.err_i
        outputs_free = ~self.fwd_o.valid
        wiring.connect(m, rows.fwd_o, wiring.flipped(self.fwd_o))
        if cols is not None:
            wiring.connect(m, cols.err_o, wiring.flipped(self.err_o))
            outputs_free &= ~self.err_o.valid
            m.d.comb += [
                cols.valid.eq(seq.pass_on),
                cols.clear_ahead.eq(seq.seen),
                cols.step.eq(seq.step),
                cols.bubble.eq(seq.err_bubble),
                cols.finish.eq(seq.finish),
            ]
        m.d.comb += [
            seq.fwd_i_valid.eq(fwd_i.valid),
            seq.fwd_i_bubble.eq(fwd_i.payload.bubble),
            seq.fwd_i_label.eq(fwd_i.payload.label),
            fwd_i.ready.eq(seq.fwd_i_ready),
            seq.err_i_valid.eq(err_i.valid),
            seq.err_i_bubble.eq(err_i.payload.bubble),
            err_i.ready.eq(seq.err_i_ready),
            seq.outputs_free.eq(outputs_free),
            seq.dbg_addr.eq(self.dbg_addr),
            self.idle.eq(seq.idle),
            self.step.eq(seq.step),
            mem.addr.eq(seq.read_addr),
            mem.dbg_mem.eq(self.dbg_mem),
            self.dbg_data.eq(mem.dbg_data),
            # The stash is written in LOAD (the payload is still held), unless a bubble.
            stash.x.eq(fwd_i.payload.x),
            stash.write_ahead.eq(seq.seen & ~seq.fwd_i_is_bubble),
            stash.advance.eq(seq.finish),
            # The vectors load in LOAD, from payloads their producers hold until then.
            ops.x.eq(fwd_i.payload.x),
            ops.x_stashed.eq(stash.x_stashed),
            ops.e.eq(err_i.payload.e),
            ops.load_ahead.eq(seq.seen),
            ops.move_ahead.eq(seq.moving_ahead),
            ops.wrap_next.eq(seq.wrap_next),
            ops.carry.eq(seq.carry),
            rows.valid.eq(seq.pass_on),
            rows.wrap.eq(seq.wrap),
            rows.base_row.eq(seq.base_row),
            rows.start.eq(seq.loading),
            rows.step.eq(seq.step),
            rows.bubble.eq(seq.fwd_bubble),
            rows.label.eq(seq.label),
            rows.finish.eq(seq.finish),
        ]
        if self._relu:  # the mask of the outputs, stashed at the finish
            m.d.comb += [
                ops.mask.eq(stash.mask_stashed),
                stash.mask.eq(Cat(*[rows.z[o] != 0 for o in range(self._plan.n_out)])),
                stash.mask_write.eq(seq.finish & ~seq.fwd_bubble),
            ]

    @property
    def always_valid_lanes(self) -> int:
        """Lanes that never hold padding: lanes ``p >= always_valid_lanes`` pad the last row."""
        return self.weights - (self.rows - 1) * self._lanes

    def _lane(self, *, padded: bool, straddles: bool = False) -> Lane:
        return Lane(
            update=self.update_args,
            multiplier=self._multiplier,
            forward=self._datapath.forward,
            backward=self._datapath.backward if self._error_out is not None else None,
            weights=self.weights,
            padded=padded,
            wait=self._at["update"],
            key=self._key,
            k_max=self.rows * self._lanes + self._lanes,
            straddles=straddles,
        )

    @functools.cached_property
    def _lane_memories(self) -> dict[bool, list[tuple[int, int]]]:
        out = {}
        for padded in (False, True):
            lane = self._lane(padded=padded)
            Fragment.get(lane, None)  # elaborated standalone, only to read its delay lines
            out[padded] = lane.delay_memories
        return out

    @property
    def delay_memories(self) -> tuple[DelayMemory, ...]:
        """The block RAMs of the stage's lanes' delay lines (:class:`~rtl_gen.pipeline.Delays`
        with ``ram=True``), one entry per width and delay: each lane's, and the padded lanes'
        (which keep ``w`` and ``v`` until the write). None with registers (no lane is
        elaborated to find that out)."""
        if not self.update_args["delay_ram"]:
            return ()
        counts: dict[tuple[int, int], int] = {}
        valid = self.always_valid_lanes
        for padded, lanes in ((False, valid), (True, self._lanes - valid)):
            for memory in self._lane_memories[padded] if lanes else ():
                counts[memory] = counts.get(memory, 0) + lanes
        return tuple(
            DelayMemory(width=width, depth=RAM_DEPTH, cycles=cycles, count=count)
            for (width, cycles), count in sorted(counts.items())
        )

    def _lanes_of(self, m: Module, seq, mem, ops, rows, cols) -> list[Lane]:
        """The lanes, fed from the row read and the rings; their products to the sums."""
        P = self._lanes
        lanes = []
        for p in range(P):
            straddles = rows.straddles(p)
            lane = self._lane(padded=p >= self.always_valid_lanes, straddles=straddles)
            m.submodules[f"lane{p}"] = lane
            m.d.comb += [
                lane.w.eq(mem.w[p]),
                lane.v.eq(mem.v[p]),
                lane.x.eq(ops.lane_x[p]),
                lane.x_stashed.eq(ops.lane_x_stashed[p]),
                lane.dz.eq(ops.lane_dz[p]),
                lane.k.eq(seq.kbase + p),
                lane.step.eq(seq.step),
                rows.products[p].eq(lane.forward),
            ]
            if straddles:
                m.d.comb += [
                    lane.carry.eq(seq.carry[p]),
                    rows.products_next[p].eq(lane.forward_next),
                ]
            if self.has_w_prev:
                m.d.comb += lane.w_prev.eq(mem.w_prev[p])
            if cols is not None:
                m.d.comb += cols.products[p].eq(lane.backward)
            lanes.append(lane)
        return lanes

    def _write_back(self, m: Module, seq, mem, lanes, valid) -> None:
        """V written back at ``write_v`` and W at ``write`` cycles after the read (a row is not
        read again before the next step, which starts after the drain); w_prev copied at the
        read."""
        write, write_v = self._at["write"], self._at["write_v"]
        row = Delays(m)
        m.d.comb += [
            mem.write_addr.eq(row(seq.row, write, "row")),
            mem.write_en.eq(valid(write) & ~seq.err_bubble),
            mem.v_write_addr.eq(row(seq.row, write_v, "row")),
            mem.v_write_en.eq(valid(write_v) & ~seq.err_bubble),
        ]
        for p, lane in enumerate(lanes):
            m.d.comb += [mem.w_new[p].eq(lane.w_new), mem.v_new[p].eq(lane.v_new)]
        if self.has_w_prev:
            m.d.comb += [
                mem.copy_addr.eq(seq.row),
                mem.copy_en.eq(seq.pass_on & ~seq.err_bubble),
            ]

    def _count(self, m: Module, seq, rows, cols, lanes, valid) -> None:
        """The saturation counters: the events of the rows, the columns and the lanes (not
        of bubbles, nor of padding)."""
        P = self._lanes
        events = {role: P for role in ("gradient", "velocity", "weight", "prediction")}
        events["activation"] = len(rows.saturated)
        events["error"] = len(cols.saturated) if cols is not None else 0
        m.submodules.counters = counters = SaturationCounters(events=events)
        m.d.comb += [
            counters.activation.eq(rows.saturated),
            self.saturation.eq(counters.counts),
        ]
        if cols is not None:
            m.d.comb += counters.error.eq(cols.saturated)
        update_on = valid(self._at["write"]) & ~seq.err_bubble
        predict_on = valid(self._at["predicted"]) & ~seq.fwd_bubble
        for p, lane in enumerate(lanes):
            for point in ("gradient", "velocity", "weight"):
                m.d.comb += getattr(counters, point)[p].eq(update_on & lane.saturated[point])
            m.d.comb += counters.prediction[p].eq(predict_on & lane.saturated.prediction)
