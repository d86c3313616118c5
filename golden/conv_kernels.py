"""Compiled (numba) kernels of a conv stage's step in the fixed-point trainer: one sample's
forward (convolution, bias, residual, rounding, ReLU, pooling), backward (the error at the
convolution's output, the error sent along the residual and to the previous stage) and
gradient, each in one pass over the stage's geometry.

They compute exactly the codes of the numpy path of :mod:`golden.fixed_arith` (``_conv_run``,
``conv_backward``, ``conv_update``; the rounding points of ``docs/numerics.md``, "Conv stages"):
every sum is exact in int64, every rounding and overflow is :func:`golden.kernels._round` and
:func:`golden.kernels._overflow`, every stochastic word :func:`golden.kernels.threefry_word`
with the element counters of the numpy path. ``tests/test_conv_kernels.py`` compares the two in
every rounding and overflow mode. They cover stages with group norm or Online Normalization
(``docs/numerics.md``: the per-group or per-channel sums, the reciprocal square root, the
per-element shifts, Online Normalization's state), and stages without; not a projection or a
global average (those run in numpy).

A stage's shapes are one row of :data:`GEOMETRY_FIELDS`; its per-config constants rows of
:data:`CONSTANT_FIELDS`; its rounding points rows of :data:`golden.kernels.RQ_FIELDS`, in the
order of :data:`POINTS`. Compiled code is cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from golden.kernels import _overflow, _round, threefry_word

__all__ = [
    "CONSTANT_FIELDS",
    "GEOMETRY_FIELDS",
    "NORM_FIELDS",
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
    "pool", "relu", "bias", "residual", "error", "norm",
)  # fmt: skip
#: per config: the code of the bias input 1, the shifts aligning the convolution's and the
#: residual's terms
CONSTANT_FIELDS = ("one", "res_product", "res_shift")
#: a normalized stage's constants per config (``geo``'s ``norm``: 1 group norm, 2 Online
#: Normalization): groups (channels for Online Normalization) and the values of one (m), the
#: scale's column, eps's code, the activation's and the arriving error's frac, the fracs of the
#: two rounding points with a per-group shift (the normalized codes; group norm's error at the
#: convolution's output or Online Normalization's g2), the decays' complements, the clamp's
#: bound, the residual's shifts, and the shifts of the two divisions by m (rho_v, rho_u)
NORM_FIELDS = (
    "groups", "size", "col", "eps", "fa", "fd", "xhat_frac", "var_frac", "b_f", "b_b",
    "bound", "rho_v_shift", "rho_u_shift",
)  # fmt: skip
#: the rounding points (rows of ``rq [C, len(POINTS), len(RQ_FIELDS)]``; a normalized stage's
#: after the first five, named as in ``golden.fixed_arith._build_norm``: ``c``, ``xhat``,
#: ``state_step``, ``dx``, ``k2``, ``rho_v``, ``rho_u``, ``g1``, ``g2``, ``dc``, ``P``, ``U``),
#: their overflows counted per column of ``counts [C, len(POINTS)]``
POINTS = (
    "activation", "pool", "residual", "error", "gradient",
    "c", "xhat", "state_step", "dx", "k2", "rho_v", "rho_u", "g1", "g2", "dc", "P", "U",
)  # fmt: skip
POOL_CODES = {"none": 0, "avg": 1, "max": 2}
NORM_CODES = {"none": 0, "group": 1, "online": 2}

_STOCHASTIC = 4
_WRAP = 1
_FWD, _POOL, _RES, _BWD, _GRAD = range(5)
_C, _XHAT, _STATE, _DX, _K2, _RHO_V, _RHO_U, _G1, _G2, _DC, _P, _U = range(5, 17)


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


@njit(cache=True, inline="always")
def _rq1(acc, s, row, seed, step, n):
    """One element's rounding point: ``acc`` shifted right by ``s`` (left for ``s < 0``) and
    rounded in the mode of ``row`` (:data:`golden.kernels.RQ_FIELDS`; element counter ``n``
    for a stochastic word), then its overflow; returns the code and whether it overflowed."""
    mode = row[5]
    word = threefry_word(seed, row[4], step, n) if mode == _STOCHASTIC else 0
    raw = _round(acc, s, mode, word)
    code = _overflow(raw, row[1], row[2], row[3], row[6] == _WRAP)
    return code, code != raw


@njit(cache=True, inline="always")
def _divide1(acc, s, n, mode, word):
    """``acc / (n * 2^s)`` rounded in ``mode``: ``golden.fixed_arith._divide_round`` for one
    element (the stochastic fraction's top 32 bits in two steps when ``n * 2^s > 2^31``)."""
    if s < 0:
        acc = acc << -s
        s = 0
    d = n << s
    down = acc // d
    rem = acc - down * d
    if mode == 0:
        return down
    if mode == 1:
        return down + ((acc < 0) & (rem != 0))
    if mode == 2:
        return down + (2 * rem >= d)
    if mode == 3:
        return down + ((2 * rem > d) | ((2 * rem == d) & ((down & 1) == 1)))
    if d <= np.int64(1) << 31:
        top = (rem << 32) // d
    else:
        high = (rem << 16) // d
        top = (high << 16) + (((rem << 16) - high * d) << 16) // d
    return down + (word < top)


@njit(cache=True, inline="always")
def _divide_rq1(acc, s, n, row, seed, step, counter):
    """:func:`_rq1` of a division: ``acc / (n * 2^s)`` rounded (:func:`_divide1`) in the mode
    of ``row``, then its overflow; returns the code and whether it overflowed."""
    mode = row[5]
    word = threefry_word(seed, row[4], step, counter) if mode == _STOCHASTIC else 0
    raw = _divide1(acc, s, n, mode, word)
    code = _overflow(raw, row[1], row[2], row[3], row[6] == _WRAP)
    return code, code != raw


@njit(cache=True, inline="always")
def _rsqrt(q):
    """``golden.fixed_arith._norm_rsqrt`` of one value: ``(r, J)``, ``(0, 0)`` for ``q <= 0``."""
    if q <= 0:
        return np.int64(0), np.int64(0)
    bits = 0
    t = q
    while t > 0:
        t >>= 1
        bits += 1
    j = (32 - bits) >> 1
    qn = q << (2 * j) if j >= 0 else q >> (-2 * j)
    root = np.int64(math.floor(math.sqrt(float(qn))))
    if root * root > qn:
        root -= 1
    if (root + 1) * (root + 1) <= qn:
        root += 1
    return (np.int64(1) << 31) // max(root, 1), np.int64(j)


@njit(cache=True, inline="always")
def _group_sums(a, b, base, size):
    """A group's exact sums ``sum(a)`` and ``sum(a * b)`` over elements ``base ..
    base + size - 1``."""
    s1 = np.int64(0)
    s2 = np.int64(0)
    for e in range(base, base + size):
        s1 += a[e]
        s2 += a[e] * b[e]
    return s1, s2


@njit(cache=True)
def _norm_forward(
    conv, c, w, nk, online, rq, seed, step, train, mean, var, xhat, rsq, clamped, counts
):
    """A normalized stage's forward for config ``c`` on the convolution's exact sums ``conv``
    (``[C_out x positions]``, replaced by the affine sums before the residual): the rounding
    ``c``, the statistics, the reciprocal square root (``rsq [C, groups, 2]``: r and J), the
    normalized codes ``xhat``, scale and shift; with Online Normalization (``online``) the
    state ``mean``/``var`` ``[C, C_out]`` read, the clamp (``clamped``) and, when ``train``,
    the state advanced (``docs/numerics.md``)."""
    groups, size, col, eps, fa = nk[c, 0], nk[c, 1], nk[c, 2], nk[c, 3], nk[c, 4]
    xf = nk[c, 6]
    out = w.shape[1]
    n = conv.shape[0]
    pos = n // out
    _round_run(conv, conv, rq, c, _C, seed, step, 0, counts)
    xrow = rq[c, _XHAT]
    over = 0
    if not online:
        for g in range(groups):
            base = g * size
            s1, s2 = _group_sums(conv, conv, base, size)
            r, j = _rsqrt(size * s2 - s1 * s1 + size * size * eps)
            rsq[c, g, 0] = r
            rsq[c, g, 1] = j
            for e in range(base, base + size):
                code, o = _rq1((size * conv[e] - s1) * r, 31 - j - xf, xrow, seed, step, e)
                xhat[c, e] = code
                over += o
        counts[c, _XHAT] += over
        for o_ in range(out):
            scale, shift = w[c, o_, col], w[c, o_, col + 1] << fa
            for e in range(o_ * pos, o_ * pos + pos):
                conv[e] = xhat[c, e] * scale + shift
        return
    bound, b_f = nk[c, 10], nk[c, 8]
    srow = rq[c, _STATE]
    for o_ in range(out):
        mo, vo = mean[c, o_], var[c, o_]
        r, j = _rsqrt(vo + size * size * eps)
        rsq[c, o_, 0] = r
        rsq[c, o_, 1] = j
        scale, shift = w[c, o_, col], w[c, o_, col + 1] << fa
        s1 = np.int64(0)
        s2 = np.int64(0)
        for e in range(o_ * pos, o_ * pos + pos):
            v = conv[e]
            s1 += v
            s2 += v * v
            y, o = _rq1((((size * v) << 8) - mo) * r, 39 - j - xf, xrow, seed, step, e)
            xhat[c, e] = y
            over += o
            a = y * scale + shift
            clamped[c, e] = (a >= bound) | (a <= -bound)
            conv[e] = min(max(a, -bound), bound)
        if train:
            qs = size * s2 - s1 * s1
            dev = (s1 << 8) - mo
            inc, _ = _rq1(b_f * dev, srow[0], srow, seed, step, o_)
            square = (dev >> 8) * (dev >> 8)
            spread, _ = _rq1(-b_f * square, srow[0], srow, seed, step, out + o_)
            spread += square  # a_f * square / 2^16, as square - b_f * square / 2^16
            grow, _ = _rq1(b_f * (qs - vo + spread), srow[0], srow, seed, step, 2 * out + o_)
            mean[c, o_] = mo + inc
            var[c, o_] = vo + grow
    counts[c, _XHAT] += over


@njit(cache=True)
def _norm_backward(dc, c, w, nk, online, rq, seed, step, xhat, rsq, clamped, ps, us, sums, counts):
    """A normalized stage's backward for config ``c``: the error at its output ``dc``
    (``[C_out x positions]``, the pooling's spread and the ReLU's mask applied) replaced by
    the error at the convolution's output; ``sums [C, 2, C_out]`` the exact sums of the
    scale's and the shift's gradients; with Online Normalization the clamp's mask first and
    the state ``ps``/``us`` ``[C, C_out]`` advanced (``docs/numerics.md``)."""
    groups, size, col, fa, fd = nk[c, 0], nk[c, 1], nk[c, 2], nk[c, 4], nk[c, 5]
    vf = nk[c, 7]
    out = w.shape[1]
    n = dc.shape[0]
    pos = n // out
    dxrow, dcrow = rq[c, _DX], rq[c, _DC]
    n_dx = 0
    n_dc = 0
    if not online:
        dx = np.empty(n, dtype=np.int64)
        for o_ in range(out):
            scale = w[c, o_, col]
            ss = np.int64(0)
            sb = np.int64(0)
            for e in range(o_ * pos, o_ * pos + pos):
                dv = dc[e]
                ss += dv * xhat[c, e]
                sb += dv
                code, o = _rq1(dv * scale, dxrow[0], dxrow, seed, step, e)
                dx[e] = code
                n_dx += o
            sums[c, 0, o_] = ss
            sums[c, 1, o_] = sb
        krow = rq[c, _K2]
        for g in range(groups):
            base = g * size
            s1, kk = _group_sums(dx, xhat[c], base, size)
            k2, _ = _rq1(kk, krow[0], krow, seed, step, g)
            r, j = rsq[c, g, 0], rsq[c, g, 1]
            for e in range(base, base + size):
                t = ((size * dx[e] - s1) << fa) - xhat[c, e] * k2
                code, o = _rq1(t * r, 31 - j + fd - vf, dcrow, seed, step, e)
                dc[e] = code
                n_dc += o
        counts[c, _DX] += n_dx
        counts[c, _DC] += n_dc
        return
    b_b = nk[c, 9]
    vrow, urow, g1row, g2row = rq[c, _RHO_V], rq[c, _RHO_U], rq[c, _G1], rq[c, _G2]
    prow, qrow = rq[c, _P], rq[c, _U]
    n_group = 0
    n_online = 0
    for o_ in range(out):
        scale = w[c, o_, col]
        p_o, u_o = ps[c, o_], us[c, o_]
        rho_v, o = _divide_rq1(b_b * p_o, nk[c, 11], size, vrow, seed, step, 3 * out + o_)
        n_group += o
        rho_u, o = _divide_rq1(b_b * u_o, nk[c, 12], size, urow, seed, step, 4 * out + o_)
        n_group += o
        r, j = rsq[c, o_, 0], rsq[c, o_, 1]
        ss = np.int64(0)
        sb = np.int64(0)
        sgy = np.int64(0)
        sdc = np.int64(0)
        for e in range(o_ * pos, o_ * pos + pos):
            dv = 0 if clamped[c, e] else dc[e]
            y = xhat[c, e]
            ss += dv * y
            sb += dv
            dxv, o = _rq1(dv * scale, dxrow[0], dxrow, seed, step, e)
            n_dx += o
            g1, o = _rq1((dxv << (2 * fa)) - rho_v * y, g1row[0], g1row, seed, step, e)
            n_online += o
            g2, o = _rq1(size * g1 * r, fd + 31 - j - fa - vf, g2row, seed, step, out * pos + e)
            n_online += o
            code, o = _rq1(g2 - rho_u, dcrow[0], dcrow, seed, step, e)
            n_dc += o
            dc[e] = code
            sgy += g1 * y
            sdc += code
        sums[c, 0, o_] = ss
        sums[c, 1, o_] = sb
        code, o = _rq1(p_o + sgy, prow[0], prow, seed, step, 0)
        ps[c, o_] = code
        n_online += o
        code, o = _rq1(u_o + sdc, qrow[0], qrow, seed, step, 0)
        us[c, o_] = code
        n_online += o
    counts[c, _DX] += n_dx
    counts[c, _RHO_V] += n_group
    counts[c, _G1] += n_online
    counts[c, _DC] += n_dc


@njit(cache=True)
def conv_forward(
    x, w, residual, src, geo, k, rq, seed, step, z, mask, choice, columns, counts,
    nk, train, mean, var, xhat, rsq, clamped,
):  # fmt: skip
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
    pooled + q``. A normalized stage (``geo``'s ``norm``) reads its constants ``nk [C,
    len(NORM_FIELDS)]`` and writes what its backward reads: the normalized codes ``xhat [C,
    C_out x positions]``, each group's ``(r, J)`` into ``rsq [C, groups, 2]`` and, with Online
    Normalization, where the clamp held (``clamped``); its state ``mean``/``var`` ``[C,
    C_out]`` is read and, when ``train``, advanced in place."""
    out, ho, wo, wh, ww = geo[9], geo[10], geo[11], geo[12], geo[13]
    pool, relu, bias, has_res, norm = geo[14], geo[15], geo[16], geo[17], geo[19]
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
        if norm:
            _norm_forward(
                conv, c, w, nk, norm == 2, rq, seed, step, train, mean, var, xhat, rsq, clamped,
                counts,
            )  # fmt: skip
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
    error, w, src, geo, rq, seed, step, choice, mask, d, residual_error, error_in, counts,
    nk, xhat, rsq, clamped, ps, us, sums,
):  # fmt: skip
    """One sample's backward for every config from the error codes ``error [C, n_out]``:
    ``d`` the error at the convolution's output ``[C, C_out x positions]`` (the pooling's
    spread and the ReLU's mask applied), the error sent along the residual ``residual_error``
    (its rounding point on ``d``, when ``geo`` has a residual) and the one sent to the previous
    stage ``error_in [C, C_in x H x W]`` (when ``geo`` says so: the transposed convolution's
    exact sums, window by window and added onto the input elements ``src`` names, rounded
    once). The overflowed elements per config and rounding point go into ``counts``; returns
    their total. Element counters: ``o x positions + p``, and the input element. A normalized
    stage's backward follows the residual's rounding (reading what :func:`conv_forward` kept,
    writing the scale's and shift's gradient sums ``sums [C, 2, C_out]`` and advancing Online
    Normalization's ``ps``/``us`` in place), and ``d`` is then the error at the convolution's
    output."""
    out, ho, wo, wh, ww = geo[9], geo[10], geo[11], geo[12], geo[13]
    pool, relu, has_res, send, norm = geo[14], geo[15], geo[17], geo[18], geo[19]
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
        if norm:
            _norm_backward(
                dc, c, w, nk, norm == 2, rq, seed, step, xhat, rsq, clamped, ps, us, sums, counts
            )
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
