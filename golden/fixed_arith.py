"""Bit-exact integer arithmetic for the PB schedule: what the hardware computes.

Every product, sum, rounding and saturation follows ``docs/numerics.md`` exactly. The state of
each stage carries a leading *config* dimension ``C``: several configs that differ only in formats,
rounding modes or update constants train side by side in one vectorised run (per-config shifts,
clamps and constants are arrays). A single config is simply ``C = 1``, through the same code.

A conv stage (``docs/numerics.md``, "Conv stages") holds its weights as a dense stage's matrix
``[C_out, C_in x kernel^d (+ bias)]`` (group norm's scale and shift and a residual projection's
weights are more columns) and computes on its input's windows (:mod:`golden.conv_fixed`): the
same rounding points, the same update.

Arrays are numpy ``int64``: at these sizes (tens to thousands of elements per operation) numpy's
per-call overhead is a fraction of torch's, and the integer semantics (arithmetic shifts, ``&``,
exact products) are the same. Accumulators that fit in 53 bits go through a float64 matrix product,
which is exact for integers that small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from golden import conv_kernels, kernels
from golden.conv import NORM_EPS, _four_d, _projection_stride
from golden.conv_fixed import ConvGeometry, col2im, geometry, im2col, pool_windows, unpool
from pbhw.core.config import ConfigError, Loss, Norm, Pool, RoleFormat, WeightPrediction
from pbhw.core.constants import EVAL_STEP, stream_id
from pbhw.core.datapath import (
    ACC_LIMIT,
    pool_shift,
    residual_format_of,
    span_width,
    stage_datapath,
    x_format_of,
)
from pbhw.core.fixed import (
    THREEFRY_ROUNDS,
    FixedFormat,
    Overflow,
    Rounding,
    StochasticKey,
    quantize,
)
from pbhw.core.plan import DECAY_FRAC, Plan, StagePlan, online_constants
from pbhw.core.weights import weight_codes

__all__ = ["FixedArithmetic", "FixedConvContext", "FixedConvState", "FixedState"]

_FLOAT_EXACT = 53  # bits below which a float64 matrix product of integers is exact
_NO_MASK = np.zeros((0, 0), dtype=np.bool_)  # a kernel's mask argument without a ReLU
#: elements from which a rounding point first checks the extremes: nothing overflowed, no clip
_EXTREMES_FIRST = 2048


class _Rounder:
    """One rounding point for all configs: ``RQ(acc, F, X, role)`` of ``docs/numerics.md``."""

    def __init__(self, src_frac: Sequence[int], dst: Sequence[RoleFormat], stream: int, ndim: int):
        shape = (len(dst),) + (1,) * (ndim - 1)
        self.stream = stream
        shifts = [f - d.format.frac for f, d in zip(src_frac, dst, strict=True)]
        if len(set(shifts)) == 1:
            self.shift: int | np.ndarray = shifts[0]
        else:
            self.shift = np.array(shifts, dtype=np.int64).reshape(shape)
        self.lo = _column([d.format.min_code for d in dst], ndim)
        self.hi = _column([d.format.max_code for d in dst], ndim)
        self.span = _column([1 << d.format.width for d in dst], ndim)
        self.roundings = _groups([d.rounding for d in dst], shape)
        self.rounding_rows = [
            (mode, np.flatnonzero(np.asarray(where).reshape(-1))) for mode, where in self.roundings
        ]
        self.overflows = _groups([d.overflow for d in dst], shape)
        self.stochastic = any(d.rounding is Rounding.STOCHASTIC for d in dst)
        self._settle()

    def __call__(
        self,
        acc: np.ndarray,
        seed: int = 0,
        step: int = 0,
        index: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | int]:
        """Codes and the number of overflowed elements per config (an int for one config).

        Every config of a run shares the seed (FixedArithmetic checks), so the random words
        are the same for all of them: drawn once and broadcast over the config dimension."""
        result, out = self.codes(acc, seed, step, index)
        return result, _overflowed_count(result, out)

    def codes(
        self, acc: np.ndarray, seed: int, step: int, index: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The codes after the overflow, and the rounded values before it (they differ
        exactly where an element overflowed); ``None`` for the latter when no element did
        (found on a large array by its extremes, cheaper than clipping and comparing)."""
        if self.left:
            acc = acc << self.left_by
        k = self.right
        words = None
        if self.stochastic:
            words = threefry_words(seed, self.stream, step, index)
        if self.rounding is not None:
            out = _round_right(acc, k.s, self.rounding, words, k)
        else:  # each rounding mode on the rows (configs) that use it
            out = np.empty_like(acc)
            for rounding, rows in self.row_keys:
                part = self.row_shifts.get(rounding, k)
                out[rows] = _round_right(acc[rows], part.s, rounding, words, part)
        if out.size >= _EXTREMES_FIRST and self._within(out):
            return out, None
        if self.saturate:
            return _clip(out, self.lo, self.hi), out
        return self._overflow(out), out

    def _within(self, out: np.ndarray) -> bool:
        """Whether every element of ``out`` is a code of its format (per config)."""
        lo, hi = self.lo, self.hi
        if isinstance(lo, int) and isinstance(hi, int):
            return out.max() <= hi and out.min() >= lo
        c = out.shape[0]
        if not (lo.size == lo.shape[0] == c and hi.size == hi.shape[0] == c):
            return False  # limits per element: no shortcut
        rows = out.reshape(out.shape[0], -1)
        return bool((rows.max(1) <= hi.reshape(-1)).all() and (rows.min(1) >= lo.reshape(-1)).all())

    @classmethod
    def concat(
        cls, parts: Sequence[_Rounder], sizes: Sequence[int], configs: int
    ) -> _Rounder | None:
        """One rounder over the concatenation of ``parts``' elements (``sizes[i]`` elements
        each, in a ``[C, sum(sizes)]`` array): per-element shifts, limits and streams. None when
        the parts do not round the same configs in the same mode (then each part rounds alone).
        """
        first = parts[0]
        key = [(m, r.tolist()) for m, r in first.rounding_rows]
        for p in parts[1:]:
            if [(m, r.tolist()) for m, r in p.rounding_rows] != key or [
                m for m, _ in p.overflows
            ] != [m for m, _ in first.overflows]:
                return None
            for (_, a), (_, b) in zip(p.overflows, first.overflows, strict=True):
                if a is not None and not np.array_equal(a, b):
                    return None
        out = cls.__new__(cls)
        out.stream = _flat([p.stream for p in parts], sizes, configs)
        out.shift = _flat([p.shift for p in parts], sizes, configs)
        out.lo = _flat([p.lo for p in parts], sizes, configs)
        out.hi = _flat([p.hi for p in parts], sizes, configs)
        out.span = _flat([p.span for p in parts], sizes, configs)
        out.roundings = [
            (m, None if w is None else np.asarray(w).reshape(-1, 1)) for m, w in first.roundings
        ]
        out.rounding_rows = first.rounding_rows
        out.overflows = [
            (m, None if w is None else np.asarray(w).reshape(-1, 1)) for m, w in first.overflows
        ]
        out.stochastic = any(p.stochastic for p in parts)
        out._settle()
        return out

    def _settle(self) -> None:
        """What every call would otherwise test again: a shift left anywhere, one rounding
        mode for every config, saturation everywhere."""
        s = self.shift
        self.left = s < 0 if isinstance(s, int) else bool((s < 0).any())
        self.rounding = self.roundings[0][0] if len(self.roundings) == 1 else None
        self.saturate = len(self.overflows) == 1 and self.overflows[0][0] is Overflow.SATURATE
        # the shift right after any shift left, with its derived constants
        right = max(s, 0) if isinstance(s, int) else np.maximum(s, 0)
        self.right = _Shift(right)
        self.left_by = -s if isinstance(s, int) else np.maximum(-s, 0)
        # a mode's rows as a slice when they are consecutive (a view, not a copy, of acc)
        self.row_keys = [
            (mode, slice(int(rows[0]), int(rows[-1]) + 1) if _consecutive(rows) else rows)
            for mode, rows in self.rounding_rows
        ]
        self.row_shifts = {}
        if self.rounding is None and not isinstance(right, int) and right.shape[0] > 1:
            self.row_shifts = {mode: _Shift(right[rows]) for mode, rows in self.row_keys}

    def _overflow(self, out: np.ndarray) -> np.ndarray:
        result = None
        for overflow, where in self.overflows:
            if overflow is Overflow.SATURATE:
                value = np.minimum(np.maximum(out, self.lo), self.hi)
            else:
                value = ((out - self.lo) % self.span) + self.lo
            result = value if where is None or result is None else np.where(where, value, result)
        return result


def _consecutive(rows: np.ndarray) -> bool:
    """Whether row indices are ``a, a + 1, ..., b`` (at least one)."""
    return rows.size > 0 and int(rows[-1]) - int(rows[0]) + 1 == rows.size


def _groups(modes: list, shape: tuple[int, ...]) -> list[tuple[object, np.ndarray | None]]:
    """Distinct modes with the configs that use them (``None``: all of them)."""
    distinct = list(dict.fromkeys(modes))
    if len(distinct) == 1:
        return [(distinct[0], None)]
    return [(mode, np.array([m is mode for m in modes]).reshape(shape)) for mode in distinct]


class _Shift:
    """A right shift ``s >= 0`` (an int, or an array per config or element) with what every
    rounding mode derives from it, computed once per rounding point instead of once per call."""

    def __init__(self, s: int | np.ndarray):
        self.s = s
        if isinstance(s, int):
            self.least = self.most = s
        else:
            self.least, self.most = int(s.min()), int(s.max())
        self.half = (1 << s) >> 1
        self.mask = (1 << s) - 1
        if self.least >= 1:
            self.half_less = self.half - 1
            self.up = 32 - s if self.most <= 32 else None  # rem << up: the top 32 bits


def _round_right(
    acc: np.ndarray,
    s: int | np.ndarray,
    rounding: Rounding,
    words: np.ndarray | None,
    shift: _Shift | None = None,
) -> np.ndarray:
    """``acc / 2^s`` rounded, for shifts ``s >= 0`` (an int, or a tensor per config).

    ``shift`` may carry ``s`` with its derived constants (:class:`_Shift`), made once."""
    if isinstance(s, int) and s == 0:
        return acc
    k = _Shift(s) if shift is None else shift
    down = acc >> s
    if rounding is Rounding.FLOOR:
        return down
    if k.least >= 1:
        # Every shift >= 1 (one int, or one per config): short exact formulas, in place.
        if rounding is Rounding.HALF_UP:
            out = acc + k.half
            out >>= s
            return out
        if rounding is Rounding.HALF_EVEN:
            down &= 1
            down += acc
            down += k.half_less
            down >>= s
            return down
        rem = acc & k.mask
        if rounding is Rounding.TOWARD_ZERO:
            rem = rem != 0
            rem &= acc < 0
            down += rem
            return down
        if k.up is not None:
            rem <<= k.up
            down += words < rem
            return down
        if isinstance(s, int):
            down += words < ((acc >> (s - 32)) & 0xFFFFFFFF)
            return down
    # Shifts of 0 for some configs: formulas that hold for s = 0 too.
    half = k.half
    rem = acc & k.mask
    if rounding is Rounding.HALF_UP:
        return down + ((rem >= half) & (half > 0))
    if rounding is Rounding.HALF_EVEN:
        return down + ((rem > half) | ((rem == half) & (half > 0) & ((down & 1) == 1)))
    if rounding is Rounding.TOWARD_ZERO:
        return down + ((acc < 0) & (rem != 0))
    top = np.where(
        s <= 32, rem << np.maximum(32 - s, 0), (acc >> np.maximum(s - 32, 0)) & 0xFFFFFFFF
    )
    return down + (words < top)


class _DivRounder:
    """``RQ(acc, F, X, role)`` of a value divided by a positive integer ``divisor``
    (``docs/numerics.md``, "Conv stages": a global average's count): the exact rational
    ``acc * 2^-F / divisor`` rounded once into ``X``. A power-of-two divisor is ``log2`` more
    fractional bits (a shift, :class:`_Rounder`); any other is an exact integer division."""

    def __init__(
        self, src_frac: Sequence[int], dst: Sequence[RoleFormat], stream: int, ndim: int, divisor
    ):
        q = divisor.bit_length() - 1
        self.divisor = divisor
        self.stream = stream
        self.shift_rounder = None
        if divisor == 1 << q:
            self.shift_rounder = _Rounder([f + q for f in src_frac], dst, stream, ndim)
            return
        # the overflow of X (a rounder with no shift)
        self.target = _Rounder([d.format.frac for d in dst], dst, stream, ndim)
        self.shifts = [f - d.format.frac for f, d in zip(src_frac, dst, strict=True)]
        self.roundings = [d.rounding for d in dst]

    def __call__(
        self, acc: np.ndarray, seed: int = 0, step: int = 0, index: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | int]:
        if self.shift_rounder is not None:
            return self.shift_rounder(acc, seed, step, index)
        words = None
        if any(r is Rounding.STOCHASTIC for r in self.roundings):
            words = threefry_words(seed, self.stream, step, index)[0]  # index is [1, ...]
        acc = np.broadcast_to(acc, (len(self.shifts),) + acc.shape[1:])
        out = np.stack(
            [
                _divide_round(acc[c], s, self.divisor, rounding, words)
                for c, (s, rounding) in enumerate(zip(self.shifts, self.roundings, strict=True))
            ]
        )
        return _overflowed(self.target, out)


def _overflowed(target: _Rounder, out: np.ndarray) -> tuple[np.ndarray, np.ndarray | int]:
    """``target``'s overflow of rounded codes, with the overflowed elements per config."""
    result = target._overflow(out)
    over = result != out
    if over.shape[0] == 1:
        return result, np.count_nonzero(over)
    return result, over.reshape(over.shape[0], -1).sum(1)


class _VarRounder:
    """``RQ(acc, F, X, role)`` with a source frac ``F`` per element (group norm's per-group
    exponent, ``docs/numerics.md``): a shift right with rounding, or left, exactly."""

    def __init__(self, dst: Sequence[RoleFormat], stream: int, ndim: int):
        self.target = _Rounder([d.format.frac for d in dst], dst, stream, ndim)
        self.frac = [d.format.frac for d in dst]
        self.roundings = [d.rounding for d in dst]
        self.stream = stream

    def __call__(
        self, acc: np.ndarray, src_frac: np.ndarray, seed: int, step: int, index: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | int]:
        words = None
        if any(r is Rounding.STOCHASTIC for r in self.roundings):
            words = threefry_words(seed, self.stream, step, index)[0]  # index is [1, ...]
        rows = []
        for c, (frac, rounding) in enumerate(zip(self.frac, self.roundings, strict=True)):
            a = acc[min(c, acc.shape[0] - 1)]
            shift = np.broadcast_to(src_frac[min(c, src_frac.shape[0] - 1)] - frac, a.shape)
            a = a << np.maximum(-shift, 0)
            rows.append(_round_right(a, np.maximum(shift, 0), rounding, words))
        return _overflowed(self.target, np.stack(rows))


def _bit_length(q: np.ndarray) -> np.ndarray:
    """Bits of non-negative integers (0 for 0)."""
    e = np.frexp(q.astype(np.float64))[1].astype(np.int64)
    # a value above 2^53 may round up to the next power of two in float64
    return e - ((e > 0) & ((np.int64(1) << np.maximum(e - 1, 0)) > q))


def _isqrt(q: np.ndarray) -> np.ndarray:
    """``floor(sqrt(q))`` of integers ``0 <= q < 2^52``."""
    r = np.floor(np.sqrt(q.astype(np.float64))).astype(np.int64)
    r -= r * r > q
    return r + ((r + 1) * (r + 1) <= q)


def _norm_rsqrt(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group norm's reciprocal square root (``docs/numerics.md``): ``(r, J)`` with
    ``1 / sqrt(q) ~ r * 2^(J - 31)``; ``r`` in ``(2^15, 2^16]`` (0 with ``J = 0`` for ``q = 0``)."""
    j = (32 - _bit_length(q)) >> 1
    qn = np.where(j >= 0, q << np.maximum(2 * j, 0), q >> np.maximum(-2 * j, 0))
    root = _isqrt(qn)
    r = np.where(q > 0, (np.int64(1) << 31) // np.maximum(root, 1), 0)
    return r, np.where(q > 0, j, 0)


def _divide_round(
    acc: np.ndarray, s: int, n: int, rounding: Rounding, words: np.ndarray | None
) -> np.ndarray:
    """``acc / (n * 2^s)`` rounded (any integer ``s``, ``n >= 1``): the quotient rounded down and
    the remainder decide, as the shifts of :func:`_round_right` do with ``n = 1``."""
    if s < 0:
        acc, s = acc << -s, 0
    d = n << s
    down = acc // d
    rem = acc - down * d
    if rounding is Rounding.FLOOR:
        return down
    if rounding is Rounding.TOWARD_ZERO:
        return down + ((acc < 0) & (rem != 0))
    if rounding is Rounding.HALF_UP:
        return down + (2 * rem >= d)
    if rounding is Rounding.HALF_EVEN:
        return down + ((2 * rem > d) | ((2 * rem == d) & ((down & 1) == 1)))
    # stochastic: up when the word is below the discarded fraction's top 32 bits
    if d <= 1 << 31:
        top = (rem << 32) // d
    else:
        top = (rem.astype(object) * (1 << 32) // d).astype(np.int64)
    return down + (words < top)


@dataclass
class FixedState:
    """Codes of one stage for every config: ``w`` (bias as the last column), ``v``, ``w_prev``."""

    w: np.ndarray  # [C, N_out, N_in (+1)]
    v: np.ndarray
    w_prev: np.ndarray | None = None


class FixedConvState(FixedState):
    """Codes of a conv stage: ``w`` is ``[C, C_out, C_in x kernel^d (+1)]``, the weight tensor
    in C-order with the bias as the last column, exactly as a dense stage's matrix."""

    def __init__(self, stage: StagePlan, w: np.ndarray, v: np.ndarray):
        super().__init__(w, v)
        self.stage = stage
        #: Online Normalization's state (None without it): ``M``, ``V``, ``P``, ``U`` of
        #: ``docs/numerics.md``, ``[C, C_out]`` each; not a parameter (neither stashed,
        #: predicted nor updated by the optimizer)
        self.online: dict[str, np.ndarray] | None = None

    @property
    def params(self) -> np.ndarray:
        """The parameters the backward uses without weight stashing: the current codes."""
        return self.w

    def tensors(self, config: int = 0) -> tuple[torch.Tensor, ...]:
        """Config ``config``'s parameters as float64 values in their configured shapes."""
        frac = self.stage.formats.weight.format.frac
        values = torch.from_numpy(np.ldexp(self.w[config].astype(np.float64), -frac))
        out, start = [], 0
        for _, shape in self.stage.parameter_shapes:  # columns in this order (init_conv_state)
            cols = math.prod(shape[1:])
            out.append(values[:, start : start + cols].reshape(shape).clone())
            start += cols
        return tuple(out)


@dataclass
class FixedConvContext:
    """What a conv stage's backward needs from its forward (the stash entry besides ``x``)."""

    mask: np.ndarray | None  # [C, B, C_out, positions]: the ReLU's output is positive
    choice: np.ndarray | None  # max pooling: the window element chosen, [C, B, C_out, pooled]
    #: the input's windows with the bias row, [C, B, cols, positions]; from the compiled
    #: forward (golden.conv_kernels, one sample) the same transposed, [C, positions, cols]
    columns: np.ndarray
    #: group norm: the normalized codes [C, B, groups, group size] and per group the
    #: reciprocal square root's mantissa and exponent [C, B, groups, 1]; from the compiled
    #: forward [C, C_out x positions], and ``rsqrt`` one array [C, groups, 2]
    xhat: np.ndarray | None = None
    rsqrt: tuple[np.ndarray, np.ndarray] | np.ndarray | None = None
    #: the projection's input: the residual's codes its stride reads, with the bias row
    residual: np.ndarray | None = None
    #: Online Normalization: where the clamp held, [C, B, C_out, positions] (``xhat`` holds
    #: its normalized codes ``y``, ``rsqrt`` each channel's ``(r, J)``)
    clamped: np.ndarray | None = None


class FixedArithmetic:
    """The integer arithmetic of ``docs/numerics.md`` for ``C`` configs at once."""

    name = "fixed"

    def __init__(self, plans: Plan | Sequence[Plan]):
        plans = [plans] if isinstance(plans, Plan) else list(plans)
        if not plans:
            raise ValueError("FixedArithmetic needs at least one plan")
        _check_compatible(plans)
        for plan in plans:
            plan.require_representable()
        self.plans = plans
        self.configs = len(plans)
        first = plans[0].config
        self.loss_kind = first.network.loss
        self.prediction = first.optimizer.weight_prediction
        self.bias = first.network.bias
        self.seed = first.seed  # shared by every config (checked above)
        self.step = 0
        self.counts: dict[tuple[int, str], np.ndarray] = {}
        self._bank: _Bank | None = None  # set by attach()
        self._pending: dict[int, np.ndarray] = {}
        self._predicted_step: int | None = None
        self._stage = [self._build_stage(i) for i in range(len(first.network.layers) - 1)]
        #: whether a dense stage's forward, loss, backward and gradient products (and the
        #: evaluation) run compiled (:mod:`golden.kernels`), else in numpy: the same codes
        self.compiled = True
        for ctx in self._stage:
            self._kernel_constants(ctx)
        self._out_frac = np.array(
            [p.stages[-1].formats.activation.format.frac for p in plans], dtype=np.int64
        )

    # ------------------------------------------------------------------------------------------
    # construction: every rounding point, constant and accumulator width, per stage

    def _build_stage(self, i: int) -> dict:
        """Rounding points, constants and widths of stage ``i + 1`` for every config."""
        stages = [p.stages[i] for p in self.plans]
        index, st0 = i + 1, stages[0]
        fm = [st.formats for st in stages]
        # The input of stage l is stage l-1's activation (stage 1: its own activation format);
        # the error stage l sends back is in stage l-1's error format.
        prev = [p.stages[max(i - 1, 0)].formats for p in self.plans]
        a_in = [f.activation for f in prev]

        def frac(formats, role):
            return [f.role(role).format.frac for f in formats]

        fa_in = [r.format.frac for r in a_in]
        # A conv stage's weights are the matrix [C_out, C_in x kernel^d] of its windows.
        geo = geometry(st0) if st0.conv else None
        n_in, rows = (geo.columns, geo.conv_shape[0]) if geo else (st0.n_in, st0.n_out)
        cols = n_in + (1 if self.bias else 0)
        ctx: dict = {"index": index, "n_in": n_in, "cols": cols, "geometry": geo}
        ctx["idx_w"] = np.arange(rows * cols, dtype=np.int64).reshape(1, rows, cols)
        ctx["idx_out"] = np.arange(st0.n_out, dtype=np.int64).reshape(1, -1)
        ctx["idx_in"] = np.arange(st0.n_in, dtype=np.int64).reshape(1, -1)
        if self.bias and min(fa_in) < 0:
            raise ConfigError(
                f"stage {index}: a bias needs the constant input 1 in the activation format "
                f"feeding the stage, which has negative frac {min(fa_in)}; use frac >= 0 "
                "or network.bias = false"
            )
        ctx["one"] = _column([1 << max(f, 0) for f in fa_in])  # code of the bias input 1
        ctx["one_col"] = np.broadcast_to(
            np.asarray(ctx["one"]).reshape(-1, 1), (len(self.plans), 1)
        ).copy()

        # Every accumulator's format and every term's shift: the stage's datapath, per config.
        dps = [
            stage_datapath(
                p.stages[i],
                x_format=x_format_of(p, p.stages[i]),
                bias=self.bias,
                prediction=self.prediction,
                multiplier_ports=None,
                residual_format=residual_format_of(p, p.stages[i]),
            )
            for p in self.plans
        ]
        ups = [dp.update for dp in dps]
        ctx["fwd_float"] = max(dp.forward.width for dp in dps) <= _FLOAT_EXACT
        ctx["bwd_float"] = index > 1 and max(dp.backward.width for dp in dps) <= _FLOAT_EXACT
        ctx["grad_float"] = max(u.gradient.width for u in ups) <= _FLOAT_EXACT
        # conv: [C, B, C_out, positions] forward, [C, B, n_in] backward; dense: [C, n]
        fwd_ndim, bwd_ndim = (4, 3) if geo else (2, 2)

        ctx["fwd"] = _Rounder(
            [dp.forward.frac for dp in dps],
            [f.activation for f in fm],
            stream_id(index, "activation"),
            fwd_ndim,
        )
        if index > 1:
            ctx["bwd"] = _Rounder(
                [dp.backward.frac for dp in dps],
                [f.error for f in prev],
                stream_id(index, "error"),
                bwd_ndim,
            )
        # A residual's error arrives at its source as a code of the source's error format and
        # is added there with that format's overflow (the "sum" below, never rounding).
        ctx["sum"] = _Rounder(
            frac(fm, "error"), [f.error for f in fm], stream_id(index, "residual"), 2
        )
        ctx["grad"] = _Rounder(
            [u.gradient.frac for u in ups],
            [f.gradient for f in fm],
            stream_id(index, "gradient"),
            3,
        )
        if geo:
            self._build_conv(ctx, i, dps)
        ctx["vel_mv"] = _column([u.velocity.shifts["mv"] for u in ups], 3)
        ctx["vel_g"] = _column([u.velocity.shifts["g"] for u in ups], 3)
        ctx["vel"] = _Rounder(
            [u.velocity.frac for u in ups],
            [f.velocity for f in fm],
            stream_id(index, "velocity"),
            3,
        )
        ctx["upd_w"] = _column([u.weight.shifts["w"] for u in ups], 3)
        ctx["upd_v"] = _column([u.weight.shifts["v"] for u in ups], 3)
        ctx["upd_g"] = _column([u.weight.shifts["g"] for u in ups], 3)
        ctx["upd"] = _Rounder(
            [u.weight.frac for u in ups], [f.weight for f in fm], stream_id(index, "weight"), 3
        )
        codes = {
            name: [st.coefficients[name].code for st in stages]
            for name in ("momentum", "eta_a", "eta_b")
        }
        ctx["m"], ctx["ea"] = _column(codes["momentum"], 3), _column(codes["eta_a"], 3)
        ctx["eb"] = _column(codes["eta_b"], 3) if any(codes["eta_b"]) else None

        horizons = [st.horizon for st in stages]
        ctx["prediction"] = None
        if any(horizons) and self.prediction is WeightPrediction.VELOCITY:
            ctx["prediction"] = "velocity"
            ctx["pre_w"] = _column([u.prediction.shifts["w"] for u in ups], 3)
            ctx["pre_v"] = _column([u.prediction.shifts["v"] for u in ups], 3)
            ctx["eT"] = _column(
                [st.coefficients["eta_T"].code if st.horizon else 0 for st in stages], 3
            )
            ctx["pre"] = _Rounder(
                [u.prediction.frac for u in ups],
                [f.weight for f in fm],
                stream_id(index, "prediction"),
                3,
            )
        elif any(horizons) and self.prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            ctx["prediction"] = "weight_difference"
            ctx["T"] = _column(horizons, 3)
            ctx["pre"] = _Rounder(
                [u.prediction.frac for u in ups],
                [f.weight for f in fm],
                stream_id(index, "prediction"),
                3,
            )
        if index == 1:
            ctx["input_formats"] = a_in
        if not st0.relu:
            fa, fe = frac(fm, "activation"), frac(fm, "error")
            one_frac = fa if self.loss_kind is Loss.MSE else fe
            role = "activation" if self.loss_kind is Loss.MSE else "error"
            if min(one_frac) < 0:
                raise ConfigError(
                    f"stage {index}: the {self.loss_kind.value} loss unit needs the target 1 "
                    f"as a code of the last stage's {role} format, so its frac must be >= 0, "
                    f"not {min(one_frac)}"
                )
            if self.loss_kind is Loss.SOFTMAX_CE and min(fa) < -8:
                raise ConfigError(
                    f"stage {index}: the softmax_ce loss unit (an exponent with 8 fractional "
                    "bits) needs the last stage's activation frac >= -8 and error frac must be "
                    f">= 0; the activation frac is {min(fa)}"
                )
            if self.loss_kind is Loss.MSE:
                ctx["loss_one"] = _column([1 << f for f in fa])
                ctx["loss"] = _Rounder(fa, [f.error for f in fm], stream_id(index, "loss"), 2)
            else:
                ctx["softmax_shift"] = _column([f + 16 - 8 for f in fa])
                ctx["loss_one"] = _column([1 << f for f in fe])
                ctx["loss_scale"] = _column(fe)
                ctx["loss"] = _Rounder(fe, [f.error for f in fm], stream_id(index, "loss"), 2)
        return ctx

    def _build_conv(self, ctx: dict, i: int, dps: list) -> None:
        """A conv stage's pooling, residual and index arrays (``docs/numerics.md``)."""
        index, geo = i + 1, ctx["geometry"]
        st0 = self.plans[0].stages[i]
        fm = [p.stages[i].formats for p in self.plans]
        positions, out = geo.positions, geo.conv_shape[0]
        ctx["idx_conv"] = np.arange(out * positions, dtype=np.int64).reshape(1, 1, out, positions)
        ctx["idx_x"] = np.arange(st0.n_in, dtype=np.int64).reshape(1, 1, -1)
        ctx["pool_shift"] = pool_shift(st0)
        fa = [f.activation.format.frac for f in fm]
        # A global average divides by the count of positions: its sum is rounded once, and so
        # is every value the spread error feeds (error, gradient, residual: the error at the
        # convolution's output is the arriving code, the 1/count in those roundings).
        divisor = positions if geo.pool is Pool.GLOBAL_AVG else 1
        if geo.pool is Pool.AVG:
            ctx["pool"] = _Rounder(
                [f + ctx["pool_shift"] for f in fa],
                [f.activation for f in fm],
                stream_id(index, "pool"),
                4,
            )
        elif geo.pool is Pool.GLOBAL_AVG:
            ctx["pool"] = _DivRounder(
                fa, [f.activation for f in fm], stream_id(index, "pool"), 3, divisor
            )
        norm = st0.spec is not None and st0.spec.norm in (Norm.GROUP, Norm.ONLINE)
        # a norm's backward divides (its own first roundings); else the convolution's
        if geo.pool is Pool.GLOBAL_AVG and not norm:
            if index > 1:
                ctx["bwd"] = _DivRounder(
                    [dp.backward.frac for dp in dps],
                    [p.stages[i - 1].formats.error for p in self.plans],
                    stream_id(index, "error"),
                    3,
                    divisor,
                )
            ctx["grad"] = _DivRounder(
                [dp.update.gradient.frac for dp in dps],
                [f.gradient for f in fm],
                stream_id(index, "gradient"),
                3,
                divisor,
            )
        ctx["residual"] = ctx["projection"] = None
        # the columns after [W | b]: group norm's scale and shift, the projection's
        ctx["norm_col"] = ctx["cols"]
        ctx["proj_col"] = ctx["cols"] + (2 if norm else 0)
        width = ctx["proj_col"]
        if st0.spec is not None and st0.spec.residual:
            source = [p.stages[i - st0.spec.residual].formats for p in self.plans]
            fe = [f.error.format.frac + ctx["pool_shift"] for f in fm]
            # the residual's term and its frac: the source's codes, or the projection's sum
            ctx["res_frac"] = [f.activation.format.frac for f in source]
            if st0.spec.projection:
                ctx["projection"] = self._build_projection(i, ctx, divisor)
                width += ctx["projection"]["cols"]
                fw = [f.weight.format.frac for f in fm]
                ctx["res_frac"] = [w + r for w, r in zip(fw, ctx["res_frac"], strict=True)]
                conv = [dp.forward.shifts["product"] for dp in dps]
                conv = [dp.forward.frac - s for dp, s in zip(dps, conv, strict=True)]
                top = [max(a, b) for a, b in zip(conv, ctx["res_frac"], strict=True)]
                ctx["res_product"] = _column([t - a for t, a in zip(top, conv, strict=True)], 4)
                ctx["res_shift"] = _column(
                    [t - r for t, r in zip(top, ctx["res_frac"], strict=True)], 4
                )
                ctx["fwd"] = _Rounder(
                    top, [f.activation for f in fm], stream_id(index, "activation"), 4
                )
                # the error sent along the residual: the projection's transpose of d
                ctx["residual"] = _DivRounder(
                    [e + w for e, w in zip(fe, fw, strict=True)],
                    [f.error for f in source],
                    stream_id(index, "residual"),
                    3,
                    divisor,
                )
            else:
                ctx["res_product"] = _column([dp.forward.shifts["product"] for dp in dps], 4)
                ctx["res_shift"] = _column([dp.forward.shifts["residual"] for dp in dps], 4)
                ctx["residual"] = _DivRounder(
                    fe, [f.error for f in source], stream_id(index, "residual"), 4, divisor
                )
        ctx["norm"] = self._build_norm(i, ctx, divisor) if norm else None
        ctx["idx_w"] = np.arange(out * width, dtype=np.int64).reshape(1, out, width)
        ctx["kernel"] = None
        if ctx["projection"] is None and geo.pool is not Pool.GLOBAL_AVG:
            ctx["kernel"] = self._conv_kernel_tables(ctx, st0)
        # a residual's source: the overflow of the sum of its errors (add_errors), compiled
        ctx["sum_rq"] = self._kernel_rows([ctx["sum"]])
        ctx["sum_counts"] = np.zeros((self.configs, 1), dtype=np.int64)

    def _kernel_rows(self, rounders: list) -> np.ndarray:
        """``rounders`` (None: a row of zeros) as the compiled kernels read rounding points:
        ``[C, len(rounders), len(RQ_FIELDS)]`` (:func:`_kernel_point` of each)."""
        return np.ascontiguousarray(np.stack([_kernel_point(r, self.configs) for r in rounders], 1))

    def _conv_kernel_tables(self, ctx: dict, stage: StagePlan) -> dict:
        """What the compiled conv kernels (:mod:`golden.conv_kernels`) read of a stage: its
        geometry, per-config constants and rounding points, and empty stand-ins for the
        arrays a stage does not have."""
        geo, c = ctx["geometry"], self.configs
        residual = ctx["residual"]
        nm = ctx["norm"]
        points = {
            "activation": ctx["fwd"] if nm is None else nm["z"],
            "pool": ctx.get("pool"),
            "residual": None if residual is None else residual.shift_rounder,
            "error": ctx.get("bwd"),
            "gradient": ctx["grad"],
        }
        norm_constants = np.zeros((c, len(conv_kernels.NORM_FIELDS)), dtype=np.int64)
        if nm is not None:  # the norm's rounding points and constants (_build_norm)
            points.update(self._norm_kernel_points(nm))
            values = {
                "groups": nm["groups"],
                "size": nm["size"],
                "col": ctx["norm_col"],
                "eps": nm["eps"],
                "fa": nm["fa"],
                "fd": nm["fd"],
                "xhat_frac": nm["xhat"].frac,
                "var_frac": (nm["g2"] if nm["online"] else nm["dc"]).frac,
                "b_f": nm.get("b_f"),
                "b_b": nm.get("b_b"),
                "bound": nm.get("bound"),
                "rho_v_shift": _division(nm["rho_v"])[1] if nm["online"] else 0,
                "rho_u_shift": _division(nm["rho_u"])[1] if nm["online"] else 0,
            }
            norm_constants = np.stack(
                [_per_config(values[f], c) for f in conv_kernels.NORM_FIELDS], 1
            )
        rows = self._kernel_rows([points.get(name) for name in conv_kernels.POINTS])
        flags = {
            "pool": conv_kernels.POOL_CODES[geo.pool.value],
            "relu": stage.relu,
            "bias": ctx["cols"] > ctx["n_in"],
            "residual": residual is not None,
            "error": ctx["index"] > 1,
            "norm": conv_kernels.NORM_CODES[stage.spec.norm.value],
        }
        shape = (*geo.in_shape, *geo.kernel, *geo.stride, *geo.padding, *geo.conv_shape)
        values = dict(zip(conv_kernels.GEOMETRY_FIELDS, (*shape, *geo.window), strict=False))
        values.update(flags)
        one = ctx["one"] if self.bias else 0
        constants = {"one": one, "res_product": 0, "res_shift": 0}
        if residual is not None:  # a norm's residual joins its affine sum (_build_norm)
            shifts = ctx if nm is None else nm
            constants.update(res_product=shifts["res_product"], res_shift=shifts["res_shift"])
        # the input element each window element reads: im2col of the elements' numbers + 1
        # (its padding, code 0, becomes -1)
        numbers = np.arange(1, math.prod(geo.in_shape) + 1, dtype=np.int64).reshape(1, 1, -1)
        return {
            "src": np.ascontiguousarray((im2col(numbers, geo)[0, 0] - 1).T),
            "geo": np.array([values[f] for f in conv_kernels.GEOMETRY_FIELDS], dtype=np.int64),
            "k": np.stack([_per_config(constants[f], c) for f in conv_kernels.CONSTANT_FIELDS], 1),
            "rq": rows,
            # the rounding points counted after each kernel under their roles (as the numpy
            # path counts them; a norm's kernel adds rho_u's into rho_v's column, and g2's, P's
            # and U's into g1's)
            "counted": {
                phase: [
                    (conv_kernels.POINTS.index(name), role)
                    for name, role in roles
                    if points.get(name) is not None and (name != "pool" or geo.pool is Pool.AVG)
                ]
                for phase, roles in _KERNEL_ROLES.items()
            },
            "norm": norm_constants,
            "counts": np.zeros((c, len(conv_kernels.POINTS)), dtype=np.int64),
            "empty": np.zeros((c, 0), dtype=np.int64),
            "empty3": np.zeros((c, 0, 0), dtype=np.int64),
            "no_mask": np.zeros((c, 0), dtype=np.bool_),
        }

    @staticmethod
    def _norm_kernel_points(nm: dict) -> dict:
        """A norm's rounding points as the conv kernels read them (``conv_kernels.POINTS``):
        the per-group shifts' and the divisions' targets (their shifts are the kernel's
        constants), the others as they are."""
        points = {
            "c": nm["c"],
            "xhat": nm["xhat"].target,
            "dx": nm["dx"].shift_rounder,
        }
        if nm["online"]:
            for name in ("state_step", "g1", "dc", "P", "U"):
                points[name] = nm[name]
            points.update(rho_v=_division(nm["rho_v"])[0], rho_u=_division(nm["rho_u"])[0])
            points["g2"] = nm["g2"].target
        else:
            points.update(k2=nm["k2"], dc=nm["dc"].target)
        return points

    def _build_projection(self, i: int, ctx: dict, divisor: int) -> dict:
        """The residual projection's geometry, rounding point and width checks."""
        index, geo = i + 1, ctx["geometry"]
        st0 = self.plans[0].stages[i]
        assert st0.spec is not None
        fm = [p.stages[i].formats for p in self.plans]
        source = [p.stages[i - st0.spec.residual].formats for p in self.plans]
        res_shape = _four_d(st0.residual_shape)
        stride = _projection_stride(st0)
        fres = [f.activation.format.frac for f in source]
        if self.bias and min(fres) < 0:
            raise ConfigError(
                f"stage {index}: the projection's bias needs the constant 1 as a code of the "
                f"residual's format (stage {index - st0.spec.residual}'s activation), whose "
                f"frac is {min(fres)}; use frac >= 0 or network.bias = false"
            )
        fe = [f.error.format.frac + ctx["pool_shift"] for f in fm]
        terms = res_shape[0] + (1 if self.bias else 0)
        inputs = [p.stages[max(i - 1, 0)].formats.activation.format for p in self.plans]
        for f, src, x in zip(fm, source, inputs, strict=True):
            top_w = max(-f.weight.format.min_code, f.weight.format.max_code)
            top_e = max(-f.error.format.min_code, f.error.format.max_code)
            a, out = src.activation.format, f.activation.format
            top_r = max(-a.min_code, a.max_code, 1 << max(a.frac, 0))
            proj = terms * top_w * top_r  # at f(W) + f(A_{l-N})
            # the sum it joins: the convolution's (at f(W) + f(A_{l-1})) or group norm's
            # scaled and shifted codes (at f(W) + f(A_l)), aligned onto the finer frac
            main, frac = (
                ctx["cols"] * top_w * max(-x.min_code, x.max_code, 1 << max(x.frac, 0)),
                x.frac,
            )
            if st0.spec.norm is Norm.GROUP:
                top_a = max(-out.min_code, out.max_code)
                main, frac = top_a * top_w + (top_w << max(out.frac, 0)), out.frac
            both = (main << max(a.frac - frac, 0)) + (proj << max(frac - a.frac, 0))
            _check_sums(
                f"stage {index}: the projection's",
                {
                    "forward": proj,
                    "sum": both,
                    "backward": geo.conv_shape[0] * top_w * top_e,
                    "gradient": geo.positions * top_e * top_r,
                },
                "narrow the stage's formats",
            )
        return {
            "index": index,
            "cols": terms,
            "shape": res_shape,
            "stride": (stride[0], stride[1]),
            "one": _column([1 << max(f, 0) for f in fres], 4),
            "idx_res": np.arange(math.prod(res_shape), dtype=np.int64).reshape(1, 1, -1),
            "grad": _DivRounder(
                [e + r for e, r in zip(fe, fres, strict=True)],
                [f.gradient for f in fm],
                stream_id(index, "gradient"),
                3,
                divisor,
            ),
        }

    def _build_norm(self, i: int, ctx: dict, divisor: int) -> dict:
        """Group norm's or Online Normalization's rounding points, constants and width checks
        (``docs/numerics.md``)."""
        index, geo = i + 1, ctx["geometry"]
        st0 = self.plans[0].stages[i]
        assert st0.spec is not None
        online = st0.spec.norm is Norm.ONLINE
        label = "online norm" if online else "group norm"
        fm = [p.stages[i].formats for p in self.plans]
        fa = [f.activation.format.frac for f in fm]
        fw = [f.weight.format.frac for f in fm]
        fa_in = [p.stages[max(i - 1, 0)].formats.activation.format.frac for p in self.plans]
        q = ctx["pool_shift"]
        fd = [f.error.format.frac + q for f in fm]  # the error at the norm's output
        if min(fa) < 0:
            raise ConfigError(
                f"stage {index}: {label} needs the constant 1 (norm_shift's input) as a code "
                f"of the stage's activation format, whose frac is {min(fa)}; use frac >= 0"
            )
        # Online Normalization: one channel's values per "group"
        groups = geo.conv_shape[0] if online else st0.spec.groups
        size = geo.conv_shape[0] // groups * geo.positions  # m: the values of one group
        dz = [
            RoleFormat(
                FixedFormat(f.error.format.width, f.error.format.frac + q, f.error.format.signed),
                f.error.rounding,
                f.error.overflow,
            )
            for f in fm
        ]
        acts = [f.activation for f in fm]
        # c and xhat: A_l's width, frac and modes, signed (an unsigned A_l would clip them)
        signed = [
            RoleFormat(FixedFormat(a.format.width, a.format.frac, True), a.rounding, a.overflow)
            for a in acts
        ]
        # the decays' complements and the clamp's codes (pbhw.core.plan), per config (configs
        # run together share the network, but the clamp's code depends on the format)
        codes = [
            online_constants(index, p.stages[i].spec, f.activation.format)
            for p, f in zip(self.plans, fm, strict=True)
            if online
        ]
        b_fwd = [2**DECAY_FRAC - c["alpha_fwd"].code for c in codes]
        b_bkw = [2**DECAY_FRAC - c["alpha_bkw"].code for c in codes]
        # Widths of the sums (the largest magnitudes of their terms), as datapath's accumulators.
        for k, f in enumerate(fm):
            top_a = 1 << (f.activation.format.width - 1)
            top_e = max(-f.error.format.min_code, f.error.format.max_code)
            top_w = max(-f.weight.format.min_code, f.weight.format.max_code)
            eps = round(NORM_EPS * 2.0 ** (2 * f.activation.format.frac))
            if online:
                b_f, b_b = b_fwd[k], b_bkw[k]
                sums = {
                    "variance": size * size * (4 * top_a * top_a + eps),
                    "normalization": (2 * size * top_a) << 24,
                    "mean": b_f * (2 * size * top_a << 8),
                    "deviation": b_f * (2 * size * top_a + 1) ** 2,
                    "variance update": b_f * 9 * size * size * (top_a + 1) ** 2,
                    "scale": top_a * top_w + (top_w << f.activation.format.frac),
                    "compensation": (top_e << (2 * f.activation.format.frac))
                    + (top_a << (f.error.format.width + f.activation.format.width - 1)),
                    "normalized error": size * top_e << 16,
                    "state decay": b_b << (_ONLINE_STATE_WIDTH - 1),
                    "state": (1 << (_ONLINE_STATE_WIDTH - 1)) + size * top_e * top_a,
                    "scale gradient": geo.positions * top_e * top_a,
                }
            else:
                k2 = (size * top_e * top_a >> f.activation.format.frac) + 1
                sums = {
                    "variance": size * size * (top_a * top_a + eps),
                    "normalization": (2 * size * top_a) << 16,
                    "scale": top_a * top_w + (top_w << f.activation.format.frac),
                    "backward": ((2 * size * top_e << f.activation.format.frac) + top_a * k2) << 16,
                    "scale gradient": geo.positions * top_e * top_a,
                }
            _check_sums(
                f"stage {index}: {label}'s",
                sums,
                "narrow the stage's formats" + ("" if online else " or use more groups"),
            )
        out = {
            "online": online,
            "groups": groups,
            "size": size,
            "eps": _column([round(NORM_EPS * 2.0 ** (2 * f)) for f in fa], 4),
            "index": index,
            "fa": _column(fa, 4),
            "fd": _column(fd, 4),
            "c": _Rounder(
                [w + a for w, a in zip(fw, fa_in, strict=True)],
                signed,
                stream_id(index, "norm"),
                4,
            ),
            "xhat": _VarRounder(signed, stream_id(index, "normalized"), 4),
            "dx": _DivRounder(
                [d + w for d, w in zip(fd, fw, strict=True)],
                dz,
                stream_id(index, "norm_error"),
                4,
                divisor,
            ),
            "g_scale": _DivRounder(
                [d + a for d, a in zip(fd, fa, strict=True)],
                [f.gradient for f in fm],
                stream_id(index, "gradient"),
                2,
                divisor,
            ),
            "g_shift": _DivRounder(
                fd, [f.gradient for f in fm], stream_id(index, "gradient"), 2, divisor
            ),
        }
        if online:
            kappa = [c["clamp"].code for c in codes]
            out.update(self._online_points(index, kappa, fm, fa, fd, dz, size, b_fwd, b_bkw))
        else:
            # the per-group sum, rounded into a register as wide as the widest accumulator
            out["k2"] = _Rounder(
                [d + a for d, a in zip(fd, fa, strict=True)],
                [
                    RoleFormat(FixedFormat(ACC_LIMIT, d), f.error.rounding, f.error.overflow)
                    for d, f in zip(fd, fm, strict=True)
                ],
                stream_id(index, "norm_group"),
                4,
            )
            out["dc"] = _VarRounder(dz, stream_id(index, "norm_backward"), 4)
        top = [w + a for w, a in zip(fw, fa, strict=True)]
        if ctx["residual"] is not None:
            res = ctx["res_frac"]
            top = [max(t, r) for t, r in zip(top, res, strict=True)]
            out["res_product"] = _column(
                [t - w - a for t, w, a in zip(top, fw, fa, strict=True)], 4
            )
            out["res_shift"] = _column([t - r for t, r in zip(top, res, strict=True)], 4)
        out["z"] = _Rounder(top, acts, stream_id(index, "activation"), 4)
        return out

    @staticmethod
    def _online_points(
        index: int,
        kappa: list,
        fm: list,
        fa: list,
        fd: list,
        dz: list,
        size: int,
        b_fwd: list,
        b_bkw: list,
    ) -> dict:
        """Online Normalization's constants, state rounding points and compensation
        (``docs/numerics.md``, "Online Normalization")."""
        wide = [  # the state's sums: a register as wide as the widest accumulator, frac 0
            RoleFormat(FixedFormat(ACC_LIMIT, 0), f.activation.rounding, f.activation.overflow)
            for f in fm
        ]
        state_fmt = [  # P (frac fd + fa) and U (frac fd): 44-bit codes, E_l's overflow (their
            # sums are exact: no shift, so the rounding mode is never used and draws nothing)
            [
                RoleFormat(
                    FixedFormat(_ONLINE_STATE_WIDTH, frac), Rounding.HALF_EVEN, f.error.overflow
                )
                for f, frac in zip(fm, fracs, strict=True)
            ]
            for fracs in ([d + a for d, a in zip(fd, fa, strict=True)], fd)
        ]
        wide_error = [  # E'': E_l's width and frac plus 8, signed
            RoleFormat(
                FixedFormat(f.error.format.width + 8, d + 8), f.error.rounding, f.error.overflow
            )
            for f, d in zip(fm, fd, strict=True)
        ]
        product = [  # Cv: the format of a product of E' and A_l codes
            RoleFormat(
                FixedFormat(f.error.format.width + f.activation.format.width, d + a),
                f.error.rounding,
                f.error.overflow,
            )
            for f, d, a in zip(fm, fd, fa, strict=True)
        ]
        group = stream_id(index, "norm_group")
        return {
            # the decays' complements b = 2^16 - a, per config (multipliers of [C, C_out] sums)
            "b_f": _column(b_fwd, 2),
            "b_b": _column(b_bkw, 2),
            "state_step": _Rounder([DECAY_FRAC] * len(fm), wide, group, 2),
            "rho_v": _DivRounder(
                [DECAY_FRAC + d + a for d, a in zip(fd, fa, strict=True)], product, group, 2, size
            ),
            "rho_u": _DivRounder([DECAY_FRAC + d for d in fd], wide_error, group, 2, size),
            "g1": _Rounder(
                [d + 2 * a for d, a in zip(fd, fa, strict=True)],
                dz,
                stream_id(index, "norm_online"),
                4,
            ),
            "g2": _VarRounder(wide_error, stream_id(index, "norm_online"), 4),
            "dc": _Rounder([d + 8 for d in fd], dz, stream_id(index, "norm_backward"), 4),
            "P": _Rounder([f.format.frac for f in state_fmt[0]], state_fmt[0], group, 2),
            "U": _Rounder([f.format.frac for f in state_fmt[1]], state_fmt[1], group, 2),
            # the clamp's bound at the affine sum's frac fw + fa
            "bound": _column(
                [k << f.weight.format.frac for k, f in zip(kappa, fm, strict=True)], 4
            ),
            "v0": _column([(size * size) << (2 * a) for a in fa], 2),
        }

    def _kernel_constants(self, ctx: dict) -> None:
        """A stage's rounding points and constants as the compiled dense kernels read them
        (``k_*``, one row per config): the forward's and backward's, and the loss's."""
        c = self.configs
        if ctx["geometry"] is None:
            ctx["k_fwd"] = _kernel_point(ctx["fwd"], c)
            ctx["k_bwd"] = _kernel_point(ctx.get("bwd"), c)
            ctx["k_one"] = (
                _per_config(ctx["one"], c).copy()
                if ctx["cols"] > ctx["n_in"]
                else np.zeros(0, dtype=np.int64)
            )
        if "loss" in ctx and isinstance(ctx["loss"], _Rounder):
            ctx["k_loss"] = _kernel_point(ctx["loss"], c)
            ctx["k_loss_one"] = _per_config(ctx["loss_one"], c).copy()
            ctx["k_softmax_shift"] = _per_config(ctx.get("softmax_shift"), c).copy()
            ctx["k_loss_scale"] = _per_config(ctx.get("loss_scale"), c).copy()

    def _tally(self, stage: int, role: str) -> np.ndarray:
        """The overflow counter of ``(stage, role)``: a ``[C]`` array, added to in place (a
        kernel adds to it)."""
        key = (stage, role)
        n = self.counts.get(key)
        if n is None:
            n = self.counts[key] = np.zeros(self.configs, dtype=np.int64)
        return n

    # ------------------------------------------------------------------------------------------
    # the arithmetic interface used by golden.pipeline

    def begin_step(self, step: int) -> None:
        """The pipeline step about to run: the ``step`` of the stochastic-rounding keys."""
        self.step = step
        self._predicted_step = None

    def _count(self, stage: int, role: str, n: np.ndarray | int) -> None:
        """Add overflow events (per config; a plain int when there is one config)."""
        tally = self._tally(stage, role)
        tally += n

    def saturation_counts(self) -> dict[str, list[int]]:
        """Overflow events per ``"stage role"`` so far, one count per config."""
        if self._bank is not None:
            for (stage, role), n in self._bank.flush().items():
                self._count(stage, role, n)
        return {
            f"stage {stage} {role}": [int(x) for x in np.broadcast_to(n, (self.configs,))]
            for (stage, role), n in sorted(self.counts.items())
        }

    def _rq(
        self,
        ctx: dict,
        name: str,
        role: str,
        acc: np.ndarray,
        index: np.ndarray,
    ) -> np.ndarray:
        codes, over = ctx[name](acc, self.seed, self.step, index)
        self._count(ctx["index"], role, over)
        return codes

    def snapshot(self, w: np.ndarray) -> np.ndarray:
        """Weights kept for weight stashing (the update replaces arrays, never mutates them)."""
        return w

    def init_state(self, stage: StagePlan, w: torch.Tensor, b: torch.Tensor | None) -> FixedState:
        """Initial codes for every config: the float weights (bias as the last column) quantized
        half-even with saturation to its weight format. These are the memory init contents."""
        codes = np.stack([weight_codes(p.stages[stage.index - 1], w, b) for p in self.plans])
        state = FixedState(codes, np.zeros_like(codes))
        if self.prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            state.w_prev = codes
        return state

    def _quantize_inputs(
        self, x: torch.Tensor, step: int, index: torch.Tensor | None, axis: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Float inputs (any shape) as codes of stage 1's input format, ``[C, *x.shape]`` (the
        config axis at ``axis``), and the overflowed elements per config; configs whose input
        role is the same share one quantization (a sweep's configs often do)."""
        roles = self._stage[0]["input_formats"]
        shape = list(x.shape)
        shape.insert(axis, len(roles))
        out = np.empty(shape, dtype=np.int64)
        target = np.moveaxis(out, axis, 0)  # a view: target[c] is config c's codes
        overs = np.zeros(len(roles), dtype=np.int64)
        first: dict[RoleFormat, int] = {}
        for c, role in enumerate(roles):
            if role in first:
                target[c], overs[c] = target[first[role]], overs[first[role]]
                continue
            first[role] = c
            target[c], overs[c] = self._quantize_role(x, role, step, index)
        return out, overs

    def _quantize_role(
        self, x: torch.Tensor, role: RoleFormat, step: int, index: torch.Tensor | None
    ) -> tuple[np.ndarray, int]:
        """Float inputs as codes of ``role`` (compiled where :func:`_quantize_compiled` can),
        and the overflowed elements."""
        compiled = _quantize_compiled(x, role) if self.compiled else None
        if compiled is not None:
            return compiled
        key = None
        if role.rounding is Rounding.STOCHASTIC:
            key = StochasticKey(self.seed, stream_id(1, "input"), step)
        codes, over = quantize(
            x,
            role.format,
            role.rounding,
            role.overflow,
            key=key,
            index=index,
            return_saturated=True,
        )
        return codes.numpy(), int(over.sum())

    def encode_input(self, x: torch.Tensor) -> np.ndarray:
        """One sample's features as codes ``[C, N_in]`` (index = feature, step = this step)."""
        codes, over = self._quantize_inputs(torch.as_tensor(x).reshape(-1), self.step, None)
        self._count(1, "input", over)
        return codes

    def encode_inputs(self, x: torch.Tensor) -> list[np.ndarray] | None:
        """All samples' codes at once, ``[C, N_in]`` each, when the input rounding does not
        depend on the step (no stochastic input rounding); else ``None``. Saturations are
        counted here, once per sample, as :meth:`encode_input` would."""
        if any(r.rounding is Rounding.STOCHASTIC for r in self._stage[0]["input_formats"]):
            return None
        codes, over = self._quantize_inputs(x, 0, None, axis=1)  # [N, C, N_in]
        self._count(1, "input", over)
        return list(codes)

    def predicted(self, stage: StagePlan, s: FixedState) -> tuple[np.ndarray, None]:
        ctx = self._stage[stage.index - 1]
        if ctx["prediction"] is None:
            return s.w, None
        bank = self._bank
        if bank is not None and bank.pre is not None and bank.states[stage.index - 1] is s:
            # Every stage's prediction at once, at the first stage's forward of the step (all
            # of a step's forwards come before its updates); counted per stage as it is used.
            if self._predicted_step != self.step:
                if bank.compiled:
                    self._predictions = bank.predicted_ahead(self.step) or bank.compiled_prediction(
                        self.seed, self.step
                    )
                else:
                    p, raw = bank.pre["pre"].codes(
                        _prediction_acc(bank.pre, *bank.sync()), self.seed, self.step, bank.index
                    )
                    self._predictions = (bank.views(p), bank.overflowed(p, raw))
                self._predicted_step = self.step
            views, counts = self._predictions
            self._count(ctx["index"], "prediction", counts[stage.index - 1])
            return views[stage.index - 1], None
        acc = _prediction_acc(ctx, s.w, s.v, s.w_prev)
        return self._rq(ctx, "pre", "prediction", acc, ctx["idx_w"]), None

    @staticmethod
    def _augment(ctx: dict, x: np.ndarray) -> np.ndarray:
        """Append the bias column's constant input (the code of 1) along the last axis."""
        if ctx["cols"] == ctx["n_in"]:
            return x
        if x.ndim == 2:
            return np.concatenate([x, ctx["one_col"]], 1)
        one = np.broadcast_to(
            np.asarray(ctx["one"]).reshape((-1,) + (1,) * (x.ndim - 1)), x.shape[:-1] + (1,)
        )
        return np.concatenate([x, one], -1)

    def forward(
        self, stage: StagePlan, w: np.ndarray, b: None, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        ctx = self._stage[stage.index - 1]
        if self.compiled:
            c, n = self.configs, stage.n_out
            z = np.empty((c, n), dtype=np.int64)
            mask = np.empty((c, n), dtype=np.bool_) if stage.relu else _NO_MASK
            kernels.dense_forward(
                w,
                x if x.ndim == 2 else x.reshape(c, -1),
                ctx["k_one"],
                ctx["k_fwd"],
                self.seed,
                self.step,
                stage.relu,
                z,
                mask,
                self._tally(ctx["index"], "activation"),
            )
            return z, (mask if stage.relu else None)
        acc = _matmul(w, self._augment(ctx, x)[:, :, None], ctx["fwd_float"])[:, :, 0]
        z = self._rq(ctx, "fwd", "activation", acc, ctx["idx_out"])
        if not stage.relu:
            return z, None
        mask = z > 0
        return z * mask, mask

    def loss(self, y: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
        """Output error codes ``[C, N_out]`` and the (float, reporting-only) loss per config."""
        ctx = self._stage[-1]
        if self.compiled and "k_loss" in ctx:
            delta, losses = np.empty_like(y), np.empty(self.configs)
            kernels.dense_loss(
                y,
                label,
                self.loss_kind is Loss.SOFTMAX_CE,
                ctx["k_loss_one"],
                ctx["k_softmax_shift"],
                ctx["k_loss_scale"],
                ctx["k_loss"],
                self.seed,
                self.step,
                delta,
                self._tally(ctx["index"], "loss"),
                self._out_frac,
                losses,
            )
            return delta, losses
        onehot = np.zeros_like(y)
        onehot[:, label] = 1
        onehot = onehot * ctx["loss_one"]  # the code of 1 in the format of the subtraction
        if self.loss_kind is Loss.MSE:
            acc = y - onehot
        else:
            acc = softmax_codes(y, ctx["softmax_shift"], ctx["loss_scale"]) - onehot
        delta = self._rq(ctx, "loss", "loss", acc, ctx["idx_out"])
        return delta, self.float_loss(y, label)

    def output_values(self, y: np.ndarray) -> torch.Tensor:
        """Output codes ``[C, ..., N_out]`` as float values."""
        fa = np.array([p.stages[-1].formats.activation.format.frac for p in self.plans])
        return torch.from_numpy(
            np.ldexp(y.astype(np.float64), -fa.reshape((-1,) + (1,) * (y.ndim - 1)))
        )

    def float_loss(self, y: np.ndarray, label: int) -> np.ndarray:
        """The loss of the output codes' values, per config (reporting only, not hardware)."""
        out = np.empty(self.configs)
        kernels.float_loss(y, self._out_frac, label, self.loss_kind is Loss.SOFTMAX_CE, out)
        return out

    def output_gradient(
        self, stage: StagePlan, error: np.ndarray, mask: np.ndarray | None
    ) -> np.ndarray:
        return error if mask is None else error * mask

    def backward(self, stage: StagePlan, w: np.ndarray, dz: np.ndarray) -> np.ndarray:
        ctx = self._stage[stage.index - 1]
        if self.compiled:
            out = np.empty((self.configs, ctx["n_in"]), dtype=np.int64)
            kernels.dense_backward(
                w,
                dz,
                ctx["k_bwd"],
                self.seed,
                self.step,
                out,
                self._tally(ctx["index"], "error"),
            )
            return out
        acc = _matmul(dz[:, None, :], w[:, :, : ctx["n_in"]], ctx["bwd_float"])[:, 0, :]
        return self._rq(ctx, "bwd", "error", acc, ctx["idx_in"])

    def update(self, stage: StagePlan, s: FixedState, dz: np.ndarray, x: np.ndarray) -> None:
        ctx = self._stage[stage.index - 1]
        bank = self._bank
        if bank is not None and bank.grad is not None and bank.states[stage.index - 1] is s:
            # the products wait in the bank's buffer: end_step rounds every stage's at once
            i = stage.index - 1
            if self.compiled:
                kernels.dense_products(dz, x, ctx["k_one"], bank.product_array, bank.parts[i][0])
            else:
                np.multiply(dz[:, :, None], self._augment(ctx, x)[:, None, :], out=bank.products[i])
            self._pending[i] = None
            return
        x = self._augment(ctx, x)
        g = self._rq(ctx, "grad", "gradient", dz[:, :, None] * x[:, None, :], ctx["idx_w"])
        self._momentum_update(ctx, s, g)

    def _momentum_update(self, ctx: dict, s: FixedState, g: np.ndarray) -> None:
        """Velocity and weight from the gradient codes ``g`` (steps 2 and 3 of the update).

        In a pipeline (:meth:`attach`) they wait for :meth:`end_step`, which updates every
        stage at once."""
        bank = self._bank
        if bank is not None and bank.states[ctx["index"] - 1] is s:
            self._pending[ctx["index"] - 1] = g
            return
        self._momentum_stage(ctx, s, g)

    def _momentum_stage(self, ctx: dict, s: FixedState, g: np.ndarray) -> None:
        """One stage's velocity and weight update, now."""
        (v, v_raw), (w, w_raw) = self._momentum(ctx, s.w, s.v, g)
        self._count(ctx["index"], "velocity", _overflowed_count(v, v_raw))
        self._count(ctx["index"], "weight", _overflowed_count(w, w_raw))
        if s.w_prev is not None:
            s.w_prev = s.w
        s.w, s.v = w, v

    def _momentum(
        self, k: dict, w: np.ndarray, v: np.ndarray, g: np.ndarray
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """The velocity and weight rounding points of ``docs/numerics.md`` with the constants
        and rounders ``k`` (a stage's, or the bank's over every stage): each as the codes and
        the rounded values before the overflow."""
        acc = k["m"] * _shl(v, k["vel_mv"]) + _shl(g, k["vel_g"])
        v_new = k["vel"].codes(acc, self.seed, self.step, k["idx_w"])
        acc = _shl(w, k["upd_w"]) - k["ea"] * _shl(v_new[0], k["upd_v"])
        if k["eb"] is not None:
            acc = acc - k["eb"] * _shl(g, k["upd_g"])
        return v_new, k["upd"].codes(acc, self.seed, self.step, k["idx_w"])

    def attach(self, states: Sequence[FixedState]) -> None:
        """The states of a pipeline's stages, in order: from now on their predictions and
        velocity and weight updates run over all stages at once (one flat array), the updates
        at :meth:`end_step`. Values are exactly those of stage-by-stage updates."""
        if self._bank is not None:  # what the previous bank counted stays counted
            for (stage, role), n in self._bank.flush().items():
                self._count(stage, role, n)
        self._bank = _Bank.build(self._stage, list(states), self.configs)
        self._pending = {}
        self._predicted_step = None

    def end_step(self) -> None:
        """The velocity and weight updates of the stages that had a backward in this step."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        self._predicted_step = None
        bank = self._bank
        if len(pending) < len(bank.states):  # pipeline fill and drain
            for i in sorted(pending):
                ctx, g = self._stage[i], pending[i]
                if g is None:  # the products in the bank's buffer
                    g = self._rq(ctx, "grad", "gradient", bank.products[i], ctx["idx_w"])
                self._momentum_stage(ctx, bank.states[i], g)
            return
        w, v, w_prev = bank.sync()
        if bank.compiled:
            ahead = bank.pre is not None  # the next step's prediction, made in the same pass
            bank.compiled_update(pending, self.seed, self.step, ahead)
            return
        if bank.grad is not None:
            g, raw = bank.grad.codes(bank.product_array, self.seed, self.step, bank.index)
            for i, n in enumerate(bank.overflowed(g, raw)):
                self._count(i + 1, "gradient", n)
        else:
            g = np.concatenate(
                [pending[i].reshape(self.configs, -1) for i in range(len(pending))], 1
            )
        (v, v_raw), (w_new, w_raw) = self._momentum(bank.k, w, v, g)
        for i, (nv, nw) in enumerate(
            zip(bank.overflowed(v, v_raw), bank.overflowed(w_new, w_raw), strict=True)
        ):
            self._count(i + 1, "velocity", nv)
            self._count(i + 1, "weight", nw)
        bank.set(w_new, v, w if w_prev is not None else None)

    # ------------------------------------------------------------------------------------------
    # conv stages (docs/numerics.md, "Conv stages"): the weights are a matrix as a dense stage's.
    # A training step's forward, backward and gradient of a stage without a projection or a
    # global average (normalized or not) run compiled (golden.conv_kernels, the stage's "kernel"
    # tables); the numpy path (_conv_run and the rest) computes the same codes for the others
    # and for evaluation, and is what tests/test_conv_kernels.py checks the kernels against.

    def init_conv_state(self, stage: StagePlan, params: tuple[torch.Tensor, ...]) -> FixedState:
        """Initial codes of a conv stage: the weight tensor as ``[C_out, C_in x kernel^d]``
        with the bias, group norm's scale and shift and the projection's weights and bias as
        more columns, quantized as a dense stage's weights."""
        # every parameter as columns, in the order of parameter_shapes (FixedConvState.tensors)
        w = torch.cat([p.reshape(p.shape[0], -1) for p in params], 1)
        codes = np.stack([weight_codes(p.stages[stage.index - 1], w, None) for p in self.plans])
        state = FixedConvState(stage, codes, np.zeros_like(codes))
        if self.prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            state.w_prev = codes
        nm = self._stage[stage.index - 1]["norm"]
        if nm is not None and nm["online"]:  # docs/numerics.md: mean 0, variance 1, no error
            shape = (self.configs, nm["groups"])
            state.online = {
                "M": np.zeros(shape, dtype=np.int64),
                "V": np.broadcast_to(np.asarray(nm["v0"], dtype=np.int64), shape).copy(),
                "P": np.zeros(shape, dtype=np.int64),
                "U": np.zeros(shape, dtype=np.int64),
            }
        return state

    def conv_predicted(self, stage: StagePlan, s: FixedState) -> tuple[np.ndarray, np.ndarray]:
        """The predicted weights (as a dense stage's), twice: the flat parameters and the
        parameters the forward takes are the same matrix of codes."""
        w, _ = self.predicted(stage, s)
        return w, w

    def conv_forward(
        self,
        stage: StagePlan,
        w: np.ndarray,
        x: np.ndarray,
        residual: np.ndarray | None,
        state: FixedState | None = None,
    ) -> tuple[np.ndarray, FixedConvContext]:
        """Output codes ``[C, n_out]`` of one sample's input codes ``[C, n_in]``. ``state``,
        the stage's, is read and advanced only with Online Normalization (its statistics)."""
        ctx = self._stage[stage.index - 1]
        kt = ctx["kernel"]
        if kt is None:
            res = None if residual is None else residual[:, None]
            online = None if state is None else getattr(state, "online", None)
            y, kept = self._conv_run(
                stage, ctx, w, x[:, None], res, self.step, ctx["idx_conv"], True, online
            )
            return y[:, 0], kept
        # compiled: the same codes in one pass (golden.conv_kernels)
        geo: ConvGeometry = ctx["geometry"]
        c, out, positions = x.shape[0], geo.conv_shape[0], geo.positions
        z = np.empty((c, stage.n_out), dtype=np.int64)
        mask = np.empty((c, out * positions), dtype=np.bool_) if stage.relu else kt["no_mask"]
        choice = kt["empty"]
        if geo.pool is Pool.MAX:
            choice = np.empty((c, stage.n_out), dtype=np.int64)
        columns = np.empty((c, positions, ctx["cols"]), dtype=np.int64)
        nm = ctx["norm"]
        xhat = rsq = clamped = None
        mean = var = kt["empty"]
        if nm is not None:
            xhat = np.empty((c, out * positions), dtype=np.int64)
            rsq = np.empty((c, nm["groups"], 2), dtype=np.int64)
            if nm["online"]:
                assert state is not None, "Online Normalization needs the stage's state"
                online = state.online  # type: ignore[attr-defined]
                mean, var = online["M"].copy(), online["V"].copy()  # advanced below
                clamped = np.empty((c, out * positions), dtype=np.bool_)
        over = conv_kernels.conv_forward(
            x,
            w,
            kt["empty"] if residual is None else residual,
            kt["src"],
            kt["geo"],
            kt["k"],
            kt["rq"],
            self.seed,
            self.step,
            z,
            mask,
            choice,
            columns,
            kt["counts"],
            kt["norm"],
            True,
            mean,
            var,
            kt["empty"] if xhat is None else xhat,
            kt["empty3"] if rsq is None else rsq,
            kt["no_mask"] if clamped is None else clamped,
        )
        self._count_kernel(ctx, "forward", over)
        if nm is not None and nm["online"]:
            online["M"], online["V"] = mean, var
        kept = FixedConvContext(
            mask.reshape(c, 1, out, positions) if stage.relu else None,
            choice.reshape(c, 1, out, -1) if geo.pool is Pool.MAX else None,
            columns,  # [C, positions, cols]: the windows' matrix transposed, for one sample
            xhat,
            rsq,
            clamped=clamped,
        )
        return z, kept

    def _count_kernel(self, ctx: dict, phase: str, over: int) -> None:
        """Count the overflows of a conv kernel of ``phase`` (``over`` of them in all, per
        config and rounding point in the stage's ``counts``) under their roles: the same
        counters as the numpy path's, skipping the additions of 0 once a counter exists."""
        kt, index = ctx["kernel"], ctx["index"]
        for p, role in kt["counted"][phase]:
            if over or (index, role) not in self.counts:
                n = kt["counts"][:, p]
                self._count(index, role, int(n[0]) if self.configs == 1 else n.copy())

    def _conv_run(
        self,
        stage: StagePlan,
        ctx: dict,
        w: np.ndarray,
        x: np.ndarray,
        residual: np.ndarray | None,
        step: int,
        index: np.ndarray,
        count: bool,
        online: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, FixedConvContext]:
        """The forward of samples ``x`` ``[C, B, n_in]``: convolution, bias and residual in
        one exact sum, one rounding, ReLU, pooling. ``index`` ``[1, B, C_out, positions]``
        numbers the convolution's outputs; the pooled outputs are numbered alike. With Online
        Normalization ``online`` is the stage's state: a training forward (``count``, one
        sample) advances it, an evaluation only reads it."""
        geo: ConvGeometry = ctx["geometry"]
        c, b = x.shape[:2]
        columns = im2col(x, geo)
        if ctx["cols"] > ctx["n_in"]:  # the bias row: the code of 1 at every position
            one = np.broadcast_to(
                np.asarray(ctx["one"]).reshape(-1, 1, 1, 1), (c, b, 1, geo.positions)
            )
            columns = np.concatenate([columns, one], 2)
        acc = _matmul(w[:, None, :, : ctx["cols"]], columns, ctx["fwd_float"])

        def rq(name, role: str, value: np.ndarray, idx: np.ndarray, *frac) -> np.ndarray:
            rounder = ctx[name] if isinstance(name, str) else name
            codes, over = rounder(value, *frac, self.seed, step, idx)
            if count:
                self._count(ctx["index"], role, over)
            return codes

        xhat = rsqrt = strided = clamped = None
        term = None  # the residual's term: its codes, or the projection's exact sum
        if residual is not None and ctx["projection"] is not None:
            strided = self._strided(ctx, residual)
            pc = slice(ctx["proj_col"], ctx["proj_col"] + ctx["projection"]["cols"])
            term = np.matmul(w[:, None, :, pc], strided)
        elif residual is not None:
            term = residual.reshape(acc.shape)
        if ctx["norm"] is not None and ctx["norm"]["online"]:
            assert online is not None, "Online Normalization needs the stage's state"
            z, xhat, rsqrt, clamped = self._online_forward(
                ctx, w, acc, term, index, rq, online, step if count else None
            )
        elif ctx["norm"] is not None:
            z, xhat, rsqrt = self._norm_forward(ctx, w, acc, term, index, rq)
        else:
            if term is not None:
                acc = _shl(acc, ctx["res_product"]) + _shl(term, ctx["res_shift"])
            z = rq("fwd", "activation", acc, index)
        mask = choice = None
        if stage.relu:
            mask = z > 0
            z = z * mask
        if geo.pool is Pool.AVG:
            windows = pool_windows(z, geo)
            pooled = np.arange(windows[0, ..., 0].size, dtype=np.int64)
            z = rq("pool", "pool", windows.sum(-1), pooled.reshape((1,) + windows.shape[1:4]))
        elif geo.pool is Pool.MAX:
            windows = pool_windows(z, geo)
            choice = windows.argmax(-1)  # the first maximum in the window's row-major order
            z = np.take_along_axis(windows, choice[..., None], -1)[..., 0]
        elif geo.pool is Pool.GLOBAL_AVG:  # every channel's exact sum, divided once
            pooled = np.arange(b * z.shape[2], dtype=np.int64).reshape(1, b, z.shape[2])
            z = rq("pool", "pool", z.sum(-1), pooled)
        return z.reshape(c, b, -1), FixedConvContext(
            mask, choice, columns, xhat, rsqrt, strided, clamped
        )

    @staticmethod
    def _strided(ctx: dict, residual: np.ndarray) -> np.ndarray:
        """The projection's input: the residual's codes at the positions its stride reads,
        ``[C, B, C_res (+1), positions]``, with the code of 1 as the bias row."""
        pj, geo = ctx["projection"], ctx["geometry"]
        c, b = residual.shape[:2]
        (cr, hr, wr), (sh, sw) = pj["shape"], pj["stride"]
        ho, wo = geo.conv_shape[1:]
        r = residual.reshape(c, b, cr, hr, wr)[
            :, :, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw
        ]
        r = r.reshape(c, b, cr, ho * wo)
        if pj["cols"] > cr:
            one = np.broadcast_to(np.asarray(pj["one"]).reshape(-1, 1, 1, 1), (c, b, 1, ho * wo))
            r = np.concatenate([r, one], 2)
        return r

    def _norm_forward(self, ctx: dict, w: np.ndarray, acc: np.ndarray, residual, index, rq):
        """Group norm (``docs/numerics.md``): the convolution rounded, each group's exact sums,
        its reciprocal square root, the normalized codes, then scale, shift and the residual
        in one exact sum and one rounding. Returns ``z``, the normalized codes by group and
        the groups' ``(r, J)``."""
        nm = ctx["norm"]
        c, b, out, positions = acc.shape
        shape = (c, b, nm["groups"], nm["size"])
        conv = rq(nm["c"], "norm", acc, index).reshape(shape)
        s1 = conv.sum(-1, keepdims=True)
        q = nm["size"] * (conv * conv).sum(-1, keepdims=True) - s1 * s1
        r, j = _norm_rsqrt(q + nm["size"] * nm["size"] * nm["eps"])
        xhat = rq(
            nm["xhat"], "normalized", (nm["size"] * conv - s1) * r,
            index.reshape((1, -1) + shape[2:]), 31 - j,
        )  # fmt: skip
        cols = ctx["norm_col"]
        scale, shift = w[:, None, :, cols, None], w[:, None, :, cols + 1, None]
        acc2 = xhat.reshape(acc.shape) * scale + (shift << nm["fa"])
        if residual is not None:  # the residual's term
            acc2 = _shl(acc2, nm["res_product"]) + _shl(residual, nm["res_shift"])
        return rq(nm["z"], "activation", acc2, index), xhat, (r, j)

    def _online_forward(self, ctx: dict, w, acc, residual, index, rq, online, step):
        """Online Normalization's forward (``docs/numerics.md``): the convolution rounded,
        each channel's exact sums, the reciprocal square root of the running variance, the
        normalized codes, scale and shift, the clamp, the residual, one rounding. With a
        ``step`` (training) the channel's statistics then take in the sample's. Returns ``z``,
        the normalized codes, the channels' ``(r, J)`` and where the clamp held."""
        nm = ctx["norm"]
        c, b, out, positions = acc.shape
        m = nm["size"]
        conv = rq(nm["c"], "norm", acc, index)
        mean, var = online["M"], online["V"]  # [C, C_out]
        r, j = _norm_rsqrt(var[:, None, :, None] + m * m * nm["eps"])
        centered = ((m * conv) << 8) - mean[:, None, :, None]
        y = rq(nm["xhat"], "normalized", centered * r, index, 39 - j)
        cols = ctx["norm_col"]
        scale, shift = w[:, None, :, cols, None], w[:, None, :, cols + 1, None]
        s = y * scale + (shift << nm["fa"])
        bound = nm["bound"]
        clamped = (s >= bound) | (s <= -bound)
        s = np.minimum(np.maximum(s, -bound), bound)
        if residual is not None:  # the residual's term
            s = _shl(s, nm["res_product"]) + _shl(residual, nm["res_shift"])
        z = rq(nm["z"], "activation", s, index)
        if step is not None:
            assert b == 1, "a training forward takes one sample"
            s1 = conv.sum(-1)[:, 0]  # [C, C_out]
            qs = m * (conv * conv).sum(-1)[:, 0] - s1 * s1
            ch = np.arange(out, dtype=np.int64)[None, :]
            point = nm["state_step"]
            dev = (s1 << 8) - mean
            inc, _ = point(nm["b_f"] * dev, self.seed, step, ch)
            square = (dev >> 8) ** 2
            spread, _ = point(-nm["b_f"] * square, self.seed, step, out + ch)
            spread += square  # a_f * square / 2^16, as square - b_f * square / 2^16
            grow, _ = point(nm["b_f"] * (qs - var + spread), self.seed, step, 2 * out + ch)
            online["M"], online["V"] = mean + inc, var + grow
        return z, y, (r, j), clamped

    def _online_backward(
        self, ctx: dict, w: np.ndarray, d: np.ndarray, kept: FixedConvContext, online: dict
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Online Normalization's backward (``docs/numerics.md``): the clamp's mask, the error
        at the normalized codes, its compensation along them (``P``) and along the constant
        (``U``) around the reciprocal square root; the error at the convolution's output, the
        exact sums of the scale's and shift's gradients, and the state advanced."""
        nm = ctx["norm"]
        assert kept.xhat is not None and kept.rsqrt is not None and kept.clamped is not None
        out, m = d.shape[2], nm["size"]
        cols, y = ctx["norm_col"], kept.xhat
        d = d * ~kept.clamped
        sums = ((d * y).sum(-1), d.sum(-1))  # [C, 1, C_out]: the scale's and shift's
        idx = ctx["idx_conv"]
        dx = self._rq(nm, "dx", "norm_error", d * w[:, None, :, cols, None], idx)
        ch = np.arange(out, dtype=np.int64)[None, :]
        rho_v = self._rq(nm, "rho_v", "norm_group", nm["b_b"] * online["P"], 3 * out + ch)
        rho_u = self._rq(nm, "rho_u", "norm_group", nm["b_b"] * online["U"], 4 * out + ch)
        fa = nm["fa"]
        g1 = self._rq(nm, "g1", "norm_online", (dx << 2 * fa) - rho_v[:, None, :, None] * y, idx)
        r, j = kept.rsqrt
        g2, over = nm["g2"](m * g1 * r, nm["fd"] + 31 - j - fa, self.seed, self.step, out * m + idx)
        self._count(ctx["index"], "norm_online", over)
        dc = self._rq(nm, "dc", "norm_backward", g2 - rho_u[:, None, :, None], idx)
        p_new, over_p = nm["P"](online["P"] + (g1 * y).sum(-1)[:, 0])
        u_new, over_u = nm["U"](online["U"] + dc.sum(-1)[:, 0])
        self._count(ctx["index"], "norm_online", over_p + over_u)
        online["P"], online["U"] = p_new, u_new
        return dc, sums

    def conv_backward(
        self,
        stage: StagePlan,
        w: np.ndarray,
        x: np.ndarray,
        kept: FixedConvContext,
        error,
        state: FixedState | None = None,
    ) -> tuple[tuple, np.ndarray | None, np.ndarray | None]:
        """The error at the convolution's output (kept for the update with the windows and,
        with group norm, the sums of its scale's and shift's gradients), the
        error sent to the previous stage (None for stage 1) and the error sent along the
        residual (None without one), for the error codes ``[C, n_out]`` arriving."""
        ctx = self._stage[stage.index - 1]
        geo: ConvGeometry = ctx["geometry"]
        c, out = error.shape[0], geo.conv_shape[0]
        kt = ctx["kernel"]
        if kt is not None:  # compiled: the same codes in one pass (golden.conv_kernels)
            n = out * geo.positions
            d = np.empty((c, n), dtype=np.int64)
            residual_error = error_in = None
            if ctx["residual"] is not None:
                residual_error = np.empty((c, n), dtype=np.int64)
            error_in_out = kt["empty"]
            if stage.index > 1:
                error_in = error_in_out = np.empty((c, x.shape[1]), dtype=np.int64)
            nm, norm_sums = ctx["norm"], None
            sums = kt["empty3"] if nm is None else np.empty((c, 2, out), dtype=np.int64)
            ps = us = kt["empty"]
            if nm is not None and nm["online"]:
                assert state is not None and getattr(state, "online", None) is not None
                ps, us = state.online["P"].copy(), state.online["U"].copy()  # advanced below
            over = conv_kernels.conv_backward(
                error,
                w,
                kt["src"],
                kt["geo"],
                kt["rq"],
                self.seed,
                self.step,
                kt["empty"] if kept.choice is None else kept.choice.reshape(c, -1),
                kt["no_mask"] if kept.mask is None else kept.mask.reshape(c, -1),
                d,
                kt["empty"] if residual_error is None else residual_error,
                error_in_out,
                kt["counts"],
                kt["norm"],
                kt["empty"] if kept.xhat is None else kept.xhat,
                kt["empty3"] if kept.rsqrt is None else kept.rsqrt,
                kt["no_mask"] if kept.clamped is None else kept.clamped,
                ps,
                us,
                sums,
            )
            self._count_kernel(ctx, "backward", over)
            if nm is not None:
                norm_sums = (sums[:, None, 0], sums[:, None, 1])  # [C, 1, C_out] each
                if nm["online"]:
                    state.online["P"], state.online["U"] = ps, us  # type: ignore[union-attr]
            pending = (d.reshape(c, 1, out, -1), kept.columns, norm_sums, None)
            return pending, error_in, residual_error
        e = error.reshape(c, 1, out, -1)
        if geo.pool is Pool.AVG:  # every window element gets the error: the 1/4 is a frac
            d = unpool(np.repeat(e[..., None], math.prod(geo.window), -1), geo)
        elif geo.pool is Pool.MAX:
            windows = np.zeros(e.shape + (math.prod(geo.window),), dtype=np.int64)
            np.put_along_axis(windows, kept.choice[..., None], e[..., None], -1)
            d = unpool(windows, geo)
        elif geo.pool is Pool.GLOBAL_AVG:  # every position gets its channel's error
            d = np.broadcast_to(e, (c, 1, out, geo.positions))
        else:
            d = e
        if kept.mask is not None:
            d = d * kept.mask
        residual_error = proj = None
        if ctx["projection"] is not None:
            residual_error = self._projection_backward(ctx, w, d)
            proj = (d, kept.residual)
        elif ctx["residual"] is not None:
            r = self._rq(ctx, "residual", "residual", d, ctx["idx_conv"])
            residual_error = r.reshape(c, -1)
        norm_sums = None
        if ctx["norm"] is not None and ctx["norm"]["online"]:
            assert state is not None and getattr(state, "online", None) is not None
            d, norm_sums = self._online_backward(ctx, w, d, kept, state.online)
        elif ctx["norm"] is not None:
            d, norm_sums = self._norm_backward(ctx, w, d, kept)
        error_in = None
        if stage.index > 1:
            wt = w[:, None, :, : ctx["n_in"]].transpose(0, 1, 3, 2)
            acc = col2im(_matmul(wt, d, ctx["bwd_float"]), geo)
            error_in = self._rq(ctx, "bwd", "error", acc, ctx["idx_x"])[:, 0]
        return (d, kept.columns, norm_sums, proj), error_in, residual_error

    def _projection_backward(self, ctx: dict, w: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The error sent along a projected residual: the projection's transpose times ``d``,
        exact, at the positions its stride read (0 elsewhere), rounded once."""
        pj, geo = ctx["projection"], ctx["geometry"]
        c = d.shape[0]
        (cr, hr, wr), (sh, sw) = pj["shape"], pj["stride"]
        ho, wo = geo.conv_shape[1:]
        pw = w[:, None, :, ctx["proj_col"] : ctx["proj_col"] + cr].transpose(0, 1, 3, 2)
        full = np.zeros((c, 1, cr, hr, wr), dtype=np.int64)
        full[:, :, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw] = np.matmul(
            pw, d
        ).reshape(c, 1, cr, ho, wo)
        r = self._rq(ctx, "residual", "residual", full.reshape(c, 1, -1), pj["idx_res"])
        return r.reshape(c, -1)

    def _norm_backward(
        self, ctx: dict, w: np.ndarray, d: np.ndarray, kept: FixedConvContext
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Group norm's backward (``docs/numerics.md``): the error at the convolution's output
        and the exact sums of the scale's and the shift's gradients."""
        nm = ctx["norm"]
        assert kept.xhat is not None and kept.rsqrt is not None
        c, b, out, positions = d.shape
        cols, shape = ctx["norm_col"], kept.xhat.shape
        scale = w[:, None, :, cols, None]
        xhat = kept.xhat.reshape(d.shape)
        sums = ((d * xhat).sum(-1), d.sum(-1))  # [C, 1, C_out]: the scale's and shift's
        dx = self._rq(nm, "dx", "norm_error", d * scale, ctx["idx_conv"]).reshape(shape)
        s1 = dx.sum(-1, keepdims=True)
        groups = np.arange(shape[2], dtype=np.int64).reshape(1, 1, -1, 1)
        k2, _ = nm["k2"]((dx * kept.xhat).sum(-1, keepdims=True), self.seed, self.step, groups)
        t = ((nm["size"] * dx - s1) << nm["fa"]) - kept.xhat * k2
        r, j = kept.rsqrt
        idx = ctx["idx_conv"].reshape((1, 1) + shape[2:])
        codes, over = nm["dc"](t * r, 31 - j + nm["fd"], self.seed, self.step, idx)
        self._count(ctx["index"], "norm_backward", over)
        return codes.reshape(d.shape), sums

    def conv_update(
        self, stage: StagePlan, s: FixedState, pending: tuple[np.ndarray, np.ndarray, tuple | None]
    ) -> None:
        """The gradient (the error at the convolution's output times the windows, summed over
        the positions: one rounding; group norm's and the projection's columns from their own
        sums), then velocity and weight as for a dense stage."""
        ctx = self._stage[stage.index - 1]
        d, columns, norm_sums, proj = pending
        kt = ctx["kernel"]
        if kt is not None:  # compiled: the windows as conv_forward's kernel wrote them
            c, out, cols = d.shape[0], ctx["geometry"].conv_shape[0], ctx["cols"]
            # the weights' columns, then a norm's scale and shift (written below)
            g = np.empty((c, out, ctx["idx_w"].shape[2]), dtype=np.int64)
            over = conv_kernels.conv_gradient(
                d.reshape(c, -1),
                columns,
                kt["rq"],
                ctx["idx_w"].shape[2],
                self.seed,
                self.step,
                g,
                kt["counts"],
            )
            self._count_kernel(ctx, "update", over)
            if norm_sums is not None:
                g[..., cols : cols + 2] = self._norm_gradient(ctx, norm_sums)
            self._momentum_update(ctx, s, g)
            return
        acc = _matmul(d, columns.transpose(0, 1, 3, 2), ctx["grad_float"]).sum(1)
        cols = ctx["cols"]
        g = self._rq(ctx, "grad", "gradient", acc, ctx["idx_w"][..., :cols])
        if norm_sums is not None:  # the scale's and the shift's columns
            g = np.concatenate([g, self._norm_gradient(ctx, norm_sums)], -1)
        if proj is not None:  # the projection's columns: error times its strided input
            pj, pc = ctx["projection"], ctx["proj_col"]
            acc = np.matmul(proj[0], proj[1].transpose(0, 1, 3, 2)).sum(1)
            idx = ctx["idx_w"][..., pc : pc + pj["cols"]]
            g = np.concatenate([g, self._rq(pj, "grad", "gradient", acc, idx)], -1)
        self._momentum_update(ctx, s, g)

    def _norm_gradient(self, ctx: dict, norm_sums: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """A norm's scale's and shift's gradient codes ``[C, C_out, 2]`` from their exact sums
        ``[C, B, C_out]`` (summed over the samples)."""
        nm, cols = ctx["norm"], ctx["cols"]
        g_scale = self._rq(nm, "g_scale", "gradient", norm_sums[0].sum(1), ctx["idx_w"][..., cols])
        g_shift = self._rq(
            nm, "g_shift", "gradient", norm_sums[1].sum(1), ctx["idx_w"][..., cols + 1]
        )
        return np.stack([g_scale, g_shift], -1)

    def add_errors(self, stage: StagePlan, error: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """The error arriving at a residual's source: the sum of the error from the next stage
        and the residual's, both codes of the source's error format, exact, then that format's
        overflow (counted under the source's ``residual`` role)."""
        ctx = self._stage[stage.index - 1]
        out = np.empty_like(error)
        counts = ctx["sum_counts"]
        over = conv_kernels.add_errors(error, residual, ctx["sum_rq"], out, counts)
        if over or (ctx["index"], "residual") not in self.counts:
            n = counts[:, 0]
            self._count(ctx["index"], "residual", int(n[0]) if self.configs == 1 else n.copy())
        return out

    def label_of(self, y: np.ndarray) -> np.ndarray:
        """Predicted class per config: the first maximum, as a comparator chain finds it."""
        return y.argmax(-1)

    def evaluate(
        self, stages: list[StagePlan], states: list[FixedState], x: torch.Tensor
    ) -> np.ndarray:
        """Output codes ``[C, N, N_out]`` for a batch with the current weights (no prediction).

        Stochastic rounding here uses step ``EVAL_STEP`` and index ``sample * N + element``;
        evaluation does not add to the saturation counters."""
        n = x.shape[0]
        index = torch.arange(x.numel(), dtype=torch.int64).reshape(x.shape)
        h, _ = self._quantize_inputs(x, EVAL_STEP, index)  # [C, N, F]
        outputs: list[np.ndarray] = []
        for stage, s in zip(stages, states, strict=True):
            ctx = self._stage[stage.index - 1]
            if stage.conv:
                assert stage.spec is not None
                residual = outputs[-stage.spec.residual] if stage.spec.residual else None
                idx = np.arange(n * ctx["idx_conv"].size, dtype=np.int64)
                idx = idx.reshape((1, n) + ctx["idx_conv"].shape[2:])
                online = getattr(s, "online", None)
                h, _ = self._conv_run(stage, ctx, s.w, h, residual, EVAL_STEP, idx, False, online)
                outputs.append(h)
                continue
            if self.compiled:
                out = np.empty((self.configs, n * stage.n_out), dtype=np.int64)
                kernels.dense_forward(
                    s.w,
                    np.ascontiguousarray(h).reshape(self.configs, -1),
                    ctx["k_one"],
                    ctx["k_fwd"],
                    self.seed,
                    EVAL_STEP,
                    stage.relu,
                    out,
                    _NO_MASK,
                    np.zeros(self.configs, dtype=np.int64),  # evaluation counts nothing
                )
                h = out.reshape(self.configs, n, stage.n_out)
                outputs.append(h)
                continue
            acc = _matmul(self._augment(ctx, h), s.w.transpose(0, 2, 1), ctx["fwd_float"])
            n_out = acc.shape[2]
            idx = np.arange(n * n_out, dtype=np.int64).reshape(1, n, n_out)
            flat, _ = ctx["fwd"](
                acc.reshape(acc.shape[0], -1),
                self.seed,
                EVAL_STEP,
                idx.reshape(1, -1),
            )
            h = flat.reshape(acc.shape)
            if stage.relu:
                h = np.maximum(h, 0)
            outputs.append(h)
        return h


def _prediction_acc(k: dict, w: np.ndarray, v: np.ndarray, w_prev: np.ndarray | None) -> np.ndarray:
    """The predicted weight's exact sum before its rounding (``docs/numerics.md``), with the
    constants ``k`` (a stage's, or the bank's over every stage)."""
    if k["prediction"] == "velocity":
        return _shl(w, k["pre_w"]) - k["eT"] * _shl(v, k["pre_v"])
    return w + k["T"] * (w - w_prev)


def _overflowed_count(result: np.ndarray, out: np.ndarray | None) -> np.ndarray | int:
    """Elements that overflowed, per config (an int for one config, or when none did):
    saturating or wrapping changes exactly the out-of-range elements."""
    if out is None:
        return 0
    over = result != out
    if over.shape[0] == 1:  # count_nonzero is much cheaper than a reduction
        return np.count_nonzero(over)
    return over.reshape(over.shape[0], -1).sum(1)


class _Bank:
    """Every stage's weight, velocity (and previous weight) codes side by side in one
    ``[C, E]`` array each, the stages' states holding views of them, with every update
    constant and rounder spread over the elements: the prediction and the velocity and weight
    updates of all stages are then one pass each."""

    #: the per-stage constants of the update and the prediction, spread over the elements
    UPDATE = ("m", "vel_mv", "vel_g", "ea", "upd_w", "upd_v", "upd_g")
    #: the compiled update's rounding points, in the order of its counts
    ROLES = ("gradient", "velocity", "weight")
    PREDICTION = {"velocity": ("pre_w", "pre_v", "eT"), "weight_difference": ("T",)}

    def __init__(self, states: list[FixedState], configs: int):
        self.states = states
        self.configs = configs
        self.shapes = [s.w.shape[1:] for s in states]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.starts = np.cumsum([0] + self.sizes[:-1]).astype(np.int64)
        self.size_array = np.array(self.sizes, dtype=np.int64)
        #: each stage's columns of a ``[C, E]`` array and its shape with the configs
        self.parts = [
            (int(a), int(a) + n, (configs,) + shape)
            for a, n, shape in zip(self.starts, self.sizes, self.shapes, strict=True)
        ]
        self.k: dict = {}
        self.pre: dict | None = None
        #: all stages dense: their gradients' rounding point joined, the products in one
        #: buffer (each stage's part a view) until end_step
        self.grad: _Rounder | None = None
        self.product_array = np.zeros((0, 0), dtype=np.int64)
        self.products: list[np.ndarray] = []
        self._held: list[tuple] = []
        self._arrays: tuple = ()
        #: the compiled kernels' rounding points and constants per config and stage
        #: (:meth:`kernel_tables`)
        self.tables: dict = {}
        #: whether the joined prediction and update run compiled (else numpy: the same codes)
        self.compiled = True
        #: the next step's prediction made by the compiled update: (step, the arrays it was
        #: made from, each stage's codes, each stage's overflowed elements)
        self.ahead: tuple | None = None
        #: the compiled update's overflowed elements per role (ROLES), config and stage, and
        #: the roles it rounded, since the last :meth:`flush`
        self.totals = np.zeros((len(self.ROLES), configs, len(self.sizes)), dtype=np.int64)
        #: the compiled update's counts of one call (:meth:`compiled_update`)
        self.counts = np.zeros((4, configs, len(self.sizes)), dtype=np.int64)
        self.roles: set[str] = set()

    @classmethod
    def build(cls, ctxs: list[dict], states: list[FixedState], configs: int) -> _Bank | None:
        """The bank of these stages, or None when their rounding points cannot be joined (the
        stages then update one by one)."""
        if len(states) != len(ctxs) or any(
            s.w.shape != (configs,) + ctx["idx_w"].shape[1:] or s.v.shape != s.w.shape
            for ctx, s in zip(ctxs, states, strict=True)
        ):
            return None
        bank = cls(states, configs)
        sizes = bank.sizes
        idx = np.concatenate([ctx["idx_w"].reshape(1, -1) for ctx in ctxs], 1)
        bank.index = idx
        k = {"idx_w": idx, "vel": None, "upd": None}
        for name in ("vel", "upd"):
            k[name] = _Rounder.concat([ctx[name] for ctx in ctxs], sizes, configs)
            if k[name] is None:
                return None
        for name in cls.UPDATE:
            k[name] = _flat([ctx[name] for ctx in ctxs], sizes, configs)
        eb = [ctx["eb"] for ctx in ctxs]
        k["eb"] = (
            None
            if all(e is None for e in eb)
            else _flat([0 if e is None else e for e in eb], sizes, configs)
        )
        bank.k = k
        if all(ctx["geometry"] is None for ctx in ctxs):  # dense stages: the gradients too
            bank.grad = _Rounder.concat([ctx["grad"] for ctx in ctxs], sizes, configs)
            if bank.grad is not None:
                bank.product_array = np.zeros((configs, sum(sizes)), dtype=np.int64)
                bank.products = bank.views(bank.product_array)
                if not all(np.shares_memory(v, bank.product_array) for v in bank.products):
                    bank.grad = None  # the parts must be views the products are written into
        kinds = {ctx["prediction"] for ctx in ctxs}
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind is not None:
            pre = _Rounder.concat([ctx["pre"] for ctx in ctxs], sizes, configs)
            if pre is not None:
                bank.pre = {"prediction": kind, "pre": pre}
                for name in cls.PREDICTION[kind]:
                    bank.pre[name] = _flat([ctx[name] for ctx in ctxs], sizes, configs)
        bank.tables = cls.kernel_tables(ctxs, configs, kind, bank.grad is not None)
        return bank

    @staticmethod
    def kernel_tables(ctxs: list[dict], configs: int, kind: str | None, grad: bool) -> dict:
        """The stages' rounding points and constants per config and stage, as the compiled
        kernels read them (:mod:`golden.kernels`): ``rq`` the gradient's, velocity's, weight's
        and prediction's rounding points ``[4, C, S, len(RQ_FIELDS)]``, ``k`` the update's and
        the prediction's constants ``[C, S, len(UPDATE_FIELDS) + len(PREDICTION_FIELDS)]``
        (zeros for no prediction, and for no gradient when the gradients are not rounded
        joined: ``grad`` false) and ``kind`` the prediction (0 none, 1 velocity, 2 weight
        difference)."""

        def per_config(x) -> np.ndarray:
            return _per_config(x, configs)

        def rounding_point(r: _Rounder | None) -> np.ndarray:  # [C, len(RQ_FIELDS)]
            return _kernel_point(r, configs)

        names = list(_Bank.PREDICTION[kind]) if kind is not None else []
        names += [None] * (len(kernels.PREDICTION_FIELDS) - len(names))
        constants = [
            [ctx[name] for name in kernels.UPDATE_FIELDS] + [ctx.get(name) for name in names]
            for ctx in ctxs
        ]
        return {
            "rq": np.ascontiguousarray(
                np.stack(
                    [
                        np.stack([rounding_point(ctx.get(name)) for ctx in ctxs], 1)
                        for name in (
                            "grad" if grad else None,
                            "vel",
                            "upd",
                            "pre" if kind else None,
                        )
                    ]
                )
            ),
            "k": np.ascontiguousarray(
                np.stack([np.stack([per_config(x) for x in row], 1) for row in constants], 1)
            ),
            "kind": {None: 0, "velocity": 1, "weight_difference": 2}[kind],
        }

    def compiled_prediction(self, seed: int, step: int) -> tuple[list[np.ndarray], list]:
        """Every stage's predicted weights and overflowed elements (as :meth:`overflowed`
        gives them), by the compiled kernel."""
        w, v, w_prev = self.sync()
        t = self.tables
        out = np.empty_like(w)
        counts = np.zeros((4, self.configs, len(self.sizes)), dtype=np.int64)
        kernels.joined_prediction(
            w,
            v,
            w if w_prev is None else w_prev,
            t["kind"],
            self.starts,
            self.size_array,
            self.index[0],
            t["rq"],
            t["k"],
            seed,
            step,
            out,
            counts,
        )
        return self.views(out), self.counted(counts[3])

    def compiled_update(self, pending: dict, seed: int, step: int, ahead: bool) -> None:
        """Every stage's velocity and weight update (and its gradient's rounding, when the
        products wait in :attr:`product_array`) by the compiled kernel: the new codes are set
        and the overflowed elements per role and stage added to :attr:`totals`. With
        ``ahead`` (and a prediction) the prediction of step ``step + 1`` from the new codes is
        kept in :attr:`ahead` (:meth:`predicted_ahead` hands it out)."""
        w, v, w_prev = self.sync()
        grad_given = self.grad is None
        if grad_given:
            src = np.concatenate(
                [pending[i].reshape(self.configs, -1) for i in range(len(pending))], 1
            )
        else:
            src = self.product_array
        w_new, v_new = np.empty_like(w), np.empty_like(v)
        counts = self.counts
        counts[...] = 0
        t = self.tables
        kind = t["kind"] if ahead else 0
        predicted = np.empty_like(w) if kind else w_new
        kernels.joined_update(
            w,
            v,
            src,
            grad_given,
            self.starts,
            self.size_array,
            self.index[0],
            t["rq"],
            t["k"],
            seed,
            step,
            w_new,
            v_new,
            counts,
            kind,
            step + 1,
            predicted,
        )
        self.set(w_new, v_new, w if w_prev is not None else None)
        self.ahead = None
        if kind:
            self.ahead = (
                step + 1,
                self._held,
                self.views(predicted),
                self.counted(counts[3].copy()),
            )
        # the overflows add up here until flush(); a gradient rounded stage by stage was
        # counted there
        first = 1 if grad_given else 0
        self.totals[first:3] += counts[first:3]
        self.roles.update(self.ROLES[first:3])

    def flush(self) -> dict[tuple[int, str], np.ndarray]:
        """The overflowed elements the compiled update added up since the last flush, per
        ``(stage, role)`` it rounded (``[C]`` each); the sums start again from 0."""
        out = {}
        for p, role in enumerate(self.ROLES):
            if role in self.roles:
                for i in range(len(self.sizes)):
                    out[(i + 1, role)] = self.totals[p, :, i].copy()
        self.totals[...] = 0
        self.roles = set()
        return out

    def predicted_ahead(self, step: int) -> tuple[list[np.ndarray], list] | None:
        """The prediction of ``step`` made by the last update, if it was made for that step
        from the codes the states hold now."""
        ahead = self.ahead
        if ahead is None or ahead[0] != step or not self.current(ahead[1]):
            return None
        return ahead[2], ahead[3]

    def current(self, held: list[tuple]) -> bool:
        """Whether the states hold exactly the arrays ``held`` (as :meth:`set` recorded them)."""
        if len(held) != len(self.states):
            return False
        for s, (w, v, prev) in zip(self.states, held, strict=True):
            if s.w is not w or s.v is not v or s.w_prev is not prev:
                return False
        return True

    def counted(self, counts: np.ndarray) -> list:
        """Per stage the overflowed elements of a kernel's ``counts [C, S]`` (per config; an int
        for one config), as :meth:`overflowed` gives them."""
        if self.configs == 1:
            return counts[0].tolist()
        return list(counts.T)

    def sync(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(W, V, W_prev)`` of the states now (joined again if something replaced them)."""
        if not self.current(self._held):
            held = [(s.w, s.v, s.w_prev) for s in self.states]
            c = self.configs
            w = np.concatenate([s.w.reshape(c, -1) for s in self.states], 1)
            v = np.concatenate([s.v.reshape(c, -1) for s in self.states], 1)
            prev = None
            if all(s.w_prev is not None for s in self.states):
                prev = np.concatenate([s.w_prev.reshape(c, -1) for s in self.states], 1)
            self._arrays, self._held = (w, v, prev), held
        return self._arrays

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """Each stage's part of a ``[C, E]`` array, in the stage's shape."""
        return [flat[:, a:b].reshape(shape) for a, b, shape in self.parts]

    def overflowed(self, result: np.ndarray, out: np.ndarray | None) -> list:
        """Elements that overflowed per stage (per config; an int for one config)."""
        if out is None:
            return [0] * len(self.sizes)
        over = result != out
        if not np.count_nonzero(over):  # the usual case, found without a reduction per stage
            return [0] * len(self.sizes)
        over = np.add.reduceat(over, self.starts, axis=1, dtype=np.int64)
        if self.configs == 1:
            return [int(n) for n in over[0]]
        return list(over.T)

    def set(self, w: np.ndarray, v: np.ndarray, w_prev: np.ndarray | None) -> None:
        """New codes for every stage (the arrays are new: stashed weights keep the old)."""
        ws, vs = self.views(w), self.views(v)
        ps = self.views(w_prev) if w_prev is not None else [None] * len(ws)
        for s, nw, nv, np_ in zip(self.states, ws, vs, ps, strict=True):
            s.w, s.v = nw, nv
            if np_ is not None:
                s.w_prev = np_
        self._arrays = (w, v, w_prev)
        self._held = [(s.w, s.v, s.w_prev) for s in self.states]


def _per_config(x: int | np.ndarray | None, configs: int) -> np.ndarray:
    """A constant (an int, or one per config in any shape; None: 0) as ``[C]`` int64."""
    x = 0 if x is None else x
    return np.broadcast_to(np.asarray(x, dtype=np.int64).reshape(-1), (configs,))


def _quantize_compiled(x: torch.Tensor, role: RoleFormat) -> tuple[np.ndarray, int] | None:
    """:func:`pbhw.core.fixed.quantize` of the float values ``x`` into ``role`` by the compiled
    kernel (the codes in ``x``'s shape and the overflowed elements), or None where that
    function must do it: stochastic rounding, values that are not floats or not all finite, or
    values of ``2^53`` codes or more."""
    if role.rounding is Rounding.STOCHASTIC or not x.is_floating_point():
        return None
    values = np.ascontiguousarray(x.detach().to(torch.float64).numpy().reshape(-1))
    if not np.isfinite(values).all():
        return None
    fmt = role.format
    fields = {
        "shift": 0,  # unused: the kernel shifts by the float's own exponent
        "lo": fmt.min_code,
        "hi": fmt.max_code,
        "span": 1 << fmt.width,
        "stream": 0,
        "rounding": kernels.ROUNDING_CODES[role.rounding],
        "overflow": kernels.OVERFLOW_CODES[role.overflow],
    }
    point = np.array([fields[name] for name in kernels.RQ_FIELDS], dtype=np.int64)
    codes = np.empty(values.shape, dtype=np.int64)
    over = kernels.quantize_floats(values, fmt.frac, point, codes)
    return None if over < 0 else (codes.reshape(tuple(x.shape)), int(over))


def _kernel_point(r: _Rounder | None, configs: int) -> np.ndarray:
    """A rounding point (one value per config, not per element) as the compiled kernels read
    it (:data:`golden.kernels.RQ_FIELDS`): ``[C, len(RQ_FIELDS)]``, zeros for ``None``."""
    if r is None:
        return np.zeros((configs, len(kernels.RQ_FIELDS)), dtype=np.int64)

    def modes(groups: list, codes: dict) -> np.ndarray:
        out = np.zeros(configs, dtype=np.int64)
        for mode, where in groups:
            rows = slice(None) if where is None else np.asarray(where).reshape(-1)
            out[rows] = codes[mode]
        return out

    cols = [_per_config(x, configs) for x in (r.shift, r.lo, r.hi, r.span, r.stream)]
    cols += [
        modes(r.roundings, kernels.ROUNDING_CODES),
        modes(r.overflows, kernels.OVERFLOW_CODES),
    ]
    return np.ascontiguousarray(np.stack(cols, 1))


def softmax_codes(y: np.ndarray, shift: int | np.ndarray, frac_e: int | np.ndarray) -> np.ndarray:
    """The softmax unit of ``docs/numerics.md`` (:func:`golden.kernels.softmax_row`) on every
    row of ``y [C, K]``: probabilities as codes with ``frac_e`` bits (per config)."""
    configs = y.shape[0]
    shifts, fracs = _per_config(shift, configs), _per_config(frac_e, configs)
    out = np.empty_like(y)
    for c in range(configs):
        kernels.softmax_row(y[c], shifts[c], fracs[c], out[c])
    return out


# The clip ufunc itself: np.clip adds a Python-level wrapper that costs more than the clip.
_clip = getattr(np, "_core", np).umath.clip
_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
_PARITY = 0x1BD11BDA


def threefry_words(seed: int, stream: int | np.ndarray, step: int, index: np.ndarray) -> np.ndarray:
    """First Threefry-2x32-13 output word for key ``(seed, stream)`` and counter
    ``(step, index)``, as int64: the numpy twin of :func:`pbhw.core.fixed.threefry2x32` in native
    uint32 arithmetic (wrapping is the mod 2^32 the algorithm wants); tests check they agree.

    ``stream`` may be an array broadcasting with ``index`` (one stream per element): the words
    of several rounding points then come from one pass."""
    u32 = np.uint32
    if isinstance(stream, np.ndarray):
        k1 = stream.astype(np.uint32)
        k2 = (stream ^ (seed ^ _PARITY)).astype(np.uint32)
    else:
        k1, k2 = u32(stream), u32(seed ^ stream ^ _PARITY)
    ks = (u32(seed), k1, k2)
    with np.errstate(over="ignore"):
        x1 = np.asarray(index, dtype=np.uint32) + k1
        x0 = np.full_like(x1, u32((step + seed) & 0xFFFFFFFF))
        t = np.empty_like(x1)
        for i in range(THREEFRY_ROUNDS):
            r = _ROTATIONS[i % 8]
            x0 += x1
            np.right_shift(x1, _U32[32 - r], out=t)
            x1 <<= _U32[r]
            x1 |= t
            x1 ^= x0
            if i % 4 == 3:  # key injection
                j = (i + 1) // 4
                x0 += ks[j % 3]
                x1 += ks[(j + 1) % 3]
                x1 += u32(j)
    return x0.astype(np.int64)


_U32 = [np.uint32(r) for r in range(33)]


def _flat(values: Sequence[int | np.ndarray], sizes: Sequence[int], configs: int):
    """Per-part constants (an int, or a per-config column) spread over the parts' elements
    of a ``[C, sum(sizes)]`` array: one int when every part and config agrees."""
    if all(not isinstance(v, np.ndarray) for v in values) and len(set(values)) == 1:
        return int(values[0])
    if all(isinstance(v, np.ndarray) and np.array_equal(v, values[0]) for v in values):
        return values[0].reshape(-1, 1)  # one column per config, the same for every part
    rows = configs if any(isinstance(v, np.ndarray) and v.size > 1 for v in values) else 1
    return np.concatenate(
        [
            np.broadcast_to(np.asarray(v, dtype=np.int64).reshape(-1, 1), (rows, n))
            for v, n in zip(values, sizes, strict=True)
        ],
        1,
    )


#: Online Normalization's error-compensation state ``P`` and ``U``: signed codes of this width
_ONLINE_STATE_WIDTH = 44
#: the conv kernels' rounding points (``conv_kernels.POINTS``) counted after each phase, with
#: the role each is counted under (the numpy path's roles)
_KERNEL_ROLES = {
    "forward": (
        ("activation", "activation"),
        ("pool", "pool"),
        ("c", "norm"),
        ("xhat", "normalized"),
    ),
    "backward": (
        ("residual", "residual"),
        ("error", "error"),
        ("dx", "norm_error"),
        ("rho_v", "norm_group"),
        ("g1", "norm_online"),
        ("dc", "norm_backward"),
    ),
    "update": (("gradient", "gradient"),),
}


def _division(r: _DivRounder) -> tuple[_Rounder, list[int] | int | np.ndarray]:
    """A division's rounding point as a conv kernel divides (``conv_kernels._divide1`` by its
    divisor times ``2^shift``): the rounder whose row it reads (lo, hi, span, stream, modes)
    and its shift per config. A power-of-two divisor's shift rounder rounds the same values."""
    if r.shift_rounder is not None:
        return r.shift_rounder, r.shift_rounder.shift - (r.divisor.bit_length() - 1)
    return r.target, r.shifts


def _check_sums(subject: str, sums: dict[str, int], advice: str) -> None:
    """Raise ConfigError if a sum (name -> its largest magnitude) needs more than ACC_LIMIT
    bits: ``"{subject} {name} sum needs N bits, more than ACC_LIMIT; {advice}"``."""
    for what, top in sums.items():
        bits = span_width(-top, top)
        if bits > ACC_LIMIT:
            raise ConfigError(
                f"{subject} {what} sum needs {bits} bits, more than {ACC_LIMIT}; {advice}"
            )


def _column(values: Sequence[int], ndim: int = 2) -> int | np.ndarray:
    """A per-config constant: a plain int when every config agrees, else ``[C, 1, ...]``."""
    if len(set(values)) == 1:
        return values[0]
    return np.array(list(values), dtype=np.int64).reshape((-1,) + (1,) * (ndim - 1))


def _shl(x: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """``x * 2^k`` (``k >= 0``), skipping the pass when every config's ``k`` is 0."""
    return x if isinstance(k, int) and k == 0 else x << k


def _matmul(a: np.ndarray, b: np.ndarray, exact_in_float: bool) -> np.ndarray:
    """Exact integer matrix product; through float64 when every partial sum fits 53 bits."""
    if exact_in_float:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a, b)


def _check_compatible(plans: Sequence[Plan]) -> None:
    """Configs run together must share everything but formats, rounding and constants."""
    first = plans[0].config
    for plan in plans[1:]:
        cfg = plan.config
        for what, a, b in (
            ("network", first.network, cfg.network),
            ("optimizer.algorithm", first.optimizer.algorithm, cfg.optimizer.algorithm),
            (
                "optimizer.weight_prediction",
                first.optimizer.weight_prediction,
                cfg.optimizer.weight_prediction,
            ),
            (
                "optimizer.weight_stashing",
                first.optimizer.weight_stashing,
                cfg.optimizer.weight_stashing,
            ),
            ("seed", first.seed, cfg.seed),
            ("train.dataset", first.train.dataset, cfg.train.dataset),
            ("train.epochs", first.train.epochs, cfg.train.epochs),
        ):
            if a != b:
                raise ConfigError(f"configs trained together must agree on {what}: {a!r} vs {b!r}")
