"""Configuration: a TOML file validated into frozen dataclasses.

Every knob a user may turn is a key of :data:`DEFAULTS` (its default lives there and nowhere else).
:func:`load` reads a file, applies ``--set KEY=VALUE`` overrides, fills in defaults and validates;
any problem raises :class:`ConfigError` with one message naming the key, the value and what is
allowed. Derived values (delays, Spike Compensation coefficients, batch-scaled hyperparameters,
quantized constants) are computed in :mod:`pbhw.core.plan`.

The file format is documented in ``docs/config.md``.
"""

from __future__ import annotations

import copy
import difflib
import enum
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pbhw.core.errors import ConfigError
from pbhw.core.fixed import FixedFormat, Overflow, Rounding
from pbhw.core.io import read_text

__all__ = [
    "ROLES",
    "DEFAULTS",
    "Algorithm",
    "ConstantProducts",
    "DelayLines",
    "Arith",
    "Config",
    "ConfigError",
    "Formats",
    "HardwareConfig",
    "LayerSpec",
    "LayerType",
    "Loss",
    "NetworkConfig",
    "Norm",
    "Pool",
    "OptimizerConfig",
    "Placer",
    "RoleFormat",
    "TrainConfig",
    "WeightPrediction",
    "apply_sets",
    "from_dict",
    "load",
]


class Loss(enum.Enum):
    MSE = "mse"
    SOFTMAX_CE = "softmax_ce"


class Algorithm(enum.Enum):
    SGD = "sgd"
    PB = "pb"


class WeightPrediction(enum.Enum):
    NONE = "none"
    VELOCITY = "velocity"
    WEIGHT_DIFFERENCE = "weight_difference"


class ConstantProducts(enum.Enum):
    """How a lane multiplies by an update constant (``hardware.constants``)."""

    #: shift-and-add in the fabric (canonical signed digits): no hard multiplier
    FABRIC = "fabric"
    #: the device's hard multipliers, as any other product
    DSP = "dsp"


class DelayLines(enum.Enum):
    """Where a lane keeps its long delay lines (``hardware.delay_lines``)."""

    #: chains of flip-flops
    REGISTERS = "registers"
    #: stretches of 5 to 17 cycles in 16-word block RAMs, the rest in flip-flops
    BLOCK_RAM = "block_ram"


class Placer(enum.Enum):
    """nextpnr's placer (``hardware.placer``)."""

    #: the one the device file's ``pnr.args`` name (nextpnr's default if they name none)
    DEVICE = "device"
    #: analytic placement, then simulated-annealing refinement
    HEAP = "heap"
    #: electrostatic placement, then the same refinement
    STATIC = "static"
    #: simulated annealing alone
    SA = "sa"


class LayerType(enum.Enum):
    """The type of an entry of the general form of ``network.layers``."""

    CONV = "conv"
    DENSE = "dense"


class Pool(enum.Enum):
    """Pooling after a conv stage's activation (``network.layers.N.pool``)."""

    NONE = "none"
    #: mean of 2x2 windows (2 in 1-D), stride 2; an odd last row or column is dropped
    AVG = "avg"
    #: maximum of 2x2 windows (2 in 1-D), stride 2
    MAX = "max"
    #: the mean over every position: the output is one value per channel
    GLOBAL_AVG = "global_avg"


class Norm(enum.Enum):
    """Normalization of a conv stage's pre-activation (``network.layers.N.norm``)."""

    NONE = "none"
    #: per-sample mean and variance over groups of channels, then a learned scale and shift
    GROUP = "group"
    #: Online Normalization: per channel, running mean and variance over the samples as they
    #: stream (``alpha_fwd``), error compensation in the backward (``alpha_bkw``), a learned
    #: scale and shift, then activation clamping (``clamp``); float arithmetic only
    ONLINE = "online"


class Arith(enum.Enum):
    FLOAT = "float"
    FIXED = "fixed"


#: Number-format roles, in datapath order.
ROLES = ("activation", "weight", "error", "gradient", "velocity", "coefficient")


def _role(width: int, frac: int) -> dict[str, Any]:
    return {
        "width": width,
        "frac": frac,
        "signed": True,
        "rounding": "half_even",
        "overflow": "saturate",
    }


#: The schema and every default. A key absent here is unknown.
DEFAULTS: dict[str, Any] = {
    "name": "pbhw",
    "seed": 0,
    "network": {"layers": [64, 32, 10], "loss": "mse", "bias": True},
    "optimizer": {
        "algorithm": "pb",
        "lr": 0.1,
        "momentum": 0.9,
        "reference_batch": 32,
        "batch_size": 1,
        "spike_compensation": True,
        "weight_prediction": "velocity",
        "prediction_horizon": "auto",
        "weight_stashing": False,
    },
    "formats": {
        "activation": _role(16, 10),
        "weight": _role(16, 13),
        "error": _role(16, 13),
        "gradient": _role(16, 14),
        "velocity": _role(20, 14),
        "coefficient": {**_role(24, 22), "shift": False},
    },
    # [[overrides]] entries: {"layer": N, "formats": {role: {partial role table}}}
    "overrides": [],
    "hardware": {
        "lanes": "auto",
        "device": "ecp5-85k",
        "clock_mhz": 100.0,
        "constants": "fabric",
        "delay_lines": "registers",
        "placer": "device",
    },
    "train": {"dataset": "digits", "epochs": 10, "arith": "float", "init_from": ""},
}

_OVERRIDE_KEYS = {"layer": 1, "formats": {}}

#: Online Normalization's keys and their defaults: the forward statistics' and the backward's
#: decay, and the activation clamp after the learned scale and shift.
ONLINE_DEFAULTS = {"alpha_fwd": 0.999, "alpha_bkw": 0.99, "clamp": 5.0}

#: The keys of an entry of the general form of ``network.layers`` and their defaults (``None``:
#: required).
_LAYER_KEYS: dict[LayerType, dict[str, Any]] = {
    LayerType.CONV: {
        "type": "conv",
        "channels": None,
        "kernel": None,
        "stride": 1,
        "padding": 0,
        "pool": "none",
        "norm": "none",
        "groups": 1,
        "alpha_fwd": ONLINE_DEFAULTS["alpha_fwd"],
        "alpha_bkw": ONLINE_DEFAULTS["alpha_bkw"],
        "clamp": ONLINE_DEFAULTS["clamp"],
        "residual": 0,
        "projection": False,
    },
    LayerType.DENSE: {"type": "dense", "units": None},
}


@dataclass(frozen=True)
class RoleFormat:
    """Number format of one role plus how values are rounded into it."""

    format: FixedFormat
    rounding: Rounding
    overflow: Overflow

    def __str__(self) -> str:
        return f"{self.format} {self.rounding.value}/{self.overflow.value}"


@dataclass(frozen=True)
class Formats:
    """The formats of every role for one stage."""

    activation: RoleFormat
    weight: RoleFormat
    error: RoleFormat
    gradient: RoleFormat
    velocity: RoleFormat
    coefficient: RoleFormat
    #: restrict constants to shift-only values (powers of two; momentum as 1 - 2^-k)
    coefficient_shift: bool = False

    def role(self, name: str) -> RoleFormat:
        return getattr(self, name)


@dataclass(frozen=True)
class LayerSpec:
    """One entry of the general form of ``network.layers`` with its checked shapes.

    Shapes are ``(features,)``, ``(channels, length)`` or ``(channels, height, width)``. A
    dense entry has ``out`` units and ``kernel = stride = 1``, ``padding = 0``."""

    type: LayerType
    #: conv: output channels; dense: units
    out: int
    kernel: int
    stride: int
    padding: int
    pool: Pool
    norm: Norm
    groups: int
    #: 0: none; N: add the output of the entry N before this one
    residual: int
    #: the residual passes a 1x1 convolution (``projection_stride``) before the add
    projection: bool
    in_shape: tuple[int, ...]
    #: conv: the shape of the convolution's output (before pooling); dense: ``(out,)``
    conv_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    #: the shape of the residual added (the output of entry ``residual`` before; () for none)
    residual_shape: tuple[int, ...] = ()
    #: the stride per spatial dimension of the residual's projection (() without one)
    projection_stride: tuple[int, ...] = ()
    #: Online Normalization's decays and clamp (``norm = "online"`` only)
    alpha_fwd: float = ONLINE_DEFAULTS["alpha_fwd"]
    alpha_bkw: float = ONLINE_DEFAULTS["alpha_bkw"]
    clamp: float = ONLINE_DEFAULTS["clamp"]


@dataclass(frozen=True)
class NetworkConfig:
    #: the flattened size of the input and of every stage's output
    layers: tuple[int, ...]
    loss: Loss
    bias: bool
    #: the shape of one input sample (``network.input``; ``(layers[0],)`` when not given)
    input: tuple[int, ...] = ()
    #: the general form's entries; ``None`` for a perceptron (the ``layers = [64, 32, 10]``
    #: shorthand, or a general form of dense entries only)
    specs: tuple[LayerSpec, ...] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.layers) - 1

    @property
    def convolutional(self) -> bool:
        """Whether any stage is not a dense layer (the trainers only, not the hardware, yet)."""
        return self.specs is not None

    def require_dense(self) -> None:
        """Raise :class:`ConfigError`, naming the first conv entry, unless every stage is dense:
        what the hardware and ``pbhw sweep`` take."""
        if self.specs is None:
            return
        first = next(i for i, sp in enumerate(self.specs) if sp.type is LayerType.CONV)
        raise ConfigError(
            f"config key 'network.layers.{first}': convolutional stages are not in the "
            "hardware yet (generate, verify, estimate, flow and sweep need dense layers "
            "only); train them with pbhw train"
        )


@dataclass(frozen=True)
class OptimizerConfig:
    algorithm: Algorithm
    lr: float
    momentum: float
    reference_batch: int
    batch_size: int
    spike_compensation: bool
    weight_prediction: WeightPrediction
    #: ``None`` means "auto": the stage's own delay D_l.
    prediction_horizon: int | None
    weight_stashing: bool


@dataclass(frozen=True)
class HardwareConfig:
    #: ``"auto"`` or one lane count per stage.
    lanes: str | tuple[int, ...]
    device: str
    clock_mhz: float
    #: how the update constants' products are built (``"fabric"`` or ``"dsp"``)
    constants: ConstantProducts = ConstantProducts.FABRIC
    #: where the lanes' long delay lines are (``"registers"`` or ``"block_ram"``)
    delay_lines: DelayLines = DelayLines.REGISTERS
    #: nextpnr's placer for ``pbhw estimate`` and ``pbhw flow`` (``"device"``: the device file's)
    placer: Placer = Placer.DEVICE


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    epochs: int
    arith: Arith
    #: a PyTorch ``state_dict`` file to start from instead of the seed's weights ("": none)
    init_from: str = ""


@dataclass(frozen=True)
class Config:
    """A validated configuration. ``data`` is the resolved dictionary (defaults filled in)."""

    name: str
    seed: int
    network: NetworkConfig
    optimizer: OptimizerConfig
    formats: Formats
    layer_formats: tuple[Formats, ...]
    hardware: HardwareConfig
    train: TrainConfig
    #: the resolved file contents (defaults filled in), read-only; :meth:`to_dict` thaws a copy
    data: Mapping[str, Any] = field(compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return _thaw(self.data)

    def replace(self, changes: Mapping[str, Any]) -> Config:
        """A validated copy of the config with the values at some dotted keys changed.

        Parameters
        ----------
        changes
            Dotted key to new value, e.g. ``{"train.arith": "fixed", "optimizer.lr": 0.05}``.
            A key names one value of the config file's layout (list entries by index, as
            ``overrides.0.layer``), not a whole table; a value is what the file would hold
            there (an enum member counts as its value, a tuple as an array).

        Returns
        -------
        Config
            The new config, validated as :func:`from_dict` validates a file; ``self`` is
            unchanged.

        Raises
        ------
        ConfigError
            Naming the key, when it is unknown, goes through a value or names a whole table, or
            when the new value is not allowed there.

        Examples
        --------
        >>> fixed = from_dict({}).replace({"train.arith": "fixed"})
        >>> fixed.train.arith
        <Arith.FIXED: 'fixed'>
        """
        if not isinstance(changes, Mapping):
            raise ConfigError(
                "Config.replace takes a mapping of dotted keys to values (e.g. "
                f"{{'train.arith': 'fixed'}}), not {changes!r}"
            )
        raw = self.to_dict()
        for key, value in changes.items():
            _assign(raw, key, _plain(value))
        return from_dict(raw)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Loading and overrides


def load(path: str | Path, sets: Sequence[str] = ()) -> Config:
    """Read, override (``KEY=VALUE`` strings, as ``--set``) and validate a TOML config file."""
    path = Path(path)
    text = read_text(path, "config file", ConfigError)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file '{path}' is not valid TOML: {e}") from None
    return from_dict(apply_sets(raw, sets))


def _parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value (``12``, ``0.5``, ``true``, ``[8, 4]``) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_sets(raw: Mapping[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``a.b.c=VALUE`` applied (list items by index: overrides.0)."""
    out = copy.deepcopy(dict(raw))
    for item in sets:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE (e.g. optimizer.lr=0.05), not {item!r}")
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                child = node[_list_index(node, part, where)]
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"--set {key}: '{where}' is a value, not a table")
            node = child
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, key)] = _parse_value(text.strip())
        else:
            node[last] = _parse_value(text.strip())
    return out


def _list_index(node: list, part: str, where: str, label: str = "--set") -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            f"{label}: '{where}' must index one of {len(node)} list entries "
            f"(0..{len(node) - 1}), not {part!r}"
        )
    return int(part)


def _plain(value: Any) -> Any:
    """A value as the config file would hold it: enum members as their values, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _assign(raw: dict[str, Any], key: Any, value: Any) -> None:
    """Set the value at dotted ``key`` of a resolved config dictionary (for :meth:`Config.replace`).

    Unknown keys are left for :func:`from_dict` to report (with a suggestion); a key through a
    value, past the end of a list, or naming a whole table is refused here."""
    if not isinstance(key, str) or not key or "" in key.split("."):
        raise ConfigError(f"config key must be a dotted name such as 'train.arith', not {key!r}")
    label = f"config key '{key}'"
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            child = node[_list_index(node, part, where, label)]
        else:
            child = node.get(part)
            if child is None:  # unknown, or absent from a partial [[overrides]] table
                child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"{label}: '{where}' is a value, not a table")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key, label)] = value
        return
    if isinstance(node.get(last), dict):
        inner = ", ".join(f"'{key}.{k}'" for k in node[last])
        raise ConfigError(
            f"{label} must name one value, not a whole table: name its keys ({inner})"
        )
    node[last] = value


# --------------------------------------------------------------------------------------------
# Validation


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _check_keys(table: Mapping[str, Any], allowed: Mapping[str, Any], where: str) -> None:
    for key in table:
        if key not in allowed:
            full = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean '{(where + '.') if where else ''}{close[0]}'?" if close else ""
            names = ", ".join(allowed)
            raise ConfigError(
                f"unknown config key '{full}'{hint} (allowed in "
                f"{'[' + where + ']' if where else 'the top level'}: {names})"
            )


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Defaults overlaid with ``given``, recursively for tables; unknown keys are errors."""
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"config key '{where}' must be a table, not {_type_name(given)} {given!r}"
        )
    _check_keys(given, defaults, where)
    out: dict[str, Any] = {}
    for key, default in defaults.items():
        full = f"{where}.{key}" if where else key
        if key not in given:
            out[key] = copy.deepcopy(default)
        elif isinstance(default, dict) and default:
            out[key] = _merge(default, given[key], full)
        else:
            out[key] = given[key]
    return out


class _Reader:
    """Typed access to a merged table; every failure names the full key."""

    def __init__(self, table: Mapping[str, Any], where: str):
        self.table = table
        self.where = where

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, allowed: str) -> ConfigError:
        value = self.table[name]
        return ConfigError(
            f"config key '{self.key(name)}' must be {allowed}, not {_type_name(value)} {value!r}"
        )

    def boolean(self, name: str) -> bool:
        value = self.table[name]
        if not isinstance(value, bool):
            raise self.fail(name, "true or false")
        return value

    def integer(self, name: str, minimum: int | None = None) -> int:
        value = self.table[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
        if minimum is not None and value < minimum:
            raise self.fail(name, f"an integer >= {minimum}")
        return value

    def number(
        self,
        name: str,
        *,
        lo: float,
        hi: float | None = None,
        lo_open: bool = False,
        hi_open: bool = True,
        allowed: str,
    ) -> float:
        value = self.table[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, allowed)
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise self.fail(name, allowed)
        if value <= lo if lo_open else value < lo:
            raise self.fail(name, allowed)
        if hi is not None and (value >= hi if hi_open else value > hi):
            raise self.fail(name, allowed)
        return value

    def string(self, name: str) -> str:
        value = self.table[name]
        if not isinstance(value, str) or not value:
            raise self.fail(name, "a non-empty string")
        return value

    def choice(self, name: str, enum_type: type[enum.Enum]) -> Any:
        value = self.table[name]
        names = [m.value for m in enum_type]
        if isinstance(value, str) and value in names:
            return enum_type(value)
        close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"config key '{self.key(name)}' must be one of "
            f"{', '.join(repr(n) for n in names)}, not {value!r}{hint}"
        )


def _role_format(table: Mapping[str, Any], where: str) -> RoleFormat:
    r = _Reader(table, where)
    signed = r.boolean("signed")
    width = r.integer("width", minimum=2 if signed else 1)
    if width > 62:
        raise r.fail("width", "an integer from 1 to 62 (2 to 62 when signed)")
    frac = r.integer("frac")
    return RoleFormat(
        FixedFormat(width, frac, signed),
        r.choice("rounding", Rounding),
        r.choice("overflow", Overflow),
    )


def _formats(table: Mapping[str, Any], where: str) -> Formats:
    roles = {role: _role_format(table[role], f"{where}.{role}") for role in ROLES}
    coeff = _Reader(table["coefficient"], f"{where}.coefficient")
    if roles["coefficient"].rounding is Rounding.STOCHASTIC:
        raise ConfigError(
            f"config key '{where}.coefficient.rounding' must be a deterministic "
            "mode (constants are quantized once), not 'stochastic'"
        )
    return Formats(**roles, coefficient_shift=coeff.boolean("shift"))


def _layer_formats(data: dict[str, Any], num_stages: int) -> tuple[Formats, ...]:
    overrides = data["overrides"]
    if not isinstance(overrides, list):
        raise ConfigError(
            f"config key 'overrides' must be an array of tables ([[overrides]]), "
            f"not {_type_name(overrides)} {overrides!r}"
        )
    per_layer: dict[int, tuple[str, Mapping[str, Any]]] = {}
    for i, entry in enumerate(overrides):
        where = f"overrides.{i}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"config key '{where}' must be a table, not {entry!r}")
        _check_keys(entry, _OVERRIDE_KEYS, where)
        if "layer" not in entry:
            raise ConfigError(
                f"config key '{where}.layer' is missing: name the stage "
                f"(1..{num_stages}) this override applies to"
            )
        layer = _Reader(entry, where).integer("layer", minimum=1)
        if layer > num_stages:
            raise ConfigError(
                f"config key '{where}.layer' must be a stage from 1 to {num_stages}, not {layer}"
            )
        if layer in per_layer:
            raise ConfigError(f"config key '{where}.layer': stage {layer} is overridden twice")
        per_layer[layer] = (f"{where}.formats", entry.get("formats", {}))
    result = []
    for layer in range(1, num_stages + 1):
        where, given = per_layer.get(layer, ("formats", {}))
        result.append(_formats(_merge(data["formats"], given, where), where))
    return tuple(result)


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _input_shape(data: dict[str, Any]) -> tuple[int, ...] | None:
    """``network.input`` as a tuple, or None when it is not given."""
    if "input" not in data["network"]:
        return None
    value = data["network"]["input"]
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 3
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in value)
    ):
        raise _Reader(data["network"], "network").fail(
            "input",
            "an array of 1 to 3 positive integers ([features], [channels, length] or "
            "[channels, height, width])",
        )
    return tuple(value)


def _network(data: dict[str, Any]) -> NetworkConfig:
    """``[network]``: the perceptron shorthand or the general form, every shape checked."""
    net = _Reader(data["network"], "network")
    layers = data["network"]["layers"]
    loss, bias = net.choice("loss", Loss), net.boolean("bias")
    given_input = _input_shape(data)
    if isinstance(layers, list) and layers and all(isinstance(e, Mapping) for e in layers):
        if given_input is None:
            raise ConfigError(
                "config key 'network.input' is missing: the general form of network.layers "
                "needs the input shape ([features], [channels, length] or "
                "[channels, height, width])"
            )
        specs = _layer_specs(layers, given_input)
        sizes = (math.prod(given_input), *(math.prod(sp.out_shape) for sp in specs))
        perceptron = all(sp.type is LayerType.DENSE for sp in specs)
        return NetworkConfig(sizes, loss, bias, given_input, None if perceptron else specs)
    if (
        not isinstance(layers, list)
        or len(layers) < 2
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers)
    ):
        raise net.fail(
            "layers",
            "an array of at least two positive integers "
            "(input size, hidden sizes..., number of classes), or an array of layer tables "
            '({ type = "conv", ... } or { type = "dense", units = N })',
        )
    if layers[-1] < 2:
        raise net.fail("layers", "an array whose last entry (the number of classes) is >= 2")
    if given_input is not None and math.prod(given_input) != layers[0]:
        raise ConfigError(
            f"config key 'network.input' {_shape_text(given_input)} must hold "
            f"{layers[0]} values, the first entry of network.layers"
        )
    return NetworkConfig(tuple(layers), loss, bias, given_input or (layers[0],))


def _layer_specs(entries: list[Mapping[str, Any]], shape: tuple[int, ...]) -> tuple[LayerSpec, ...]:
    """Check each entry of the general form against the shape it receives."""
    specs: list[LayerSpec] = []
    for i, entry in enumerate(entries):
        where = f"network.layers.{i}"
        kind = entry.get("type")
        names = [t.value for t in LayerType]
        if kind not in names:
            raise ConfigError(
                f"config key '{where}.type' must be one of "
                f"{', '.join(repr(n) for n in names)}, not {kind!r}"
            )
        layer_type = LayerType(kind)
        table = _merge({k: v for k, v in _LAYER_KEYS[layer_type].items()}, entry, where)
        for key, value in table.items():
            if value is None:
                raise ConfigError(
                    f"config key '{where}.{key}' is missing (a {kind} layer needs it)"
                )
        r = _Reader(table, where)
        if layer_type is LayerType.DENSE:
            units = r.integer("units", minimum=1)
            specs.append(
                LayerSpec(
                    layer_type, units, 1, 1, 0, Pool.NONE, Norm.NONE, 1, 0, False,
                    shape, (units,), (units,),
                )
            )  # fmt: skip
            shape = (units,)
            continue
        spec = _conv_spec(r, layer_type, shape, specs, i)
        specs.append(spec)
        shape = spec.out_shape
    last = len(entries) - 1
    if len(shape) != 1:
        raise ConfigError(
            f"config key 'network.layers.{last}' gives shape {_shape_text(shape)}: the last "
            'layer must give one value per class (a dense layer, or pool = "global_avg")'
        )
    if shape[0] < 2:
        raise ConfigError(
            f"config key 'network.layers.{last}' gives {shape[0]} output: the number of "
            "classes must be >= 2"
        )
    return tuple(specs)


def _conv_spec(
    r: _Reader, layer_type: LayerType, shape: tuple[int, ...], before: list[LayerSpec], i: int
) -> LayerSpec:
    where = r.where
    if len(shape) not in (2, 3):
        raise ConfigError(
            f"config key '{where}.type': a conv layer needs a [channels, length] or "
            f"[channels, height, width] input, not {_shape_text(shape)}"
            + (" (set network.input)" if i == 0 else " (a dense layer's output is flat)")
        )
    channels = r.integer("channels", minimum=1)
    kernel = r.integer("kernel", minimum=1)
    stride = r.integer("stride", minimum=1)
    padding = r.integer("padding", minimum=0)
    pool, norm = r.choice("pool", Pool), r.choice("norm", Norm)
    groups = r.integer("groups", minimum=1)
    residual = r.integer("residual", minimum=0)
    projection = r.boolean("projection")
    spatial = []
    for size in shape[1:]:
        if size + 2 * padding < kernel:
            raise ConfigError(
                f"config key '{where}.kernel' ({kernel}) is larger than its padded input "
                f"({size} + 2 x {padding} padding, of input shape {_shape_text(shape)})"
            )
        spatial.append((size + 2 * padding - kernel) // stride + 1)
    conv_shape = (channels, *spatial)
    if norm is Norm.GROUP and channels % groups:
        raise ConfigError(
            f"config key '{where}.groups' ({groups}) must divide the layer's {channels} channels"
        )
    if norm is not Norm.GROUP and groups != 1:
        raise ConfigError(f"config key '{where}.groups' applies only with norm = \"group\"")
    online = {
        "alpha_fwd": r.number("alpha_fwd", lo=0.0, hi=1.0, lo_open=True, allowed="in (0, 1)"),
        "alpha_bkw": r.number("alpha_bkw", lo=0.0, hi=1.0, lo_open=True, allowed="in (0, 1)"),
        "clamp": r.number("clamp", lo=0.0, lo_open=True, allowed="a number > 0"),
    }
    for key, value in online.items():
        if norm is not Norm.ONLINE and value != ONLINE_DEFAULTS[key]:
            raise ConfigError(f"config key '{where}.{key}' applies only with norm = \"online\"")
    stride_p: tuple[int, ...] = ()
    source: tuple[int, ...] = ()
    if residual:
        if residual > i:
            raise ConfigError(
                f"config key '{where}.residual' ({residual}) reaches before the first layer: "
                f"layer {i} can add the output of layers 0 to {i - 1} (residual 1 to {i})"
                if i
                else f"config key '{where}.residual' ({residual}) reaches before the first "
                "layer: the first layer has no earlier layer to add"
            )
        source = before[i - residual].out_shape
        if projection:
            stride_p = _projection_stride(source, conv_shape)
            if not stride_p:
                raise ConfigError(
                    f"config key '{where}.projection': a 1x1 projection cannot map the "
                    f"residual's shape {_shape_text(source)} (layer {i - residual}'s output) to "
                    f"{_shape_text(conv_shape)} (this layer's convolution) with an integer stride"
                )
        elif source != conv_shape:
            raise ConfigError(
                f"config key '{where}.residual': layer {i - residual}'s output "
                f"{_shape_text(source)} does not match this layer's convolution output "
                f"{_shape_text(conv_shape)} (set projection = true for a 1x1 projection)"
            )
    elif projection:
        raise ConfigError(f"config key '{where}.projection' applies only with a residual")
    if pool is Pool.GLOBAL_AVG:
        out_shape: tuple[int, ...] = (channels,)
    elif pool is Pool.NONE:
        out_shape = conv_shape
    else:
        if min(spatial) < 2:
            raise ConfigError(
                f"config key '{where}.pool' ({pool.value!r}) needs at least 2 positions in "
                f"every dimension, but the convolution gives {_shape_text(conv_shape)}"
            )
        out_shape = (channels, *(n // 2 for n in spatial))
    return LayerSpec(
        layer_type, channels, kernel, stride, padding, pool, norm, groups, residual,
        projection, shape, conv_shape, out_shape, source, stride_p, **online,
    )  # fmt: skip


def _projection_stride(source: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """Per-dimension strides of a 1x1 convolution from ``source`` to ``target``'s positions
    (``()`` when the ranks differ or no integer stride gives the target's size)."""
    if len(source) != len(target):
        return ()
    strides = []
    for n_in, n_out in zip(source[1:], target[1:], strict=True):
        stride = -(-n_in // n_out)
        if (n_in - 1) // stride + 1 != n_out:
            return ()
        strides.append(stride)
    return tuple(strides)


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate a raw dictionary (as read from TOML) into a :class:`Config`."""
    # network.input has no default: a perceptron config's resolved data stays as it was.
    raw_network = raw.get("network") if isinstance(raw, Mapping) else None
    given_input = None
    if isinstance(raw_network, Mapping) and "input" in raw_network:
        given_input = raw_network["input"]
        raw = {**raw, "network": {k: v for k, v in raw_network.items() if k != "input"}}
    data = _merge(DEFAULTS, raw, "")
    if given_input is not None:
        data["network"]["input"] = given_input
    top = _Reader(data, "")
    name, seed = top.string("name"), top.integer("seed", minimum=0)
    if seed >= 2**32:
        raise top.fail("seed", "an integer from 0 to 2**32 - 1")

    network = _network(data)

    opt = _Reader(data["optimizer"], "optimizer")
    algorithm = opt.choice("algorithm", Algorithm)
    batch_size = opt.integer("batch_size", minimum=1)
    if algorithm is Algorithm.PB and batch_size != 1:
        raise ConfigError(
            "config key 'optimizer.batch_size' must be 1 when optimizer.algorithm "
            f"is 'pb' (PB streams one sample per step), not {batch_size}"
        )
    horizon: int | None = None
    if data["optimizer"]["prediction_horizon"] != "auto":
        allowed = '"auto" (the stage\'s delay) or an integer >= 0'
        value = data["optimizer"]["prediction_horizon"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise opt.fail("prediction_horizon", allowed)
        horizon = value
    optimizer = OptimizerConfig(
        algorithm=algorithm,
        lr=opt.number("lr", lo=0.0, lo_open=True, allowed="a positive number"),
        momentum=opt.number("momentum", lo=0.0, hi=1.0, allowed="a number in [0, 1)"),
        reference_batch=opt.integer("reference_batch", minimum=1),
        batch_size=batch_size,
        spike_compensation=opt.boolean("spike_compensation"),
        weight_prediction=opt.choice("weight_prediction", WeightPrediction),
        prediction_horizon=horizon,
        weight_stashing=opt.boolean("weight_stashing"),
    )

    formats = _formats(data["formats"], "formats")
    layer_formats = _layer_formats(data, network.num_stages)

    hw = _Reader(data["hardware"], "hardware")
    lanes = data["hardware"]["lanes"]
    if lanes == "auto":
        lanes_value: str | tuple[int, ...] = "auto"
    elif isinstance(lanes, int) and not isinstance(lanes, bool) and lanes >= 1:
        lanes_value = (lanes,) * network.num_stages
    elif (
        isinstance(lanes, list)
        and len(lanes) == network.num_stages
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in lanes)
    ):
        lanes_value = tuple(lanes)
    else:
        raise hw.fail(
            "lanes",
            f'"auto", a positive integer, or an array of '
            f"{network.num_stages} positive integers (one per stage)",
        )
    hardware = HardwareConfig(
        lanes_value,
        hw.string("device"),
        hw.number("clock_mhz", lo=0.0, lo_open=True, allowed="a positive number (MHz)"),
        hw.choice("constants", ConstantProducts),
        hw.choice("delay_lines", DelayLines),
        hw.choice("placer", Placer),
    )

    tr = _Reader(data["train"], "train")
    if not isinstance(data["train"]["init_from"], str):
        raise tr.fail("init_from", 'a path to a PyTorch state_dict file, or "" for none')
    train = TrainConfig(
        tr.string("dataset"),
        tr.integer("epochs", minimum=1),
        tr.choice("arith", Arith),
        data["train"]["init_from"],
    )
    if train.arith is Arith.FIXED and batch_size != 1:
        # The bit-exact model has no batch: its sgd is the pipeline with every delay 0, one
        # update per sample. Training a batch there would silently be another algorithm.
        raise ConfigError(
            "config key 'optimizer.batch_size' must be 1 when train.arith is 'fixed' (the "
            "fixed-point model updates after every sample; batches of the sgd reference train "
            f"with train.arith = 'float'), not {batch_size}"
        )
    return Config(
        name, seed, network, optimizer, formats, layer_formats, hardware, train, _freeze(data)
    )
