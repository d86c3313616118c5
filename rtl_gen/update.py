"""Combinational update of one weight: gradient, velocity, new weight and predicted weight.

The block computes, bit for bit, one element of the "Update of stage l" and "Predicted weights"
sections of ``docs/numerics.md`` (the golden model is :class:`golden.fixed_arith.FixedArithmetic`).
Each accumulator is sized from the exact range of its terms, so nothing overflows before the
:class:`~rtl_gen.requantizer.Requantizer` that rounds it into its role's format.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from pbhw.config import Formats, RoleFormat, WeightPrediction
from pbhw.fixed import FixedFormat, Rounding
from rtl_gen.requantizer import Requantizer, shape_of, span_width

__all__ = ["UpdateUnit"]

#: The rounding points of the block, in the order of the computation.
ROUNDING_POINTS = ("gradient", "velocity", "weight", "prediction")


def _range(fmt: FixedFormat) -> tuple[int, int]:
    return fmt.min_code, fmt.max_code


def _times(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    corners = [x * y for x in a for y in b]
    return min(corners), max(corners)


def _plus(*terms: tuple[int, int]) -> tuple[int, int]:
    return sum(t[0] for t in terms), sum(t[1] for t in terms)


def _neg(a: tuple[int, int]) -> tuple[int, int]:
    return -a[1], -a[0]


def _scaled(a: tuple[int, int], shift: int) -> tuple[int, int]:
    return a[0] << shift, a[1] << shift


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shift_terms(code: int) -> list[tuple[int, int]] | None:
    """``code`` as at most two signed powers of two ``[(sign, k), ...]``, or ``None``.

    The ``shift`` option quantizes the eta constants to powers of two and the momentum to
    ``1 - 2**-k``; both take this form, so a product with them needs only shifts and one adder.
    """
    if code == 0:
        return []
    sign = 1 if code > 0 else -1
    mag = abs(code)
    if mag & (mag - 1) == 0:
        return [(sign, mag.bit_length() - 1)]
    high = mag.bit_length()  # 2**high - 2**low == mag for the single run of ones
    low = (mag & -mag).bit_length() - 1
    if (1 << high) - (1 << low) == mag:
        return [(sign, high), (-sign, low)]
    return None


def times_constant(value, code: int, shift: bool):
    """``value * code``: a multiplier, or with ``shift`` shifts and at most one adder."""
    if not shift:
        return value * code
    terms = shift_terms(code)
    if terms is None:
        raise ValueError(
            f"Constant {code} is not a power of two or a difference of two powers of two; "
            "the shift option needs such constants"
        )
    out = None
    for sign, k in terms:
        term = value << k
        if out is None:
            out = term if sign > 0 else -term
        else:
            out = out + term if sign > 0 else out - term
    return 0 if out is None else out


class UpdateUnit(wiring.Component):
    """Update one weight element and predict its next value; purely combinational.

    Parameters
    ----------
    formats : Formats
        The role formats of the stage (weight, error, gradient, velocity and coefficient are used).
    momentum : int
        Code of the momentum ``m`` in the coefficient format.
    eta_a : int
        Code of ``eta * a`` in the coefficient format.
    eta_b : int
        Code of ``eta * b`` in the coefficient format (0 without Spike Compensation, which
        removes the term).
    prediction : WeightPrediction or str
        ``"none"``, ``"velocity"`` or ``"weight_difference"``.
    eta_t : int
        Code of ``eta * T`` in the coefficient format (velocity prediction only).
    horizon : int
        The horizon ``T`` (weight-difference prediction only).
    x_format : FixedFormat
        Format of the stashed input ``x`` (the activation feeding the stage).

    With ``formats.coefficient_shift`` the constants (powers of two, and ``1 - 2**-k`` for the
    momentum, as :mod:`pbhw.plan` quantizes them under the ``shift`` option) are applied with
    shifts and at most one adder each: the block then has no multiplier by a constant.

    Attributes
    ----------
    dz : In(error shape)
        Error code of the element's output neuron.
    x : In(x_format shape)
        Stashed input code of the element's input neuron.
    w, v : In(weight shape), In(velocity shape)
        Current weight and velocity codes.
    w_prev : In(weight shape)
        Only with the weight-difference prediction: the weight before the last update.
    g : Out(gradient shape)
        ``RQ(dz * x, f(E) + f(x), G)``.
    v_new : Out(velocity shape)
        The updated velocity.
    w_new : Out(weight shape)
        The updated weight.
    w_hat : Out(weight shape)
        The predicted weight from the *current* ``w``, ``v`` (and ``w_prev``); ``w`` when there
        is no prediction.
    saturated : Out(StructLayout)
        One flag per rounding point (``gradient``, ``velocity``, ``weight``, ``prediction``):
        the rounded value lay outside its format. ``prediction`` is 0 without prediction.
    random_gradient, random_velocity, random_weight, random_prediction : In(32)
        Only for the rounding points whose role rounds stochastically (``random_prediction``
        only with the velocity prediction; the weight-difference form never rounds): the
        element's 32-bit random word of that point's stream.

    Raises
    ------
    TypeError
        If a parameter has the wrong type.
    ValueError
        If ``prediction`` names no prediction, ``horizon`` is negative, or an accumulator
        would need more than 62 bits.
    """

    #: Combinational: the outputs follow the inputs within the same cycle.
    latency = 0

    def __init__(
        self,
        *,
        formats: Formats,
        momentum: int,
        eta_a: int,
        eta_b: int,
        prediction="none",
        eta_t: int = 0,
        horizon: int = 0,
        x_format: FixedFormat,
    ):
        if not isinstance(formats, Formats):
            raise TypeError(f"Formats must be a Formats, not {formats!r}")
        if not isinstance(x_format, FixedFormat):
            raise TypeError(f"Input format must be a FixedFormat, not {x_format!r}")
        for name, value in (
            ("Momentum", momentum),
            ("Eta_a", eta_a),
            ("Eta_b", eta_b),
            ("Eta_t", eta_t),
        ):
            if not _is_int(value):
                raise TypeError(f"{name} must be an integer code, not {value!r}")
        if not _is_int(horizon):
            raise TypeError(f"Horizon must be a non-negative integer, not {horizon!r}")
        if horizon < 0:
            raise ValueError(f"Horizon must be a non-negative integer, not {horizon!r}")
        names = [p.value for p in WeightPrediction]
        if isinstance(prediction, str):
            if prediction not in names:
                raise ValueError(f"Prediction must be one of {names}, not {prediction!r}")
            prediction = WeightPrediction(prediction)
        elif not isinstance(prediction, WeightPrediction):
            raise TypeError(
                f"Prediction must be a WeightPrediction or one of {names}, not {prediction!r}"
            )

        self._formats = formats
        self._x_format = x_format
        self._momentum = momentum
        self._eta_a = eta_a
        self._eta_b = eta_b
        self._prediction = prediction
        self._eta_t = eta_t
        self._horizon = horizon
        if formats.coefficient_shift:
            for name, code in self._constants().items():
                if shift_terms(code) is None:
                    raise ValueError(
                        f"With the shift option, {name} must be a power of two or a difference "
                        f"of two powers of two, not the code {code}"
                    )
        self._plan_accumulators()

        weight = shape_of(formats.weight.format)
        members = {
            "dz": In(shape_of(formats.error.format)),
            "x": In(shape_of(x_format)),
            "w": In(weight),
            "v": In(shape_of(formats.velocity.format)),
        }
        if prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            members["w_prev"] = In(weight)
        members.update(
            {
                "g": Out(shape_of(formats.gradient.format)),
                "v_new": Out(shape_of(formats.velocity.format)),
                "w_new": Out(weight),
                "w_hat": Out(weight),
                "saturated": Out(data.StructLayout({p: 1 for p in ROUNDING_POINTS})),
            }
        )
        for point in ROUNDING_POINTS:
            if self._rounds_stochastically(point):
                members[f"random_{point}"] = In(32)
        super().__init__(members)

    @property
    def formats(self) -> Formats:
        return self._formats

    @property
    def x_format(self) -> FixedFormat:
        return self._x_format

    @property
    def momentum(self) -> int:
        return self._momentum

    @property
    def eta_a(self) -> int:
        return self._eta_a

    @property
    def eta_b(self) -> int:
        return self._eta_b

    @property
    def prediction(self) -> WeightPrediction:
        return self._prediction

    @property
    def eta_t(self) -> int:
        return self._eta_t

    @property
    def horizon(self) -> int:
        return self._horizon

    def _constants(self) -> dict[str, int]:
        """The constants the block multiplies by (a zero eta_b removes its term)."""
        out = {"momentum": self._momentum, "eta_a": self._eta_a}
        if self._eta_b:
            out["eta_b"] = self._eta_b
        if self._prediction is WeightPrediction.VELOCITY:
            out["eta_t"] = self._eta_t
        return out

    @property
    def coefficient_multipliers(self) -> int:
        """Multipliers by a constant: 0 with the shift option (shifts and adders instead)."""
        if self._formats.coefficient_shift:
            return 0
        return sum(1 for code in self._constants().values() if code not in (0, 1))

    def _role_of(self, point: str) -> RoleFormat:
        return self._formats.role("weight" if point == "prediction" else point)

    def _rounds_stochastically(self, point: str) -> bool:
        if point == "prediction" and self._prediction is not WeightPrediction.VELOCITY:
            return False
        return self._role_of(point).rounding is Rounding.STOCHASTIC

    def _plan_accumulators(self) -> None:
        """Fractional bits and exact width of each accumulator (``docs/numerics.md``)."""
        fm = self._formats
        fw, fe = fm.weight.format.frac, fm.error.format.frac
        fg, fv, fc = fm.gradient.format.frac, fm.velocity.format.frac, fm.coefficient.format.frac
        w, v, g = _range(fm.weight.format), _range(fm.velocity.format), _range(fm.gradient.format)

        def const(code: int) -> tuple[int, int]:
            return code, code

        f_grad = fe + self._x_format.frac
        grad = _times(_range(fm.error.format), _range(self._x_format))
        f_vel = max(fc + fv, fg)
        self._vel_shifts = (f_vel - fc - fv, f_vel - fg)
        vel = _plus(
            _scaled(_times(const(self._momentum), v), self._vel_shifts[0]),
            _scaled(g, self._vel_shifts[1]),
        )
        f_upd = max(fw, fc + fv, fc + fg)
        self._upd_shifts = (f_upd - fw, f_upd - fc - fv, f_upd - fc - fg)
        upd = _plus(
            _scaled(w, self._upd_shifts[0]),
            _neg(_scaled(_times(const(self._eta_a), v), self._upd_shifts[1])),
            _neg(_scaled(_times(const(self._eta_b), g), self._upd_shifts[2])),
        )
        self._acc = {
            "gradient": FixedFormat(self._check_width("gradient", grad), f_grad),
            "velocity": FixedFormat(self._check_width("velocity", vel), f_vel),
            "weight": FixedFormat(self._check_width("weight", upd), f_upd),
        }
        if self._prediction is WeightPrediction.VELOCITY:
            f_pre = max(fw, fc + fv)
            self._pre_shifts = (f_pre - fw, f_pre - fc - fv)
            pre = _plus(
                _scaled(w, self._pre_shifts[0]),
                _neg(_scaled(_times(const(self._eta_t), v), self._pre_shifts[1])),
            )
            self._acc["prediction"] = FixedFormat(self._check_width("prediction", pre), f_pre)
        elif self._prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            pre = _plus(w, _times(const(self._horizon), _plus(w, _neg(w))))
            self._acc["prediction"] = FixedFormat(self._check_width("prediction", pre), fw)

    @staticmethod
    def _check_width(point: str, span: tuple[int, int]) -> int:
        bits = span_width(*span)
        if bits > 62:
            raise ValueError(f"The {point} accumulator needs {bits} bits, more than 62")
        return bits

    def _requantize(self, m: Module, point: str, acc, output, rounding=None) -> None:
        """Round ``acc`` (an expression in the point's accumulator format) into ``output``."""
        role = self._role_of(point)
        src = self._acc[point]
        rq = Requantizer(
            src=src,
            dst=role.format,
            rounding=role.rounding if rounding is None else rounding,
            overflow=role.overflow,
        )
        m.submodules[f"rq_{point}"] = rq
        # The accumulator's width holds every value of the expression, so this assignment is exact.
        m.d.comb += rq.i.eq(acc)
        m.d.comb += [output.eq(rq.o), getattr(self.saturated, point).eq(rq.saturated)]
        if rounding is None and role.rounding is Rounding.STOCHASTIC:
            m.d.comb += rq.random.eq(getattr(self, f"random_{point}"))

    def elaborate(self, platform):
        m = Module()

        # Signed copies (one extra bit for an unsigned format) so differences never wrap.
        def as_signed(port, name):
            sig = Signal(signed(len(port) + (0 if port.shape().signed else 1)), name=name)
            m.d.comb += sig.eq(port)
            return sig

        dz, x = as_signed(self.dz, "dz_s"), as_signed(self.x, "x_s")
        w, v = as_signed(self.w, "w_s"), as_signed(self.v, "v_s")

        g = Signal(signed(len(self.g) + 1), name="g_s")
        self._requantize(m, "gradient", dz * x, g)

        s_mv, s_g = self._vel_shifts
        v_new = Signal(signed(len(self.v_new) + 1), name="v_new_s")
        shift = self._formats.coefficient_shift
        mv = times_constant(v, self._momentum, shift)
        self._requantize(m, "velocity", (mv << s_mv) + (g << s_g), v_new)

        s_w, s_v, s_gw = self._upd_shifts
        acc = (w << s_w) - (times_constant(v_new, self._eta_a, shift) << s_v)
        if self._eta_b:
            acc = acc - (times_constant(g, self._eta_b, shift) << s_gw)
        self._requantize(m, "weight", acc, self.w_new)
        m.d.comb += [self.g.eq(g), self.v_new.eq(v_new)]

        if self._prediction is WeightPrediction.VELOCITY:
            p_w, p_v = self._pre_shifts
            acc = (w << p_w) - (times_constant(v, self._eta_t, shift) << p_v)
            self._requantize(m, "prediction", acc, self.w_hat)
        elif self._prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            w_prev = as_signed(self.w_prev, "w_prev_s")
            # At the weight's own fractional bits: no bits are dropped, only overflow applies.
            acc = w + (w - w_prev) * self._horizon
            self._requantize(m, "prediction", acc, self.w_hat, rounding=Rounding.FLOOR)
        else:
            m.d.comb += [self.w_hat.eq(self.w), self.saturated.prediction.eq(0)]
        return m
