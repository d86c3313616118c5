"""The memories of a stage: the weight rows (W, V, w_prev) and the stash of its inputs."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from pbhw.core.fixed import FixedFormat
from rtl_gen.fanout import FANOUT, replicated, replicated_tree, selected
from rtl_gen.requantizer import shape_of

__all__ = ["DebugMemory", "InputStash", "RowMemories"]


class DebugMemory(enum.Enum, shape=2):
    """The memory of a stage the debug port reads."""

    #: The weights.
    W = 0
    #: The velocities.
    V = 1
    #: The weights before the last update (weight-difference prediction only).
    W_PREV = 2


def _count(name: str, value, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise TypeError(f"{name} must be an integer of at least {low}, not {value!r}")
    return value


class RowMemories(wiring.Component):
    """The weight rows of a stage: W, V and, for the weight-difference prediction, w_prev, each
    ``rows`` rows of ``lanes`` codes (lane ``p`` at bits ``[p * width, (p + 1) * width)``).

    Latency: a row is on ``w``, ``v`` and ``w_prev`` 2 cycles after its address is on ``addr``
    (the address is a register, one copy per memory; then the synchronous read), and on
    ``dbg_data`` a cycle later (a register, off the RAM's path), read from the memory
    ``dbg_mem`` names from the address's cycle on (its decode is registered). A write takes
    effect at the end of its cycle; no read sees it in the same cycle.

    Parameters
    ----------
    lanes, rows : int
        Codes per row, and rows.
    weight, velocity : FixedFormat
        Formats of the codes.
    w_prev : bool
        Whether there is a w_prev memory.
    init : dict of str to list of int
        Packed rows of each memory's init contents (``"w"``, ``"v"``, ``"w_prev"``).

    Attributes
    ----------
    addr : In(range(max(2, rows)))
        The row to read (into the address registers).
    w, v, w_prev : Out(ArrayLayout(code shape, lanes))
        The row read (``w_prev`` only with ``w_prev``).
    write_addr, write_en : In
        The row W is written at, and whether it is.
    v_write_addr, v_write_en : In
        The same for V (a stage writes V back earlier than W).
    w_new, v_new : In(ArrayLayout(code shape, lanes))
        The rows written.
    copy_addr, copy_en : In
        Only with ``w_prev``: the row into which the row of W on ``w`` is copied, and whether
        it is (the weight before its update).
    dbg_mem : In(DebugMemory)
        The memory ``dbg_data`` reads.
    dbg_data : Out(lanes * max(weight width, velocity width))
        Its row, read at ``addr``.
    """

    def __init__(
        self,
        *,
        lanes: int,
        rows: int,
        weight: FixedFormat,
        velocity: FixedFormat,
        w_prev: bool,
        init: dict[str, list[int]],
    ):
        self._lanes = _count("Lanes", lanes)
        self._rows = _count("Rows", rows)
        for name, fmt in (("Weight", weight), ("Velocity", velocity)):
            if not isinstance(fmt, FixedFormat):
                raise TypeError(f"{name} must be a FixedFormat, not {fmt!r}")
        self._weight, self._velocity = weight, velocity
        self._w_prev = bool(w_prev)
        needed = {"w", "v"} | ({"w_prev"} if w_prev else set())
        if not isinstance(init, dict) or not needed <= set(init):
            raise ValueError(f"Init must give the rows of {sorted(needed)}, not {init!r}")
        self._init = init
        ws = data.ArrayLayout(shape_of(weight), lanes)
        members = {
            "addr": In(range(max(2, rows))),
            "w": Out(ws),
            "v": Out(data.ArrayLayout(shape_of(velocity), lanes)),
            "write_addr": In(range(rows + 1)),
            "write_en": In(1),
            "v_write_addr": In(range(rows + 1)),
            "v_write_en": In(1),
            "w_new": In(ws),
            "v_new": In(data.ArrayLayout(shape_of(velocity), lanes)),
            "dbg_mem": In(DebugMemory),
            "dbg_data": Out(lanes * max(weight.width, velocity.width)),
        }
        if w_prev:
            members.update({"w_prev": Out(ws), "copy_addr": In(range(rows + 1)), "copy_en": In(1)})
        super().__init__(members)

    @property
    def has_w_prev(self) -> bool:
        return self._w_prev

    def elaborate(self, platform):
        m = Module()
        P, rows, init = self._lanes, self._rows, self._init
        wb, vb = self._weight.width, self._velocity.width
        mem_w = Memory(shape=unsigned(P * wb), depth=rows, init=init["w"])
        mem_v = Memory(shape=unsigned(P * vb), depth=rows, init=init["v"])
        m.submodules.mem_w, m.submodules.mem_v = mem_w, mem_v
        rd_w, wr_w = mem_w.read_port(transparent_for=()), mem_w.write_port()
        rd_v, wr_v = mem_v.read_port(transparent_for=()), mem_v.write_port()
        reads = {DebugMemory.W: rd_w, DebugMemory.V: rd_v}
        m.d.comb += [
            self.w.eq(rd_w.data),
            self.v.eq(rd_v.data),
            wr_w.addr.eq(self.write_addr),
            wr_w.data.eq(self.w_new),
            wr_w.en.eq(self.write_en),
            wr_v.addr.eq(self.v_write_addr),
            wr_v.data.eq(self.v_new),
            wr_v.en.eq(self.v_write_en),
        ]
        if self._w_prev:
            mem_p = Memory(shape=unsigned(P * wb), depth=rows, init=init["w_prev"])
            m.submodules.mem_p = mem_p
            rd_p, wr_p = mem_p.read_port(transparent_for=()), mem_p.write_port()
            reads[DebugMemory.W_PREV] = rd_p
            m.d.comb += [
                self.w_prev.eq(rd_p.data),
                wr_p.addr.eq(self.copy_addr),
                wr_p.data.eq(rd_w.data),
                wr_p.en.eq(self.copy_en),
            ]
        # One address register per memory, each near its RAM.
        copies = replicated(m, self.addr, len(reads) * FANOUT, "rd_addr")
        m.d.comb += [port.addr.eq(copies[n]) for n, port in enumerate(reads.values())]
        # The debug row: dbg_mem reaches only registered copies of its decode, near the bits
        # they select (it holds from the address's cycle on).
        dbg_row = Signal(len(self.dbg_data), reset_less=True)
        m.d.comb += self.dbg_data.eq(dbg_row)
        choices = [(port.data, self.dbg_mem == memory) for memory, port in reads.items()]
        m.d.sync += dbg_row.eq(selected(m, choices, "dbg_mem"))
        return m


class InputStash(wiring.Component):
    """The inputs of the last ``depth`` steps (and, for ReLU, their output masks), one slot per
    step: the update of step ``t`` reads the input of step ``t - depth + 1``.

    The input memory is cut into slices of at most :data:`~rtl_gen.fanout.FANOUT` bits, each with
    its own write enable and its own copies of the read and write slots (a replicated register:
    in LUT RAM the address reaches every cell).

    Latency: ``x`` is written into the write slot 2 cycles after ``write_ahead`` (two levels of
    enable copies); the slots advance at ``advance`` (their copies a cycle later);
    ``x_stashed`` is the vector in the read slot, read synchronously from the slot's copy. The
    mask is written in the cycle of ``mask_write``, and ``mask_stashed`` is read synchronously
    from the read slot itself.

    Parameters
    ----------
    n_in : int
        Codes per input vector.
    x_format : FixedFormat
        Their format.
    depth : int
        Slots (the stage's delay plus one).
    mask : int
        Bits per output mask (the stage's outputs with ReLU), or 0 for no mask stash.

    Attributes
    ----------
    x : In(ArrayLayout(code shape, n_in))
        The vector to write.
    write_ahead : In(1)
        Write ``x`` two cycles later.
    advance : In(1)
        Both slots move on to the next.
    x_stashed : Out(ArrayLayout(code shape, n_in))
        The vector in the read slot.
    mask, mask_write, mask_stashed : In(mask), In(1), Out(mask)
        Only with ``mask``: the mask to write, its write enable, and the read slot's mask.
    """

    def __init__(self, *, n_in: int, x_format: FixedFormat, depth: int, mask: int = 0):
        self._n_in = _count("N_in", n_in)
        if not isinstance(x_format, FixedFormat):
            raise TypeError(f"X_format must be a FixedFormat, not {x_format!r}")
        self._x_format = x_format
        self._depth = _count("Depth", depth)
        self._mask = _count("Mask", mask, 0)
        vector = data.ArrayLayout(shape_of(x_format), n_in)
        members = {
            "x": In(vector),
            "write_ahead": In(1),
            "advance": In(1),
            "x_stashed": Out(vector),
        }
        if mask:
            members.update({"mask": In(mask), "mask_write": In(1), "mask_stashed": Out(mask)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        width, n_in, depth = self._x_format.width, self._n_in, self._depth
        per_slice = max(1, FANOUT // width)
        slices = []
        for lo in range(0, n_in, per_slice):
            hi = min(n_in, lo + per_slice)
            mem = Memory(shape=unsigned((hi - lo) * width), depth=depth, init=[])
            m.submodules[f"stash_x{lo}"] = mem
            slices.append((lo, hi, mem.read_port(transparent_for=()), mem.write_port()))
        slot_w = Signal(range(depth))
        slot_r = Signal(range(depth), init=1 % depth)
        with m.If(self.advance):
            m.d.sync += [slot_w.eq(self._after(slot_w)), slot_r.eq(self._after(slot_r))]
        loads = len(slices) * FANOUT
        write_en = replicated_tree(m, self.write_ahead, loads, "stash_we")
        slot_r_next = Mux(self.advance, self._after(slot_r), slot_r)
        slot_r_copies = replicated(m, slot_r_next, loads, "slot_r", init=1 % depth)
        slot_w_next = Mux(self.advance, self._after(slot_w), slot_w)
        slot_w_copies = replicated(m, slot_w_next, loads, "slot_w")
        x = self.x.as_value()
        for n, (lo, hi, rd, wr) in enumerate(slices):
            m.d.comb += [
                rd.addr.eq(slot_r_copies[n]),
                wr.addr.eq(slot_w_copies[n]),
                wr.data.eq(x[lo * width : hi * width]),
                wr.en.eq(write_en[n * len(write_en) // len(slices)]),
            ]
        m.d.comb += self.x_stashed.eq(Cat(*[rd.data for *_, rd, _ in slices]))
        if self._mask:
            stash_m = Memory(shape=unsigned(self._mask), depth=depth, init=[])
            m.submodules.stash_m = stash_m
            rd, wr = stash_m.read_port(transparent_for=()), stash_m.write_port()
            m.d.comb += [
                rd.addr.eq(slot_r),
                self.mask_stashed.eq(rd.data),
                wr.addr.eq(slot_w),
                wr.data.eq(self.mask),
                wr.en.eq(self.mask_write),
            ]
        return m

    def _after(self, slot: Signal):
        return Mux(slot == self._depth - 1, 0, slot + 1)
