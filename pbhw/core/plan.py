"""Derived values of a configuration, computed in this one place.

* the per-stage delay ``D_l = 2(L - l) + 1`` of step-synchronous PB (0 for the ``sgd`` reference),
* Spike Compensation coefficients ``a = m^D``, ``b = (1 - m^D) / (1 - m)``,
* the Linear Weight Prediction horizon (``T = D_l`` unless configured),
* batch-scaled hyperparameters: ``m_B = m_ref^(B/B_ref)`` and
  ``eta_B / (1 - m_B) = (B / B_ref) * eta_ref / (1 - m_ref)``,
* the update constants ``m``, ``eta*a``, ``eta*b``, ``eta*T`` quantized to the coefficient format
  (or, with ``formats.coefficient.shift``, restricted to shift-only values: powers of two for the
  eta constants and ``1 - 2^-k`` for momentum), with their quantization error.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from pbhw.core.config import (
    Algorithm,
    Arith,
    Config,
    ConfigError,
    Formats,
    LayerSpec,
    LayerType,
    Norm,
    Pool,
    RoleFormat,
    WeightPrediction,
)
from pbhw.core.fixed import FixedFormat, quantize, to_float

__all__ = [
    "Coefficient",
    "Plan",
    "StagePlan",
    "delay_of",
    "derive_plan",
    "online_constants",
    "quantize_coefficient",
    "scaled_hyperparameters",
    "spike_coefficients",
]


def delay_of(stage: int, num_stages: int) -> int:
    """Updates between stage ``stage``'s forward of a sample and the update from that sample."""
    if not 1 <= stage <= num_stages:
        raise ValueError(f"Stage must be in 1..{num_stages}, not {stage!r}")
    return 2 * (num_stages - stage) + 1


def spike_coefficients(momentum: float, delay: int) -> tuple[float, float]:
    """Spike Compensation ``(a, b)`` for a delay: ``a = m^D``, ``b = sum_{k<D} m^k``.

    ``b`` is summed rather than computed as ``(1 - m^D)/(1 - m)`` so that ``m = 0`` needs no case.
    ``D = 0`` gives ``(1, 0)``, plain momentum SGD.
    """
    if delay < 0:
        raise ValueError(f"Delay must be a non-negative integer, not {delay!r}")
    return momentum**delay, math.fsum(momentum**k for k in range(delay))


def scaled_hyperparameters(
    lr: float, momentum: float, reference_batch: int, batch: int
) -> tuple[float, float]:
    """Carry ``(lr, momentum)`` from ``reference_batch`` to ``batch`` (docs/design.md section 1)."""
    ratio = batch / reference_batch
    m_b = momentum**ratio
    lr_b = ratio * lr * (1.0 - m_b) / (1.0 - momentum)
    return lr_b, m_b


@dataclass(frozen=True)
class Coefficient:
    """An update constant: its exact value and what the hardware stores."""

    name: str
    value: float
    code: int
    format: FixedFormat
    #: the value lies outside the coefficient format (the code is the clamped one)
    saturated: bool = False

    def describe_saturation(self) -> str:
        return (
            f"update constant {self.name} = {self.value:.6g} does not fit the coefficient "
            f"format {self.format} (largest value {self.format.max_value:.6g}); widen "
            f"formats.coefficient or lower optimizer.lr"
        )

    @property
    def quantized(self) -> float:
        return float(to_float(self.code, self.format))

    @property
    def error(self) -> float:
        """Relative quantization error (0 when the value is 0)."""
        return abs(self.quantized - self.value) / abs(self.value) if self.value else 0.0


def quantize_coefficient(
    name: str, value: float, role: RoleFormat, *, shift: bool, kind: str = "scale"
) -> Coefficient:
    """Quantize an update constant; ``kind`` is ``"scale"`` (eta constants) or ``"momentum"``."""
    fmt = role.format
    if shift and value > 0:
        if kind == "momentum":
            # 1 - 2^-k is representable only for k <= frac; a larger k would round to 1.0 and
            # the velocity would never decay.
            k = max(1, min(round(-math.log2(1.0 - value)), fmt.frac))
            target = 1.0 - 2.0**-k
        else:
            target = 2.0 ** round(math.log2(value))
        if target < fmt.resolution:  # the smallest power of two the format holds, or nothing
            target = fmt.resolution if value >= fmt.resolution / 2 else 0.0
    else:
        target = value
    code, saturated = quantize(target, fmt, role.rounding, role.overflow, return_saturated=True)
    return Coefficient(name, value, int(code), fmt, bool(saturated.any()))


#: Online Normalization's decays in the fixed-point model: unsigned codes with this many
#: fractional bits (``docs/numerics.md``, "Online Normalization")
DECAY_FRAC = 16


def online_constants(
    index: int, spec: LayerSpec, activation: FixedFormat
) -> dict[str, Coefficient]:
    """Online Normalization's constants in the fixed-point model of stage ``index`` (1-based):
    ``alpha_fwd`` and ``alpha_bkw`` as codes ``round_half_even(alpha * 2^16)`` from 1 to
    ``2^16 - 1`` (so that ``1 - alpha`` is a code too), the clamp as a code of the stage's
    ``activation`` format, at least 1. Raises :class:`ConfigError` naming the stage otherwise."""
    decay = FixedFormat(DECAY_FRAC + 1, DECAY_FRAC, False)
    out = {}
    for key in ("alpha_fwd", "alpha_bkw"):
        alpha = getattr(spec, key)
        code = round(alpha * 2.0**DECAY_FRAC)  # an exact binary product: round() is half-even
        if not 1 <= code <= 2**DECAY_FRAC - 1:
            raise ConfigError(
                f"stage {index}: online norm's {key} = {alpha} is {code} / 2^{DECAY_FRAC} as a "
                f"{DECAY_FRAC}-bit decay code; the fixed-point model needs 1 to "
                f"{2**DECAY_FRAC - 1} (alpha within 2^-{DECAY_FRAC + 1} of 0 or 1 rounds off "
                "the code)"
            )
        out[key] = Coefficient(key, alpha, code, decay)
    kappa = round(spec.clamp * 2.0**activation.frac)
    if kappa < 1:
        raise ConfigError(
            f"stage {index}: online norm's clamp {spec.clamp} is 0 as a code of the stage's "
            f"activation format (frac {activation.frac}); raise the clamp or the frac"
        )
    out["clamp"] = Coefficient("clamp", spec.clamp, kappa, activation)
    return out


@dataclass(frozen=True)
class StagePlan:
    """Everything derived for one pipeline stage (1-based ``index``)."""

    index: int
    n_in: int
    n_out: int
    relu: bool
    delay: int
    horizon: int
    a: float
    b: float
    formats: Formats
    lanes: int | None
    coefficients: dict[str, Coefficient]
    #: the shape of one input and one output sample (``(n_in,)`` and ``(n_out,)`` for a dense
    #: stage); between stages every sample travels flattened
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    #: the layer of the general form of ``network.layers`` (None for a perceptron's stages)
    spec: LayerSpec | None = None
    #: whether the weights have a bias (``network.bias``)
    bias: bool = True

    @property
    def weights(self) -> int:
        return self.n_in * self.n_out

    @property
    def conv(self) -> bool:
        """Whether the stage is a convolution (else a dense layer, flattening its input)."""
        return self.spec is not None and self.spec.type is LayerType.CONV

    @functools.cached_property
    def parameter_shapes(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Name and shape of every parameter tensor, in the order the float model holds them.

        Dense: ``weight [n_out, n_in]`` and ``bias [n_out]``. Conv: ``weight [C_out, C_in,
        kernel...]``, ``bias [C_out]``; with group or online norm ``norm_scale`` and
        ``norm_shift`` ``[C_out]``; with a projection ``projection [C_out, C_res, 1...]`` and
        ``projection_bias [C_out]``. Biases only when ``network.bias`` is true."""
        out: list[tuple[str, tuple[int, ...]]] = []
        if not self.conv:
            out.append(("weight", (self.n_out, self.n_in)))
            if self.bias:
                out.append(("bias", (self.n_out,)))
            return tuple(out)
        sp = self.spec
        assert sp is not None
        rank = len(sp.in_shape) - 1
        out.append(("weight", (sp.out, sp.in_shape[0], *(sp.kernel,) * rank)))
        if self.bias:
            out.append(("bias", (sp.out,)))
        if sp.norm is not Norm.NONE:
            out += [("norm_scale", (sp.out,)), ("norm_shift", (sp.out,))]
        if sp.projection:
            out.append(("projection", (sp.out, self.residual_shape[0], *(1,) * rank)))
            if self.bias:
                out.append(("projection_bias", (sp.out,)))
        return tuple(out)

    @property
    def residual_shape(self) -> tuple[int, ...]:
        """The shape of the residual this stage adds: its source's output (() without one)."""
        return () if self.spec is None else self.spec.residual_shape

    @property
    def parameters(self) -> int:
        """The number of learned values of the stage (weights, biases, norm scale and shift)."""
        return sum(math.prod(shape) for _, shape in self.parameter_shapes)

    @property
    def forward_multiplies(self) -> int:
        """Multiplies by a parameter in one sample's forward pass (the one place of this rule).

        Dense: ``n_in x n_out``. Conv: every output position's ``C_in x kernel^d`` products, the
        projection's ``C_res`` products per output position, and the norm scale's one product
        per position. Biases, shifts, the normalization's own arithmetic and pooling are not
        counted."""
        if not self.conv:
            return self.n_in * self.n_out
        sp = self.spec
        assert sp is not None
        positions = math.prod(sp.conv_shape)
        per_position = math.prod(self.parameter_shapes[0][1][1:])
        total = positions * per_position
        if sp.projection:
            total += positions * self.residual_shape[0]
        if sp.norm is not Norm.NONE:
            total += positions
        return total

    @property
    def stash_entry_values(self) -> int:
        """Values one stash entry holds: the input and the ReLU mask (one per pre-activation
        value; the last stage has none); a conv stage also its convolution output (group norm:
        the norm's backward reads it; its per-group mean and inverse deviation are not
        counted; online norm: the normalized values and the clamp's mask, not the per-channel
        deviation), the residual (a projected one: the projection's gradient reads it) and the
        max pool's choices."""
        if not self.conv:
            return self.n_in + (self.n_out if self.relu else 0)
        sp = self.spec
        assert sp is not None
        conv = math.prod(sp.conv_shape)
        values = self.n_in + (conv if self.relu else 0)
        if sp.norm is Norm.GROUP:
            values += conv
        elif sp.norm is Norm.ONLINE:  # the normalized values and where the clamp held
            values += 2 * conv
        if sp.projection:
            values += math.prod(self.residual_shape)
        if sp.pool is Pool.MAX:
            values += math.prod(sp.out_shape)
        return values

    @property
    def stash_depth(self) -> int:
        """Entries the stash holds at most: ``D_l + 1`` (the forward of a sample is stashed
        ``D_l`` steps before its backward pops it, in the same step as the next push)."""
        return self.delay + 1

    @property
    def stash_values(self) -> int:
        """Values the stash holds at most: :attr:`stash_depth` entries."""
        return self.stash_depth * self.stash_entry_values


@dataclass(frozen=True)
class Plan:
    """The derived plan of a configuration: batch-scaled hyperparameters and the stages."""

    config: Config
    lr: float
    momentum: float
    batch_size: int
    stages: tuple[StagePlan, ...]

    def require_representable(self) -> None:
        """Raise :class:`ConfigError` if a constant does not fit the coefficient format.

        Only the integer model and the hardware need this; the float model uses exact values."""
        for st in self.stages:
            for c in st.coefficients.values():
                if c.saturated:
                    raise ConfigError(f"stage {st.index}: {c.describe_saturation()}")

    @property
    def warnings(self) -> list[str]:
        out = []
        for st in self.stages:
            for c in st.coefficients.values():
                if c.saturated:
                    out.append(f"stage {st.index}: {c.describe_saturation()}")
                elif c.name == "momentum" and c.value < 1.0 <= c.quantized:
                    out.append(
                        f"stage {st.index}: momentum {c.value:.6g} rounds to "
                        f"{c.quantized:.6g} in {c.format}; the velocity never decays "
                        "(raise the coefficient frac)"
                    )
                elif c.value and c.code == 0:
                    out.append(
                        f"stage {st.index}: {c.name} = {c.value:.3g} quantizes to 0 in "
                        f"{c.format}; the update loses that term (raise its frac)"
                    )
        return out


def derive_plan(config: Config) -> Plan:
    """Compute delays, coefficients and scaled hyperparameters for ``config``."""
    opt = config.optimizer
    pipelined = opt.algorithm is Algorithm.PB
    batch = 1 if pipelined else opt.batch_size
    lr, m = scaled_hyperparameters(opt.lr, opt.momentum, opt.reference_batch, batch)
    layers = config.network.layers
    num_stages = len(layers) - 1
    specs = config.network.specs
    shapes = [config.network.input, *((n,) for n in layers[1:])]
    if specs is not None:
        shapes = [config.network.input, *(sp.out_shape for sp in specs)]
    stages = []
    for i in range(num_stages):
        index = i + 1
        delay = delay_of(index, num_stages) if pipelined else 0
        a, b = spike_coefficients(m, delay) if pipelined and opt.spike_compensation else (1.0, 0.0)
        if pipelined and opt.weight_prediction is not WeightPrediction.NONE:
            horizon = delay if opt.prediction_horizon is None else opt.prediction_horizon
        else:
            horizon = 0
        formats = config.layer_formats[i]
        role, shift = formats.coefficient, formats.coefficient_shift
        coefficients = {
            "momentum": quantize_coefficient("momentum", m, role, shift=shift, kind="momentum"),
            "eta_a": quantize_coefficient("eta_a", lr * a, role, shift=shift),
            "eta_b": quantize_coefficient("eta_b", lr * b, role, shift=shift),
        }
        if opt.weight_prediction is WeightPrediction.VELOCITY and horizon:
            coefficients["eta_T"] = quantize_coefficient("eta_T", lr * horizon, role, shift=shift)
        lanes = None if config.hardware.lanes == "auto" else config.hardware.lanes[i]
        stages.append(
            StagePlan(
                index,
                layers[i],
                layers[i + 1],
                index < num_stages,
                delay,
                horizon,
                a,
                b,
                formats,
                lanes,
                coefficients,
                shapes[i],
                shapes[i + 1],
                None if specs is None else specs[i],
                config.network.bias,
            )
        )
    plan = Plan(config, lr, m, batch, tuple(stages))
    if config.train.arith is Arith.FIXED:
        plan.require_representable()
    return plan
