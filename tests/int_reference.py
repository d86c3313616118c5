"""An independent, element-by-element Python-integer implementation of ``docs/numerics.md``.

Only Python ints, :class:`fractions.Fraction` and lists: no numpy, no torch, nothing from pbhw.
Every rounding decision is taken on the exact rational value ``acc * 2**-F`` scaled to the
destination's code unit, which is a different route from the shift-and-mask arithmetic of the
golden model, so the two can only agree if both follow the documented rule.

The test module converts a :class:`pbhw.core.plan.Plan` into the plain data structures here
(:class:`Fmt`, :class:`RefStage`); this module never sees pbhw objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

__all__ = [
    "EVAL_STEP",
    "EXP2",
    "LOG2E",
    "ROLE",
    "Fmt",
    "RefConvStage",
    "RefNet",
    "RefPipeline",
    "RefStage",
    "overflow",
    "quantize_float",
    "round_fraction",
    "rq",
    "softmax_probs",
    "threefry2x32",
    "word",
]

# ------------------------------------------------------------------------------------------
# Threefry-2x32 (docs/numerics_random.md), 13 rounds

_M32 = 0xFFFF_FFFF
_ROT = (13, 15, 26, 6, 17, 29, 16, 24)


def threefry2x32(k0: int, k1: int, c0: int, c1: int, rounds: int = 13) -> tuple[int, int]:
    ks = (k0, k1, 0x1BD11BDA ^ k0 ^ k1)
    x0 = (c0 + ks[0]) & _M32
    x1 = (c1 + ks[1]) & _M32
    for i in range(rounds):
        r = _ROT[i % 8]
        x0 = (x0 + x1) & _M32
        x1 = (((x1 << r) | (x1 >> (32 - r))) & _M32) ^ x0
        if i % 4 == 3:
            j = (i + 1) // 4
            x0 = (x0 + ks[j % 3]) & _M32
            x1 = (x1 + ks[(j + 1) % 3] + j) & _M32
    return x0, x1


def word(seed: int, stream: int, step: int, index: int) -> int:
    """The random word of one element: first output word, key (seed, stream), counter
    (step, index)."""
    return threefry2x32(seed, stream, step, index)[0]


ROLE = {
    "input": 0,
    "activation": 1,
    "error": 2,
    "gradient": 3,
    "velocity": 4,
    "weight": 5,
    "prediction": 6,
    "loss": 7,
    "residual": 8,
    "pool": 9,
    "norm": 10,
    "normalized": 11,
    "norm_error": 12,
    "norm_group": 13,
    "norm_backward": 14,
    "norm_online": 15,
}
EVAL_STEP = 2**32 - 1


def stream(stage: int, role: str) -> int:
    return 16 * stage + ROLE[role]


# ------------------------------------------------------------------------------------------
# Formats, rounding, overflow


@dataclass(frozen=True)
class Fmt:
    """A role's format with its rounding and overflow modes (mode names as strings)."""

    width: int
    frac: int
    signed: bool = True
    rounding: str = "half_even"
    overflow: str = "saturate"

    @property
    def lo(self) -> int:
        return -(2 ** (self.width - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return 2 ** (self.width - 1) - 1 if self.signed else 2**self.width - 1


def round_fraction(x: Fraction, rounding: str, draw: Callable[[], int]) -> int:
    """Round the exact rational ``x`` to an integer; ``draw()`` gives the element's word."""
    q = math.floor(x)
    f = x - q  # discarded fraction in [0, 1)
    if rounding == "floor":
        return q
    if rounding == "toward_zero":
        return q + 1 if (x < 0 and f != 0) else q
    if rounding == "half_up":
        return q + 1 if f >= Fraction(1, 2) else q
    if rounding == "half_even":
        if f > Fraction(1, 2) or (f == Fraction(1, 2) and q % 2 == 1):
            return q + 1
        return q
    if rounding == "stochastic":
        if f == 0:
            return q  # F = 0: never rounds up, whatever the word
        top = math.floor(f * 2**32)
        return q + 1 if draw() < top else q
    raise ValueError(rounding)


def overflow(code: int, fmt: Fmt, mode: str | None = None) -> tuple[int, bool]:
    """Bring ``code`` into ``fmt``'s range; also whether it was outside."""
    mode = fmt.overflow if mode is None else mode
    if fmt.lo <= code <= fmt.hi:
        return code, False
    if mode == "saturate":
        return min(max(code, fmt.lo), fmt.hi), True
    if mode == "wrap":
        return (code - fmt.lo) % 2**fmt.width + fmt.lo, True
    raise ValueError(mode)


def rq(
    acc: int, src_frac: int, fmt: Fmt, draw: Callable[[], int], divisor: int = 1
) -> tuple[int, bool]:
    """``RQ(acc, F, X, role)``: the exact value ``acc * 2^-F`` (divided by ``divisor``: a
    global average's count) as a code of ``X``."""
    x = Fraction(acc) * Fraction(2) ** (fmt.frac - src_frac) / divisor
    return overflow(round_fraction(x, fmt.rounding, draw), fmt)


def quantize_float(value: float, fmt: Fmt, draw: Callable[[], int]) -> tuple[int, bool]:
    x = Fraction(value) * Fraction(2) ** fmt.frac  # a float is an exact rational
    return overflow(round_fraction(x, fmt.rounding, draw), fmt)


# ------------------------------------------------------------------------------------------
# The softmax unit

LOG2E = 94548


def _exp2_table() -> list[int]:
    out = []
    with localcontext() as ctx:
        ctx.prec = 60
        for j in range(256):
            v = Decimal(2) ** (Decimal(j) / Decimal(256)) * 32768
            out.append(int(v.to_integral_value(rounding=ROUND_HALF_EVEN)))
    return out


EXP2 = _exp2_table()


def softmax_probs(y: Sequence[int], frac_a: int, frac_e: int) -> list[int]:
    """Steps 1 to 6 of the softmax unit: ``p_o`` as codes with ``frac_e`` fractional bits."""
    top = max(y)
    e = []
    for yo in y:
        d = yo - top
        t = math.floor(Fraction(d * LOG2E) / Fraction(2) ** (frac_a + 16 - 8))
        k, j = t // 256, t % 256  # floor division and its non-negative remainder
        e.append(0 if -k >= 63 else EXP2[j] // 2 ** (-k))
    s = sum(e)
    return [math.floor(Fraction(eo) * Fraction(2) ** frac_e / s) for eo in e]


# ------------------------------------------------------------------------------------------
# One network: the operations of docs/numerics.md on lists


@dataclass
class RefStage:
    index: int  # 1-based
    n_in: int
    n_out: int
    last: bool
    bias: bool
    fmt: dict[str, Fmt]  # activation, weight, error, gradient, velocity, coefficient
    act_in: Fmt  # A_{l-1} (stage 1: A_1)
    error_prev: Fmt | None  # E_{l-1} with stage l-1's error modes (None for stage 1)
    m: int
    ea: int
    eb: int
    eT: int  # noqa: N815
    T: int  # noqa: N815
    prediction: str  # "none", "velocity", "weight_difference"

    @property
    def cols(self) -> int:
        return self.n_in + (1 if self.bias else 0)

    def f(self, role: str) -> int:
        return self.fmt[role].frac


@dataclass
class RefConvStage(RefStage):
    """A conv stage (docs/numerics.md, "Conv stages") in the 2-D form (a 1-D stage has height
    1). Its weights are rows ``o`` of ``n_in = C_in * kh * kw`` columns ``(ci * kh + a) * kw +
    b`` (and the bias column), so ``n_out`` is ``C_out``."""

    in_chw: tuple[int, int, int]
    out_hw: tuple[int, int]  # the convolution's output positions
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pool: str  # "none", "avg", "max", "global_avg"
    window: tuple[int, int]
    res_fmt: Fmt | None  # the residual's format (its source's activation)
    res_err_fmt: Fmt | None  # the source's error format, with its modes
    residual_back: int = 0  # N: the residual is the output of stage index - N (0: none)
    groups: int = 0  # group norm's channel groups (0: no group norm)
    eps: float = 0.0  # group norm's epsilon (a float; its code is derived here)
    res_chw: tuple[int, int, int] | None = None  # a projected residual's shape
    proj_stride: tuple[int, int] | None = None  # the projection's stride (None: no projection)
    online: bool = False  # Online Normalization (its decays and clamp as the config's floats)
    alpha_fwd: float = 0.999
    alpha_bkw: float = 0.99
    clamp: float = 5.0

    @property
    def has_norm(self) -> bool:
        """Group norm or Online Normalization: the scale and shift columns, ``c`` rounded
        into ``A'`` first."""
        return bool(self.groups) or self.online

    @property
    def cols(self) -> int:
        """Weight columns: the window's, the bias, the norm's scale and shift, the
        projection's weights and bias."""
        proj = self.res_chw[0] + (1 if self.bias else 0) if self.proj_stride else 0
        return self.n_in + (1 if self.bias else 0) + (2 if self.has_norm else 0) + proj

    @property
    def kp(self) -> int:
        """The first column of the projection."""
        return self.kb + (2 if self.has_norm else 0)

    def eps_code(self) -> int:
        """``eps = round_half_even(1e-5 * 2^(2 f(A)))`` (of the float's exact value)."""
        return round(Fraction(self.eps) * 2 ** (2 * self.f("activation")))

    def decays(self) -> tuple[int, int, int, int]:
        """Online Normalization's ``(a_f, b_f, a_b, b_b)``: 16-bit codes of the decays."""
        a_f = round(Fraction(self.alpha_fwd) * 2**16)
        a_b = round(Fraction(self.alpha_bkw) * 2**16)
        return a_f, 2**16 - a_f, a_b, 2**16 - a_b

    def kappa(self) -> int:
        """The clamp as a code of ``A``."""
        return round(Fraction(self.clamp) * 2 ** self.f("activation"))

    def online_init(self) -> dict[str, list[int]]:
        """The state's initial values per channel: ``M = 0``, ``V = m^2 2^(2 f(A))`` (a running
        variance of 1), ``P = U = 0``."""
        m, c = self.positions, self.n_out
        v0 = m * m * 2 ** (2 * self.f("activation"))
        return {"M": [0] * c, "V": [v0] * c, "P": [0] * c, "U": [0] * c}

    def online_fmts(self) -> tuple[Fmt, Fmt, Fmt]:
        """``Cv`` (``rho_v``), ``E''`` (``rho_u``, ``g2``) and the 44-bit state ``P``, ``U``:
        signed, with ``E``'s modes."""
        e, a, fd = self.fmt["error"], self.fmt["activation"], self.f("error") + self.pool_shift
        cv = Fmt(e.width + a.width, fd + a.frac, True, e.rounding, e.overflow)
        e2 = Fmt(e.width + 8, fd + 8, True, e.rounding, e.overflow)
        state = Fmt(44, 0, True, e.rounding, e.overflow)
        return cv, e2, state

    def proj_index(self, c: int, pos: int) -> int:
        """The residual's flat index the projection reads for channel ``c``, position ``pos``."""
        _, hr, wr = self.res_chw
        oy, ox = divmod(pos, self.out_hw[1])
        return (c * hr + oy * self.proj_stride[0]) * wr + ox * self.proj_stride[1]

    def proj_input(self, residual, c: int, pos: int) -> int:
        """The projection's input ``c`` at ``pos`` (``c = C_res``: the bias's code of 1)."""
        if c == self.res_chw[0]:
            return 2**self.res_fmt.frac
        return residual[self.proj_index(c, pos)]

    def residual_term(self, wh, residual, n: int) -> tuple[int, int]:
        """The residual's term at conv output ``n`` and its frac: the residual's code, or the
        projection's exact sum."""
        if self.proj_stride is None:
            return residual[n], self.res_fmt.frac
        o, pos = divmod(n, self.positions)
        terms = self.res_chw[0] + (1 if self.bias else 0)
        acc = sum(wh[o][self.kp + c] * self.proj_input(residual, c, pos) for c in range(terms))
        return acc, self.f("weight") + self.res_fmt.frac

    @property
    def kb(self) -> int:
        """The column of group norm's scale (the shift's is the next)."""
        return self.n_in + (1 if self.bias else 0)

    def norm_fmt(self) -> Fmt:
        """Group norm's ``c`` and ``xhat``: A's width, frac and modes, signed."""
        a = self.fmt["activation"]
        return Fmt(a.width, a.frac, True, a.rounding, a.overflow)

    def dz_fmt(self) -> Fmt:
        """The error at the convolution's output: E's width and modes, ``f(E) + q`` bits."""
        e = self.fmt["error"]
        return Fmt(e.width, e.frac + self.pool_shift, e.signed, e.rounding, e.overflow)

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    def column(self, x: Sequence[int], j: int, oy: int, ox: int) -> int:
        """Window element ``j`` of output position ``(oy, ox)`` of the flat input ``x``."""
        cin, h, w = self.in_chw
        kh, kw = self.kernel
        ci, rest = divmod(j, kh * kw)
        a, b = divmod(rest, kw)
        y = oy * self.stride[0] + a - self.padding[0]
        xx = ox * self.stride[1] + b - self.padding[1]
        if 0 <= y < h and 0 <= xx < w:
            return x[(ci * h + y) * w + xx]
        return 0

    def windows(self):
        """Every pooling window: ``(pooled index, [conv positions in row-major order])``."""
        (wh, ww), (ho, wo) = self.window, self.out_hw
        out = []
        for py in range(ho // wh):
            for px in range(wo // ww):
                members = [(py * wh + i) * wo + px * ww + j for i in range(wh) for j in range(ww)]
                out.append((py * (wo // ww) + px, members))
        return out

    @property
    def pool_shift(self) -> int:
        return (self.window[0] * self.window[1]).bit_length() - 1 if self.pool == "avg" else 0

    @property
    def divisor(self) -> int:
        """What the roundings fed by the error at the convolution's output divide by: a global
        average's count of positions, else 1."""
        return self.positions if self.pool == "global_avg" else 1


@dataclass
class RefNet:
    """Stateless operations plus the saturation counters ``{(stage, role): count}``."""

    seed: int
    stages: list[RefStage]
    loss_kind: str  # "mse" or "softmax_ce"
    counts: dict[tuple[int, str], int] = field(default_factory=dict)
    #: the positions where Online Normalization's clamp held (counted forwards), and the
    #: overflows of its 44-bit ``P`` and ``U`` (also counted under ``norm_online``)
    clamps: int = 0
    state_overflows: int = 0

    def _draw(self, stage: int, role: str, step: int, index: int) -> Callable[[], int]:
        return lambda: word(self.seed, stream(stage, role), step, index)

    def _rq(self, st: RefStage, role: str, acc, src_frac, fmt, step, index, count=True, divisor=1):
        code, over = rq(acc, src_frac, fmt, self._draw(st.index, role, step, index), divisor)
        if count:
            self.counts[(st.index, role)] = self.counts.get((st.index, role), 0) + int(over)
        return code

    def count_dict(self) -> dict[str, int]:
        """Non-zero counters as ``{"stage l role": n}``."""
        return {f"stage {s} {r}": n for (s, r), n in sorted(self.counts.items()) if n}

    # -- input ------------------------------------------------------------------------------
    def encode_input(self, xs: Sequence[float], step: int, base: int = 0, count=True) -> list:
        st = self.stages[0]
        out = []
        for i, x in enumerate(xs):
            code, over = quantize_float(x, st.act_in, self._draw(1, "input", step, base + i))
            if count:
                self.counts[(1, "input")] = self.counts.get((1, "input"), 0) + int(over)
            out.append(code)
        return out

    # -- predicted weights ----------------------------------------------------------------
    def predicted(self, st: RefStage, w, v, w_prev, step: int) -> list[list[int]]:
        if st.prediction == "none" or st.T == 0:
            return [row[:] for row in w]
        fw, fc, fv = st.f("weight"), st.f("coefficient"), st.f("velocity")
        out = []
        for o in range(st.n_out):
            row = []
            for i in range(st.cols):
                idx = o * st.cols + i
                if st.prediction == "velocity":
                    fp = max(fw, fc + fv)
                    acc = w[o][i] * 2 ** (fp - fw) - st.eT * v[o][i] * 2 ** (fp - fc - fv)
                    row.append(self._rq(st, "prediction", acc, fp, st.fmt["weight"], step, idx))
                else:
                    acc = w[o][i] + st.T * (w[o][i] - w_prev[o][i])
                    code, over = overflow(acc, st.fmt["weight"])
                    key = (st.index, "prediction")
                    self.counts[key] = self.counts.get(key, 0) + int(over)
                    row.append(code)
            out.append(row)
        return out

    # -- forward --------------------------------------------------------------------------
    def augment(self, st: RefStage, x: Sequence[int]) -> list[int]:
        return list(x) + ([2**st.act_in.frac] if st.bias else [])

    def forward(self, st: RefStage, wh, x, step: int, base: int = 0, count=True):
        xa = self.augment(st, x)
        src = st.f("weight") + st.act_in.frac
        z = []
        for o in range(st.n_out):
            acc = sum(wh[o][i] * xa[i] for i in range(st.cols))
            z.append(
                self._rq(st, "activation", acc, src, st.fmt["activation"], step, base + o, count)
            )
        if st.last:
            return z, None
        mask = [c > 0 for c in z]
        return [c if mk else 0 for c, mk in zip(z, mask, strict=True)], mask

    # -- loss -----------------------------------------------------------------------------
    def loss(self, y, label: int, step: int) -> list[int]:
        st = self.stages[-1]
        fa, fe = st.f("activation"), st.f("error")
        onehot = [1 if o == label else 0 for o in range(st.n_out)]
        out = []
        if self.loss_kind == "mse":
            for o in range(st.n_out):
                acc = y[o] - onehot[o] * 2**fa
                out.append(self._rq(st, "loss", acc, fa, st.fmt["error"], step, o))
            return out
        p = softmax_probs(y, fa, fe)
        for o in range(st.n_out):
            code, over = overflow(p[o] - onehot[o] * 2**fe, st.fmt["error"])
            self.counts[(st.index, "loss")] = self.counts.get((st.index, "loss"), 0) + int(over)
            out.append(code)
        return out

    # -- backward ---------------------------------------------------------------------------
    @staticmethod
    def output_gradient(delta, mask):
        if mask is None:
            return list(delta)
        return [d if mk else 0 for d, mk in zip(delta, mask, strict=True)]

    def backward(self, st: RefStage, w, dz, step: int) -> list[int]:
        src = st.f("weight") + st.f("error")
        out = []
        for i in range(st.n_in):
            acc = sum(w[o][i] * dz[o] for o in range(st.n_out))
            out.append(self._rq(st, "error", acc, src, st.error_prev, step, i))
        return out

    # -- update -----------------------------------------------------------------------------
    def update(self, st: RefStage, w, v, dz, x, step: int):
        """``(g, v', w')`` as new lists of rows."""
        xa = self.augment(st, x)
        fe, fa = st.f("error"), st.act_in.frac
        g = [
            [
                self._rq(
                    st, "gradient", dz[o] * xa[i], fe + fa, st.fmt["gradient"], step,
                    o * st.cols + i,
                )
                for i in range(st.cols)
            ]
            for o in range(st.n_out)
        ]  # fmt: skip
        return self.momentum(st, w, v, g, step)

    def momentum(self, st: RefStage, w, v, g, step: int):
        """``(g, v', w')`` from the gradient codes ``g``: steps 2 and 3 of the update."""
        fw, fg = st.f("weight"), st.f("gradient")
        fv, fc = st.f("velocity"), st.f("coefficient")
        f_vel = max(fc + fv, fg)
        f_upd = max(fw, fc + fv, fc + fg)
        v2, w2 = [], []
        for o in range(st.n_out):
            vrow, wrow = [], []
            for i in range(st.cols):
                idx = o * st.cols + i
                gi = g[o][i]
                acc = st.m * v[o][i] * 2 ** (f_vel - fc - fv) + gi * 2 ** (f_vel - fg)
                vi = self._rq(st, "velocity", acc, f_vel, st.fmt["velocity"], step, idx)
                acc = (
                    w[o][i] * 2 ** (f_upd - fw)
                    - st.ea * vi * 2 ** (f_upd - fc - fv)
                    - st.eb * gi * 2 ** (f_upd - fc - fg)
                )
                wi = self._rq(st, "weight", acc, f_upd, st.fmt["weight"], step, idx)
                vrow.append(vi)
                wrow.append(wi)
            v2.append(vrow)
            w2.append(wrow)
        return g, v2, w2

    # -- conv stages ----------------------------------------------------------------------------
    def conv_forward(
        self, st: RefConvStage, wh, x, residual, step: int, sample: int = 0, count=True,
        online=None, learn=True,
    ):  # fmt: skip
        """Output (flat, pooled), the ReLU mask per conv output and max pooling's choices.
        Element indices are offset by ``sample`` times the rounded tensor's size (evaluation).
        With Online Normalization ``online`` is the stage's state, which ``learn`` updates."""
        fw, fx, fa = st.f("weight"), st.act_in.frac, st.f("activation")
        k, p = st.n_in, st.positions
        base = sample * st.n_out * p
        z = []
        for o in range(st.n_out):
            for pos in range(p):
                oy, ox = divmod(pos, st.out_hw[1])
                acc = sum(wh[o][j] * st.column(x, j, oy, ox) for j in range(k))
                if st.bias:
                    acc += wh[o][k] * 2**fx
                src = fw + fx
                if st.has_norm:
                    z.append(
                        self._rq(
                            st, "norm", acc, src, st.norm_fmt(), step, base + o * p + pos,
                            count,
                        )
                    )  # fmt: skip
                    continue
                if st.res_fmt is not None:
                    term, tf = st.residual_term(wh, residual, o * p + pos)
                    top = max(src, tf)
                    acc = acc * 2 ** (top - src) + term * 2 ** (top - tf)
                    src = top
                code = self._rq(
                    st, "activation", acc, src, st.fmt["activation"], step, base + o * p + pos,
                    count,
                )  # fmt: skip
                z.append(code)
        norm = None
        if st.groups:
            z, norm = self.group_norm(st, wh, z, residual, step, base, count)
        elif st.online:
            z, norm = self.online_norm(st, wh, z, residual, step, base, count, online, learn)
        mask = None
        if not st.last:
            mask = [c > 0 for c in z]
            z = [c if m else 0 for c, m in zip(z, mask, strict=True)]
        if st.pool == "none":
            return z, mask, None, norm
        if st.pool == "global_avg":
            out = [
                self._rq(
                    st, "pool", sum(z[o * p : (o + 1) * p]), fa, st.fmt["activation"], step,
                    sample * st.n_out + o, count, divisor=p,
                )
                for o in range(st.n_out)
            ]  # fmt: skip
            return out, mask, None, norm
        out, choices = [], []
        windows = st.windows()
        base = sample * st.n_out * len(windows)
        for o in range(st.n_out):
            for pi, members in windows:
                vals = [z[o * p + m] for m in members]
                if st.pool == "avg":
                    out.append(
                        self._rq(
                            st, "pool", sum(vals), fa + st.pool_shift, st.fmt["activation"],
                            step, base + o * len(windows) + pi, count,
                        )
                    )  # fmt: skip
                else:
                    best = vals.index(max(vals))  # the first maximum
                    choices.append(o * p + members[best])
                    out.append(vals[best])
        return out, mask, choices, norm

    # -- group norm (docs/numerics.md, "Group norm") --------------------------------------------
    def _group_members(self, st: RefConvStage, g: int) -> range:
        """The flat conv-output indices of group ``g`` (its channels' every position)."""
        size = st.n_out // st.groups * st.positions
        return range(g * size, (g + 1) * size)

    @staticmethod
    def rsqrt(q: int) -> tuple[int, int]:
        """``(r, J)``: ``J = floor((32 - bits(q)) / 2)``, ``r = floor(2^31 / isqrt(q * 4^J))``
        (``q * 4^J`` rounded down when ``J < 0``); ``(0, 0)`` for ``q = 0``."""
        if q == 0:
            return 0, 0
        j = (32 - q.bit_length()) // 2
        qn = q * 4**j if j >= 0 else q // 4 ** (-j)
        return 2**31 // math.isqrt(qn), j

    def group_norm(self, st: RefConvStage, wh, c, residual, step, base, count):
        """The normalized, scaled and shifted output (and the residual) from the rounded
        convolution ``c``; also what the backward needs: ``(xhat, [(r, J) per group])``."""
        fw, fa = st.f("weight"), st.f("activation")
        size = st.n_out // st.groups * st.positions
        eps = st.eps_code()
        xhat = [0] * len(c)
        rj = []
        for g in range(st.groups):
            members = self._group_members(st, g)
            s1 = sum(c[n] for n in members)
            s2 = sum(c[n] * c[n] for n in members)
            r, j = self.rsqrt(size * s2 - s1 * s1 + size * size * eps)
            rj.append((r, j))
            for n in members:
                xhat[n] = self._rq(
                    st, "normalized", (size * c[n] - s1) * r, 31 - j, st.norm_fmt(),
                    step, base + n, count,
                )  # fmt: skip
        z = []
        for n, xh in enumerate(xhat):
            o = n // st.positions
            acc = xh * wh[o][st.kb] + wh[o][st.kb + 1] * 2**fa
            z.append(self._norm_output(st, wh, residual, n, acc, fw + fa, step, base, count))
        return z, (xhat, rj)

    def _norm_output(self, st: RefConvStage, wh, residual, n, acc, src, step, base, count):
        """A norm's output ``n`` (its scaled and shifted value ``acc`` at frac ``src``) with
        the residual's term added, rounded once into ``A``."""
        if st.res_fmt is not None:
            term, tf = st.residual_term(wh, residual, n)
            top = max(src, tf)
            acc = acc * 2 ** (top - src) + term * 2 ** (top - tf)
            src = top
        return self._rq(st, "activation", acc, src, st.fmt["activation"], step, base + n, count)

    def group_norm_backward(self, st: RefConvStage, w, d, norm, step):
        """The error at the convolution's output from ``d`` at the norm's output."""
        xhat, rj = norm
        fw, fa = st.f("weight"), st.f("activation")
        fd, dzf = st.f("error") + st.pool_shift, st.dz_fmt()
        size = st.n_out // st.groups * st.positions
        dx = [
            self._rq(
                st, "norm_error", d[n] * w[n // st.positions][st.kb], fd + fw, dzf, step, n,
                divisor=st.divisor,
            )
            for n in range(len(d))
        ]  # fmt: skip
        out = [0] * len(d)
        for g in range(st.groups):
            members = self._group_members(st, g)
            s1 = sum(dx[n] for n in members)
            s2 = sum(dx[n] * xhat[n] for n in members)
            draw = self._draw(st.index, "norm_group", step, g)
            k2 = round_fraction(Fraction(s2, 2**fa), st.fmt["error"].rounding, draw)
            r, j = rj[g]
            for n in members:
                t = (size * dx[n] - s1) * 2**fa - xhat[n] * k2
                out[n] = self._rq(st, "norm_backward", t * r, fd + 31 - j, dzf, step, n)
        return out

    # -- Online Normalization (docs/numerics.md, "Online Normalization") ----------------------
    def online_norm(self, st: RefConvStage, wh, c, residual, step, base, count, state, learn):
        """The normalized, scaled, clamped and shifted output (and the residual) from the
        rounded convolution ``c`` with the running state ``state`` (updated in place when
        ``learn``); also what the backward needs: ``(y, clamped, [(r, J) per channel])``."""
        fw, fa, m = st.f("weight"), st.f("activation"), st.positions
        eps = st.eps_code()
        _, b_f, _, _ = st.decays()
        bound = st.kappa() * 2**fw
        y = [0] * len(c)
        rj, sums = [], []
        for o in range(st.n_out):
            members = range(o * m, (o + 1) * m)
            s1 = sum(c[n] for n in members)
            s2 = sum(c[n] * c[n] for n in members)
            sums.append((s1, m * s2 - s1 * s1))
            r, j = self.rsqrt(state["V"][o] + m * m * eps)
            rj.append((r, j))
            for n in members:
                y[n] = self._rq(
                    st, "normalized", (m * c[n] * 2**8 - state["M"][o]) * r, 39 - j,
                    st.norm_fmt(), step, base + n, count,
                )  # fmt: skip
        z, clamped = [], []
        for n, yn in enumerate(y):
            o = n // m
            s = yn * wh[o][st.kb] + wh[o][st.kb + 1] * 2**fa
            clamped.append(s >= bound or s <= -bound)
            self.clamps += int(clamped[-1] and count)
            acc = min(max(s, -bound), bound)
            z.append(self._norm_output(st, wh, residual, n, acc, fw + fa, step, base, count))
        if learn:  # the state, from its values before this sample
            shift = Fmt(256, 0, True, st.fmt["activation"].rounding)  # a shift, no overflow
            for o, (s1, qs) in enumerate(sums):
                big_m, big_v = state["M"][o], state["V"][o]
                dev = s1 * 2**8 - big_m
                state["M"][o] = big_m + self._rq(
                    st, "norm_group", b_f * dev, 16, shift, step, o, count
                )
                square = (dev // 2**8) ** 2  # Dh^2: a_f Dh^2 / 2^16 with b_f the multiplier
                t = square + self._rq(
                    st, "norm_group", -b_f * square, 16, shift, step, st.n_out + o, count
                )
                state["V"][o] = big_v + self._rq(
                    st, "norm_group", b_f * (qs - big_v + t), 16, shift, step,
                    2 * st.n_out + o, count,
                )  # fmt: skip
        return z, (y, clamped, rj)

    def online_norm_backward(self, st: RefConvStage, w, d, norm, step, state):
        """The error at the convolution's output from ``d`` at the norm's output (already 0
        where the clamp held); updates the state's ``P`` and ``U``."""
        y, _, rj = norm
        fw, fa, m, nc = st.f("weight"), st.f("activation"), st.positions, st.n_out
        fd, dzf = st.f("error") + st.pool_shift, st.dz_fmt()
        cv, e2, wide = st.online_fmts()
        _, _, _, b_b = st.decays()
        dx = [
            self._rq(
                st, "norm_error", d[n] * w[n // m][st.kb], fd + fw, dzf, step, n,
                divisor=st.divisor,
            )
            for n in range(len(d))
        ]  # fmt: skip
        out = [0] * len(d)
        for o in range(nc):
            members = range(o * m, (o + 1) * m)
            rho_v = self._rq(
                st, "norm_group", b_b * state["P"][o], 16 + fd + fa, cv, step, 3 * nc + o,
                divisor=m,
            )  # fmt: skip
            rho_u = self._rq(
                st, "norm_group", b_b * state["U"][o], 16 + fd, e2, step, 4 * nc + o, divisor=m
            )
            r, j = rj[o]
            g1 = {}
            for n in members:
                g1[n] = self._rq(
                    st, "norm_online", dx[n] * 2 ** (2 * fa) - rho_v * y[n], fd + 2 * fa, dzf,
                    step, n,
                )  # fmt: skip
                g2 = self._rq(
                    st, "norm_online", m * g1[n] * r, fd + 31 - j - fa, e2, step, nc * m + n
                )
                out[n] = self._rq(st, "norm_backward", g2 - rho_u, fd + 8, dzf, step, n)
            for name, total in (
                ("P", sum(g1[n] * y[n] for n in members)),
                ("U", sum(out[n] for n in members)),
            ):
                state[name][o], over = overflow(state[name][o] + total, wide)
                key = (st.index, "norm_online")
                self.counts[key] = self.counts.get(key, 0) + int(over)
                self.state_overflows += int(over)
        return out

    def conv_backward(
        self, st: RefConvStage, w, x, mask, choices, e, step: int, norm=None, online=None
    ):
        """``(d, error_in, residual_error, norm_d)``: the error at the convolution's output
        (frac ``f(E) + pool_shift``), the error sent back (None for stage 1), along the
        residual, and ``norm_d``: the error at the norm block's output (the projection's
        gradient reads it), the same with Online Normalization's clamp mask applied and the
        normalized codes (for the scale's and shift's gradients). With Online Normalization
        ``online`` is the stage's state, whose ``P`` and ``U`` the backward updates."""
        p = st.positions
        d = [0] * (st.n_out * p)
        windows = st.windows()
        if st.pool == "none":
            d = list(e)
        elif st.pool == "global_avg":
            d = [e[n // p] for n in range(st.n_out * p)]
        elif st.pool == "avg":
            for o in range(st.n_out):
                for pi, members in windows:
                    for m in members:
                        d[o * p + m] = e[o * len(windows) + pi]
        else:
            for n, where in enumerate(choices):
                d[where] = e[n]
        if mask is not None:
            d = [v if m else 0 for v, m in zip(d, mask, strict=True)]
        fd = st.f("error") + st.pool_shift
        residual_error = None
        if st.proj_stride is not None:
            cr, hr, wr = st.res_chw
            acc = [0] * (cr * hr * wr)
            for c in range(cr):
                for n, dn in enumerate(d):
                    o, pos = divmod(n, p)
                    acc[st.proj_index(c, pos)] += w[o][st.kp + c] * dn
            residual_error = [
                self._rq(
                    st, "residual", a, st.f("weight") + fd, st.res_err_fmt, step, i,
                    divisor=st.divisor,
                )
                for i, a in enumerate(acc)
            ]  # fmt: skip
        elif st.res_err_fmt is not None:
            residual_error = [
                self._rq(st, "residual", d[n], fd, st.res_err_fmt, step, n, divisor=st.divisor)
                for n in range(len(d))
            ]
        norm_d, divisor = (d, d, None), st.divisor
        if st.groups:
            norm_d = (d, d, norm[0])
            d, divisor = self.group_norm_backward(st, w, d, norm, step), 1
        elif st.online:
            masked = [0 if cl else v for v, cl in zip(d, norm[1], strict=True)]
            norm_d = (d, masked, norm[0])
            d, divisor = self.online_norm_backward(st, w, masked, norm, step, online), 1
        error_in = None
        if st.error_prev is not None:
            cin, h, wd = st.in_chw
            acc = [0] * (cin * h * wd)
            for o in range(st.n_out):
                for pos in range(p):
                    oy, ox = divmod(pos, st.out_hw[1])
                    for j in range(st.n_in):
                        ci, rest = divmod(j, st.kernel[0] * st.kernel[1])
                        a, b = divmod(rest, st.kernel[1])
                        y = oy * st.stride[0] + a - st.padding[0]
                        xx = ox * st.stride[1] + b - st.padding[1]
                        if 0 <= y < h and 0 <= xx < wd:
                            acc[(ci * h + y) * wd + xx] += w[o][j] * d[o * p + pos]
            error_in = [
                self._rq(
                    st, "error", a, st.f("weight") + fd, st.error_prev, step, i,
                    divisor=divisor,
                )
                for i, a in enumerate(acc)
            ]  # fmt: skip
        return d, error_in, residual_error, norm_d

    def conv_update(self, st: RefConvStage, w, v, d, x, step: int, norm_d=None, residual=None):
        """``(g, v', w')``: each weight's gradient sums its products over the positions; with
        a norm the scale's sums the error at the norm's output (``norm_d[1]``, Online
        Normalization's masked where the clamp held) times the normalized codes
        (``norm_d[2]``), the shift's that error; the projection's the error at the block's
        output (``norm_d[0]``) times its input from ``residual``."""
        p, fx, fd = st.positions, st.act_in.frac, st.f("error") + st.pool_shift
        g = []
        for o in range(st.n_out):
            row = []
            for j in range(st.cols):
                if st.has_norm and j == st.kb:  # the scale
                    acc = sum(norm_d[1][o * p + pos] * norm_d[2][o * p + pos] for pos in range(p))
                    src, divisor = fd + st.f("activation"), st.divisor
                elif st.has_norm and j == st.kb + 1:  # the shift
                    acc, src, divisor = sum(norm_d[1][o * p : (o + 1) * p]), fd, st.divisor
                elif st.proj_stride is not None and j >= st.kp:  # the projection
                    c, dsum = j - st.kp, norm_d[0]
                    acc = sum(
                        dsum[o * p + pos] * st.proj_input(residual, c, pos) for pos in range(p)
                    )
                    src, divisor = fd + st.res_fmt.frac, st.divisor
                else:
                    acc, src = 0, fd + fx
                    divisor = 1 if st.has_norm else st.divisor
                    for pos in range(p):
                        oy, ox = divmod(pos, st.out_hw[1])
                        xv = 2**fx if j == st.n_in else st.column(x, j, oy, ox)
                        acc += d[o * p + pos] * xv
                row.append(
                    self._rq(
                        st, "gradient", acc, src, st.fmt["gradient"], step, o * st.cols + j,
                        divisor=divisor,
                    )
                )  # fmt: skip
            g.append(row)
        return self.momentum(st, w, v, g, step)

    def add_errors(self, st: RefStage, a, b) -> list[int]:
        """The error arriving at a residual's source: the exact sum, then E's overflow."""
        out = []
        for u, t in zip(a, b, strict=True):
            code, over = overflow(u + t, st.fmt["error"])
            key = (st.index, "residual")
            self.counts[key] = self.counts.get(key, 0) + int(over)
            out.append(code)
        return out

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, states, xs: Sequence[Sequence[float]]) -> list[list[int]]:
        """Outputs for a batch with the current weights: step ``EVAL_STEP``, index
        ``sample * n + element``, no counting."""
        outs = []
        for s, row in enumerate(xs):
            h = self.encode_input(row, EVAL_STEP, base=s * len(row), count=False)
            hs: list[list[int]] = []
            for st, state in zip(self.stages, states, strict=True):
                if isinstance(st, RefConvStage):
                    back = st.residual_back
                    residual = hs[-back] if back else None
                    h, _, _, _ = self.conv_forward(
                        st, state["w"], h, residual, EVAL_STEP, sample=s, count=False,
                        online=state.get("online"), learn=False,
                    )  # fmt: skip
                else:
                    h, _ = self.forward(
                        st, state["w"], h, EVAL_STEP, base=s * st.n_out, count=False
                    )
                hs.append(h)
            outs.append(h)
        return outs


# ------------------------------------------------------------------------------------------
# The step-synchronous schedule (docs/design.md section 1), written independently of golden/pipeline


class RefPipeline:
    """Stage ``l`` forwards sample ``s`` in step ``s + l - 1``; the loss error of ``s`` is
    formed in that step at stage ``L``; stage ``l`` runs the backward and update of ``s`` in step
    ``s + 2L - l``; all with the weights held at the start of the step."""

    def __init__(self, net: RefNet, states: list[dict]):
        self.net = net
        self.states = states  # per stage {"w", "v", "w_prev"}
        self.t = 0
        self.samples: list[tuple[Sequence[float], int]] = []
        self.stash: list[dict[int, tuple[list[int], list[bool] | None]]] = [{} for _ in net.stages]
        self.outputs: dict[tuple[int, int], list[int]] = {}  # (stage, sample) -> y
        self.errors: dict[tuple[int, int], list[int]] = {}  # (stage, sample) -> error *into* it

    def step(self, x: Sequence[float] | None, label: int | None) -> dict:
        """One step; returns {"outputs": {l: y}, "errors": {l: delta_{l-1}}, "loss": delta}."""
        net, t = self.net, self.t
        num = len(net.stages)
        if x is not None:
            self.samples.append((x, label))
        rec: dict = {"outputs": {}, "errors": {}, "loss": None}
        # forward
        for li, st in enumerate(net.stages):
            s = t - li
            if not 0 <= s < len(self.samples):
                continue
            if li == 0:
                if x is None or s != len(self.samples) - 1:
                    continue
                inp = net.encode_input(x, t)
            else:
                inp = self.outputs[(li - 1, s)]
            state = self.states[li]
            wh = net.predicted(st, state["w"], state["v"], state.get("w_prev"), t)
            y, mask = net.forward(st, wh, inp, t)
            self.stash[li][s] = (inp, mask)
            self.outputs[(li, s)] = y
            rec["outputs"][st.index] = y
            if li == num - 1:
                delta = net.loss(y, self.samples[s][1], t)
                self.errors[(li, s)] = delta
                rec["loss"] = delta
        # backward, then update (weights at the start of the step)
        pending = []
        for li in reversed(range(num)):
            st = net.stages[li]
            s = t - (2 * num - (li + 1))
            if (li, s) not in self.errors or s not in self.stash[li]:
                continue
            inp, mask = self.stash[li].pop(s)
            dz = net.output_gradient(self.errors[(li, s)], mask)
            state = self.states[li]
            if li > 0:
                e = net.backward(st, state["w"], dz, t)
                self.errors[(li - 1, s)] = e
                rec["errors"][st.index] = e
            pending.append((li, st, dz, inp))
        for li, st, dz, inp in sorted(pending, key=lambda p: p[0]):
            state = self.states[li]
            _, v2, w2 = net.update(st, state["w"], state["v"], dz, inp, t)
            if state.get("w_prev") is not None:
                state["w_prev"] = state["w"]
            state["w"], state["v"] = w2, v2
        self.t += 1
        return rec
