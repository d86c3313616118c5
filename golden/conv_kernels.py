"""Compiled (numba) kernels of a conv stage's step in the fixed-point trainer: one sample's
forward (convolution, bias, residual, rounding, ReLU, pooling), backward (the error at the
convolution's output, the error sent along the residual and to the previous stage) and
gradient, each in one pass over the stage's geometry.

They compute exactly the codes of the numpy path of :mod:`golden.fixed_arith` (``_conv_run``,
``conv_backward``, ``conv_update``; the rounding points of ``docs/numerics.md``, "Conv stages"):
every sum is exact in int64, every rounding and overflow is :func:`golden.kernels._round` and
:func:`golden.kernels._overflow`, every stochastic word :func:`golden.kernels.threefry_word`
with the element counters of the numpy path. ``tests/test_conv_kernels.py`` compares the two in
every rounding and overflow mode. They cover stages without group norm, a projection or a
global average (those run in numpy).

A stage's shapes are one row of :data:`GEOMETRY_FIELDS`; its per-config constants rows of
:data:`CONSTANT_FIELDS`; its rounding points rows of :data:`golden.kernels.RQ_FIELDS`, in the
order of :data:`POINTS`. Compiled code is cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from golden.kernels import _overflow, _round, threefry_word

__all__ = [
    "CONSTANT_FIELDS",
    "GEOMETRY_FIELDS",
    "POINTS",
    "POOL_CODES",
    "add_errors",
    "conv_backward",
    "conv_forward",
    "conv_gradient",
]

#: a stage's shapes in the 2-D form (``golden.conv_fixed.ConvGeometry``), its pooling
#: (:data:`POOL_CODES`), and flags: ReLU, a bias column, a residual added, an error sent back
GEOMETRY_FIELDS = (
    "c_in", "h", "w", "kh", "kw", "sh", "sw", "ph", "pw", "c_out", "ho", "wo", "wh", "ww",
    "pool", "relu", "bias", "residual", "error",
)  # fmt: skip
#: per config: the code of the bias input 1, the shifts aligning the convolution's and the
#: residual's terms
CONSTANT_FIELDS = ("one", "res_product", "res_shift")
#: the rounding points (rows of ``rq [C, len(POINTS), len(RQ_FIELDS)]``) and the roles their
#: overflows are counted under (columns of ``counts [C, len(POINTS)]``)
POINTS = ("activation", "pool", "residual", "error", "gradient")
POOL_CODES = {"none": 0, "avg": 1, "max": 2}

_STOCHASTIC = 4
_WRAP = 1
_FWD, _POOL, _RES, _BWD, _GRAD = range(5)


@njit(cache=True)
def _round_run(acc, out, rq, c, p, seed, step, first, counts) -> None:
    """Rounding point ``p`` of config ``c`` on the exact sums ``acc`` into ``out``, element
    ``j``'s counter ``first + j``; the overflowed elements added to ``counts[c, p]``."""
    s, lo, hi, span, stream, mode, wrap = rq[c, p]
    wraps = wrap == _WRAP
    n = 0
    for j in range(acc.shape[0]):
        word = threefry_word(seed, stream, step, first + j) if mode == _STOCHASTIC else 0
        raw = _round(acc[j], s, mode, word)
        code = _overflow(raw, lo, hi, span, wraps)
        n += code != raw
        out[j] = code
    counts[c, p] += n


@njit(cache=True, inline="always")
def _windows(x, src, one, bias, columns) -> None:
    """The input's windows ``columns [positions, cols]`` of one config's input codes ``x``:
    element ``src[p, col]`` of ``x`` (code 0 where it is -1, the padding), the code of 1 as the
    bias column."""
    n_in = src.shape[1]
    for p in range(src.shape[0]):
        row = columns[p]
        for col in range(n_in):
            n = src[p, col]
            row[col] = x[n] if n >= 0 else 0
        if bias:
            row[n_in] = one


@njit(cache=True)
def conv_forward(x, w, residual, src, geo, k, rq, seed, step, z, mask, choice, columns, counts):
    """One sample's forward for every config: ``x`` the input codes ``[C, C_in x H x W]``,
    ``w`` the weights ``[C, C_out, width]`` (the window's columns in the C-order of
    ``[C_in, kh, kw]``, then the bias), ``residual`` the residual's codes ``[C, C_out x
    positions]`` (read when ``geo`` says so), ``src [positions, C_in x kh x kw]`` the input
    element each window element reads (-1: padding). Writes ``z`` the output codes ``[C,
    n_out]``, ``mask`` ``[C, C_out x positions]`` (ReLU's output positive), ``choice`` ``[C,
    C_out x pooled]`` (max pooling: the window element chosen, the first maximum in row-major
    order), ``columns [C, positions, cols]`` the windows with the bias column, and the
    overflowed elements per config and rounding point into ``counts``; returns their total.
    Element counters: the convolution's output ``o x positions + p``, the pooled output ``o x
    pooled + q``."""
    out, ho, wo, wh, ww = geo[9], geo[10], geo[11], geo[12], geo[13]
    pool, relu, bias, has_res = geo[14], geo[15], geo[16], geo[17]
    pos, cols = ho * wo, columns.shape[2]
    pho, pwo = ho // wh, wo // ww
    conv = np.empty(out * pos, dtype=np.int64)
    pooled = np.empty(out * pho * pwo, dtype=np.int64)
    counts[:] = 0
    for c in range(x.shape[0]):
        one, res_product, res_shift = k[c, 0], k[c, 1], k[c, 2]
        cc = columns[c]
        _windows(x[c], src, one, bias, cc)
        for o in range(out):
            wrow = w[c, o]
            for p in range(pos):
                crow = cc[p]
                acc = 0
                for col in range(cols):
                    acc += wrow[col] * crow[col]
                conv[o * pos + p] = acc
        if has_res:
            for n in range(out * pos):
                conv[n] = (conv[n] << res_product) + (residual[c, n] << res_shift)
        _round_run(conv, conv, rq, c, _FWD, seed, step, 0, counts)
        if relu:
            for n in range(out * pos):
                positive = conv[n] > 0
                mask[c, n] = positive
                if not positive:
                    conv[n] = 0
        if pool == 0:
            z[c, :] = conv
            continue
        for o in range(out):
            for pi in range(pho):
                for pj in range(pwo):
                    q = (o * pho + pi) * pwo + pj
                    total = 0
                    best = 0
                    at = 0
                    for a in range(wh):
                        for e in range(ww):
                            v = conv[o * pos + (pi * wh + a) * wo + pj * ww + e]
                            total += v
                            if (a == 0 and e == 0) or v > best:
                                best, at = v, a * ww + e
                    pooled[q] = total
                    if pool == 2:
                        z[c, q] = best
                        choice[c, q] = at
        if pool == 1:
            _round_run(pooled, z[c], rq, c, _POOL, seed, step, 0, counts)
    return counts.sum()


@njit(cache=True)
def conv_backward(
    error, w, src, geo, rq, seed, step, choice, mask, d, residual_error, error_in, counts
):
    """One sample's backward for every config from the error codes ``error [C, n_out]``:
    ``d`` the error at the convolution's output ``[C, C_out x positions]`` (the pooling's
    spread and the ReLU's mask applied), the error sent along the residual ``residual_error``
    (its rounding point on ``d``, when ``geo`` has a residual) and the one sent to the previous
    stage ``error_in [C, C_in x H x W]`` (when ``geo`` says so: the transposed convolution's
    exact sums, window by window and added onto the input elements ``src`` names, rounded
    once). The overflowed elements per config and rounding point go into ``counts``; returns
    their total. Element counters: ``o x positions + p``, and the input element."""
    out, ho, wo, wh, ww = geo[9], geo[10], geo[11], geo[12], geo[13]
    pool, relu, has_res, send = geo[14], geo[15], geo[17], geo[18]
    pos, n_in = ho * wo, src.shape[1]
    pho, pwo = ho // wh, wo // ww
    total = np.empty(error_in.shape[1], dtype=np.int64)
    acc = np.empty(src.shape, dtype=np.int64)
    counts[:] = 0
    for c in range(error.shape[0]):
        dc = d[c]
        if pool == 0:
            dc[:] = error[c]
        else:
            dc[:] = 0
            for o in range(out):
                for pi in range(pho):
                    for pj in range(pwo):
                        q = (o * pho + pi) * pwo + pj
                        e_q = error[c, q]
                        for a in range(wh):
                            for e in range(ww):
                                if pool == 1 or choice[c, q] == a * ww + e:
                                    dc[o * pos + (pi * wh + a) * wo + pj * ww + e] = e_q
        if relu:
            for n in range(out * pos):
                if not mask[c, n]:
                    dc[n] = 0
        if has_res:
            _round_run(dc, residual_error[c], rq, c, _RES, seed, step, 0, counts)
        if not send:
            continue
        acc[:] = 0
        for o in range(out):
            wrow = w[c, o]
            for p in range(pos):
                dv = dc[o * pos + p]
                if dv != 0:
                    arow = acc[p]
                    for col in range(n_in):
                        arow[col] += dv * wrow[col]
        total[:] = 0
        for p in range(pos):
            for col in range(n_in):
                n = src[p, col]
                if n >= 0:
                    total[n] += acc[p, col]
        _round_run(total, error_in[c], rq, c, _BWD, seed, step, 0, counts)
    return counts.sum()


@njit(cache=True)
def conv_gradient(d, columns, rq, width, seed, step, g, counts):
    """The gradient codes ``g [C, C_out, cols]`` of one sample: the error at the
    convolution's output ``d [C, C_out x positions]`` times the input's windows ``columns [C,
    positions, cols]`` (as :func:`conv_forward` wrote them), summed exactly over the positions,
    rounded once. The overflowed elements per config go into ``counts``; returns their total.
    Element counter of weight ``(o, col)``: ``o x width + col``."""
    pos, cols = columns.shape[1], columns.shape[2]
    out = g.shape[1]
    acc = np.empty((out, cols), dtype=np.int64)
    counts[:] = 0
    for c in range(d.shape[0]):
        acc[:] = 0
        for o in range(out):
            arow = acc[o]
            for p in range(pos):
                dv = d[c, o * pos + p]
                if dv != 0:
                    crow = columns[c, p]
                    for col in range(cols):
                        arow[col] += dv * crow[col]
            _round_run(arow, g[c, o], rq, c, _GRAD, seed, step, o * width, counts)
    return counts.sum()


@njit(cache=True)
def add_errors(error, residual, rq, out, counts):
    """The error arriving at a residual's source: ``error + residual`` (codes ``[C, n]`` of
    the source's error format), exact, then that format's overflow: ``rq [C, 1,
    len(RQ_FIELDS)]`` its rounding point (no shift). Writes ``out``; the overflowed elements
    per config go into ``counts [C, 1]``; returns their total."""
    counts[:] = 0
    for c in range(error.shape[0]):
        total = error[c] + residual[c]
        _round_run(total, out[c], rq, c, 0, 0, 0, 0, counts)
    return counts.sum()
