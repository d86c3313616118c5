"""The generator's manifest: a typed, versioned description of one generated design.

:func:`rtl_gen.generate.manifest_of` builds a :class:`Manifest`, ``pbhw generate`` writes it as
``manifest.json`` (:meth:`Manifest.write`), and every tool and flow reads its attributes. The
JSON layout is versioned by :data:`MANIFEST_VERSION`; :meth:`Manifest.from_json` and
:meth:`Manifest.read` refuse a manifest of another version, or a malformed one, with a
:class:`~pbhw.core.errors.ManifestError` naming the field.

The layout (``docs/hardware.md`` describes what the numbers mean)::

    manifest_version, name, top, config_hash, config, device, clock_mhz,
    layers: [{stage, n_in, n_out, bias, relu, weights, lanes, rows, cycles_per_step, pipeline,
              delay, horizon, prediction, spike_compensation, coefficient_shift, coefficients,
              formats, multipliers, multiplier_shapes, dsp_blocks, memory_bits, memory_rows,
              row_bits, delay_memories}],
    delays, lanes, formats, multipliers, dsp_blocks, dsp_available, memory_bits,
    predicted_cycles_per_sample, cycle_overhead, predicted_multiplier_utilization,
    useful_multiplies, memory_model, ports, streams, counters, files

``docs/manifest.md`` describes every field.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from pbhw.core.config import ROLES, Config, WeightPrediction, from_dict
from pbhw.core.errors import ConfigError, ManifestError
from pbhw.core.figures import MemoryModel, StageMemory
from pbhw.core.fixed import FixedFormat, Overflow, Rounding
from pbhw.core.io import read_text, write_json

__all__ = [
    "MANIFEST_VERSION",
    "CycleOverhead",
    "FormatSpec",
    "GeneratedFiles",
    "DebugPort",
    "DelayMemory",
    "Layer",
    "Manifest",
    "ManifestError",
    "MultiplierCounts",
    "MultiplierShape",
    "Payload",
    "PayloadField",
    "Ports",
    "RowBits",
    "StageFormats",
    "StageStreams",
    "Streams",
]

#: Version of the manifest's JSON layout; :meth:`Manifest.from_json` accepts only this one.
MANIFEST_VERSION = 4

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Reading and checking the JSON


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


class _Table:
    """Typed access to one JSON object of a manifest; every failure names the field's path."""

    def __init__(self, raw: Any, where: str):
        if not isinstance(raw, Mapping):
            what = f"manifest field '{where}'" if where else "a manifest"
            raise ManifestError(f"{what} must be a JSON object, not {_shown(raw)}")
        self.raw = raw
        self.where = where
        self.read: set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, allowed: str, value: Any) -> ManifestError:
        return ManifestError(f"manifest field '{name}' must be {allowed}, not {_shown(value)}")

    def has(self, name: str) -> bool:
        return name in self.raw

    def value(self, name: str) -> Any:
        self.read.add(name)
        if name not in self.raw:
            raise ManifestError(f"manifest field '{self.path(name)}' is missing")
        return self.raw[name]

    def integer(self, name: str) -> int:
        return _integer(self.value(name), self.path(name))

    def number(self, name: str) -> float:
        value = self.value(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(self.path(name), "a number", value)
        return float(value)

    def boolean(self, name: str) -> bool:
        value = self.value(name)
        if not isinstance(value, bool):
            raise self.fail(self.path(name), "true or false", value)
        return value

    def string(self, name: str) -> str:
        return _string(self.value(name), self.path(name))

    def choice(self, name: str, enum_type: type[E]) -> E:
        value = self.value(name)
        names = [m.value for m in enum_type]
        if not isinstance(value, str) or value not in names:
            allowed = "one of " + ", ".join(repr(n) for n in names)
            raise self.fail(self.path(name), allowed, value)
        return enum_type(value)

    def table(self, name: str) -> _Table:
        return _Table(self.value(name), self.path(name))

    def items(self, name: str, read: Callable[[Any, str], T]) -> tuple[T, ...]:
        value = self.value(name)
        if not isinstance(value, list):
            raise self.fail(self.path(name), "a JSON array", value)
        return tuple(read(item, f"{self.path(name)}.{i}") for i, item in enumerate(value))

    def mapping(self, name: str, read: Callable[[Any, str], T]) -> dict[str, T]:
        table = self.table(name)
        return {key: read(v, table.path(key)) for key, v in table.raw.items()}

    def close(self) -> None:
        """Refuse fields this version does not define (a foreign or newer manifest)."""
        for key in self.raw:
            if key not in self.read:
                raise ManifestError(
                    f"manifest field '{self.path(key)}' is not part of manifest_version "
                    f"{MANIFEST_VERSION}"
                )


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"manifest field '{where}' must be an integer, not {_shown(value)}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"manifest field '{where}' must be a string, not {_shown(value)}")
    return value


def _frozen(value: Mapping[str, T]) -> Mapping[str, T]:
    return MappingProxyType(dict(value))


def _freeze(obj: Any, *, maps: Iterable[str] = (), seqs: Iterable[str] = ()) -> None:
    """Make a frozen dataclass's containers read-only (mappings) and tuples (sequences)."""
    for name in maps:
        object.__setattr__(obj, name, _frozen(getattr(obj, name)))
    for name in seqs:
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, tuple(value))


# --------------------------------------------------------------------------------------------
# The parts


@dataclass(frozen=True, kw_only=True)
class FormatSpec:
    """The number format of one role of one stage, as the hardware implements it."""

    width: int
    frac: int
    signed: bool
    rounding: Rounding
    overflow: Overflow

    @property
    def format(self) -> FixedFormat:
        """The code format (width, fractional bits, signedness)."""
        return FixedFormat(self.width, self.frac, self.signed)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the manifest: ``{width, frac, signed, rounding, overflow}``."""
        return {
            "width": self.width,
            "frac": self.frac,
            "signed": self.signed,
            "rounding": self.rounding.value,
            "overflow": self.overflow.value,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "format") -> FormatSpec:
        """Check and read one format object; ``where`` is its path, for error messages."""
        t = _Table(raw, where)
        spec = cls(
            width=t.integer("width"),
            frac=t.integer("frac"),
            signed=t.boolean("signed"),
            rounding=t.choice("rounding", Rounding),
            overflow=t.choice("overflow", Overflow),
        )
        t.close()
        return spec


@dataclass(frozen=True, kw_only=True)
class StageFormats:
    """The formats of every role of one stage (the roles of :data:`pbhw.core.config.ROLES`)."""

    activation: FormatSpec
    weight: FormatSpec
    error: FormatSpec
    gradient: FormatSpec
    velocity: FormatSpec
    coefficient: FormatSpec

    def role(self, name: str) -> FormatSpec:
        """The format of role ``name`` (one of :data:`~pbhw.core.config.ROLES`)."""
        if name not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {name!r}")
        return getattr(self, name)

    def roles(self) -> dict[str, FormatSpec]:
        """Every role's format, in datapath order."""
        return {role: getattr(self, role) for role in ROLES}

    def to_json(self) -> dict[str, Any]:
        """``{role: format}`` in datapath order."""
        return {role: spec.to_json() for role, spec in self.roles().items()}

    @classmethod
    def from_json(cls, raw: Any, where: str = "formats") -> StageFormats:
        """Check and read a ``{role: format}`` object; ``where`` is its path."""
        t = _Table(raw, where)
        roles = {role: FormatSpec.from_json(t.value(role), t.path(role)) for role in ROLES}
        t.close()
        return cls(**roles)


@dataclass(frozen=True, kw_only=True)
class MultiplierCounts:
    """Products per cycle: data products (``w.x``, ``w.d``, ``d.x``, on hard multipliers) and
    products by a constant (the update's coefficients: shift-and-add in the fabric with
    ``hardware.constants = "fabric"``, hard multipliers with ``"dsp"``)."""

    data: int
    coefficient: int

    def to_json(self) -> dict[str, int]:
        """``{data, coefficient}``."""
        return {"data": self.data, "coefficient": self.coefficient}

    @classmethod
    def from_json(cls, raw: Any, where: str = "multipliers") -> MultiplierCounts:
        """Check and read a ``{data, coefficient}`` object; ``where`` is its path."""
        t = _Table(raw, where)
        counts = cls(data=t.integer("data"), coefficient=t.integer("coefficient"))
        t.close()
        return counts


@dataclass(frozen=True, kw_only=True)
class MultiplierShape:
    """One hard-multiplier piece of a stage: the product it belongs to, its operand widths and
    how many of it the stage has (one per lane)."""

    product: str
    a: int
    b: int
    count: int

    def to_json(self) -> dict[str, Any]:
        """``{product, a, b, count}``."""
        return {"product": self.product, "a": self.a, "b": self.b, "count": self.count}

    @classmethod
    def from_json(cls, raw: Any, where: str = "multiplier_shapes.0") -> MultiplierShape:
        """Check and read a ``{product, a, b, count}`` object; ``where`` is its path."""
        t = _Table(raw, where)
        shape = cls(
            product=t.string("product"),
            a=t.integer("a"),
            b=t.integer("b"),
            count=t.integer("count"),
        )
        t.close()
        return shape


@dataclass(frozen=True, kw_only=True)
class RowBits:
    """Bits of one memory row (all lanes) of the weight and velocity memories."""

    weight: int
    velocity: int

    def to_json(self) -> dict[str, int]:
        """``{weight, velocity}``."""
        return {"weight": self.weight, "velocity": self.velocity}

    @classmethod
    def from_json(cls, raw: Any, where: str = "row_bits") -> RowBits:
        """Check and read a ``{weight, velocity}`` object; ``where`` is its path."""
        t = _Table(raw, where)
        bits = cls(weight=t.integer("weight"), velocity=t.integer("velocity"))
        t.close()
        return bits


@dataclass(frozen=True, kw_only=True)
class DelayMemory:
    """Block RAMs of the lanes' delay lines of one kind: ``count`` memories of ``depth`` words
    of ``width`` bits, each delaying a value by ``cycles`` cycles (``docs/hardware.md``)."""

    width: int
    depth: int
    cycles: int
    count: int

    @property
    def register_bits(self) -> int:
        """Flip-flops the memories stand for: the registers a chain of ``cycles`` would hold,
        less the memory's output register."""
        return self.count * self.width * (self.cycles - 1)

    def to_json(self) -> dict[str, Any]:
        """``{width, depth, cycles, count}``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: Any, where: str = "delay_memories.0") -> DelayMemory:
        """Check and read a ``{width, depth, cycles, count}`` object; ``where`` is its path."""
        t = _Table(raw, where)
        memory = cls(**{f.name: t.integer(f.name) for f in fields(cls)})
        t.close()
        return memory


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One pipeline stage of the generated design.

    ``pipeline`` maps each part of the lane pipeline to the cycle, after a row is read, at which
    it acts (its keys belong to :attr:`rtl_gen.stage.Stage.pipeline`; ``drain`` is the depth);
    ``coefficients`` the update constants' codes by name; ``memory_bits`` each memory's size.
    ``multiplier_shapes`` lists every hard-multiplier piece of the stage's products (operand
    widths and how many), from the datapath plan (:mod:`pbhw.core.datapath`);
    ``delay_memories`` the block RAMs of the lanes' delay lines.
    """

    stage: int
    n_in: int
    n_out: int
    bias: bool
    relu: bool
    weights: int
    lanes: int
    rows: int
    cycles_per_step: int
    pipeline: Mapping[str, int]
    delay: int
    horizon: int
    prediction: WeightPrediction
    spike_compensation: bool
    coefficient_shift: bool
    coefficients: Mapping[str, int]
    formats: StageFormats
    multipliers: MultiplierCounts
    multiplier_shapes: tuple[MultiplierShape, ...]
    dsp_blocks: int
    memory_bits: Mapping[str, int]
    memory_rows: int
    row_bits: RowBits
    delay_memories: tuple[DelayMemory, ...]

    def __post_init__(self) -> None:
        _freeze(
            self,
            maps=("pipeline", "coefficients", "memory_bits"),
            seqs=("multiplier_shapes", "delay_memories"),
        )

    def to_json(self) -> dict[str, Any]:
        """The stage's object of the manifest's ``layers``."""
        out: dict[str, Any] = {
            "stage": self.stage,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "bias": self.bias,
            "relu": self.relu,
            "weights": self.weights,
            "lanes": self.lanes,
            "rows": self.rows,
            "cycles_per_step": self.cycles_per_step,
            "pipeline": dict(self.pipeline),
            "delay": self.delay,
            "horizon": self.horizon,
            "prediction": self.prediction.value,
            "spike_compensation": self.spike_compensation,
            "coefficient_shift": self.coefficient_shift,
            "coefficients": dict(self.coefficients),
            "formats": self.formats.to_json(),
            "multipliers": self.multipliers.to_json(),
            "multiplier_shapes": [s.to_json() for s in self.multiplier_shapes],
        }
        out.update(
            {
                "dsp_blocks": self.dsp_blocks,
                "memory_bits": dict(self.memory_bits),
                "memory_rows": self.memory_rows,
                "row_bits": self.row_bits.to_json(),
                "delay_memories": [d.to_json() for d in self.delay_memories],
            }
        )
        return out

    @classmethod
    def from_json(cls, raw: Any, where: str = "layers.0") -> Layer:
        """Check and read one object of ``layers``; ``where`` is its path."""
        t = _Table(raw, where)
        shapes = t.items("multiplier_shapes", MultiplierShape.from_json)
        layer = cls(
            stage=t.integer("stage"),
            n_in=t.integer("n_in"),
            n_out=t.integer("n_out"),
            bias=t.boolean("bias"),
            relu=t.boolean("relu"),
            weights=t.integer("weights"),
            lanes=t.integer("lanes"),
            rows=t.integer("rows"),
            cycles_per_step=t.integer("cycles_per_step"),
            pipeline=t.mapping("pipeline", _integer),
            delay=t.integer("delay"),
            horizon=t.integer("horizon"),
            prediction=t.choice("prediction", WeightPrediction),
            spike_compensation=t.boolean("spike_compensation"),
            coefficient_shift=t.boolean("coefficient_shift"),
            coefficients=t.mapping("coefficients", _integer),
            formats=StageFormats.from_json(t.value("formats"), t.path("formats")),
            multipliers=MultiplierCounts.from_json(t.value("multipliers"), t.path("multipliers")),
            multiplier_shapes=shapes,
            dsp_blocks=t.integer("dsp_blocks"),
            memory_bits=t.mapping("memory_bits", _integer),
            memory_rows=t.integer("memory_rows"),
            row_bits=RowBits.from_json(t.value("row_bits"), t.path("row_bits")),
            delay_memories=t.items("delay_memories", DelayMemory.from_json),
        )
        t.close()
        return layer


@dataclass(frozen=True, kw_only=True)
class CycleOverhead:
    """What a step costs beyond its rows: ``stage`` cycles per step, each stage's lane-pipeline
    ``drain``, the ``loss_unit``'s latency, and the ``rule`` that combines them (in words)."""

    stage: int
    drain: tuple[int, ...]
    loss_unit: int
    rule: str

    def __post_init__(self) -> None:
        _freeze(self, seqs=("drain",))

    def to_json(self) -> dict[str, Any]:
        """``{stage, drain, loss_unit, rule}``."""
        return {
            "stage": self.stage,
            "drain": list(self.drain),
            "loss_unit": self.loss_unit,
            "rule": self.rule,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "cycle_overhead") -> CycleOverhead:
        """Check and read a ``{stage, drain, loss_unit, rule}`` object; ``where`` is its path."""
        t = _Table(raw, where)
        overhead = cls(
            stage=t.integer("stage"),
            drain=t.items("drain", _integer),
            loss_unit=t.integer("loss_unit"),
            rule=t.string("rule"),
        )
        t.close()
        return overhead


@dataclass(frozen=True, kw_only=True)
class Ports:
    """The top module's ports, described in words."""

    samples: str
    results: str
    debug: str
    saturation: str

    def to_json(self) -> dict[str, str]:
        """``{samples, results, debug, saturation}``."""
        return {
            "samples": self.samples,
            "results": self.results,
            "debug": self.debug,
            "saturation": self.saturation,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "ports") -> Ports:
        """Check and read the ``ports`` object; ``where`` is its path."""
        t = _Table(raw, where)
        ports = cls(**{f.name: t.string(f.name) for f in fields(cls)})
        t.close()
        return ports


@dataclass(frozen=True, kw_only=True)
class PayloadField:
    """One bit field of a stream payload or a packed row: ``width`` bits from bit ``lsb`` (bit 0
    is the least significant bit of the payload). An array field holds ``count`` elements of
    ``element_width`` bits each, element ``i`` at bits ``lsb + i * element_width`` upwards;
    ``signed`` says whether a scalar, or each element, is two's complement. ``count`` and
    ``element_width`` are None for a scalar."""

    name: str
    lsb: int
    width: int
    signed: bool
    count: int | None = None
    element_width: int | None = None

    def to_json(self) -> dict[str, Any]:
        """``{name, lsb, width, signed, count, element_width}``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: Any, where: str = "field") -> PayloadField:
        """Check and read one field object; ``where`` is its path."""
        t = _Table(raw, where)
        count = None if t.value("count") is None else t.integer("count")
        element = None if t.value("element_width") is None else t.integer("element_width")
        field = cls(
            name=t.string("name"),
            lsb=t.integer("lsb"),
            width=t.integer("width"),
            signed=t.boolean("signed"),
            count=count,
            element_width=element,
        )
        t.close()
        if (count is None) != (element is None) or (
            count is not None and count * element != field.width
        ):
            raise ManifestError(
                f"manifest field '{where}' must have both count and element_width (with "
                f"count * element_width = width) or neither, not {_shown(raw)}"
            )
        return field


@dataclass(frozen=True, kw_only=True)
class Payload:
    """The bit layout of one stream's payload (or of one packed memory row): its ``width`` and
    its ``fields`` in bit order."""

    width: int
    fields: tuple[PayloadField, ...]

    def __post_init__(self) -> None:
        _freeze(self, seqs=("fields",))

    def field(self, name: str) -> PayloadField:
        """The field called ``name``."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"payload has no field {name!r} (it has {[f.name for f in self.fields]})")

    def to_json(self) -> dict[str, Any]:
        """``{width, fields: [...]}``."""
        return {"width": self.width, "fields": [f.to_json() for f in self.fields]}

    @classmethod
    def from_json(cls, raw: Any, where: str = "payload") -> Payload:
        """Check and read a ``{width, fields}`` object; ``where`` is its path."""
        t = _Table(raw, where)
        payload = cls(width=t.integer("width"), fields=t.items("fields", PayloadField.from_json))
        t.close()
        return payload


@dataclass(frozen=True, kw_only=True)
class StageStreams:
    """The streams a stage drives and receives besides its input: the forward token it sends on
    (to the next stage, or from the last stage to the loss unit) and the error token it receives
    (from the next stage, or the last stage's from the loss unit)."""

    stage: int
    forward_out: Payload
    error_in: Payload

    def to_json(self) -> dict[str, Any]:
        """``{stage, forward_out, error_in}``."""
        return {
            "stage": self.stage,
            "forward_out": self.forward_out.to_json(),
            "error_in": self.error_in.to_json(),
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "streams.stages.0") -> StageStreams:
        """Check and read one object of ``streams.stages``; ``where`` is its path."""
        t = _Table(raw, where)
        out = cls(
            stage=t.integer("stage"),
            forward_out=Payload.from_json(t.value("forward_out"), t.path("forward_out")),
            error_in=Payload.from_json(t.value("error_in"), t.path("error_in")),
        )
        t.close()
        return out


@dataclass(frozen=True, kw_only=True)
class DebugPort:
    """The debug port: ``dbg_stage`` (1-based stage minus 1), ``dbg_mem`` (a code of
    ``memories``) and ``dbg_addr`` (the row) select a row, which is on ``dbg_data`` ``latency``
    cycles later, in the layout ``rows[stage - 1][memory]`` (the upper bits of ``dbg_data``
    beyond the row's width are 0). ``widths`` gives each port's bits."""

    widths: Mapping[str, int]
    memories: Mapping[str, int]
    latency: int
    rows: tuple[Mapping[str, Payload], ...]

    def __post_init__(self) -> None:
        _freeze(self, maps=("widths", "memories"))
        object.__setattr__(self, "rows", tuple(_frozen(r) for r in self.rows))

    def to_json(self) -> dict[str, Any]:
        """``{widths, memories, latency, rows}``."""
        return {
            "widths": dict(self.widths),
            "memories": dict(self.memories),
            "latency": self.latency,
            "rows": [{k: p.to_json() for k, p in r.items()} for r in self.rows],
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "streams.debug") -> DebugPort:
        """Check and read the ``streams.debug`` object; ``where`` is its path."""
        t = _Table(raw, where)
        port = cls(
            widths=t.mapping("widths", _integer),
            memories=t.mapping("memories", _integer),
            latency=t.integer("latency"),
            rows=t.items(
                "rows",
                lambda r, w: {
                    k: Payload.from_json(v, f"{w}.{k}") for k, v in _Table(r, w).raw.items()
                },
            ),
        )
        t.close()
        return port


@dataclass(frozen=True, kw_only=True)
class Streams:
    """The bit layouts of the design's streams, taken from the Amaranth layouts the design
    uses: ``samples`` (into stage 1), ``results`` (out of the loss unit), each stage's
    :class:`StageStreams` and the :class:`DebugPort`."""

    samples: Payload
    results: Payload
    stages: tuple[StageStreams, ...]
    debug: DebugPort

    def __post_init__(self) -> None:
        _freeze(self, seqs=("stages",))

    def to_json(self) -> dict[str, Any]:
        """``{samples, results, stages, debug}``."""
        return {
            "samples": self.samples.to_json(),
            "results": self.results.to_json(),
            "stages": [s.to_json() for s in self.stages],
            "debug": self.debug.to_json(),
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "streams") -> Streams:
        """Check and read the ``streams`` object; ``where`` is its path."""
        t = _Table(raw, where)
        streams = cls(
            samples=Payload.from_json(t.value("samples"), t.path("samples")),
            results=Payload.from_json(t.value("results"), t.path("results")),
            stages=t.items("stages", StageStreams.from_json),
            debug=DebugPort.from_json(t.value("debug"), t.path("debug")),
        )
        t.close()
        return streams


def _memory_model_from_json(raw: Any, where: str = "memory_model") -> MemoryModel:
    """Check and read the ``memory_model`` object (its totals must add up)."""
    t = _Table(raw, where)
    names = [f for f in StageMemory.__dataclass_fields__]

    def stage(item: Any, path: str) -> StageMemory:
        s = _Table(item, path)
        out = StageMemory(**{n: s.integer(n) for n in names})
        for total in ("pipelined", "batch"):
            if s.integer(total) != getattr(out, total):
                raise ManifestError(
                    f"manifest field '{s.path(total)}' must be the sum of its parts, "
                    f"{getattr(out, total)}, not {_shown(s.raw[total])}"
                )
        s.close()
        return out

    model = MemoryModel(batch_size=t.integer("batch_size"), stages=t.items("stages", stage))
    for total in ("pipelined", "batch"):
        if t.integer(total) != getattr(model, total):
            raise ManifestError(
                f"manifest field '{t.path(total)}' must be the sum of the stages', "
                f"{getattr(model, total)}, not {_shown(t.raw[total])}"
            )
    t.close()
    return model


@dataclass(frozen=True, kw_only=True)
class GeneratedFiles:
    """The files ``pbhw generate`` wrote beside the manifest: the Verilog, the SDC, one
    ``$readmemh`` file per memory (by ``stage<i>.<memory>``) and the simulation models."""

    verilog: str
    sdc: str
    init: Mapping[str, str]
    simulation_models: tuple[str, ...]

    def __post_init__(self) -> None:
        _freeze(self, maps=("init",), seqs=("simulation_models",))

    def to_json(self) -> dict[str, Any]:
        """``{verilog, sdc, init, simulation_models}``."""
        return {
            "verilog": self.verilog,
            "sdc": self.sdc,
            "init": dict(self.init),
            "simulation_models": list(self.simulation_models),
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "files") -> GeneratedFiles:
        """Check and read the ``files`` object; ``where`` is its path."""
        t = _Table(raw, where)
        files = cls(
            verilog=t.string("verilog"),
            sdc=t.string("sdc"),
            init=t.mapping("init", _string),
            simulation_models=t.items("simulation_models", _string),
        )
        t.close()
        return files


# --------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Everything a tool needs to know about a generated design (``manifest.json``).

    Built by :func:`rtl_gen.generate.manifest_of`; ``files`` is None for a design that was not
    written to disk (its JSON then has ``"files": {}``). ``formats``, ``delays``, ``lanes``,
    ``multipliers``, ``dsp_blocks`` and ``memory_bits`` summarise ``layers``;
    ``useful_multiplies`` is :func:`pbhw.core.figures.useful_multiplies` of the plan and
    ``memory_model`` :func:`pbhw.core.figures.memory_model` (at ``optimizer.reference_batch``);
    ``streams`` gives the bit layout of every stream payload and of the debug port's rows;
    ``counters`` names the saturation counters in port order.
    """

    name: str
    top: str
    config_hash: str
    config: Config
    device: str
    clock_mhz: float
    layers: tuple[Layer, ...]
    delays: tuple[int, ...]
    lanes: tuple[int, ...]
    formats: tuple[StageFormats, ...]
    multipliers: MultiplierCounts
    dsp_blocks: int
    dsp_available: int
    memory_bits: int
    predicted_cycles_per_sample: int
    cycle_overhead: CycleOverhead
    predicted_multiplier_utilization: float
    useful_multiplies: int
    memory_model: MemoryModel
    ports: Ports
    streams: Streams
    counters: tuple[str, ...]
    files: GeneratedFiles | None = None
    manifest_version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if self.manifest_version != MANIFEST_VERSION:
            raise ManifestError(
                f"manifest_version must be {MANIFEST_VERSION}, not {self.manifest_version!r}"
            )
        _freeze(self, seqs=("layers", "delays", "lanes", "formats", "counters"))

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dictionary, in the layout of ``manifest.json``.

        Returns
        -------
        dict
            Plain dictionaries, lists, strings and numbers; :meth:`from_json` reads it back to an
            equal :class:`Manifest`.
        """
        return {
            "manifest_version": self.manifest_version,
            "name": self.name,
            "top": self.top,
            "config_hash": self.config_hash,
            "config": self.config.to_dict(),
            "device": self.device,
            "clock_mhz": self.clock_mhz,
            "layers": [layer.to_json() for layer in self.layers],
            "delays": list(self.delays),
            "lanes": list(self.lanes),
            "formats": [f.to_json() for f in self.formats],
            "multipliers": self.multipliers.to_json(),
            "dsp_blocks": self.dsp_blocks,
            "dsp_available": self.dsp_available,
            "memory_bits": self.memory_bits,
            "predicted_cycles_per_sample": self.predicted_cycles_per_sample,
            "cycle_overhead": self.cycle_overhead.to_json(),
            "predicted_multiplier_utilization": self.predicted_multiplier_utilization,
            "useful_multiplies": self.useful_multiplies,
            "memory_model": self.memory_model.to_json(),
            "ports": self.ports.to_json(),
            "streams": self.streams.to_json(),
            "counters": list(self.counters),
            "files": {} if self.files is None else self.files.to_json(),
        }

    @classmethod
    def from_json(cls, raw: Any) -> Manifest:
        """Check and read a manifest's JSON (as :func:`json.load` gives it).

        Parameters
        ----------
        raw
            The decoded ``manifest.json``.

        Returns
        -------
        Manifest

        Raises
        ------
        ManifestError
            If ``raw`` is not a manifest of :data:`MANIFEST_VERSION` (another version, no
            version at all), or a field is missing, unknown, or of the wrong type; the
            message names the field.
        """
        if not isinstance(raw, Mapping) or "manifest_version" not in raw:
            raise ManifestError(
                "a manifest must be a JSON object with a 'manifest_version' (the manifest.json "
                f"of pbhw generate), not {_shown(raw)}"
            )
        t = _Table(raw, "")
        version = t.value("manifest_version")
        if isinstance(version, bool) or not isinstance(version, int) or version != MANIFEST_VERSION:
            raise ManifestError(
                f"manifest field 'manifest_version' must be {MANIFEST_VERSION}, not "
                f"{_shown(version)}: the manifest was written by another version of pbhw "
                "(run pbhw generate again)"
            )
        try:
            config = from_dict(t.table("config").raw)
        except ConfigError as e:
            raise ManifestError(f"manifest field 'config' is not a valid config: {e}") from None
        files = t.table("files")
        manifest = cls(
            name=t.string("name"),
            top=t.string("top"),
            config_hash=t.string("config_hash"),
            config=config,
            device=t.string("device"),
            clock_mhz=t.number("clock_mhz"),
            layers=t.items("layers", Layer.from_json),
            delays=t.items("delays", _integer),
            lanes=t.items("lanes", _integer),
            formats=t.items("formats", StageFormats.from_json),
            multipliers=MultiplierCounts.from_json(t.value("multipliers")),
            dsp_blocks=t.integer("dsp_blocks"),
            dsp_available=t.integer("dsp_available"),
            memory_bits=t.integer("memory_bits"),
            predicted_cycles_per_sample=t.integer("predicted_cycles_per_sample"),
            cycle_overhead=CycleOverhead.from_json(t.value("cycle_overhead")),
            predicted_multiplier_utilization=t.number("predicted_multiplier_utilization"),
            useful_multiplies=t.integer("useful_multiplies"),
            memory_model=_memory_model_from_json(t.value("memory_model")),
            ports=Ports.from_json(t.value("ports")),
            streams=Streams.from_json(t.value("streams")),
            counters=t.items("counters", _string),
            files=GeneratedFiles.from_json(files.raw) if files.raw else None,
        )
        t.close()
        return manifest

    def write(self, path: Path) -> None:
        """Write the manifest to ``path`` as JSON (atomically, :func:`pbhw.core.io.write_json`).

        Parameters
        ----------
        path
            Usually ``<output directory>/manifest.json``.
        """
        write_json(Path(path), self.to_json())

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read and check a ``manifest.json``.

        Parameters
        ----------
        path
            The file, or a ``pbhw generate`` output directory holding ``manifest.json``.

        Returns
        -------
        Manifest

        Raises
        ------
        ManifestError
            If the file is missing, not JSON, or not a manifest of :data:`MANIFEST_VERSION`.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        text = read_text(path, "manifest file", ManifestError)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"manifest file '{path}' is not valid JSON: {e}") from None
        try:
            return cls.from_json(raw)
        except ManifestError as e:
            raise ManifestError(f"manifest file '{path}': {e}") from None
