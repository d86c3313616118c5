"""The network top: stages chained by streams, the loss unit, and the debug port.

Forward tokens flow from the ``samples`` stream through stages ``1..L`` into the loss unit; error
tokens flow from the loss unit back up to stage 1. Every stage takes one token of each kind per
step, so the network is a deterministic dataflow network: idle cycles and back-pressure change
when things happen, never the codes. At reset, stages ``2..L`` treat their first forward token
and every stage its first error token as bubbles (no sample has reached them yet). To drain the
pipeline, send ``2 * L - 1`` bubble samples (``bubble = 1``) after the last sample.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, Mux, ResetSignal, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.config import DelayLines
from pbhw.core.plan import Plan
from rtl_gen.counters import COUNTER_BITS, COUNTER_ROLES
from rtl_gen.fanout import replicated, selected
from rtl_gen.loss import LossUnit, result_token
from rtl_gen.memories import DebugMemory
from rtl_gen.stage import Stage
from rtl_gen.target import GENERIC, Multiplier
from rtl_gen.tokens import forward_token

__all__ = ["Network"]


#: Cycles from a debug request (dbg_stage, dbg_mem, dbg_addr) to its row on dbg_data: the
#: stage's address register, the memory read, the stage's register and the network's register.
#: The request must hold until its row is read: the stage and memory selects are registered.
DEBUG_LATENCY = 4


class Network(wiring.Component):
    """The PB training pipeline of ``plan`` with ``lanes[l]`` lanes in stage ``l + 1``.

    Parameters
    ----------
    plan : Plan
        The derived plan (fixed-point constants must be representable).
    lanes : sequence of int
        Lanes per stage.
    init : sequence of numpy.ndarray
        Initial weight codes per stage, ``[N_out, N_in (+1)]``.
    multiplier : Multiplier
        The device's hard multiplier (:class:`rtl_gen.target.Multiplier`), for every stage and
        the loss unit. Default: a generic 18 x 18 multiplier left to synthesis.

    The lanes' long delay lines are in block RAM when the config's ``hardware.delay_lines`` is
    ``"block_ram"``.

    Attributes
    ----------
    samples : In(stream of forward tokens of the input vector)
    results : Out(stream of result tokens), one per sample, in order.
    idle : Out(1)
        Every stage is between steps (the debug port reads only then).
    dbg_stage, dbg_mem, dbg_addr : In
        Which stage (0-based), memory (:class:`~rtl_gen.memories.DebugMemory`: 0 = W, 1 = V,
        2 = w_prev) and row to read.
    dbg_data : Out(max row bits)
        The row, :data:`DEBUG_LATENCY` cycles after the request (hold the request until then).
    saturation : Out(array of COUNTER_BITS)
        Counters, in the order of :meth:`counter_names`.
    """

    def __init__(self, *, plan: Plan, lanes, init, multiplier: Multiplier = GENERIC):
        if not isinstance(plan, Plan):
            raise TypeError(f"Plan must be a Plan, not {plan!r}")
        if not isinstance(multiplier, Multiplier):
            raise TypeError(f"Multiplier must be a Multiplier, not {multiplier!r}")
        lanes = tuple(lanes)
        if len(lanes) != len(plan.stages):
            raise ValueError(
                f"Lanes must give one value per stage ({len(plan.stages)}), not {lanes!r}"
            )
        cfg = plan.config
        classes = plan.stages[-1].n_out
        stages = []
        for i, st in enumerate(plan.stages):
            x_role = plan.stages[max(i - 1, 0)].formats.activation
            error_out = plan.stages[i - 1].formats.error if i else None
            stages.append(
                Stage(
                    plan=st,
                    x_role=x_role,
                    error_out=error_out,
                    classes=classes,
                    bias=cfg.network.bias,
                    prediction=cfg.optimizer.weight_prediction,
                    seed=cfg.seed,
                    lanes=lanes[i],
                    init=np.asarray(init[i]),
                    multiplier=multiplier,
                    delay_ram=cfg.hardware.delay_lines is DelayLines.BLOCK_RAM,
                )
            )
        last = plan.stages[-1]
        self._plan = plan
        self._multiplier = multiplier
        self._stages = stages
        self._loss = LossUnit(
            kind=cfg.network.loss,
            y_role=last.formats.activation,
            error_role=last.formats.error,
            classes=classes,
            stage=last.index,
            seed=cfg.seed,
            multiplier=multiplier,
        )
        first = plan.stages[0]
        super().__init__(
            {
                "samples": In(
                    stream.Signature(
                        forward_token(first.n_in, first.formats.activation.format, classes)
                    )
                ),
                "results": Out(
                    stream.Signature(
                        result_token(
                            classes, last.formats.activation.format, last.formats.error.format
                        )
                    )
                ),
                "idle": Out(1),
                "dbg_stage": In(range(max(2, len(stages)))),
                "dbg_mem": In(DebugMemory),
                "dbg_addr": In(max(1, max(s.rows for s in stages) - 1).bit_length()),
                "dbg_data": Out(max(s.row_bits for s in stages)),
                "saturation": Out(data.ArrayLayout(COUNTER_BITS, len(self.counter_names()))),
            }
        )

    def discard(self) -> None:
        """Mark the network's components as deliberately not elaborated (a use that only reads
        their properties), so that Amaranth does not warn about them."""
        for component in [self, self._loss, *self._stages]:
            component._MustUse__silence = True

    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def multiplier(self) -> Multiplier:
        return self._multiplier

    @property
    def stages(self) -> list[Stage]:
        return list(self._stages)

    @property
    def loss_unit(self) -> LossUnit:
        return self._loss

    def counter_names(self) -> list[str]:
        """Names of the saturation counters, as the golden model keys them."""
        names = [f"stage {s.plan.index} {role}" for s in self._stages for role in COUNTER_ROLES]
        return names + [f"stage {len(self._stages)} loss"]

    @property
    def quiet_cycles(self) -> int:
        """Idle cycles after which every counter holds every event: the loss unit's latency,
        the slowest counter's lag, and a margin."""
        return self._loss.latency + max(s.counter_lag for s in self._stages) + 8

    @property
    def predicted_cycles_per_sample(self) -> int:
        """Steady-state cycles per step: the slowest stage (the last one's loop includes the
        loss unit)."""
        per_stage = [s.cycles_per_step for s in self._stages]
        per_stage[-1] += self._loss.latency
        return max(per_stage)

    def elaborate(self, platform):
        m = Module()
        # The reset is registered once per part (each stage, the loss unit, the input register
        # and debug port): one copy per part, kept distinct through synthesis like the
        # replicated enables, each reaching only its part's control registers. Every part
        # sees the same one-cycle-late reset, and the input is not ready meanwhile.
        parts = [f"stage{i + 1}" for i in range(len(self._stages))] + ["loss", "io"]
        resets = {}
        for k, part in enumerate(parts):
            never = Signal(name=f"{part}_rst_never", reset_less=True)
            m.d.sync += never.eq(never & self.dbg_addr[k % len(self.dbg_addr)])
            rst = Signal(name=f"{part}_rst", init=1, reset_less=True)
            m.d.sync += rst.eq(ResetSignal("sync") & ~never)
            domain = ClockDomain(f"{part}_sync", local=True)
            m.domains += domain
            m.d.comb += [domain.clk.eq(ClockSignal("sync")), domain.rst.eq(rst)]
            resets[part] = rst
        for i, stage in enumerate(self._stages):
            m.submodules[f"stage{i + 1}"] = DomainRenamer({"sync": f"stage{i + 1}_sync"})(stage)
        m.submodules.loss = DomainRenamer({"sync": "loss_sync"})(self._loss)
        io = Module()
        m.submodules.io = DomainRenamer({"sync": "io_sync"})(io)
        stages = self._stages
        # The sample stream enters through a register, so stage 1 reads a payload that holds
        # until the cycle after it is taken, like every other stage's input.
        first = stages[0].fwd_i
        full = Signal()
        held = Signal(self.samples.payload.shape(), reset_less=True)
        m.d.comb += [
            self.samples.ready.eq(~full & ~resets["io"]),
            first.valid.eq(full),
            first.payload.eq(held),
        ]
        full_next = Mux(full, ~first.ready, self.samples.valid & ~resets["io"])
        io.d.sync += full.eq(full_next)
        empty = replicated(io, ~full_next, len(held.as_value()), "sample_empty", init=1)
        for n, bit in enumerate(held.as_value()):
            with io.If(empty[n * len(empty) // len(held.as_value())]):
                io.d.sync += bit.eq(self.samples.payload.as_value()[n])
        for a, b in zip(stages, stages[1:], strict=False):
            wiring.connect(m, a.fwd_o, b.fwd_i)
            wiring.connect(m, b.err_o, a.err_i)
        wiring.connect(m, stages[-1].fwd_o, self._loss.fwd_i)
        wiring.connect(m, self._loss.err_o, stages[-1].err_i)
        wiring.connect(m, self._loss.result, wiring.flipped(self.results))

        idle = Signal(init=1)
        for s in stages:
            idle = idle & s.idle
        m.d.comb += self.idle.eq(idle)
        n = 0
        for s in stages:
            m.d.comb += [s.dbg_addr.eq(self.dbg_addr), s.dbg_mem.eq(self.dbg_mem)]
            for r in range(len(COUNTER_ROLES)):
                m.d.comb += self.saturation[n].eq(s.saturation[r])
                n += 1
        m.d.comb += self.saturation[n].eq(self._loss.saturation)
        # The stage select, like each stage's memory select, is a registered decode near the
        # bits it selects, not a net from the port to every bit of every stage's row.
        dbg = Signal(len(self.dbg_data), reset_less=True)
        m.d.comb += self.dbg_data.eq(dbg)
        choices = [(s.dbg_data, self.dbg_stage == i) for i, s in enumerate(stages)]
        io.d.sync += dbg.eq(selected(io, choices, "dbg_stage"))
        return m
