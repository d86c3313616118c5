"""Update of one weight: gradient, velocity, new weight and predicted weight; combinational or
pipelined.

The block computes, bit for bit, one element of the "Update of stage l" and "Predicted weights"
sections of ``docs/numerics.md`` (the golden model is :class:`golden.fixed_arith.FixedArithmetic`).
Each accumulator is sized from the exact range of its terms, so nothing overflows before the
:class:`~rtl_gen.requantizer.Requantizer` that rounds it into its role's format.

Pipelined, the block registers every product, every sum and every rounded value, so no path
holds more than one hard multiplier, one addition, or one rounding. A product of two values
takes :data:`rtl_gen.products.LATENCY` (4) cycles (:func:`rtl_gen.products.pipelined_product`);
a product by an update constant 4 on hard multipliers, 3 in the fabric
(:func:`rtl_gen.products.fabric_product`) and 1 with the shift option. The cycle at which each
rounding point rounds (its random word must arrive then) and the outputs' latencies are those of
:class:`pbhw.core.datapath.UpdateTiming` (:func:`~pbhw.core.datapath.update_timing`), which
lists the schedule cycle by cycle.
"""

from amaranth.hdl import Const, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from pbhw.core.config import Formats, RoleFormat, WeightPrediction
from pbhw.core.datapath import UPDATE_POINTS as ROUNDING_POINTS
from pbhw.core.datapath import UpdateDatapath, UpdateTiming, update_datapath, update_timing
from pbhw.core.fixed import FixedFormat, Rounding
from rtl_gen.pipeline import Delays
from rtl_gen.requantizer import Requantizer, shape_of
from rtl_gen.target import GENERIC, Multiplier

__all__ = ["ROUNDING_POINTS", "UpdateUnit"]


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


def check_shift_constants(datapath: UpdateDatapath) -> None:
    """With the ``shift`` option, raise ``ValueError`` unless every constant of ``datapath`` is
    a power of two or a difference of two powers of two (:func:`shift_terms`)."""
    if not datapath.shift:
        return
    for name, code in datapath.constants.items():
        if shift_terms(code) is None:
            raise ValueError(
                f"With the shift option, {name} must be a power of two or a difference "
                f"of two powers of two, not the code {code}"
            )


class UpdateUnit(wiring.Component):
    """Update one weight element and predict its next value.

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
    pipelined : bool
        Register products and rounded values (module docstring): ``w_hat`` follows the inputs
        after :attr:`prediction_latency` cycles, the other outputs after :attr:`latency`; a
        new element may enter every cycle. Default: combinational.
    multiplier : Multiplier
        The device's hard multiplier (:class:`rtl_gen.target.Multiplier`): pipelined products
        are cut to fit its ports, and the products by a constant are built in the fabric when
        its ``constants`` is ``FABRIC`` (3 cycles, not 4: :attr:`timing`). Default: a generic
        18 x 18 multiplier
        left to synthesis.
    delay_ram : bool
        Pipelined, keep the long stretches of the delay lines in block RAM
        (:class:`~rtl_gen.pipeline.Delays` with ``ram=True``; the same values). Default:
        registers.

    With ``formats.coefficient_shift`` the constants (powers of two, and ``1 - 2**-k`` for the
    momentum, as :mod:`pbhw.core.plan` quantizes them under the ``shift`` option) are applied with
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
    v_next : Out(velocity shape)
        The same, as soon as it is rounded (pipelined: after :attr:`velocity_latency` cycles,
        before ``w_new``; a stage writes V back then).
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
        element's 32-bit random word of that point's stream; pipelined, it must arrive
        :attr:`random_stage` ``[point]`` cycles after the element's inputs.

    Raises
    ------
    TypeError
        If a parameter has the wrong type.
    ValueError
        If ``prediction`` names no prediction, ``horizon`` is negative, or an accumulator
        would need more than 62 bits.
    """

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
        pipelined: bool = False,
        multiplier: Multiplier = GENERIC,
        delay_ram: bool = False,
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
        if not isinstance(pipelined, bool):
            raise TypeError(f"Pipelined must be a bool, not {pipelined!r}")
        if not isinstance(delay_ram, bool):
            raise TypeError(f"Delay_ram must be a bool, not {delay_ram!r}")
        if not isinstance(multiplier, Multiplier):
            raise TypeError(f"Multiplier must be a Multiplier, not {multiplier!r}")
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
        self._pipelined = pipelined
        self._delay_ram = delay_ram
        self._multiplier = multiplier
        self._datapath = update_datapath(
            formats,
            x_format,
            momentum=momentum,
            eta_a=eta_a,
            eta_b=eta_b,
            prediction=prediction,
            eta_t=eta_t,
            horizon=horizon,
        )
        check_shift_constants(self._datapath)
        self._timing = update_timing(self._datapath, multiplier.constants)

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
                "v_next": Out(shape_of(formats.velocity.format)),
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
    def pipelined(self) -> bool:
        return self._pipelined

    @property
    def latency(self) -> int:
        """Cycles from the inputs to ``g``, ``v_new``, ``w_new`` and their saturation flags."""
        return self._timing.latency if self._pipelined else 0

    @property
    def velocity_latency(self) -> int:
        """Cycles from the inputs to ``v_next``."""
        return self._timing.velocity_latency if self._pipelined else 0

    @property
    def prediction_latency(self) -> int:
        """Cycles from the inputs to ``w_hat`` and ``saturated.prediction``."""
        return self._timing.prediction_latency if self._pipelined else 0

    @property
    def random_stage(self) -> dict[str, int]:
        """Cycle after the inputs at which each stochastic rounding point reads its word."""
        return {
            p: (self._timing.pipeline[p] if self._pipelined else 0)
            for p in ROUNDING_POINTS
            if self._rounds_stochastically(p)
        }

    @property
    def timing(self) -> UpdateTiming:
        """The pipelined schedule (:func:`pbhw.core.datapath.update_timing`)."""
        return self._timing

    @property
    def multiplier(self) -> Multiplier:
        return self._multiplier

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

    @property
    def datapath(self) -> UpdateDatapath:
        """The accumulators and constants (:func:`pbhw.core.datapath.update_datapath`)."""
        return self._datapath

    @property
    def coefficient_multipliers(self) -> int:
        """Multipliers by a constant: 0 with the shift option (shifts and adders instead)."""
        return self._datapath.coefficient_multipliers

    def _role_of(self, point: str) -> RoleFormat:
        return self._formats.role("weight" if point == "prediction" else point)

    def _rounds_stochastically(self, point: str) -> bool:
        return point in self._datapath.stochastic_points

    def _requantize(self, m: Module, point: str, acc, output, rounding=None) -> Signal:
        """Round ``acc`` (an expression in the point's accumulator format) into ``output``;
        returns the saturation flag."""
        role = self._role_of(point)
        src = self._datapath.accumulator(point).format
        rq = Requantizer(
            src=src,
            dst=role.format,
            rounding=role.rounding if rounding is None else rounding,
            overflow=role.overflow,
        )
        m.submodules[f"rq_{point}"] = rq
        # The accumulator's width holds every value of the expression, so this assignment is exact.
        m.d.comb += rq.i.eq(acc)
        m.d.comb += output.eq(rq.o)
        if rounding is None and role.rounding is Rounding.STOCHASTIC:
            m.d.comb += rq.random.eq(getattr(self, f"random_{point}"))
        return rq.saturated

    def elaborate(self, platform):
        m = Module()

        # Signed copies (one extra bit for an unsigned format) so differences never wrap.
        def as_signed(port, name):
            sig = Signal(signed(len(port) + (0 if port.shape().signed else 1)), name=name)
            m.d.comb += sig.eq(port)
            return sig

        # Long stretches in block RAM with ``delay_ram``; the gradient and ``v_new`` outputs,
        # which a lane leaves unconnected, in registers (so no RAM is counted that synthesis
        # would remove).
        delays, registers = Delays(m, ram=self._delay_ram), Delays(m)
        self.delay_memories = delays.memories

        def at(value, n, name, *, line=delays):
            """``value`` ``n`` cycles later (unchanged when combinational)."""
            return line(value, n, name) if self._pipelined else value

        shift = self._formats.coefficient_shift

        def product(a, b, name, constant=True):
            """``a * b`` (``b`` an update constant's code, or a value; ``constant=False`` for
            the horizon, never a shift): when pipelined, :attr:`timing` ``.constant`` cycles
            later for an update constant (its ``prediction_product`` for the horizon), 4 for a
            value, in hard-multiplier-sized pieces or in the fabric."""
            by_shift = isinstance(b, int) and shift and constant
            if not self._pipelined:
                return times_constant(a, b, shift) if by_shift else a * b
            if by_shift:
                return at(times_constant(a, b, shift), self._timing.constant, f"{name}_shifted")
            return self._multiplier.product(m, a, b, name)

        dz, x = as_signed(self.dz, "dz_s"), as_signed(self.x, "x_s")
        w, v = as_signed(self.w, "w_s"), as_signed(self.v, "v_s")
        pipeline = self._timing.pipeline
        stage = pipeline if self._pipelined else dict.fromkeys(pipeline, 0)
        # cycles of a product by an update constant
        c = self._timing.constant if self._pipelined else 0
        s_g, s_p, s_v, s_w = (stage[p] for p in ("gradient", "prediction", "velocity", "weight"))
        # Pipelined, a sum is registered before it is rounded (the rounding is another carry
        # chain, then a range check and a saturating mux).
        split = 1 if self._pipelined else 0

        # The products of the inputs (ready at the gradient/prediction stage).
        p_grad = product(dz, x, "p_grad")
        p_mv = product(v, self._momentum, "p_mv")
        p_pre = None
        if self._prediction is WeightPrediction.VELOCITY:
            p_pre = product(v, self._eta_t, "p_pre")
        elif self._prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            w_prev = as_signed(self.w_prev, "w_prev_s")
            p_pre = product(w - w_prev, self._horizon, "p_pre", constant=False)

        # The gradient and the predicted weight.
        g = Signal(signed(len(self.g) + 1), name="g_s")
        sat_g = self._requantize(m, "gradient", p_grad, g)
        w_hat = Signal.like(self.w_hat, name="w_hat_s")
        sat_p = Const(0)
        w_p = at(w, s_p - split, "w")
        if self._prediction is WeightPrediction.VELOCITY:
            p_w, p_v = (self._datapath.prediction.shifts[t] for t in ("w", "v"))
            pre_sum = at((w_p << p_w) - (p_pre << p_v), split, "pre_sum")
            sat_p = self._requantize(m, "prediction", pre_sum, w_hat)
        elif self._prediction is WeightPrediction.WEIGHT_DIFFERENCE:
            # At the weight's own fractional bits: no bits are dropped, only overflow applies.
            pre_sum = at(w_p + p_pre, split, "pre_sum")
            sat_p = self._requantize(m, "prediction", pre_sum, w_hat, rounding=Rounding.FLOOR)
        else:
            m.d.comb += w_hat.eq(at(w, s_p, "w"))
        m.d.comb += [
            self.w_hat.eq(at(w_hat, 1, "w_hat")),
            self.saturated.prediction.eq(at(sat_p, 1, "sat_p")),
        ]
        v_sum_at = s_v - split  # the velocity's sum, from m*v and g; eta_b * g starts
        g_v = at(g, v_sum_at - s_g, "g")

        s_mv, s_gv = (self._datapath.velocity.shifts[t] for t in ("mv", "g"))
        v_new = Signal(signed(len(self.v_new) + 1), name="v_new_s")
        v_sum = (at(p_mv, v_sum_at - c, "p_mv") << s_mv) + (g_v << s_gv)
        sat_v = self._requantize(m, "velocity", at(v_sum, split, "v_sum"), v_new)
        p_gb = product(g_v, self._eta_b, "p_gb") if self._eta_b else None
        # eta_a * v_new starts a cycle later; w - eta_b * g is summed while it runs.
        v_n = at(v_new, 1, "v_new")
        p_va = product(v_n, self._eta_a, "p_va")
        w_sum_at = s_w - split  # w - eta_b*g - eta_a*v_new, as eta_a*v_new arrives
        sh_w, sh_v, sh_g = (self._datapath.weight.shifts[t] for t in ("w", "v", "g"))
        part = at(w, w_sum_at - 1, "w") << sh_w
        if p_gb is not None:
            part = part - (at(p_gb, w_sum_at - 1 - (v_sum_at + c), "p_gb") << sh_g)
        acc = at(at(part, 1, "w_part") - (p_va << sh_v), split, "w_sum")

        # The new weight; every output leaves at the same cycle.
        w_new = Signal.like(self.w_new, name="w_new_s")
        sat_w = self._requantize(m, "weight", acc, w_new)
        done = s_w + 1 if self._pipelined else 0
        m.d.comb += [
            self.w_new.eq(at(w_new, 1, "w_new")),
            self.saturated.weight.eq(at(sat_w, 1, "sat_w")),
            # a stage writes V back from v_next: v_new, like g, stays in registers
            self.v_new.eq(at(v_new, done - s_v, "v_new", line=registers)),
            self.v_next.eq(v_n),
            self.saturated.velocity.eq(at(sat_v, done - s_v, "sat_v")),
            self.g.eq(at(g, done - s_g, "g", line=registers)),
            self.saturated.gradient.eq(at(sat_g, done - s_g, "sat_g")),
        ]
        return m
