"""One weight lane of a stage: the update of one element per cycle, its forward and backward
products, and the values written back."""

from __future__ import annotations

from collections.abc import Mapping

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.config import WeightPrediction
from pbhw.core.datapath import Accumulator, UpdateTiming
from rtl_gen.pipeline import Delays
from rtl_gen.products import LATENCY as PRODUCT_LATENCY
from rtl_gen.requantizer import shape_of
from rtl_gen.rounding import RandomKey, random_word
from rtl_gen.target import Multiplier
from rtl_gen.update import ROUNDING_POINTS, UpdateUnit

__all__ = ["Lane", "lane_cycles"]


def lane_cycles(wait: int, timing: UpdateTiming) -> dict[str, int]:
    """Cycle, after a row is read (cycle 0), at which each output of a :class:`Lane` whose
    update waits ``wait`` cycles and runs on ``timing`` (:attr:`UpdateUnit.timing
    <rtl_gen.update.UpdateUnit.timing>`) is ready: ``update`` (the unit's inputs),
    ``predicted`` (``w_hat``), ``forward`` and ``backward`` (the products), ``write_v``
    (``v_new``) and ``write`` (``w_new``)."""
    predicted = wait + timing.prediction_latency
    return {
        "update": wait,
        "predicted": predicted,
        # w_hat and x are registered once more on their way to the multiplier
        "forward": predicted + 1 + PRODUCT_LATENCY,
        # the row register, then the product
        "backward": 1 + PRODUCT_LATENCY,
        # the new velocity is written back as soon as it is rounded and registered
        "write_v": wait + timing.velocity_latency,
        "write": wait + timing.latency,
    }


class Lane(wiring.Component):
    """Lane of a stage: per row-pass cycle, one weight element ``k`` of the row read.

    The element's weight ``w``, velocity ``v`` (and ``w_prev``), stashed input ``x_stashed``
    and error ``dz`` enter as of cycle 0, the cycle its row arrives from memory; everything the
    lane needs later rides along in delay lines, except the input ``x`` of the forward product,
    which enters at ``predicted`` (the stage's input ring holds it until then). The lane computes:

    * the forward product ``w_hat * x`` on the predicted weight;
    * the backward product ``w * dz`` on the current weight (with ``backward``);
    * the update of :class:`~rtl_gen.update.UpdateUnit` (its inputs wait ``wait`` cycles, for
      the random words of stochastic rounding), and the values to write back: the update's,
      or, for an element past the last (``k >= weights``, padding in the last row), the row's
      own codes.

    A product of an element past the last is 0 (the product register's own reset, not a mask
    before the sums it feeds).

    Latency: :func:`lane_cycles` (``wait``, the unit's timing): with 4-cycle products
    throughout, ``forward`` at ``wait + 11``, ``backward`` at 5, ``v_new`` at ``wait + 7``,
    ``w_new`` and the update's saturation flags at ``wait + 13``, the prediction's flag at
    ``wait + 6``; with update constants in the fabric (3 cycles), ``forward`` at ``wait + 10``
    and ``w_new`` at ``wait + 12``.

    Parameters
    ----------
    update : mapping
        The parameters of the lane's :class:`~rtl_gen.update.UpdateUnit` (``pipelined=True``).
    multiplier : Multiplier
        The device's hard multiplier.
    forward : Accumulator
        The row sums' accumulator (:attr:`pbhw.core.datapath.StageDatapath.forward`): the
        forward product's width.
    backward : Accumulator or None
        The column sums' accumulator, the backward product's width; ``None`` for no backward
        product (stage 1).
    weights : int
        Elements of the stage: ``k`` at or past it is padding.
    padded : bool
        Whether the lane can hold padding (it is past the last element in the last row).
    wait : int
        Cycles the update's inputs wait after cycle 0.
    key : RandomKey
        The stage's random key (for stochastic rounding in the update).
    k_max : int
        Bound of ``k`` (exclusive).
    straddles : bool
        Whether the lane's element can lie one weight row further on than the row of its
        group (``carry``): the forward product then leaves on ``forward`` or ``forward_next``.

    Attributes
    ----------
    w, v : In(weight shape), In(velocity shape)
        The element's codes, from the row read.
    w_prev : In(weight shape)
        Only with the weight-difference prediction.
    x : In(input shape)
        The element's input (forward), as of cycle ``predicted``.
    x_stashed : In(input shape)
        The element's stashed input (update).
    dz : In(error shape)
        The error of the element's output.
    k : In(range(k_max))
        The element's flat index.
    step : In(32)
        Steps completed (the random words' counter).
    carry : In(1)
        Only with ``straddles``, as of cycle 0: the element lies one weight row further on.
    forward : Out(signed)
        ``w_hat * x``, 0 for padding (and, with ``straddles``, where ``carry`` is set).
    forward_next : Out(signed)
        Only with ``straddles``: ``w_hat * x`` where ``carry`` is set, else 0. The choice is
        each product register's synchronous reset: no select sits before the row sums.
    backward : Out(signed)
        Only with ``backward``: ``w * dz``, 0 for padding.
    w_new, v_new : Out(weight shape), Out(velocity shape)
        The codes to write back (``v_new`` first, at ``write_v``; no delay line holds it until
        ``w_new`` is ready).
    saturated : Out(StructLayout of the update's rounding points)
        Overflow events of the element (0 for padding).
    """

    def __init__(
        self,
        *,
        update: Mapping,
        multiplier: Multiplier,
        forward: Accumulator,
        backward: Accumulator | None,
        weights: int,
        padded: bool,
        wait: int,
        key: RandomKey,
        k_max: int,
        straddles: bool = False,
    ):
        if not isinstance(update, Mapping) or not update.get("pipelined"):
            raise ValueError(f"Update must be the parameters of a pipelined unit, not {update!r}")
        if not isinstance(multiplier, Multiplier):
            raise TypeError(f"Multiplier must be a Multiplier, not {multiplier!r}")
        for name, fmt in (("Forward", forward), ("Backward", backward)):
            if not isinstance(fmt, Accumulator) and not (name == "Backward" and fmt is None):
                raise TypeError(f"{name} must be an Accumulator, not {fmt!r}")
        if not isinstance(wait, int) or isinstance(wait, bool) or wait < 1:
            raise TypeError(f"Wait must be a positive integer, not {wait!r}")
        if not isinstance(key, RandomKey):
            raise TypeError(f"Key must be a RandomKey, not {key!r}")
        self._update = dict(update)
        self._multiplier = multiplier
        self._forward, self._backward = forward, backward
        self._weights, self._padded, self._wait, self._key = weights, bool(padded), wait, key
        self._unit = UpdateUnit(**self._update)
        self._cycles = lane_cycles(wait, self._unit.timing)
        self._straddles = bool(straddles)
        self._memories: list[tuple[int, int]] | None = None
        fm = update["formats"]
        ws = shape_of(fm.weight.format)
        members = {
            "w": In(ws),
            "v": In(shape_of(fm.velocity.format)),
            "x": In(shape_of(update["x_format"])),
            "x_stashed": In(shape_of(update["x_format"])),
            "dz": In(shape_of(fm.error.format)),
            "k": In(range(k_max)),
            "step": In(32),
            "forward": Out(signed(forward.width)),
            "w_new": Out(ws),
            "v_new": Out(shape_of(fm.velocity.format)),
            "saturated": Out(data.StructLayout({p: 1 for p in ROUNDING_POINTS})),
        }
        if update.get("prediction") is WeightPrediction.WEIGHT_DIFFERENCE:
            members["w_prev"] = In(ws)
        if backward is not None:
            members["backward"] = Out(signed(backward.width))
        if straddles:
            members["carry"] = In(1)
            members["forward_next"] = Out(signed(forward.width))
        super().__init__(members)

    @property
    def cycles(self) -> dict[str, int]:
        """:func:`lane_cycles` of the lane's ``wait``."""
        return dict(self._cycles)

    @property
    def delay_memories(self) -> list[tuple[int, int]]:
        """``(width, cycles)`` of every block RAM of the lane's delay lines (its own and its
        update unit's, :class:`~rtl_gen.pipeline.Delays` with ``ram=True``); known once the
        lane is elaborated (``Fragment.get(lane, None)``)."""
        if self._memories is None:
            raise RuntimeError("A lane's delay memories are known once it is elaborated")
        return list(self._memories) + list(self._unit.delay_memories)

    def elaborate(self, platform):
        m = Module()
        at, pre = self._cycles, self._wait
        # later(value as of cycle 0, n, name): n cycles later; long stretches in block RAM
        # when the update unit's are (``delay_ram``)
        later = Delays(m, ram=self._update.get("delay_ram", False))
        self._memories = later.memories
        k_valid = Signal()
        m.d.comb += k_valid.eq(self.k < self._weights)
        unit = m.submodules.update = self._unit
        m.d.comb += [
            unit.dz.eq(later(self.dz, pre, "dz")),
            unit.x.eq(later(self.x_stashed, pre, "xg")),
            unit.w.eq(later(self.w, pre, "w")),
            unit.v.eq(later(self.v, pre, "v")),
        ]
        if "w_prev" in self.signature.members:
            m.d.comb += unit.w_prev.eq(later(self.w_prev, pre, "wp"))
        words = self._key.latency
        for point, stage_at in unit.random_stage.items():
            index = later(self.k, pre + stage_at - words, "k")
            word = random_word(m, point, self._key, point, self.step, index)
            m.d.comb += getattr(unit, f"random_{point}").eq(word)
        mul = self._multiplier
        # The forward product's operands are registered once more: the lane's hard multipliers
        # may sit far from its update unit.
        w_h = later(unit.w_hat, 1, "w_hat")
        x_h = later(self.x, 1, "x")  # x arrives at ``predicted`` (the stage's ring holds it)
        keep = later(k_valid, at["forward"] - 1, "kv")
        if self._straddles:
            split = later(self.carry, at["forward"] - 1, "carry")
            stay, move = mul.product(m, w_h, x_h, "forward", keep=keep, split=split)
            m.d.comb += [self.forward.eq(stay), self.forward_next.eq(move)]
        else:
            m.d.comb += self.forward.eq(mul.product(m, w_h, x_h, "forward", keep=keep))
        if self._backward is not None:  # on the current weight, from the row register
            w_b, dz_b = later(self.w, 1, "w"), later(self.dz, 1, "dz")
            keep = later(k_valid, at["backward"] - 1, "kv")
            m.d.comb += self.backward.eq(mul.product(m, w_b, dz_b, "backward", keep=keep))
        u, u_v = at["write"], at["write_v"]
        kv_u, kv_h = later(k_valid, u, "kv"), later(k_valid, at["predicted"], "kv")
        if self._padded:
            m.d.comb += [
                self.w_new.eq(Mux(kv_u, unit.w_new, later(self.w, u, "w"))),
                self.v_new.eq(Mux(later(k_valid, u_v, "kv"), unit.v_next, later(self.v, u_v, "v"))),
            ]
        else:
            m.d.comb += [self.w_new.eq(unit.w_new), self.v_new.eq(unit.v_next)]
        for point in ("gradient", "velocity", "weight"):
            m.d.comb += self.saturated[point].eq(kv_u & unit.saturated[point])
        m.d.comb += self.saturated.prediction.eq(kv_h & unit.saturated.prediction)
        return m
