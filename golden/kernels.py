"""Compiled (numba) kernels of the fixed-point trainer's joined update: every stage's weight
prediction, and every stage's gradient, velocity and weight rounding points, element by element
over the flat arrays of :class:`golden.fixed_arith._Bank` in one pass each.

They compute exactly the values of the numpy path of :mod:`golden.fixed_arith` (the rounding
points of ``docs/numerics.md``, and for stochastic rounding the Threefry-2x32-13 words of
:func:`golden.fixed_arith.threefry_words`); ``tests/test_kernels.py`` compares the two on random
codes in every rounding and overflow mode. The numpy path stays for everything else.

A rounding point is described per config and stage by one row of :data:`RQ_FIELDS`; the
update's and the prediction's constants by rows of :data:`UPDATE_FIELDS` and
:data:`PREDICTION_FIELDS`. Compiled code is cached on disk (``cache=True``: numba's
``__pycache__`` beside this file, or its user cache folder when that is not writable).
"""

from __future__ import annotations

import numpy as np
from numba import njit

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
    "joined_prediction",
    "joined_update",
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
    """A rounded value's overflow into ``[lo, hi]``: wrap modulo ``span``, or saturate."""
    if lo <= out <= hi:
        return out
    if wrap:
        r = (out - lo) % span
        if r < 0:
            r += span
        return r + lo
    return lo if out < lo else hi


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
    w, v, src, grad_given, starts, sizes, index, rq, k, seed, step, w_out, v_out, counts, ahead
):
    """Every stage's velocity and weight update (and gradient rounding) in one pass, and, when
    ``ahead[0]`` is set, the next step's predicted weights from the new codes.

    ``w``, ``v``: the codes ``[C, E]``; ``src``: the gradient codes (``grad_given``) or the
    gradient's exact products ``[C, E]``; stage ``i`` is elements ``starts[i]`` on
    (``sizes[i]`` of them), element ``e``'s counter ``index[e]``. ``rq[p, c, i]``: the rounding
    points gradient (``p = 0``), velocity, weight and prediction of config ``c`` and stage ``i``
    (RQ_FIELDS); ``k[c, i]``: UPDATE_FIELDS then PREDICTION_FIELDS. Writes ``w_out``,
    ``v_out`` and adds the overflowed elements to ``counts[p, c, i]``. ``ahead``: ``(kind,
    next step, predicted codes [C, E])``, kind 0 none, 1 velocity, 2 weight difference (the
    previous weights then the weights ``w`` before this update)."""
    kind, next_step, predicted = ahead
    words = np.zeros((4, sizes.max()), dtype=np.int64)
    for i in range(starts.shape[0]):
        a, n = starts[i], sizes[i]
        for p in range(1 if grad_given else 0, 3):
            _draw(words, p, rq, seed, step, index, a, n, i)
        if kind:
            _draw(words, 3, rq, seed, next_step, index, a, n, i)
        for c in range(w.shape[0]):
            gs, glo, ghi, gspan, _, gmode, gwrap = rq[0, c, i]
            vs, vlo, vhi, vspan, _, vmode, vwrap = rq[1, c, i]
            us, ulo, uhi, uspan, _, umode, uwrap = rq[2, c, i]
            ps, plo, phi, pspan, _, pmode, pwrap = rq[3, c, i]
            m, vel_mv, vel_g, ea, upd_w, upd_v, upd_g, eb, k0, k1, k2 = k[c, i]
            n_g = n_v = n_w = n_p = 0
            # the stage's part of every row (indices from 0: no negative-index handling)
            w_c, v_c, src_c = w[c, a : a + n], v[c, a : a + n], src[c, a : a + n]
            w_to, v_to, p_to = w_out[c, a : a + n], v_out[c, a : a + n], predicted[c, a : a + n]
            word_g, word_v, word_w, word_p = words[0], words[1], words[2], words[3]
            for j in range(n):
                g = src_c[j]
                if not grad_given:
                    raw = _round(g, gs, gmode, word_g[j])
                    g = _overflow(raw, glo, ghi, gspan, gwrap == _WRAP)
                    n_g += g != raw
                raw = _round(m * (v_c[j] << vel_mv) + (g << vel_g), vs, vmode, word_v[j])
                vn = _overflow(raw, vlo, vhi, vspan, vwrap == _WRAP)
                n_v += vn != raw
                v_to[j] = vn
                acc = (w_c[j] << upd_w) - ea * (vn << upd_v) - eb * (g << upd_g)
                raw = _round(acc, us, umode, word_w[j])
                wn = _overflow(raw, ulo, uhi, uspan, uwrap == _WRAP)
                n_w += wn != raw
                w_to[j] = wn
                if kind:
                    if kind == 1:
                        acc = (wn << k0) - k2 * (vn << k1)
                    else:
                        acc = wn + k0 * (wn - w_c[j])
                    raw = _round(acc, ps, pmode, word_p[j])
                    code = _overflow(raw, plo, phi, pspan, pwrap == _WRAP)
                    n_p += code != raw
                    p_to[j] = code
            counts[0, c, i] += n_g
            counts[1, c, i] += n_v
            counts[2, c, i] += n_w
            counts[3, c, i] += n_p


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
