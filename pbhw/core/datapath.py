"""The datapath plan of a stage: every accumulator, product and latency, derived once.

A :class:`StageDatapath` is a pure, frozen description derived from the stage's formats, the
optimizer's constants and the device's hard multiplier (:func:`stage_datapath`):

* **accumulators** (``docs/numerics.md``): each exact sum has the fractional bits of its finest
  term, every term a left shift onto them, and the width of the exact range of its terms, so
  nothing overflows before the one rounding into a role's format;
* **products**: everything one lane multiplies, with its operand widths and the hard-multiplier
  pieces it is cut into (:func:`product_pieces`), hence its DSP cost on a device; a product by
  a constant built in the fabric (``hardware.constants = "fabric"``) has no pieces but the
  constant's canonical signed digits (:func:`csd_digits`), one shifted term each;
* **latencies and pipeline positions** of a product and of the update (the cycle at which each
  rounding point rounds, after the update's inputs).

The golden model (:mod:`golden.fixed_arith`), the hardware (:mod:`rtl_gen.update`,
:mod:`rtl_gen.stage`, :mod:`rtl_gen.lanes`), the manifest and the fast estimate read this
module; none of them works a width, a shift or a product list out on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pbhw.core.config import ConfigError, ConstantProducts, Formats, Pool, WeightPrediction
from pbhw.core.devices import Device, dsp_count, load_device
from pbhw.core.fixed import FixedFormat, Rounding
from pbhw.core.plan import Plan, StagePlan

__all__ = [
    "ACC_LIMIT",
    "FABRIC_PRODUCT_LATENCY",
    "PRODUCT_LATENCY",
    "SHIFT_PRODUCT_LATENCY",
    "UPDATE_POINTS",
    "Accumulator",
    "Product",
    "StageDatapath",
    "UpdateDatapath",
    "UpdateTiming",
    "constant_ports",
    "constant_product_latency",
    "constant_operands",
    "constant_slices",
    "csd_digits",
    "fabric_adder_bits",
    "fabric_register_bits",
    "fabric_tree",
    "TreeNode",
    "dot_accumulator",
    "is_shift",
    "operand_slices",
    "plan_datapaths",
    "piece_widths",
    "product_pieces",
    "signed_width",
    "span_width",
    "stage_datapath",
    "update_datapath",
    "update_timing",
    "pool_shift",
    "residual_format_of",
    "x_format_of",
]

#: Widest signed accumulator the bit-exact model (numpy int64) and the hardware hold.
ACC_LIMIT = 62

#: Cycles from the operands to a pipelined product: operand, piece, piece again (in the fabric,
#: between a hard multiplier and its sum), sum.
PRODUCT_LATENCY = 4
#: Cycles from the operand to a product by a constant built in the fabric
#: (``hardware.constants = "fabric"``): the operand register, one level of registered adders,
#: the registered sum (:func:`fabric_tree`). No hard multiplier sits far away, so the two
#: registers around one placed far from its sum are not needed.
FABRIC_PRODUCT_LATENCY = 3
#: Cycles from the operand to a product by an update constant of the ``shift`` option: its
#: shifts and at most one adder, registered once.
SHIFT_PRODUCT_LATENCY = 1

#: The update's rounding points, in the order of the computation.
UPDATE_POINTS = ("gradient", "velocity", "weight", "prediction")


def constant_product_latency(constants: ConstantProducts) -> int:
    """Cycles from the operand to a product by a constant built as ``constants`` says."""
    return FABRIC_PRODUCT_LATENCY if constants is ConstantProducts.FABRIC else PRODUCT_LATENCY


@dataclass(frozen=True)
class UpdateTiming:
    """The cycles of the pipelined update of one weight (:class:`rtl_gen.update.UpdateUnit`),
    after its inputs, for products by an update constant of ``constant`` cycles and a
    prediction product of ``prediction_product`` cycles (the data product ``dz * x`` takes
    :data:`PRODUCT_LATENCY`, ``L``; a constant's ``C``).

    Cycle by cycle: ``dz*x``, ``m*v`` and the prediction's product start (0); the gradient
    rounds (``L``); the velocity's sum is registered (``L+1``, where ``eta_b*g`` starts) and
    rounds (``L+2``); ``eta_a*v_new`` starts (``L+3``) and arrives with ``w - eta_b*g``
    (``L+C+3``); the new weight's sum is registered and rounds (``L+C+4``). The predicted
    weight rounds a cycle after its product (``P+1``). Every output is registered once after its
    rounding."""

    constant: int
    prediction_product: int

    def __post_init__(self) -> None:
        for name in ("constant", "prediction_product"):
            value = getattr(self, name)
            if not 1 <= value <= PRODUCT_LATENCY:
                raise ValueError(f"A product's {name} latency must be in 1..{PRODUCT_LATENCY}")

    @property
    def pipeline(self) -> Mapping[str, int]:
        """The cycle (after the inputs) at which each rounding point rounds (its random word
        must arrive then)."""
        return MappingProxyType(
            {
                "gradient": PRODUCT_LATENCY,
                "prediction": self.prediction_product + 1,
                "velocity": PRODUCT_LATENCY + 2,
                "weight": PRODUCT_LATENCY + self.constant + 4,
            }
        )

    @property
    def prediction_latency(self) -> int:
        """Cycles from the inputs to the predicted weight (and its saturation flag)."""
        return self.pipeline["prediction"] + 1

    @property
    def velocity_latency(self) -> int:
        """Cycles from the inputs to ``v_next``, the new velocity registered once after its
        rounding (a stage writes V back then, not with W: no delay line waits for the
        weight)."""
        return self.pipeline["velocity"] + 1

    @property
    def latency(self) -> int:
        """Cycles from the inputs to ``g``, ``v_new``, ``w_new`` and their flags."""
        return self.pipeline["weight"] + 1


def update_timing(update: UpdateDatapath, constants: ConstantProducts) -> UpdateTiming:
    """The :class:`UpdateTiming` of ``update`` with its products by a constant built as
    ``constants`` says: a shift-option constant takes :data:`SHIFT_PRODUCT_LATENCY`; the
    weight-difference prediction's product by the horizon (never a shift) is built as any other
    product by a constant."""
    built = constant_product_latency(constants)
    constant = SHIFT_PRODUCT_LATENCY if update.shift else built
    by_horizon = update.prediction_form is WeightPrediction.WEIGHT_DIFFERENCE
    return UpdateTiming(constant=constant, prediction_product=built if by_horizon else constant)


# ---------------------------------------------------------------------------------------------
# Widths


def span_width(lo: int, hi: int) -> int:
    """Bits of the narrowest two's complement code holding every integer of ``[lo, hi]``."""
    return max(2, (-lo - 1).bit_length() + 1, hi.bit_length() + 1)


Span = tuple[int, int]


def _range(fmt: FixedFormat) -> Span:
    return fmt.min_code, fmt.max_code


def _times(a: Span, b: Span) -> Span:
    corners = [x * y for x in a for y in b]
    return min(corners), max(corners)


def _plus(*terms: Span) -> Span:
    return sum(t[0] for t in terms), sum(t[1] for t in terms)


def _neg(a: Span) -> Span:
    return -a[1], -a[0]


def _scaled(a: Span, shift: int) -> Span:
    return a[0] << shift, a[1] << shift


@dataclass(frozen=True)
class Accumulator:
    """An exact sum: its format and the left shift of each of its terms onto its frac.

    Parameters
    ----------
    format : FixedFormat
        Signed; ``width`` holds the exact range of the sum, ``frac`` is the finest term's.
    shifts : mapping of str to int
        Term name -> left shift (>= 0) that aligns the term to ``format.frac``.
    """

    format: FixedFormat
    shifts: Mapping[str, int]

    @property
    def width(self) -> int:
        return self.format.width

    @property
    def frac(self) -> int:
        return self.format.frac


def _accumulator(name: str, span: Span, frac: int, shifts: Mapping[str, int], where: str):
    bits = span_width(*span)
    if bits > ACC_LIMIT:
        what = f"{where}the {name} accumulator" if where else f"The {name} accumulator"
        raise ConfigError(
            f"{what} needs {bits} bits, more than {ACC_LIMIT} (the widest the bit-exact model "
            "and the hardware hold); narrow the formats of that stage (config keys formats.* "
            "or its [[overrides]])"
        )
    return Accumulator(FixedFormat(bits, frac), MappingProxyType(dict(shifts)))


def dot_accumulator(
    name: str, a: FixedFormat, b: FixedFormat, terms: int, *, where: str = ""
) -> Accumulator:
    """The accumulator of a sum of ``terms`` products of an ``a`` code and a ``b`` code."""
    lo, hi = _times(_range(a), _range(b))
    return _accumulator(name, (terms * lo, terms * hi), a.frac + b.frac, {"product": 0}, where)


# ---------------------------------------------------------------------------------------------
# The update of one weight


@dataclass(frozen=True)
class UpdateDatapath:
    """The accumulators and constants of the update of one weight (``docs/numerics.md``,
    "Update of stage l" and "Predicted weights").

    ``gradient`` sums ``dz * x``; ``velocity`` sums ``m*v`` and ``g`` (terms ``mv``, ``g``);
    ``weight`` sums ``w``, ``-eta_a*v_new`` and ``-eta_b*g`` (terms ``w``, ``v``, ``g``);
    ``prediction`` (None without prediction) sums ``w`` and ``-eta_T*v`` (terms ``w``, ``v``)
    or, for the weight-difference form, ``w + T*(w - w_prev)`` at the weight's own frac.
    ``constants`` are the codes multiplied by (``eta_b`` only when non-zero, ``eta_t`` only
    with the velocity prediction). ``stochastic_points`` are the rounding points that round
    stochastically (the prediction only in the velocity form; the weight-difference form never
    rounds).
    """

    gradient: Accumulator
    velocity: Accumulator
    weight: Accumulator
    prediction: Accumulator | None
    prediction_form: WeightPrediction
    constants: Mapping[str, int]
    horizon: int
    shift: bool
    stochastic_points: tuple[str, ...]

    def accumulator(self, point: str) -> Accumulator:
        """The accumulator of a rounding point of :data:`UPDATE_POINTS`."""
        acc = getattr(self, point) if point in UPDATE_POINTS else None
        if acc is None:
            raise ValueError(
                f"Point must be one of {UPDATE_POINTS} with an accumulator, not {point!r}"
            )
        return acc

    @property
    def coefficient_multipliers(self) -> int:
        """Multipliers by a constant: 0 with the shift option (shifts and adders instead)."""
        if self.shift:
            return 0
        return sum(1 for code in self.constants.values() if code not in (0, 1))


def update_datapath(
    formats: Formats,
    x_format: FixedFormat,
    *,
    momentum: int,
    eta_a: int,
    eta_b: int,
    prediction: WeightPrediction = WeightPrediction.NONE,
    eta_t: int = 0,
    horizon: int = 0,
    where: str = "",
    gradient_terms: int = 1,
    error_format: FixedFormat | None = None,
) -> UpdateDatapath:
    """The update's accumulators from the stage's formats, the stashed input's format and the
    constants' codes.

    A conv stage's gradient sums ``gradient_terms`` products (one per output position) of an
    error code in ``error_format`` (the error at the convolution's output: the stage's error
    format, with more fractional bits behind an average pooling) and an input code; a dense
    stage's is one product of the stage's error format.

    Raises
    ------
    ConfigError
        If an accumulator would need more than :data:`ACC_LIMIT` bits (``where``, e.g.
        ``"stage 2: "``, prefixes the message).
    """
    fw = formats.weight.format.frac
    fg, fv = formats.gradient.format.frac, formats.velocity.format.frac
    fc = formats.coefficient.format.frac
    w, v = _range(formats.weight.format), _range(formats.velocity.format)
    g = _range(formats.gradient.format)

    def const(code: int) -> Span:
        return code, code

    e_format = formats.error.format if error_format is None else error_format
    lo, hi = _times(_range(e_format), _range(x_format))
    grad = (gradient_terms * lo, gradient_terms * hi)
    gradient = _accumulator("gradient", grad, e_format.frac + x_format.frac, {"product": 0}, where)
    f_vel = max(fc + fv, fg)
    s_mv, s_g = f_vel - fc - fv, f_vel - fg
    vel = _plus(_scaled(_times(const(momentum), v), s_mv), _scaled(g, s_g))
    velocity = _accumulator("velocity", vel, f_vel, {"mv": s_mv, "g": s_g}, where)
    f_upd = max(fw, fc + fv, fc + fg)
    u_w, u_v, u_g = f_upd - fw, f_upd - fc - fv, f_upd - fc - fg
    upd = _plus(
        _scaled(w, u_w),
        _neg(_scaled(_times(const(eta_a), v), u_v)),
        _neg(_scaled(_times(const(eta_b), g), u_g)),
    )
    weight = _accumulator("weight", upd, f_upd, {"w": u_w, "v": u_v, "g": u_g}, where)
    pre = None
    if prediction is WeightPrediction.VELOCITY:
        f_pre = max(fw, fc + fv)
        p_w, p_v = f_pre - fw, f_pre - fc - fv
        span = _plus(_scaled(w, p_w), _neg(_scaled(_times(const(eta_t), v), p_v)))
        pre = _accumulator("prediction", span, f_pre, {"w": p_w, "v": p_v}, where)
    elif prediction is WeightPrediction.WEIGHT_DIFFERENCE:
        span = _plus(w, _times(const(horizon), _plus(w, _neg(w))))
        pre = _accumulator("prediction", span, fw, {"w": 0, "dw": 0}, where)
    constants = {"momentum": momentum, "eta_a": eta_a}
    if eta_b:
        constants["eta_b"] = eta_b
    if prediction is WeightPrediction.VELOCITY:
        constants["eta_t"] = eta_t
    stochastic = tuple(
        point
        for point in UPDATE_POINTS
        if (point != "prediction" or prediction is WeightPrediction.VELOCITY)
        and formats.role("weight" if point == "prediction" else point).rounding
        is Rounding.STOCHASTIC
    )
    return UpdateDatapath(
        gradient=gradient,
        velocity=velocity,
        weight=weight,
        prediction=pre,
        prediction_form=prediction,
        constants=MappingProxyType(constants),
        horizon=horizon,
        shift=formats.coefficient_shift,
        stochastic_points=stochastic,
    )


# ---------------------------------------------------------------------------------------------
# Products cut to the hard multiplier


def operand_slices(width: int, port: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` bit ranges of a signed ``width``-bit operand for a ``port``-bit input: every
    slice but the top one is ``port - 1`` bits (a low slice is unsigned, so it gains a zero top
    bit as a signed operand); the top slice keeps the sign."""
    if width <= port:
        return [(0, width)]
    step = port - 1
    out = [(lo, lo + step) for lo in range(0, width - 1, step) if lo + step < width]
    out.append((out[-1][1], width))
    return out


def piece_widths(width: int, port: int) -> list[int]:
    """Widths, as signed operands, of the slices of a signed ``width``-bit operand."""
    return [hi - lo + (hi < width) for lo, hi in operand_slices(width, port)]


def signed_width(code: int) -> int:
    """Bits of ``code`` as a two's complement number."""
    return (code if code >= 0 else ~code).bit_length() + 1


def constant_slices(code: int, port: int) -> list[tuple[int, int]]:
    """``(shift, chunk)`` with ``code == sum(chunk << shift)``, zero chunks left out."""
    width = signed_width(code)
    out = []
    for lo, hi in operand_slices(width, port):
        chunk = (code >> lo) & ((1 << (hi - lo)) - 1)
        if hi == width and chunk >> (hi - lo - 1):
            chunk -= 1 << (hi - lo)  # the top slice is signed
        if chunk:
            out.append((lo, chunk))
    return out


def is_shift(chunk: int) -> bool:
    """Whether multiplying by ``chunk`` is a shift (and a negation): a power of two."""
    mag = abs(chunk)
    return mag & (mag - 1) == 0


def csd_digits(code: int) -> list[tuple[int, int]]:
    """``code`` in canonical signed digits (the non-adjacent form): ``(shift, digit)`` pairs,
    ``digit`` 1 or -1, shifts increasing and never adjacent, ``code == sum(digit << shift)``.

    No signed-digit form of ``code`` has fewer non-zero digits, so rewritings such as
    ``m * v = v - (1 - m) * v`` never need fewer terms: the form is already the cheapest
    shift-and-add of a single constant (one adder fewer than digits)."""
    out = []
    shift = 0
    while code:
        if code & 1:
            digit = 2 - (code & 3)  # 1 when code = 1 (mod 4), -1 when code = 3 (mod 4)
            out.append((shift, digit))
            code -= digit
        code >>= 1
        shift += 1
    return out


def fabric_adder_bits(a_bits: int, code: int) -> int:
    """Bits of the adders of ``a x code`` in the fabric (a ``a_bits``-bit signed operand): one
    adder fewer than the code's canonical signed digits, each counted as wide as the exact
    product (an upper bound of what the registered tree holds)."""
    return max(len(csd_digits(code)) - 1, 0) * (a_bits + signed_width(code))


@dataclass(frozen=True)
class TreeNode:
    """A registered partial sum of :func:`fabric_tree`: the sum of ``terms`` (indices into the
    level below: the digits' terms for the first level) is ``register << shift``, and the
    register holds ``[lo, hi]`` exactly (no zero bits below ``shift``)."""

    terms: tuple[int, ...]
    shift: int
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return span_width(self.lo, self.hi)


def _tree_fanin(terms: int, levels: int) -> int:
    """Terms each adder of a ``levels``-deep tree sums so that ``terms`` terms reach one: the
    smallest ``k >= 2`` with ``k ** levels >= terms``."""
    k = 2
    while k**levels < terms:
        k += 1
    return k


def fabric_tree(
    a_bits: int, code: int, latency: int = FABRIC_PRODUCT_LATENCY
) -> tuple[tuple[TreeNode, ...], ...]:
    """The adder tree of ``a x code`` in the fabric, ``latency`` cycles from the operand
    (:func:`rtl_gen.products.fabric_product` builds it): the operand is registered, every
    canonical signed digit gives a term ``digit * a << shift``, ``latency - 2`` levels of
    registered adders each sum :func:`_tree_fanin` terms of the level below, and the last
    register holds the product. Returns every level from the digits' terms to the product's
    (one node); the first level's nodes are the terms themselves (the operand register)."""
    if latency < 2:
        raise ValueError(f"A fabric product takes at least 2 cycles, not {latency}")
    lo_a, hi_a = -(1 << (a_bits - 1)), (1 << (a_bits - 1)) - 1
    level = tuple(
        TreeNode((n,), k, *sorted((d * lo_a, d * hi_a)))
        for n, (k, d) in enumerate(csd_digits(code))
    )
    levels = [level]
    fanin = _tree_fanin(len(level), latency - 1)
    for depth in range(latency - 1):
        last = depth == latency - 2
        size = len(levels[-1]) if last else fanin
        nodes = []
        for n in range(0, len(levels[-1]), max(size, 1)):
            group = levels[-1][n : n + size]
            base = min(t.shift for t in group)
            lo = sum(t.lo << (t.shift - base) for t in group)
            hi = sum(t.hi << (t.shift - base) for t in group)
            nodes.append(TreeNode(tuple(range(n, n + len(group))), base, lo, hi))
        levels.append(tuple(nodes))
    return tuple(levels)


def fabric_register_bits(a_bits: int, code: int) -> int:
    """Flip-flops of ``a x code`` in the fabric (:func:`fabric_tree`): the operand register and
    every partial sum's, the product's included."""
    if code == 0:
        return 0
    return a_bits + sum(node.width for level in fabric_tree(a_bits, code)[1:] for node in level)


def constant_operands(
    weight: FixedFormat,
    velocity: FixedFormat,
    gradient: FixedFormat,
    codes: Mapping[str, int],
    *,
    prediction: WeightPrediction,
    horizon: int,
    shift: bool,
) -> list[tuple[str, int, tuple[str, int]]]:
    """The products by a constant of one lane, ``(name, a_bits, ("constant", code))``: the
    horizon's with the weight-difference prediction, and unless ``shift`` one per non-zero
    update constant of ``codes`` (``momentum``, ``eta_a``, ``eta_b``, ``eta_T``; ``eta_T`` with
    the velocity prediction)."""
    w_bits, v_bits = _signed_bits(weight), _signed_bits(velocity)
    out: list[tuple[str, int, tuple[str, int]]] = []
    if prediction is WeightPrediction.WEIGHT_DIFFERENCE:
        out.append(("horizon", w_bits + 1, ("constant", horizon)))
    if shift:
        return out
    # The update's rounded velocity and gradient carry one extra bit.
    by_constant = [
        ("momentum", v_bits),
        ("eta_a", velocity.width + 1),
        ("eta_b", gradient.width + 1),
    ]
    if prediction is WeightPrediction.VELOCITY:
        by_constant.append(("eta_T", v_bits))
    for name, bits in by_constant:
        code = codes.get(name, 0)
        if code:  # eta_b is 0 without Spike Compensation: no term
            out.append((name, bits, ("constant", code)))
    return out


def constant_ports(a_bits: int, code: int, ports: tuple[int, int]) -> tuple[int, int]:
    """(port of the operand, port of the constant): the wider operand takes the wider port."""
    wide, narrow = max(ports), min(ports)
    return (wide, narrow) if a_bits >= signed_width(code) else (narrow, wide)


def product_pieces(
    a_bits: int, b: tuple[str, int], ports: tuple[int, int]
) -> list[tuple[int, int]]:
    """Operand widths of the pieces of ``a x b`` that :func:`rtl_gen.products.pipelined_product`
    multiplies.

    ``a_bits`` is the width of a signed operand; ``b`` is ``("width", n)`` for another signed
    operand or ``("constant", code)``; ``ports`` are the device's multiplier operand widths.
    Power-of-two slices of a constant are shifts and have no piece."""
    kind, value = b
    wide, narrow = max(ports), min(ports)
    if kind == "width":
        a, b_bits = max(a_bits, value), min(a_bits, value)
        return [(x, y) for x in piece_widths(a, wide) for y in piece_widths(b_bits, narrow)]
    if kind != "constant":
        raise ValueError(f"Operand must be ('width', n) or ('constant', code), not {b!r}")
    port_a, port_c = constant_ports(a_bits, value, ports)
    return [
        (x, signed_width(chunk))
        for _, chunk in constant_slices(value, port_c)
        if not is_shift(chunk)
        for x in piece_widths(a_bits, port_a)
    ]


@dataclass(frozen=True)
class Product:
    """One product a lane computes per cycle.

    Parameters
    ----------
    name : str
        ``forward`` (W x A), ``gradient`` (E x A), ``backward`` (W x E), ``horizon``
        (T x (w - w_prev)), or an update constant: ``momentum``, ``eta_a``, ``eta_b``,
        ``eta_T``.
    a_bits : int
        Width of the signed operand.
    operand : tuple
        ``("width", bits)`` of the other signed operand, or ``("constant", code)``.
    pieces : tuple of (int, int)
        Operand widths of the pieces cut for the device's hard multiplier; none for a product
        by a constant built in the fabric.
    digits : tuple of (int, int)
        Only for a product by a constant built in the fabric: the constant's canonical signed
        digits ``(shift, digit)`` (:func:`csd_digits`), one shifted ``a`` term each, summed by
        an adder tree (:func:`rtl_gen.products.fabric_product`).
    """

    name: str
    a_bits: int
    operand: tuple[str, int]
    pieces: tuple[tuple[int, int], ...]
    digits: tuple[tuple[int, int], ...] = ()

    @property
    def fabric(self) -> bool:
        """A product by a constant built by shifts and adders in the fabric."""
        return bool(self.digits)

    @property
    def adders(self) -> int:
        """Two-input adders (or subtractors) of a fabric product: one fewer than its digits."""
        return max(len(self.digits) - 1, 0)

    @property
    def adder_bits(self) -> int:
        """Bits of those adders, each as wide as the exact product (an upper bound of the LUTs
        their carry chains take on a LUT4 device)."""
        if not self.digits:
            return 0
        return fabric_adder_bits(self.a_bits, self.operand[1])

    @property
    def data(self) -> bool:
        """A product of two data operands (not of an update constant)."""
        return self.operand[0] == "width"

    def dsp(self, device: Device) -> int:
        """Hard multiplier blocks of this product on ``device``."""
        return sum(dsp_count(a, b, device) for a, b in self.pieces)


# ---------------------------------------------------------------------------------------------
# A stage


@dataclass(frozen=True)
class StageDatapath:
    """Everything one stage computes, as widths: see the module docstring.

    ``backward`` is None in stage 1, which sends no error back. ``products`` are one lane's
    (the hardware has ``lanes`` copies of each); with ``formats.coefficient.shift`` the update
    constants are shifts and adders, not products. ``constants`` says how the products by a
    constant are built: in the fabric (canonical signed digits, no hard multiplier) or cut
    into hard-multiplier pieces as the data products.
    """

    index: int
    x_format: FixedFormat
    forward: Accumulator
    backward: Accumulator | None
    update: UpdateDatapath
    products: tuple[Product, ...]
    multiplier_ports: tuple[int, int] | None
    constants: ConstantProducts = ConstantProducts.DSP

    def lane_dsp(self, device: Device) -> int:
        """Hard multiplier blocks of one lane on ``device``."""
        return sum(p.dsp(device) for p in self.products)

    def pieces(self) -> list[tuple[str, int, int]]:
        """Every hard-multiplier piece of one lane as ``(product name, a, b)``."""
        return [(p.name, a, b) for p in self.products for a, b in p.pieces]


def _product(
    name: str,
    a_bits: int,
    operand: tuple[str, int],
    ports: tuple[int, int],
    constants: ConstantProducts,
) -> Product:
    if operand[0] == "constant" and constants is ConstantProducts.FABRIC:
        return Product(name, a_bits, operand, (), tuple(csd_digits(operand[1])))
    return Product(name, a_bits, operand, tuple(product_pieces(a_bits, operand, ports)))


def x_format_of(plan: Plan, stage: StagePlan) -> FixedFormat:
    """The format of a stage's input: the previous stage's activation (stage 1: its own)."""
    return plan.stages[max(stage.index - 2, 0)].formats.activation.format


def residual_format_of(plan: Plan, stage: StagePlan) -> FixedFormat | None:
    """The format of the residual a stage adds: its source stage's activation (None without)."""
    if not stage.residual_shape:
        return None
    assert stage.spec is not None
    return plan.stages[stage.index - 1 - stage.spec.residual].formats.activation.format


def pool_shift(stage: StagePlan) -> int:
    """``log2`` of an average pooling's window (2 in 1-D, 2x2 in 2-D); 0 without one.

    The window's sum of codes has this many more fractional bits than the activation format,
    and so has an error spread back over the window (``docs/numerics.md``, "Conv stages")."""
    if not stage.conv or stage.spec is None or stage.spec.pool is not Pool.AVG:
        return 0
    return len(stage.spec.conv_shape) - 1


def _conv_accumulators(
    stage: StagePlan, x_format: FixedFormat, bias: bool, residual: FixedFormat | None, where: str
) -> tuple[Accumulator, Accumulator | None, FixedFormat, int]:
    """A conv stage's forward and backward accumulators, the format of the error at its
    convolution's output (``dz``) and the number of terms of one weight's gradient.

    Forward: each output position sums ``C_in x kernel^d`` products (and the bias's one); a
    residual is aligned onto the finer of the two fracs and added to the same sum. Backward:
    an input position receives at most ``C_out x kernel^d`` products. Gradient: one product per
    output position."""
    sp = stage.spec
    assert sp is not None
    fm = stage.formats
    rank = len(sp.conv_shape) - 1
    window = sp.kernel**rank
    positions = math.prod(sp.conv_shape[1:])
    lo, hi = _times(_range(fm.weight.format), _range(x_format))
    terms = sp.in_shape[0] * window + int(bias)
    frac = fm.weight.format.frac + x_format.frac
    span, shifts = (terms * lo, terms * hi), {"product": 0}
    if residual is not None:
        top = max(frac, residual.frac)
        shifts = {"product": top - frac, "residual": top - residual.frac}
        span = _plus(_scaled(span, top - frac), _scaled(_range(residual), top - residual.frac))
        frac = top
    forward = _accumulator("forward", span, frac, shifts, where)
    e = fm.error.format
    dz = FixedFormat(e.width, e.frac + pool_shift(stage), e.signed)
    backward = None
    if stage.index > 1:
        backward = dot_accumulator("backward", fm.weight.format, dz, sp.out * window, where=where)
    return forward, backward, dz, positions


def _signed_bits(fmt: FixedFormat) -> int:
    return fmt.width + (0 if fmt.signed else 1)


def stage_datapath(
    stage: StagePlan,
    *,
    x_format: FixedFormat,
    bias: bool,
    prediction: WeightPrediction,
    multiplier_ports: tuple[int, int] | None,
    constants: ConstantProducts = ConstantProducts.DSP,
    residual_format: FixedFormat | None = None,
) -> StageDatapath:
    """The datapath of one stage.

    Parameters
    ----------
    stage : StagePlan
        The stage's formats, sizes, horizon and quantized constants.
    x_format : FixedFormat
        Format of the stage's input (:func:`x_format_of`).
    bias : bool
        Whether the weights have a bias column (the constant input 1).
    prediction : WeightPrediction
        The config's weight prediction (no prediction where the stage's horizon is 0).
    multiplier_ports : tuple of int, or None
        Operand widths of the device's hard multiplier; ``None`` for the arithmetic alone
        (the golden model, which needs no device): then ``products`` is empty.
    constants : ConstantProducts
        How a product by a constant is built (``hardware.constants``): ``FABRIC``, by its
        canonical signed digits with no hard multiplier, or ``DSP`` (the default), in
        hard-multiplier pieces.
    residual_format : FixedFormat, optional
        A conv stage's residual's format (:func:`residual_format_of`).

    Raises
    ------
    ConfigError
        If an accumulator would need more than :data:`ACC_LIMIT` bits.
    """
    fm = stage.formats
    where = f"stage {stage.index}: "
    conv_terms: dict = {}
    if stage.conv:
        forward, backward, dz, positions = _conv_accumulators(
            stage, x_format, bias, residual_format, where
        )
        conv_terms = {"gradient_terms": positions, "error_format": dz}
    else:
        cols = stage.n_in + int(bias)
        forward = dot_accumulator("forward", fm.weight.format, x_format, cols, where=where)
        backward = None
        if stage.index > 1:
            backward = dot_accumulator(
                "backward", fm.weight.format, fm.error.format, stage.n_out, where=where
            )
    if not stage.horizon:
        prediction = WeightPrediction.NONE
    codes = {name: c.code for name, c in stage.coefficients.items()}
    update = update_datapath(
        fm,
        x_format,
        momentum=codes["momentum"],
        eta_a=codes["eta_a"],
        eta_b=codes["eta_b"],
        prediction=prediction,
        eta_t=codes.get("eta_T", 0),
        horizon=stage.horizon,
        where=where,
        **conv_terms,
    )

    x_bits = _signed_bits(x_format)
    w_bits, e_bits = _signed_bits(fm.weight.format), _signed_bits(fm.error.format)
    operands: list[tuple[str, int, tuple[str, int]]] = [
        ("forward", w_bits, ("width", x_bits)),
        ("gradient", e_bits, ("width", x_bits)),
    ]
    if stage.index > 1:
        operands.append(("backward", w_bits, ("width", e_bits)))
    operands += constant_operands(
        fm.weight.format,
        fm.velocity.format,
        fm.gradient.format,
        codes,
        prediction=prediction,
        horizon=stage.horizon,
        shift=fm.coefficient_shift,
    )
    ports = None if multiplier_ports is None else tuple(multiplier_ports)
    products = tuple(
        _product(name, a_bits, operand, ports, constants)
        for name, a_bits, operand in operands
        if ports is not None
    )
    return StageDatapath(
        index=stage.index,
        x_format=x_format,
        forward=forward,
        backward=backward,
        update=update,
        products=products,
        multiplier_ports=ports,
        constants=constants,
    )


def plan_datapaths(
    plan: Plan, multiplier_ports: tuple[int, int] | None = None
) -> tuple[StageDatapath, ...]:
    """Every stage's datapath; ``multiplier_ports`` default to those of the config's device, the
    products by a constant are built as ``hardware.constants`` says."""
    if multiplier_ports is None:
        multiplier_ports = load_device(plan.config.hardware.device).multiplier_widths
    return tuple(
        stage_datapath(
            st,
            x_format=x_format_of(plan, st),
            bias=plan.config.network.bias,
            prediction=plan.config.optimizer.weight_prediction,
            multiplier_ports=multiplier_ports,
            constants=plan.config.hardware.constants,
            residual_format=residual_format_of(plan, st),
        )
        for st in plan.stages
    )
