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
from typing import Any

from amaranth.back import verilog

from pbhw.core.config import Config, ConfigError
from pbhw.core.devices import clock_sdc
from rtl_gen.design import Design, build_design
from rtl_gen.resources import models_for
from rtl_gen.stage import COUNTER_BITS, OVERHEAD, Stage

__all__ = ["Generated", "config_hash", "generate", "manifest_of", "top_name", "verilog_text"]

#: Version of the manifest's layout.
MANIFEST_VERSION = 2


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


def _format_json(role) -> dict[str, Any]:
    f = role.format
    return {
        "width": f.width,
        "frac": f.frac,
        "signed": f.signed,
        "rounding": role.rounding.value,
        "overflow": role.overflow.value,
    }


def _multiplier_shapes(design: Design, stage: Stage) -> list[dict[str, int]]:
    """Every product of one stage: operand widths and how many (one per lane each)."""
    return [
        {"product": n, "a": a, "b": b, "count": stage.lanes} for n, a, b in stage.datapath.pieces()
    ]


def manifest_of(design: Design, *, top: str, files: dict[str, str]) -> dict[str, Any]:
    """The manifest: everything a tool needs to know about the generated design."""
    from pbhw.core.devices import dsp_count, load_device

    cfg, net = design.config, design.network
    device = load_device(cfg.hardware.device)
    layers = []
    for stage in net.stages:
        st = stage.plan
        shapes = _multiplier_shapes(design, stage)
        layers.append(
            {
                "stage": st.index,
                "n_in": st.n_in,
                "n_out": st.n_out,
                "bias": cfg.network.bias,
                "relu": st.relu,
                "weights": stage.weights,
                "lanes": stage.lanes,
                "rows": stage.rows,
                "cycles_per_step": stage.cycles_per_step,
                "pipeline": stage.pipeline,
                "delay": st.delay,
                "horizon": st.horizon,
                "prediction": cfg.optimizer.weight_prediction.value if st.horizon else "none",
                "spike_compensation": cfg.optimizer.spike_compensation,
                "coefficient_shift": st.formats.coefficient_shift,
                "coefficients": {n: c.code for n, c in st.coefficients.items()},
                "formats": {
                    role: _format_json(st.formats.role(role))
                    for role in (
                        "activation",
                        "weight",
                        "error",
                        "gradient",
                        "velocity",
                        "coefficient",
                    )
                },
                "multipliers": stage.multipliers,
                "multiplier_shapes": shapes,
                "dsp_blocks": sum(s["count"] * dsp_count(s["a"], s["b"], device) for s in shapes),
                "memory_bits": stage.memory_bits,
                "memory_rows": stage.rows,
                "row_bits": {
                    "weight": stage.lanes * stage.weight_bits,
                    "velocity": stage.lanes * stage.velocity_bits,
                },
            }
        )
    data_mults = sum(layer["multipliers"]["data"] for layer in layers)
    cycles = net.predicted_cycles_per_sample
    useful = sum((3 if st.index > 1 else 2) * st.n_in * st.n_out for st in design.plan.stages)
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": cfg.name,
        "top": top,
        "config_hash": config_hash(cfg),
        "config": cfg.to_dict(),
        "device": cfg.hardware.device,
        "clock_mhz": cfg.hardware.clock_mhz,
        "layers": layers,
        "delays": [st.delay for st in design.plan.stages],
        "lanes": list(design.lanes),
        "formats": [layer["formats"] for layer in layers],
        "multipliers": {
            "data": data_mults,
            "coefficient": sum(layer["multipliers"]["coefficient"] for layer in layers),
        },
        "dsp_blocks": sum(layer["dsp_blocks"] for layer in layers),
        "dsp_available": device.resources["dsp"],
        "memory_bits": sum(sum(layer["memory_bits"].values()) for layer in layers),
        "predicted_cycles_per_sample": cycles,
        "cycle_overhead": {
            "stage": OVERHEAD,
            "drain": [stage.drain for stage in net.stages],
            "loss_unit": net.loss_unit.latency,
            "rule": (
                "a stage's step takes rows + stage overhead + its drain (the lane pipeline's "
                "depth, layers[].pipeline) cycles, rows = ceil(N_out * (N_in + bias) / lanes); "
                "the last stage's step also waits for the loss unit; the slowest stage sets "
                "cycles per sample"
            ),
        },
        "predicted_multiplier_utilization": useful / (data_mults * cycles),
        "ports": {
            "samples": "stream in: {bubble, label, x[N_in]} (send 2L-1 bubbles to drain)",
            "results": "stream out: {label, prediction, y[classes], delta[classes]}",
            "debug": "dbg_stage, dbg_mem (0 W, 1 V, 2 w_prev), dbg_addr -> dbg_data (3 cycles)",
            "saturation": f"{COUNTER_BITS}-bit counters in the order of 'counters'",
        },
        "counters": net.counter_names(),
        "files": files,
    }


def _hex_lines(rows: list[int], bits: int) -> str:
    digits = max(1, math.ceil(bits / 4))
    return "".join(f"{r:0{digits}x}\n" for r in rows)


@dataclass(frozen=True)
class Generated:
    directory: Path
    design: Design
    manifest: dict[str, Any]


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
    files = {"verilog": f"{name}.v", "sdc": f"{name}.sdc", "init": {}, "simulation_models": []}
    contents: dict[str, str] = {
        files["verilog"]: text,
        files["sdc"]: clock_sdc(config.hardware.clock_mhz, name),
    }
    for model in models_for(text):  # instantiated primitives: a simulation needs their models
        fname = f"sim_{model.name}"
        contents[fname] = model.read_text()
        files["simulation_models"].append(fname)
    for stage in design.network.stages:
        for memory, rows in stage.memory_init().items():
            bits = stage.lanes * (stage.velocity_bits if memory == "v" else stage.weight_bits)
            fname = f"{name}_stage{stage.plan.index}_{memory}.hex"
            contents[fname] = _hex_lines(rows, bits)
            files["init"][f"stage{stage.plan.index}.{memory}"] = fname
    manifest = manifest_of(design, top=name, files=files)
    contents["manifest.json"] = json.dumps(manifest, indent=2) + "\n"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        for fname, text in contents.items():
            (tmp / fname).write_text(text)
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
    return Generated(out_dir, design, manifest)
