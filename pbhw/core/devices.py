"""FPGA device files: resources, synthesis command and place-and-route options.

A device is one TOML file in ``constraints/`` (see ``constraints/README.md`` for the schema);
:func:`load_device` reads and validates it into a frozen :class:`Device`. Any problem raises
:class:`pbhw.core.config.ConfigError` naming the file, the key and what is allowed.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pbhw.core.config import Config, ConfigError

#: Hard multipliers the generator can instantiate itself (a device file's
#: ``[multiplier] primitive``); each has a simulation model in ``rtl_gen/models``.
PRIMITIVES = ("MULT18X18D",)

__all__ = [
    "PRIMITIVES",
    "dsp_count",
    "memory_blocks",
    "stage_blocks",
    "CONSTRAINTS_DIR",
    "RESOURCES",
    "Device",
    "clock_sdc",
    "config_device",
    "count_cells",
    "known_devices",
    "load_device",
]


def _constraints_dir() -> Path:
    try:  # an installed package carries constraints/ as its package data pbhw.constraints
        return Path(str(resources.files("pbhw.constraints")))
    except ModuleNotFoundError:  # a checkout: the folder itself
        return Path(__file__).resolve().parents[2] / "constraints"


#: Where the shipped device files live (``constraints/``).
CONSTRAINTS_DIR = _constraints_dir()

#: Resources every device states, in report order. ``bram_bits`` is block-RAM capacity in bits.
RESOURCES = ("lut", "ff", "dsp", "bram_bits", "io")

_SYNTH_COMMANDS = ("synth_ecp5", "synth_ice40", "synth_xilinx")
_PNR_TOOLS = ("nextpnr-ecp5", "nextpnr-ice40")


@dataclass(frozen=True)
class Device:
    """One FPGA part as pbhw's estimators see it."""

    name: str
    family: str
    part: str
    #: inputs of the device's LUT (4 on ECP5/iCE40, 6 on 7-series)
    lut_inputs: int
    #: default clock target, MHz
    clock_mhz: float
    #: yosys synthesis command and its extra arguments, e.g. ``("synth_ecp5", ())``
    synth_command: str
    synth_args: tuple[str, ...]
    #: place-and-route tool (``"nextpnr-ecp5"``), or None: counts only, no Fmax
    pnr_tool: str | None
    pnr_args: tuple[str, ...]
    #: extra arguments for an I/O-bound top level, or None if the tool cannot run out of context
    pnr_out_of_context_args: tuple[str, ...] | None
    #: package pin for the clock input (ECP5: a PCLK pin, written to an LPF), or None
    pnr_clock_pin: str | None
    #: available resources, keys :data:`RESOURCES`
    resources: Mapping[str, int]
    #: hard multiplier operand widths, e.g. (18, 18) for MULT18X18D, (25, 18) for DSP48E1
    multiplier_widths: tuple[int, int]
    #: how yosys's ``mul2dsp`` tiles wider products: slice width of a split A operand, and the
    #: smallest operand / product widths it maps to a hard multiplier at all
    multiplier_partial_width: int
    multiplier_min_width: int
    multiplier_min_product_width: int
    #: the hard multiplier the generator instantiates itself, with its input and output
    #: registers (one of ``pbhw.core.devices.PRIMITIVES``), or None to leave products to synthesis
    multiplier_primitive: str | None
    #: block RAM granularity in bits and its (depth, width) aspect ratios
    block_bits: int
    block_shapes: tuple[tuple[int, int], ...]
    #: resource -> {yosys cell pattern: units}, to count a synthesized netlist
    yosys_cells: Mapping[str, Mapping[str, int]]
    #: resource -> {nextpnr bel type: units}, to read a place-and-route report
    pnr_cells: Mapping[str, Mapping[str, int]]
    path: Path

    @property
    def synth_script_command(self) -> str:
        return " ".join((self.synth_command, *self.synth_args))


def known_devices(directory: Path = CONSTRAINTS_DIR) -> list[str]:
    """Names of the device files in ``directory``, sorted."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_device(name: str, directory: Path = CONSTRAINTS_DIR) -> Device:
    """Load and validate the device called ``name`` (a file ``constraints/NAME.toml``).

    A file is read and validated once per process (and again only when it changes): generate,
    lanes, manifest and estimate all ask for the device of one build."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"device must be a non-empty string, not {name!r}")
    path = directory / f"{name}.toml"
    if "/" in name or "\\" in name or not path.is_file():
        known = ", ".join(known_devices(directory)) or "(none)"
        raise ConfigError(f"unknown device {name!r}; known: {known}")
    stat = path.stat()
    return _load(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _load(path: Path, mtime_ns: int, size: int) -> Device:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return _parse(data, path)


def config_device(config: Config) -> Device:
    """The device a config names (``hardware.device``); an unknown or broken device file is a
    ConfigError that names the config key."""
    try:
        return load_device(config.hardware.device)
    except ConfigError as e:
        raise ConfigError(f"config key 'hardware.device': {e}") from None


def count_cells(cells: Mapping[str, int], table: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Resource counts of ``cells`` (cell type -> number) under ``table`` (resource -> patterns).

    Each cell type counts towards a resource through the first pattern that matches it
    (``fnmatch`` syntax); resources absent from ``table`` are absent from the result.
    """
    counts = {}
    for resource, patterns in table.items():
        total = 0
        for cell, number in cells.items():
            for pattern, units in patterns.items():
                if fnmatch.fnmatchcase(cell, pattern):
                    total += number * units
                    break
        counts[resource] = total
    return counts


class _Reader:
    def __init__(self, data: Mapping[str, Any], path: Path) -> None:
        self.data = data
        self.path = path

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path.name}: {key} {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is not ...:
                    return default
                raise self.fail(key, "is missing")
            node = node[part]
        if not isinstance(node, kind) or isinstance(node, bool) and kind is not bool:
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.fail(key, f"must be {names}, not {node!r}")
        return node

    def positive_int(self, key: str) -> int:
        value = self.get(key, int)
        if value <= 0:
            raise self.fail(key, f"must be a positive integer, not {value!r}")
        return value

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...] | None:
        value = self.get(key, list, default)
        if value is None:
            return None
        if not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"must be a list of strings, not {value!r}")
        return tuple(value)

    def cell_table(self, key: str) -> Mapping[str, Mapping[str, int]]:
        table = self.get(key, dict, {})
        result = {}
        for resource, patterns in table.items():
            if resource not in RESOURCES:
                raise self.fail(f"{key}.{resource}", f"is not a resource; allowed: {RESOURCES}")
            if not isinstance(patterns, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in patterns.values()
            ):
                raise self.fail(f"{key}.{resource}", "must map cell names to positive integers")
            result[resource] = MappingProxyType(dict(patterns))
        return MappingProxyType(result)


def _parse(data: Mapping[str, Any], path: Path) -> Device:
    r = _Reader(data, path)
    name = r.get("name", str)
    if name != path.stem:
        raise r.fail("name", f"must match the file name {path.stem!r}, not {name!r}")
    synth_command = r.get("synth.command", str)
    if synth_command not in _SYNTH_COMMANDS:
        raise r.fail("synth.command", f"must be one of {_SYNTH_COMMANDS}, not {synth_command!r}")
    pnr_tool = r.get("pnr.tool", str, None)
    if pnr_tool is not None and pnr_tool not in _PNR_TOOLS:
        raise r.fail("pnr.tool", f"must be one of {_PNR_TOOLS}, not {pnr_tool!r}")
    resources = {key: r.positive_int(f"resources.{key}") for key in RESOURCES}
    extra = set(r.get("resources", dict)) - set(RESOURCES)
    if extra:
        raise r.fail("resources", f"has unknown keys {sorted(extra)}; allowed: {RESOURCES}")
    widths = r.get("multiplier.widths", list)
    if len(widths) != 2 or not all(isinstance(w, int) and w > 1 for w in widths):
        raise r.fail("multiplier.widths", f"must be two integers > 1, not {widths!r}")
    primitive = r.get("multiplier.primitive", str, None)
    if primitive is not None and primitive not in PRIMITIVES:
        raise r.fail("multiplier.primitive", f"must be one of {PRIMITIVES}, not {primitive!r}")
    if primitive is not None and max(widths) > 18:
        raise r.fail("multiplier.widths", f"must be at most 18 bits for {primitive}")
    shapes = r.get("bram.shapes", list)
    if not shapes or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s)
        for s in shapes
    ):
        raise r.fail("bram.shapes", f"must be a list of [depth, width] pairs, not {shapes!r}")
    clock_pin = r.get("pnr.clock_pin", str, None) if pnr_tool else None
    if clock_pin is not None and pnr_tool != "nextpnr-ecp5":
        raise r.fail("pnr.clock_pin", f"is only supported for nextpnr-ecp5, not {pnr_tool}")
    if clock_pin is not None and not clock_pin.replace("_", "").isalnum():
        raise r.fail("pnr.clock_pin", f"must be a package pin name such as 'G2', not {clock_pin!r}")
    clock = r.get("clock_mhz", (int, float))
    if clock <= 0:
        raise r.fail("clock_mhz", f"must be positive, not {clock!r}")
    return Device(
        name=name,
        family=r.get("family", str),
        part=r.get("part", str),
        lut_inputs=r.positive_int("lut_inputs"),
        clock_mhz=float(clock),
        synth_command=synth_command,
        synth_args=r.strings("synth.args", []),
        pnr_tool=pnr_tool,
        pnr_args=r.strings("pnr.args", []) if pnr_tool else (),
        pnr_out_of_context_args=r.strings("pnr.out_of_context_args", None) if pnr_tool else None,
        pnr_clock_pin=clock_pin,
        resources=MappingProxyType(resources),
        multiplier_widths=(widths[0], widths[1]),
        multiplier_partial_width=r.get("multiplier.partial_width", int, widths[0]),
        multiplier_min_width=r.get("multiplier.min_width", int, 2),
        multiplier_min_product_width=r.get("multiplier.min_product_width", int, 0),
        multiplier_primitive=primitive,
        block_bits=r.positive_int("bram.block_bits"),
        block_shapes=tuple((d, w) for d, w in shapes),
        yosys_cells=r.cell_table("yosys_cells"),
        pnr_cells=r.cell_table("nextpnr_cells"),
        path=path,
    )


def clock_sdc(clock_mhz: float, top: str, clock: str = "clk") -> str:
    """The SDC clock constraint of ``top`` at ``clock_mhz`` on its port ``clock``: the template
    ``constraints/clock.sdc`` filled in (the period in ns with three decimals)."""
    if not clock_mhz > 0:
        raise ConfigError(f"clock_mhz must be positive, not {clock_mhz!r}")
    lines = (CONSTRAINTS_DIR / "clock.sdc").read_text().splitlines()
    body = "\n".join(line for line in lines if not line.startswith("##"))
    period = f"{1000.0 / clock_mhz:.3f}"
    return body.format(top=top, clock=clock, clock_mhz=f"{clock_mhz:g}", period_ns=period) + "\n"


def dsp_count(width_a: int, width_b: int, device: Device) -> int:
    """Hard multipliers for one ``width_a`` x ``width_b`` product, as Yosys maps it.

    Mirrors Yosys's ``mul2dsp``: the wider operand goes to port A; an operand wider than its port
    is cut into a low slice (``multiplier_partial_width`` bits on A, the port width on B) and the
    rest, recursively; a slice narrower than ``multiplier_min_width`` is left to logic, and so is a
    product narrower than ``multiplier_min_product_width``. Checked against yosys 0.70 for
    ECP5 (16x16, 20x16, 24x24, 35x18, 36x18 -> 1, 2, 4, 2, 2), iCE40 (17x16 -> 1, 24x16 -> 2) and
    7-series (25x18, 26x18, 30x20 -> 1, 2, 4).
    """
    a, b = max(width_a, width_b), min(width_a, width_b)
    if a + b < device.multiplier_min_product_width:
        return 0
    port_a, port_b = device.multiplier_widths

    def slices(width: int, port: int, partial: int) -> int:
        if width < device.multiplier_min_width:
            return 0
        if width <= port:
            return 1
        return 1 + slices(width - partial, port, partial)

    return slices(a, port_a, device.multiplier_partial_width) * slices(b, port_b, port_b)


def memory_blocks(width: int, depth: int, device: Device) -> int:
    """Block RAMs for a ``width``-bit x ``depth``-word memory: best aspect ratio of the device."""
    if width <= 0 or depth <= 0:
        return 0
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in device.block_shapes)


def stage_blocks(
    memory_bits: Mapping[str, int],
    *,
    lanes: int,
    weight_bits: int,
    velocity_bits: int,
    delay_memories: Iterable,
    device: Device,
) -> int:
    """Block RAMs of one stage on ``device``. Its weight, previous-weight and velocity memories
    (``memory_bits``: name -> bits) read a word of ``lanes`` elements per cycle, at the
    device's best aspect ratio for that word; other memories are rounded up to whole blocks;
    each delay memory (:class:`pbhw.core.manifest.DelayMemory`) takes ``count`` blocks of
    ``width`` x ``depth``."""
    word = {"weight": weight_bits, "w_prev": weight_bits, "velocity": velocity_bits}
    blocks = 0
    for memory, bits in memory_bits.items():
        if bits <= 0:
            continue
        if memory in word:
            width = lanes * word[memory]
            blocks += memory_blocks(width, math.ceil(bits / width), device)
        else:
            blocks += math.ceil(bits / device.block_bits)
    for memory in delay_memories:
        blocks += memory.count * memory_blocks(memory.width, memory.depth, device)
    return blocks
