"""The components a stage is built from, each on its own (the whole stage is checked bit for bit
in tests/test_rtl_network.py)."""

import pytest
import torch
from amaranth.hdl import Module
from amaranth.sim import Simulator
from pbhw_testing import raises_in_init

from pbhw.core.config import RoleFormat
from pbhw.core.datapath import Accumulator
from pbhw.core.fixed import FixedFormat, Overflow, Rounding, requantize
from rtl_gen.counters import COUNTER_ROLES, SaturationCounters
from rtl_gen.memories import DebugMemory, InputStash, RowMemories
from rtl_gen.operands import OperandRings
from rtl_gen.pipeline import sum_levels
from rtl_gen.rounding import RandomKey
from rtl_gen.sequencer import Sequencer
from rtl_gen.sums import ERROR_LAG, ColumnSums

X = FixedFormat(8, 4)


def run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def test_debug_memory_codes_are_those_of_the_manifest():
    assert [(m.name, m.value) for m in DebugMemory] == [("W", 0), ("V", 1), ("W_PREV", 2)]


def test_row_memories_read_two_cycles_after_the_address_and_debug_one_more():
    w, v = FixedFormat(8, 6), FixedFormat(10, 6)
    init = {"w": [0x0102, 0x0304, 0x0506], "v": [0x0007, 0x0008, 0x0009]}
    dut = RowMemories(lanes=2, rows=3, weight=w, velocity=v, w_prev=False, init=init)
    seen = []

    async def testbench(ctx):
        ctx.set(dut.dbg_mem, DebugMemory.V)
        for addr in (2, 0, 1, 1, 1):
            ctx.set(dut.addr, addr)
            await ctx.tick()
            seen.append((ctx.get(dut.w.as_value()), ctx.get(dut.dbg_data)))

    run(dut, testbench)
    # after tick n: the row addressed at n - 1 on w, the V row addressed at n - 2 on dbg_data
    assert [row for row, _ in seen[1:]] == [0x0506, 0x0102, 0x0304, 0x0304]
    assert [dbg for _, dbg in seen[2:]] == [0x0009, 0x0007, 0x0008]


def test_input_stash_gives_back_the_input_of_depth_minus_one_steps_before():
    depth, n_in = 3, 20  # 20 codes of 8 bits: three slices of at most 64 bits
    dut = InputStash(n_in=n_in, x_format=X, depth=depth, mask=5)
    got = []

    def vector(t):
        return [(t * 7 + i) % 128 for i in range(n_in)]

    async def testbench(ctx):
        for t in range(6):
            ctx.set(dut.x, vector(t))
            ctx.set(dut.mask, t + 1)
            ctx.set(dut.write_ahead, 1)
            await ctx.tick()
            ctx.set(dut.write_ahead, 0)
            await ctx.tick().repeat(2)  # written now, two cycles after write_ahead
            ctx.set(dut.mask_write, 1)
            ctx.set(dut.advance, 1)  # the finish
            await ctx.tick()
            ctx.set(dut.mask_write, 0)
            ctx.set(dut.advance, 0)
            await ctx.tick().repeat(2)  # the slot copies, then the read
            got.append(([int(c) for c in ctx.get(dut.x_stashed)], ctx.get(dut.mask_stashed)))

    run(dut, testbench)
    for t in range(depth - 1, 6):
        assert got[t] == (vector(t - depth + 2), t - depth + 3), t


def test_saturation_counters_count_after_their_lag():
    dut = SaturationCounters(events={"activation": 3, "gradient": 17})
    assert dut.lag("activation") == 1 + sum_levels(3) and dut.lag("gradient") == 4
    assert "error" not in dut.signature.members
    pulses = [(0b101, 1 << 16), (0b111, (1 << 17) - 1), (0, 0)]
    seen = []

    async def testbench(ctx):
        for act, grad in pulses + [(0, 0)] * 5:
            ctx.set(dut.activation, act)
            ctx.set(dut.gradient, grad)
            await ctx.tick()
            seen.append([ctx.get(dut.counts[n]) for n in range(len(COUNTER_ROLES))])

    run(dut, testbench)
    assert seen[-1] == [5, 0, 18, 0, 0, 0]


@pytest.mark.parametrize("early", [0, 1])
def test_column_sums_offer_the_sums_error_lag_cycles_before_the_finish(early):
    """Three rows of two lanes over three columns: the token carries every row's products
    rounded when the finish comes ERROR_LAG cycles after the sums are final; a cycle earlier,
    it misses the last row."""
    P, N, rows, backward = 2, 3, 3, 2
    acc, err = FixedFormat(16, 6), FixedFormat(8, 4)
    dut = ColumnSums(
        lanes=P,
        cols=N,
        n_in=N,
        rows=rows,
        accumulator=Accumulator(acc, {}),
        error=RoleFormat(err, Rounding.HALF_EVEN, Overflow.SATURATE),
        backward=backward,
        key=RandomKey(seed=0, stage=2),
    )
    products = [[37, -90], [501, 6], [-255, 1000]]  # by row, then lane
    last_sum = 3 + rows - 1 + backward  # the cycle whose edge adds the last row
    finish = last_sum + 1 + ERROR_LAG - early
    token = []

    async def testbench(ctx):
        ctx.set(dut.err_o.ready, 0)
        for cycle in range(finish + 4):
            ctx.set(dut.clear_ahead, cycle == 0)  # cleared at cycle 2
            ctx.set(dut.valid, 3 <= cycle < 3 + rows)
            r = cycle - 3 - backward
            for p in range(P):
                ctx.set(dut.products[p], products[r][p] if 0 <= r < rows else 0)
            ctx.set(dut.finish, cycle == finish)
            await ctx.tick()
            if ctx.get(dut.err_o.valid):
                token.append([ctx.get(dut.err_o.payload.e[i]) for i in range(N)])

    run(dut, testbench)
    column = [0] * N  # element k = row * P + lane is input k mod N
    for r in range(rows):
        for p in range(P):
            column[(r * P + p) % N] += products[r][p]
    want = requantize(torch.tensor(column), acc, err).tolist()
    assert len(token) == 4 and all(t == token[0] for t in token)  # held until taken
    assert (token[0] == want) == (not early), token[0]


def test_sequencer_takes_a_cycle_after_seeing_and_passes_every_row():
    dut = Sequencer(rows=3, lanes=2, cols=3, n_out=2, drain=2, first_stage=True, label_bits=2)
    trace = []

    async def testbench(ctx):
        ctx.set(dut.fwd_i_valid, 1)
        ctx.set(dut.err_i_valid, 1)
        ctx.set(dut.outputs_free, 1)
        for _ in range(12):
            await ctx.delay(1e-7)  # after the comb outputs settle
            names = ("seen", "take", "loading", "pass_on", "finish")
            trace.append("".join(n[0] if ctx.get(getattr(dut, n)) else "." for n in names))
            await ctx.tick()

    run(dut, testbench)
    # see, take, load, pass x3, drain x2, finish, then the next step's see
    assert trace[:10] == [
        "s....",
        ".t...",
        "..l..",
        "...p.",
        "...p.",
        "...p.",
        ".....",
        ".....",
        "....f",
        "s....",
    ]


def test_parts_refuse_bad_parameters():
    with raises_in_init(TypeError, r"Rows must be a positive integer, not 0"):
        Sequencer(rows=0, lanes=1, cols=1, n_out=1, drain=1, first_stage=True, label_bits=1)
    with raises_in_init(TypeError, r"First_stage must be a bool, not 1"):
        Sequencer(rows=1, lanes=1, cols=1, n_out=1, drain=1, first_stage=1, label_bits=1)
    with raises_in_init(TypeError, r"Depth must be an integer of at least 1, not 0"):
        InputStash(n_in=2, x_format=X, depth=0)
    with raises_in_init(TypeError, r"X_format must be a FixedFormat, not 8"):
        InputStash(n_in=2, x_format=8, depth=2)
    with raises_in_init(ValueError, r"Init must give the rows of \['v', 'w'\]"):
        RowMemories(lanes=1, rows=1, weight=X, velocity=X, w_prev=False, init={"w": [0]})
    with raises_in_init(ValueError, r"Event role must be one of .*, not 'loss'"):
        SaturationCounters(events={"loss": 1})


@pytest.mark.parametrize("w_prev", [False, True])
def test_row_memories_ports_follow_w_prev(w_prev):
    init = {"w": [0], "v": [0], "w_prev": [0]}
    dut = RowMemories(lanes=1, rows=1, weight=X, velocity=X, w_prev=w_prev, init=init)
    dut._MustUse__silence = True
    assert ("w_prev" in dut.signature.members) == w_prev
    assert ("copy_en" in dut.signature.members) == w_prev


@pytest.mark.parametrize(
    ("n_in", "lanes", "rows", "late"),
    [(5, 2, 4, 7), (4, 3, 5, 2), (3, 7, 2, 7), (6, 4, 1, 3), (5, 2, 3, 0)],
)
def test_operand_rings_give_each_lane_its_input_late_and_its_stashed_input_with_the_row(
    n_in, lanes, rows, late
):
    """Driven by a Sequencer as a stage drives them: lane ``p`` of row ``c`` reads the stashed
    input of column ``(c * lanes + p) mod cols`` in the row's cycle and the input of that column
    ``late`` cycles later (the input ring goes on rotating after the pass)."""
    cols = n_in + 1  # with the bias column, the code of 1
    m = Module()
    m.submodules.seq = seq = Sequencer(
        rows=rows, lanes=lanes, cols=cols, n_out=2, drain=late + 2, first_stage=True, label_bits=1
    )
    m.submodules.ops = ops = OperandRings(
        n_in=n_in,
        n_out=2,
        cols=cols,
        lanes=lanes,
        late=late,
        x_format=X,
        error_format=X,
        mask=False,
    )
    m.d.comb += [
        ops.load_ahead.eq(seq.seen),
        ops.move_ahead.eq(seq.moving_ahead),
        ops.wrap_next.eq(seq.wrap_next),
        ops.carry.eq(seq.carry),
    ]
    x = [1 + 3 * i for i in range(n_in)] + [1 << X.frac]
    xs = [-2 - 5 * i for i in range(n_in)] + [1 << X.frac]
    trace = []  # per cycle: pass_on, the lanes' inputs, their stashed inputs

    async def recorder(ctx):
        ctx.set(seq.fwd_i_valid, 1)
        ctx.set(seq.err_i_valid, 1)
        ctx.set(seq.outputs_free, 1)
        for i in range(n_in):
            ctx.set(ops.x[i], x[i])
            ctx.set(ops.x_stashed[i], xs[i])
        for _ in range(rows + late + 12):
            await ctx.delay(1e-7)
            trace.append(
                (
                    ctx.get(seq.pass_on),
                    [ctx.get(ops.lane_x[p]) for p in range(lanes)],
                    [ctx.get(ops.lane_x_stashed[p]) for p in range(lanes)],
                )
            )
            await ctx.tick()

    run(m, recorder)
    first = next(t for t, (on, _, _) in enumerate(trace) if on)
    assert [on for on, _, _ in trace[first : first + rows + 1]] == [1] * rows + [0]
    for c in range(rows):
        want = [(c * lanes + p) % cols for p in range(lanes)]
        assert trace[first + c][2] == [xs[i] for i in want], f"row {c}: stashed input"
        assert trace[first + c + late][1] == [x[i] for i in want], f"row {c}: input"
