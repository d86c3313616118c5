"""``pbhw generate``: Verilog, SDC, memory init files and ``manifest.json`` for a config.

The output directory is written atomically: everything goes to a temporary sibling directory
that is renamed into place only when complete, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import data

from pbhw.core.config import ROLES, Config, ConfigError, WeightPrediction
from pbhw.core.devices import clock_sdc, config_device, dsp_count
from pbhw.core.figures import memory_model, useful_multiplies
from pbhw.core.manifest import (
    MANIFEST_VERSION,
    CycleOverhead,
    DebugPort,
    FormatSpec,
    GeneratedFiles,
    Layer,
    Manifest,
    MultiplierCounts,
    MultiplierShape,
    Payload,
    PayloadField,
    Ports,
    RowBits,
    StageFormats,
    StageStreams,
    Streams,
)
from rtl_gen.design import Design, build_design
from rtl_gen.memories import DebugMemory
from rtl_gen.requantizer import shape_of
from rtl_gen.resources import models_for
from rtl_gen.stage import COUNTER_BITS, OVERHEAD, Stage
from rtl_gen.top import DEBUG_LATENCY

__all__ = [
    "MANIFEST_VERSION",
    "Generated",
    "config_hash",
    "generate",
    "manifest_of",
    "payload_of",
    "streams_of",
    "top_name",
    "verilog_text",
]


def config_hash(config: Config) -> str:
    """SHA-256 of the config's canonical JSON (every key, defaults included)."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def top_name(config: Config) -> str:
    """The config's name as a Verilog module name (other characters become ``_``)."""
    name = re.sub(r"\W", "_", config.name, flags=re.ASCII)
    return name if re.match(r"[A-Za-z_]", name) else f"pbhw_{name}"


def verilog_text(design: Design, name: str | None = None) -> str:
    return verilog.convert(design.network, name=name or top_name(design.config), emit_src=False)


def _format_spec(role) -> FormatSpec:
    f = role.format
    return FormatSpec(
        width=f.width,
        frac=f.frac,
        signed=f.signed,
        rounding=role.rounding,
        overflow=role.overflow,
    )


def _multiplier_shapes(design: Design, stage: Stage) -> list[dict[str, int]]:
    """Every product of one stage: operand widths and how many (one per lane each)."""
    return [
        {"product": n, "a": a, "b": b, "count": stage.lanes} for n, a, b in stage.datapath.pieces()
    ]


def payload_of(layout: data.Layout) -> Payload:
    """The manifest's description of an Amaranth payload layout: a :class:`StructLayout`'s
    fields in bit order (an :class:`ArrayLayout` member as an array field), or one array field
    ``row`` for an :class:`ArrayLayout`."""
    members = [("row", 0, layout)] if isinstance(layout, data.ArrayLayout) else []
    if isinstance(layout, data.StructLayout):
        members = [(name, field.offset, field.shape) for name, field in layout]
    fields = []
    for name, lsb, shape in sorted(members, key=lambda member: member[1]):
        if isinstance(shape, data.ArrayLayout):
            element = Shape.cast(shape.elem_shape)
            fields.append(
                PayloadField(
                    name=name,
                    lsb=lsb,
                    width=Shape.cast(shape).width,
                    signed=element.signed,
                    count=shape.length,
                    element_width=element.width,
                )
            )
        elif isinstance(shape, data.Layout):
            raise TypeError(f"payload field {name!r}: nested layout {shape!r} is not described")
        else:
            cast = Shape.cast(shape)
            fields.append(PayloadField(name=name, lsb=lsb, width=cast.width, signed=cast.signed))
    return Payload(width=Shape.cast(layout).width, fields=tuple(fields))


def streams_of(design: Design) -> Streams:
    """The bit layouts of the design's stream payloads and debug rows (see :class:`Streams`),
    read from the layouts of the built network's and stages' ports."""
    net = design.network
    rows = []
    for stage in net.stages:
        formats = stage.plan.formats
        # packed as RowMemories packs them: lane p's code at bits p * width (rtl_gen.memories)
        memories = {
            DebugMemory.W: formats.weight.format,
            DebugMemory.V: formats.velocity.format,
        }
        if stage.has_w_prev:
            memories[DebugMemory.W_PREV] = formats.weight.format
        rows.append(
            {
                memory.name.lower(): payload_of(data.ArrayLayout(shape_of(fmt), stage.lanes))
                for memory, fmt in memories.items()
            }
        )
    debug_ports = ("dbg_stage", "dbg_mem", "dbg_addr", "dbg_data")
    return Streams(
        samples=payload_of(net.samples.payload.shape()),
        results=payload_of(net.results.payload.shape()),
        stages=tuple(
            StageStreams(
                stage=stage.plan.index,
                forward_out=payload_of(stage.fwd_o.payload.shape()),
                error_in=payload_of(stage.err_i.payload.shape()),
            )
            for stage in net.stages
        ),
        debug=DebugPort(
            widths={name: Shape.cast(getattr(net, name).shape()).width for name in debug_ports},
            memories={m.name.lower(): m.value for m in DebugMemory},
            latency=DEBUG_LATENCY,
            rows=tuple(rows),
        ),
    )


def manifest_of(design: Design, *, top: str, files: GeneratedFiles | None = None) -> Manifest:
    """The manifest: everything a tool needs to know about the generated design.

    Parameters
    ----------
    design
        The built design (:func:`rtl_gen.design.build_design`).
    top
        The Verilog module name of the design.
    files
        The files written beside the manifest; None for a design kept in memory.

    Returns
    -------
    Manifest
    """

    cfg, net = design.config, design.network
    device = config_device(cfg)
    layers = []
    for stage in net.stages:
        st = stage.plan
        shapes = [MultiplierShape(**s) for s in _multiplier_shapes(design, stage)]
        multipliers = stage.multipliers
        layers.append(
            Layer(
                stage=st.index,
                n_in=st.n_in,
                n_out=st.n_out,
                bias=cfg.network.bias,
                relu=st.relu,
                weights=stage.weights,
                lanes=stage.lanes,
                rows=stage.rows,
                cycles_per_step=stage.cycles_per_step,
                pipeline=stage.pipeline,
                delay=st.delay,
                horizon=st.horizon,
                prediction=(
                    cfg.optimizer.weight_prediction if st.horizon else WeightPrediction.NONE
                ),
                spike_compensation=cfg.optimizer.spike_compensation,
                coefficient_shift=st.formats.coefficient_shift,
                coefficients={n: c.code for n, c in st.coefficients.items()},
                formats=StageFormats(
                    **{role: _format_spec(st.formats.role(role)) for role in ROLES}
                ),
                multipliers=MultiplierCounts(
                    data=multipliers["data"], coefficient=multipliers["coefficient"]
                ),
                multiplier_shapes=tuple(shapes),
                dsp_blocks=sum(s.count * dsp_count(s.a, s.b, device) for s in shapes),
                memory_bits=stage.memory_bits,
                memory_rows=stage.rows,
                row_bits=RowBits(
                    weight=stage.lanes * stage.weight_bits,
                    velocity=stage.lanes * stage.velocity_bits,
                ),
                delay_memories=stage.delay_memories,
            )
        )
    data_mults = sum(layer.multipliers.data for layer in layers)
    cycles = net.predicted_cycles_per_sample
    useful = useful_multiplies(design.plan)
    return Manifest(
        name=cfg.name,
        top=top,
        config_hash=config_hash(cfg),
        config=cfg,
        device=cfg.hardware.device,
        clock_mhz=cfg.hardware.clock_mhz,
        layers=tuple(layers),
        delays=tuple(st.delay for st in design.plan.stages),
        lanes=tuple(design.lanes),
        formats=tuple(layer.formats for layer in layers),
        multipliers=MultiplierCounts(
            data=data_mults,
            coefficient=sum(layer.multipliers.coefficient for layer in layers),
        ),
        dsp_blocks=sum(layer.dsp_blocks for layer in layers)
        + sum(dsp_count(a, b, device) for a, b in net.loss_unit.multiplier_pieces),
        dsp_available=device.resources["dsp"],
        memory_bits=sum(sum(layer.memory_bits.values()) for layer in layers),
        predicted_cycles_per_sample=cycles,
        cycle_overhead=CycleOverhead(
            stage=OVERHEAD,
            drain=tuple(stage.drain for stage in net.stages),
            loss_unit=net.loss_unit.latency,
            rule=(
                "a stage's step takes rows + stage overhead + its drain (the lane pipeline's "
                "depth, layers[].pipeline) cycles, rows = ceil(N_out * (N_in + bias) / lanes); "
                "the last stage's step also waits for the loss unit; the slowest stage sets "
                "cycles per sample"
            ),
        ),
        predicted_multiplier_utilization=useful / (data_mults * cycles),
        useful_multiplies=useful,
        memory_model=memory_model(design.plan),
        ports=Ports(
            samples="stream in: {bubble, label, x[N_in]} (send 2L-1 bubbles to drain)",
            results="stream out: {label, prediction, y[classes], delta[classes]}",
            debug=(
                f"dbg_stage, dbg_mem ({', '.join(f'{m.value} {m.name}' for m in DebugMemory)}), "
                f"dbg_addr -> dbg_data ({DEBUG_LATENCY} cycles)"
            ),
            saturation=f"{COUNTER_BITS}-bit counters in the order of 'counters'",
        ),
        streams=streams_of(design),
        counters=tuple(net.counter_names()),
        files=files,
    )


def _hex_lines(rows: list[int], bits: int) -> str:
    digits = max(1, math.ceil(bits / 4))
    return "".join(f"{r:0{digits}x}\n" for r in rows)


@dataclass(frozen=True)
class Generated:
    """A design written by :func:`generate`: where, the built design, its manifest and the
    Verilog text (also in ``directory / manifest.files.verilog``), for tools that take the
    design without elaborating it again."""

    directory: Path
    design: Design
    manifest: Manifest
    verilog: str

    def check_config(self, config: Config) -> None:
        """Refuse to stand in for another config's design.

        Parameters
        ----------
        config
            The config a tool was given together with this design.

        Raises
        ------
        ValueError
            If the design was generated from a different config (another config hash).
        """
        if config_hash(config) != self.manifest.config_hash:
            raise ValueError(
                f"generated must be the design of config '{config.name}' (config hash "
                f"{config_hash(config)[:12]}), not of '{self.manifest.name}' "
                f"({self.manifest.config_hash[:12]})"
            )


def generate(config: Config, out_dir: Path, *, force: bool = False) -> Generated:
    """Write ``<name>.v``, ``<name>.sdc``, one ``$readmemh`` init file per memory, a
    simulation model ``sim_<primitive>.v`` per vendor primitive the Verilog instantiates (for
    simulators only: synthesis uses the vendor's) and ``manifest.json`` to ``out_dir``
    (replaced as a whole; refused if it exists and is not a previous output, unless
    ``force``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force and not (out_dir / "manifest.json").exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise ConfigError(
                f"output directory '{out_dir}' exists and is not a pbhw generate output; "
                "choose another directory"
            )
    design = build_design(config)
    name = top_name(config)
    text = verilog_text(design, name)
    verilog_file, sdc_file = f"{name}.v", f"{name}.sdc"
    contents: dict[str, str] = {
        verilog_file: text,
        sdc_file: clock_sdc(config.hardware.clock_mhz, name),
    }
    models, init = [], {}
    for model in models_for(text):  # instantiated primitives: a simulation needs their models
        fname = f"sim_{model.name}"
        contents[fname] = model.read_text()
        models.append(fname)
    for stage in design.network.stages:
        for memory, rows in stage.memory_init().items():
            bits = stage.lanes * (stage.velocity_bits if memory == "v" else stage.weight_bits)
            fname = f"{name}_stage{stage.plan.index}_{memory}.hex"
            contents[fname] = _hex_lines(rows, bits)
            init[f"stage{stage.plan.index}.{memory}"] = fname
    files = GeneratedFiles(
        verilog=verilog_file, sdc=sdc_file, init=init, simulation_models=tuple(models)
    )
    manifest = manifest_of(design, top=name, files=files)
    # as Manifest.write writes it, but with the other files' permissions
    contents["manifest.json"] = json.dumps(manifest.to_json(), indent=2, allow_nan=False) + "\n"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        for fname, data in contents.items():
            (tmp / fname).write_text(data)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Generated(out_dir, design, manifest, text)
