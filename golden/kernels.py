"""Compiled (numba) kernels of the fixed-point trainer: the joined update (every stage's weight
prediction, and every stage's gradient, velocity and weight rounding points over the flat arrays
of :class:`golden.fixed_arith._Bank`, one pass per rounding point), and a dense stage's step
(forward with its ReLU, the loss unit with the reported float loss, backward, the gradient's
products) and its evaluation, each for every config at once; and the quantization of float
inputs into a format (:func:`quantize_floats`, the values of :func:`pbhw.core.fixed.quantize`).

They compute exactly the values of the numpy path of :mod:`golden.fixed_arith` (the rounding
points of ``docs/numerics.md``, and for stochastic rounding the Threefry-2x32-13 words of
:func:`golden.fixed_arith.threefry_words`); ``tests/test_kernels.py`` compares the two on random
codes in every rounding and overflow mode. The numpy path stays for conv stages, and runs
everything when ``FixedArithmetic.compiled`` (the stage kernels) or ``_Bank.compiled`` (the
joined update) is false.

A rounding point is described per config and stage by one row of :data:`RQ_FIELDS`; the
update's and the prediction's constants by rows of :data:`UPDATE_FIELDS` and
:data:`PREDICTION_FIELDS`. Compiled code is cached on disk (``cache=True``: numba's
``__pycache__`` beside this file, or its user cache folder when that is not writable): the
first run compiles (about 13 s on 2 busy cores, 1 s more for several configs' signatures),
later processes load it (about 0.4 s at their first training step, numba's start-up).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from pbhw.core.constants import EXP2_TABLE, LOG2E_Q16
from pbhw.core.fixed import (
    _THREEFRY_PARITY,
    _THREEFRY_ROTATIONS,
    THREEFRY_ROUNDS,
    Overflow,
    Rounding,
)

if THREEFRY_ROUNDS != 13:  # threefry_word writes the rounds out
    raise ImportError(f"golden.kernels writes out 13 Threefry rounds, not {THREEFRY_ROUNDS}")

__all__ = [
    "OVERFLOW_CODES",
    "PREDICTION_FIELDS",
    "ROUNDING_CODES",
    "RQ_FIELDS",
    "UPDATE_FIELDS",
    "dense_backward",
    "dense_forward",
    "dense_loss",
    "dense_products",
    "float_loss",
    "joined_prediction",
    "joined_update",
    "quantize_floats",
    "softmax_row",
    "threefry_word",
]

#: one rounding point for one config and stage: the shift right (negative: left), the format's
#: smallest and largest code and its 2^width, the Threefry stream, the rounding and overflow mode
RQ_FIELDS = ("shift", "lo", "hi", "span", "stream", "rounding", "overflow")
ROUNDING_CODES = {
    Rounding.FLOOR: 0,
    Rounding.TOWARD_ZERO: 1,
    Rounding.HALF_UP: 2,
    Rounding.HALF_EVEN: 3,
    Rounding.STOCHASTIC: 4,
}
OVERFLOW_CODES = {Overflow.SATURATE: 0, Overflow.WRAP: 1}
#: the velocity and weight update's constants (``eb`` 0 when the update has no gradient term)
UPDATE_FIELDS = ("m", "vel_mv", "vel_g", "ea", "upd_w", "upd_v", "upd_g", "eb")
#: the prediction's constants: velocity (``pre_w``, ``pre_v``, ``eT``) or weight difference
#: (``T`` in the first field, the others 0); 0 without a prediction
PREDICTION_FIELDS = ("pre_w", "pre_v", "eT")

_STOCHASTIC = 4
_WRAP = 1
_MASK = 0xFFFFFFFF
_R = _THREEFRY_ROTATIONS


@njit(cache=True, inline="always")
def _mix(x0: int, x1: int, r: int) -> tuple[int, int]:
    """One Threefry round: add, rotate ``x1`` left by ``r``, xor."""
    x0 = (x0 + x1) & _MASK
    x1 = ((x1 << r) | (x1 >> (32 - r))) & _MASK
    return x0, x1 ^ x0


@njit(cache=True, inline="always")
def _mix4(x0: int, x1: int, ra: int, rb: int, rc: int, rd: int) -> tuple[int, int]:
    x0, x1 = _mix(x0, x1, ra)
    x0, x1 = _mix(x0, x1, rb)
    x0, x1 = _mix(x0, x1, rc)
    return _mix(x0, x1, rd)


@njit(cache=True, inline="always")
def threefry_word(seed: int, stream: int, step: int, index: int) -> int:
    """First Threefry-2x32-13 output word for key ``(seed, stream)`` and counter
    ``(step, index)``, in int64 arithmetic masked to 32 bits: the 13 rounds written out (a key
    injection after every fourth) so that a loop over elements compiles to straight-line code."""
    k0 = seed & _MASK
    k1 = stream & _MASK
    k2 = (seed ^ stream ^ _THREEFRY_PARITY) & _MASK
    x1 = (index + k1) & _MASK
    x0 = (step + seed) & _MASK
    x0, x1 = _mix4(x0, x1, _R[0], _R[1], _R[2], _R[3])
    x0, x1 = (x0 + k1) & _MASK, (x1 + k2 + 1) & _MASK
    x0, x1 = _mix4(x0, x1, _R[4], _R[5], _R[6], _R[7])
    x0, x1 = (x0 + k2) & _MASK, (x1 + k0 + 2) & _MASK
    x0, x1 = _mix4(x0, x1, _R[0], _R[1], _R[2], _R[3])
    x0, x1 = (x0 + k0) & _MASK, (x1 + k1 + 3) & _MASK
    x0, _ = _mix(x0, x1, _R[4])
    return x0


@njit(cache=True, inline="always")
def _round(acc: int, s: int, mode: int, word: int) -> int:
    """``acc`` shifted right by ``s`` (left for ``s < 0``) and rounded in ``mode`` (a code of
    ROUNDING_CODES), before the overflow; ``word``: the element's Threefry word (read only for
    stochastic rounding). The formulas of ``golden.fixed_arith._round_right`` for ``s >= 1``."""
    if s < 0:
        return acc << -s
    if s == 0:
        return acc
    if mode == 0:  # floor
        return acc >> s
    if mode == 2:  # half up
        return (acc + (np.int64(1) << (s - 1))) >> s
    if mode == 3:  # half even
        return (acc + (np.int64(1) << (s - 1)) - 1 + ((acc >> s) & 1)) >> s
    rem = acc & ((np.int64(1) << s) - 1)
    if mode == 1:  # toward zero
        return (acc >> s) + ((rem != 0) & (acc < 0))
    # stochastic: up when the word is below the discarded fraction's top 32 bits
    top = rem << (32 - s) if s <= 32 else (acc >> (s - 32)) & _MASK
    return (acc >> s) + (word < top)


@njit(cache=True, inline="always")
def _overflow(out: int, lo: int, hi: int, span: int, wrap: bool) -> int:
    """A rounded value's overflow into ``[lo, hi]``: wrap modulo ``span`` (``2^width``, so the
    residue is the low bits), or saturate. No branch on the value: a loop of these vectorizes."""
    if wrap:
        return ((out - lo) & (span - 1)) + lo
    return min(max(out, lo), hi)


@njit(cache=True, inline="always")
def _rq_mode(acc, out, s, lo, hi, span, mode, wrap, words) -> int:
    """``out[j]``: ``acc[j]`` rounded (``_round``) and overflowed (``_overflow``) for every
    ``j``; returns the overflowed elements. Inlined with a constant ``mode`` (:func:`_rq_pass`)
    the loop has no branch on the mode."""
    over = 0
    for j in range(acc.shape[0]):
        raw = _round(acc[j], s, mode, words[j])
        code = _overflow(raw, lo, hi, span, wrap)
        over += code != raw
        out[j] = code
    return over


@njit(cache=True)
def _rq_pass(acc, out, point, words) -> int:
    """One rounding point (``point``: RQ_FIELDS) over the elements ``acc`` into ``out``, one
    loop per rounding mode; returns the overflowed elements."""
    s, lo, hi, span, _, mode, wrap = point
    w = wrap == _WRAP
    if mode == 0:
        return _rq_mode(acc, out, s, lo, hi, span, 0, w, words)
    if mode == 1:
        return _rq_mode(acc, out, s, lo, hi, span, 1, w, words)
    if mode == 2:
        return _rq_mode(acc, out, s, lo, hi, span, 2, w, words)
    if mode == 3:
        return _rq_mode(acc, out, s, lo, hi, span, 3, w, words)
    return _rq_mode(acc, out, s, lo, hi, span, _STOCHASTIC, w, words)


@njit(cache=True)
def _draw(words, p, rq, seed, step, index, start, size, i) -> None:
    """``words[p, :size]``: the Threefry words of rounding point ``p`` of stage ``i`` for its
    elements, when some config rounds it stochastically (the same words for every config)."""
    for c in range(rq.shape[1]):
        if rq[p, c, i, 5] == _STOCHASTIC:
            stream = rq[p, c, i, 4]
            for e in range(size):
                words[p, e] = threefry_word(seed, stream, step, index[start + e])
            return


@njit(cache=True)
def joined_update(
    w,
    v,
    src,
    grad_given,
    starts,
    sizes,
    index,
    rq,
    k,
    seed,
    step,
    w_out,
    v_out,
    counts,
    kind,
    next_step,
    predicted,
):
    """Every stage's velocity and weight update (and gradient rounding) in one pass, and, when
    ``kind`` is set, the next step's predicted weights from the new codes.

    ``w``, ``v``: the codes ``[C, E]``; ``src``: the gradient codes (``grad_given``) or the
    gradient's exact products ``[C, E]``; stage ``i`` is elements ``starts[i]`` on
    (``sizes[i]`` of them), element ``e``'s counter ``index[e]``. ``rq[p, c, i]``: the rounding
    points gradient (``p = 0``), velocity, weight and prediction of config ``c`` and stage ``i``
    (RQ_FIELDS); ``k[c, i]``: UPDATE_FIELDS then PREDICTION_FIELDS. Writes ``w_out``,
    ``v_out`` and adds the overflowed elements to ``counts[p, c, i]``. The prediction of
    step ``next_step`` into ``predicted [C, E]`` for ``kind`` 1 (velocity) or 2 (weight
    difference: the previous weights then the weights ``w`` before this update); none for 0."""
    most = sizes.max()
    words = np.zeros((4, most), dtype=np.int64)
    gbuf, acc = np.empty(most, dtype=np.int64), np.empty(most, dtype=np.int64)
    for i in range(starts.shape[0]):
        a, n = starts[i], sizes[i]
        for p in range(1 if grad_given else 0, 3):
            _draw(words, p, rq, seed, step, index, a, n, i)
        if kind:
            _draw(words, 3, rq, seed, next_step, index, a, n, i)
        word_g, word_v, word_w, word_p = words[0, :n], words[1, :n], words[2, :n], words[3, :n]
        t = acc[:n]
        for c in range(w.shape[0]):
            m, vel_mv, vel_g, ea, upd_w, upd_v, upd_g, eb, k0, k1, k2 = k[c, i]
            # the stage's part of every row (indices from 0: no negative-index handling)
            w_c, v_c, src_c = w[c, a : a + n], v[c, a : a + n], src[c, a : a + n]
            w_to, v_to, p_to = w_out[c, a : a + n], v_out[c, a : a + n], predicted[c, a : a + n]
            # each rounding point one pass over the stage's elements (loops that vectorize)
            g = src_c
            if not grad_given:
                g = gbuf[:n]
                counts[0, c, i] += _rq_pass(src_c, g, rq[0, c, i], word_g)
            for j in range(n):
                t[j] = m * (v_c[j] << vel_mv) + (g[j] << vel_g)
            counts[1, c, i] += _rq_pass(t, v_to, rq[1, c, i], word_v)
            for j in range(n):
                t[j] = (w_c[j] << upd_w) - ea * (v_to[j] << upd_v) - eb * (g[j] << upd_g)
            counts[2, c, i] += _rq_pass(t, w_to, rq[2, c, i], word_w)
            if kind:
                if kind == 1:
                    for j in range(n):
                        t[j] = (w_to[j] << k0) - k2 * (v_to[j] << k1)
                else:
                    for j in range(n):
                        t[j] = w_to[j] + k0 * (w_to[j] - w_c[j])
                counts[3, c, i] += _rq_pass(t, p_to, rq[3, c, i], word_p)


@njit(cache=True)
def joined_prediction(w, v, w_prev, kind, starts, sizes, index, rq, k, seed, step, out, counts):
    """Every stage's predicted weights in one pass: ``kind`` 1 velocity, 2 weight difference
    (``w_prev`` the previous weights). ``rq[3, c, i]``: the prediction's rounding point
    (RQ_FIELDS), ``k[c, i, -3:]`` its PREDICTION_FIELDS; writes ``out`` and adds the
    overflowed elements to ``counts[3, c, i]``."""
    words = np.zeros((4, sizes.max()), dtype=np.int64)
    for i in range(starts.shape[0]):
        a, n = starts[i], sizes[i]
        _draw(words, 3, rq, seed, step, index, a, n, i)
        for c in range(w.shape[0]):
            s, lo, hi, span, _, mode, wrap = rq[3, c, i]
            k0, k1, k2 = k[c, i, -3:]
            over = 0
            for j in range(n):
                e = a + j
                if kind == 1:
                    acc = (w[c, e] << k0) - k2 * (v[c, e] << k1)
                else:
                    acc = w[c, e] + k0 * (w[c, e] - w_prev[c, e])
                raw = _round(acc, s, mode, words[3, j])
                code = _overflow(raw, lo, hi, span, wrap == _WRAP)
                over += code != raw
                out[c, e] = code
            counts[3, c, i] += over


@njit(cache=True)
def quantize_floats(x, frac, point, out) -> int:
    """``out[j]``: the finite float ``x[j]`` as a code with ``frac`` fractional bits, rounded
    and overflowed as ``point`` (RQ_FIELDS; its shift and stream unused, its rounding not
    stochastic) says: the values of :func:`pbhw.core.fixed.quantize`. Returns the overflowed
    elements, or -1 (``out`` unspecified) when some nonzero ``|x[j]| 2^frac`` is ``2^53`` or
    more, which that function handles instead.

    ``x[j] = m 2^e`` with ``m * 2^53`` an exact integer (``frexp``); the code is that integer
    shifted right by ``53 - e - frac``, a shift capped at 60 with the same result (the integer
    is below ``2^53``, so any shift from 54 on floors to 0 or -1 and rounds to 0)."""
    _, lo, hi, span, _, mode, wrap = point
    w = wrap == _WRAP
    over = 0
    for j in range(x.shape[0]):
        m, e = math.frexp(x[j])
        s = 53 - e - frac
        if s < 0:
            if m != 0.0:
                return -1
            s = 0  # a zero, at any frac
        raw = _round(np.int64(m * 9007199254740992.0), min(s, 60), mode, 0)
        code = _overflow(raw, lo, hi, span, w)
        over += code != raw
        out[j] = code
    return over


# ----------------------------------------------------------------------------------------------
# A dense stage's step: forward, loss, backward and the gradient's products, per config.
# ``rq[c]`` is one rounding point's RQ_FIELDS for config ``c`` (the same stream for every
# config); element ``e`` of a rounding point draws its Threefry word at counter ``(step, e)``.


@njit(cache=True)
def _point_words(rq, seed, step, n):
    """The Threefry words of rounding point ``rq [C, RQ_FIELDS]`` for elements ``0 .. n-1``,
    when some config rounds it stochastically (the same words for every config); else zeros."""
    words = np.zeros(n, dtype=np.int64)
    for c in range(rq.shape[0]):
        if rq[c, 5] == _STOCHASTIC:
            stream = rq[c, 4]
            for e in range(n):
                words[e] = threefry_word(seed, stream, step, e)
            break
    return words


@njit(cache=True)
def dense_forward(w, x, one, rq, seed, step, relu, out, mask, counts):
    """A dense stage's forward for a batch: ``out[c, b] = RQ(W_c [x_b | 1])`` with the ReLU.

    ``w`` the weight codes ``[C, R, cols]`` (the bias as the last column when ``one``, the bias
    input's code per config, is not empty), ``x`` the input codes ``[C, B * n_in]`` (sample
    ``b`` after sample ``b - 1``); ``rq [C, RQ_FIELDS]`` the activation's rounding point
    (element ``b * R + r``). Writes ``out [C, B * R]``; with ``relu`` the negative codes
    become 0, and ``mask`` (``[C, B * R]``, bool; or empty for no mask) says which codes are
    positive. Adds the overflowed elements to ``counts[c]``."""
    rows, cols = w.shape[1], w.shape[2]
    n_in = cols - (1 if one.shape[0] else 0)
    n_c, n_b = x.shape[0], x.shape[1] // n_in
    masked = mask.shape[0] > 0
    words = _point_words(rq, seed, step, n_b * rows)
    for c in range(n_c):
        s, lo, hi, span, _, mode, wrap = rq[c]
        bias = one[c]
        over = 0
        for b in range(n_b):
            x_b = x[c, b * n_in : (b + 1) * n_in]
            for r in range(rows):
                w_r = w[c, r]
                acc = 0
                for k in range(n_in):
                    acc += w_r[k] * x_b[k]
                if cols > n_in:
                    acc += w_r[n_in] * bias
                raw = _round(acc, s, mode, words[b * rows + r])
                code = _overflow(raw, lo, hi, span, wrap == _WRAP)
                over += code != raw
                if relu and code < 0:
                    code = 0
                if masked:
                    mask[c, b * rows + r] = code > 0
                out[c, b * rows + r] = code
        counts[c] += over


@njit(cache=True)
def dense_backward(w, dz, rq, seed, step, out, counts):
    """A dense stage's backward: ``out[c] = RQ(dz_c W_c)`` over the input columns only.

    ``w [C, R, cols]``, ``dz [C, R]``, ``out [C, n_in]``; ``rq [C, RQ_FIELDS]`` the error's
    rounding point (element ``k``). Adds the overflowed elements to ``counts[c]``."""
    n_c, rows = dz.shape
    n_in = out.shape[1]
    words = _point_words(rq, seed, step, n_in)
    acc = np.empty(n_in, dtype=np.int64)
    for c in range(n_c):
        s, lo, hi, span, _, mode, wrap = rq[c]
        acc[:] = 0
        for r in range(rows):
            d = dz[c, r]
            if d != 0:
                w_r = w[c, r]
                for k in range(n_in):
                    acc[k] += d * w_r[k]
        over = 0
        for k in range(n_in):
            raw = _round(acc[k], s, mode, words[k])
            code = _overflow(raw, lo, hi, span, wrap == _WRAP)
            over += code != raw
            out[c, k] = code
        counts[c] += over


@njit(cache=True)
def softmax_row(y, shift, frac_e, out):
    """The softmax unit of ``docs/numerics.md`` on one output vector of codes ``y``: each
    ``2^(log2 e (y_k - max y))`` from the table (8 fractional bits of the exponent), the
    probabilities as codes with ``frac_e`` fractional bits (floor of the exact quotient)."""
    top = y.max()
    total = 0
    for k in range(y.shape[0]):
        t = ((y[k] - top) * LOG2E_Q16) >> shift
        e = EXP2_TABLE[t & 255] >> min(-(t >> 8), 63)
        out[k] = e
        total += e
    for k in range(y.shape[0]):
        out[k] = (out[k] << frac_e) // total


@njit(cache=True)
def float_loss(y, frac, label, softmax, out):
    """The loss of the output codes ``y [C, K]`` (values ``y * 2^-frac[c]``) for the class
    ``label`` per config, in float64 (reporting only, not hardware): mse ``0.5 * sum (v -
    onehot)^2``, softmax_ce ``log sum exp v - v[label]`` (from the largest value), into
    ``out [C]``; the sums in element order."""
    n_c, n_k = y.shape
    for c in range(n_c):
        scale = math.ldexp(1.0, -frac[c])
        if softmax:
            top = y[c].max() * scale
            total = 0.0
            for k in range(n_k):
                total += math.exp(y[c, k] * scale - top)
            out[c] = (math.log(total) + top) - y[c, label] * scale
        else:
            total = 0.0
            for k in range(n_k):
                d = y[c, k] * scale - (1.0 if k == label else 0.0)
                total += d * d
            out[c] = 0.5 * total


@njit(cache=True)
def dense_loss(y, label, softmax, one, shift, frac_e, rq, seed, step, out, counts, frac, losses):
    """The loss unit's error codes ``out [C, K]`` for the output codes ``y [C, K]`` and the
    class ``label``: ``RQ(y - onehot)`` (mse) or ``RQ(softmax(y) - onehot)`` (``softmax``,
    with the unit's ``shift[c]`` and ``frac_e[c]``); ``one[c]`` the code of the target 1,
    ``rq [C, RQ_FIELDS]`` the loss's rounding point (element ``k``). Adds the overflowed
    elements to ``counts[c]``, and writes :func:`float_loss` (``frac``: the output's frac per
    config) into ``losses [C]``."""
    float_loss(y, frac, label, softmax, losses)
    n_c, n_k = y.shape
    words = _point_words(rq, seed, step, n_k)
    acc = np.empty(n_k, dtype=np.int64)
    for c in range(n_c):
        s, lo, hi, span, _, mode, wrap = rq[c]
        if softmax:
            softmax_row(y[c], shift[c], frac_e[c], acc)
        else:
            acc[:] = y[c]
        acc[label] -= one[c]
        over = 0
        for k in range(n_k):
            raw = _round(acc[k], s, mode, words[k])
            code = _overflow(raw, lo, hi, span, wrap == _WRAP)
            over += code != raw
            out[c, k] = code
        counts[c] += over


@njit(cache=True)
def dense_products(dz, x, one, out, start):
    """A dense stage's gradient products ``dz_r [x | 1]_k`` into ``out[c, start + r * cols +
    k]`` (``cols`` = ``n_in`` + 1 with ``one[c]`` the bias input's code, else ``n_in``)."""
    n_c, rows = dz.shape
    n_in = x.shape[1]
    cols = n_in + (1 if one.shape[0] else 0)
    for c in range(n_c):
        row = out[c]
        for r in range(rows):
            d = dz[c, r]
            a = start + r * cols
            for k in range(n_in):
                row[a + k] = d * x[c, k]
            if cols > n_in:
                row[a + n_in] = d * one[c]
