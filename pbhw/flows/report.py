"""Sweep reports: the Pareto front of accuracy against throughput per resource, its plot and a
Markdown page; and the flow's report.

The rows are those of :func:`pbhw.flows.sweep.result_rows`: a ``grid`` table of the point's values,
``test_accuracy`` (``None`` if training diverged), ``weight_bits`` and, when estimated, ``lut``,
``dsp``, ``fmax_mhz``, ``fits``, ``throughput`` (samples/s; ``throughput_estimated`` when it is at
the target clock because no routed Fmax exists), ``throughput_per_lut``, ``throughput_per_dsp``
and the rest. With throughput, the front keeps the points no other point beats in accuracy,
samples/s per DSP block and samples/s per LUT (a design with no DSP blocks: per LUT only); a
point that does not fit the device is never on it. Without an estimate the front is accuracy
against the weight memory in bits.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pbhw.core.figures import figures_of_merit
from pbhw.core.io import write_atomic
from pbhw.core.manifest import Manifest
from pbhw.tools.estimate import critical_path_text

__all__ = [
    "AXES",
    "figures_rows",
    "front_axes",
    "memory_table",
    "pareto_front",
    "pareto_keys",
    "plot_pareto",
    "point_label",
    "render_flow_report",
    "render_markdown",
]

Row = Mapping[str, Any]

#: The axes a front can be drawn on: their label and whether more is better.
AXES = {
    "throughput_per_dsp": ("samples/s per DSP block", True),
    "throughput_per_lut": ("samples/s per LUT", True),
    "weight_bits": ("weight memory (bits)", False),
}


def pareto_front(points: Sequence[tuple[float | None, ...]]) -> list[int]:
    """Indices of the points ``(cost, ..., accuracy)`` no other point dominates (every cost no
    higher and accuracy no lower, one of them strictly), sorted by the first cost. Points with
    a ``None`` are out."""
    valid = [(p, i) for i, p in enumerate(points) if p and all(v is not None for v in p)]

    def better_or_equal(q, p) -> bool:
        return all(a <= b for a, b in zip(q[:-1], p[:-1], strict=True)) and q[-1] >= p[-1]

    front = []
    for p, i in valid:
        if not any(better_or_equal(q, p) and q != p for q, j in valid if j != i):
            front.append((p[0], -p[-1], i))
    return [i for _, _, i in sorted(front)]


def front_axes(rows: Sequence[Row]) -> list[str]:
    """The axes (keys of :data:`AXES`) of the Pareto front, the plotted one first: samples/s per
    DSP block and per LUT when throughput is known (per DSP only if every such point uses DSP
    blocks), else the weight memory."""
    timed = [row for row in rows if row.get("throughput")]
    if not timed:
        return ["weight_bits"]
    axes = [
        axis
        for axis, resource in (("throughput_per_dsp", "dsp"), ("throughput_per_lut", "lut"))
        if all(row.get(resource) for row in timed)
    ]
    return axes or ["weight_bits"]


def pareto_keys(rows: Sequence[Row], axes: Sequence[str]) -> list[str]:
    """The keys of the rows on the Pareto front of test accuracy against ``axes`` (a row that
    does not fit the device is never on it)."""

    def cost(row: Row, axis: str) -> float | None:
        value = row.get(axis)
        return None if value is None else (-value if AXES[axis][1] else value)

    points = [
        None
        if row.get("fits") is False
        else (*(cost(row, axis) for axis in axes), row.get("test_accuracy"))
        for row in rows
    ]
    front = pareto_front([p or () for p in points])
    return [rows[i]["key"] for i in front]


def point_label(row: Row, grid_keys: Sequence[str]) -> str:
    """The grid values of a row, each key shortened to its last parts that tell it apart from the
    other keys: ``width=8 rounding=floor``, ``weight.width=8 error.width=12``."""
    labels = []
    for key in grid_keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if not any(other != key and other.endswith("." + short) for other in grid_keys):
                break
        labels.append(f"{short}={row['grid'][key]}")
    return " ".join(labels)


def plot_pareto(
    path: Path, rows: Sequence[Row], axis: str, front: Sequence[str], grid_keys: Sequence[str]
) -> None:
    """Write a PNG of test accuracy against ``axis``, the Pareto front marked and connected
    (points that do not fit the device as crosses)."""
    # matplotlib takes 0.3 s to import: only the plots need it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plotted = [r for r in rows if r.get(axis) is not None and r.get("test_accuracy") is not None]
    on_front = {key: i for i, key in enumerate(front)}
    others = [r for r in plotted if r["key"] not in on_front and r.get("fits") is not False]
    unfit = [r for r in plotted if r.get("fits") is False]
    best = sorted((r for r in plotted if r["key"] in on_front), key=lambda r: on_front[r["key"]])
    ax.scatter(
        [r[axis] for r in others],
        [100 * r["test_accuracy"] for r in others],
        color="0.6",
        label="grid point",
        zorder=2,
    )
    if unfit:
        ax.scatter(
            [r[axis] for r in unfit],
            [100 * r["test_accuracy"] for r in unfit],
            marker="x",
            color="tab:gray",
            label="does not fit the device",
            zorder=2,
        )
    ax.plot(
        [r[axis] for r in best],
        [100 * r["test_accuracy"] for r in best],
        "o-",
        color="tab:red",
        label="Pareto front",
        zorder=3,
    )
    for r in best:
        ax.annotate(
            point_label(r, grid_keys),
            (r[axis], 100 * r["test_accuracy"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
        )
    missing = len(rows) - len(plotted)
    label = AXES[axis][0]
    title = f"test accuracy against {label}"
    if missing:
        title += f" ({missing} diverged point{'s' if missing > 1 else ''} not shown)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(label + (" (more is better)" if AXES[axis][1] else ""))
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    write_atomic(path, buf.getvalue())


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def render_markdown(
    spec: Mapping[str, Any], rows: Sequence[Row], axes: Sequence[str], front: Sequence[str]
) -> str:
    """The sweep report: command, every point sorted by accuracy, the Pareto front on ``axes``,
    the plot."""
    grid_keys = [a["key"] for a in spec["grid"]]
    estimated = bool(spec.get("estimate"))
    metric_columns = ["test acc %", "saturation", "weight bits"]
    if estimated:
        metric_columns += [
            "LUT",
            "FF",
            "DSP",
            "BRAM bits",
            "Fmax MHz",
            "samples/s",
            "samples/s per DSP",
            "samples/s per LUT",
            "fits",
        ]

    def cells(row: Row) -> list[str]:
        acc = row.get("test_accuracy")
        out = [_fmt(row["grid"][k]) for k in grid_keys]
        out += ["–" if acc is None else f"{100 * acc:.2f}"]
        out += [_fmt(row.get("saturation_total")), _fmt(row["weight_bits"])]
        if estimated:
            out += [_fmt(row.get(k)) for k in ("lut", "ff", "dsp", "bram_bits", "fmax_mhz")]
            mark = " (est.)" if row.get("throughput_estimated") else ""
            out += [
                _fmt(row.get(k)) + (mark if row.get(k) is not None else "")
                for k in ("throughput", "throughput_per_dsp", "throughput_per_lut")
            ]
            out.append("**no**" if row.get("fits") is False else _fmt(row.get("fits")))
        return out

    on_front = set(front)
    by_accuracy = sorted(
        rows, key=lambda r: (r.get("test_accuracy") is None, -(r.get("test_accuracy") or 0.0))
    )
    front_rows = sorted(
        (r for r in rows if r["key"] in on_front), key=lambda r: front.index(r["key"])
    )
    lines = [
        f"# Sweep: {spec.get('name', 'pbhw')}",
        "",
        "```",
        spec.get("command", "pbhw sweep"),
        "```",
        "",
        f"{len(rows)} points over {', '.join(f'`{k}`' for k in grid_keys) or 'no grid keys'}; "
        f"dataset {spec.get('dataset', '?')}, {spec.get('epochs', '?')} epoch(s).",
        "",
        "## Points by test accuracy",
        "",
        *_table(
            [*grid_keys, *metric_columns, "front"],
            [[*cells(r), "★" if r["key"] in on_front else ""] for r in by_accuracy],
        ),
        "",
        f"## Pareto front: test accuracy against {' and '.join(AXES[a][0] for a in axes)}",
        "",
        *_table([*grid_keys, *metric_columns], [cells(r) for r in front_rows]),
        "",
        "![Pareto front](pareto.png)",
        "",
    ]
    if any(r.get("throughput_estimated") for r in rows):
        lines += [
            "(est.): no routed Fmax; samples/s at the target clock `hardware.clock_mhz` over the "
            "predicted cycles per sample (the analytic estimate).",
            "",
        ]
    unfit = [r for r in rows if r.get("fits") is False]
    if unfit:
        lines += ["## Points that do not fit the device (never on the front)", ""]
        lines += [f"* {point_label(r, grid_keys)}" for r in unfit]
        lines.append("")
    diverged = [r for r in rows if r.get("diverged")]
    if diverged:  # the reason is kept in the rows (the CSV has only true/false)
        lines += ["## Diverged points", ""]
        lines += [f"* {point_label(r, grid_keys)}: {r['diverged']}" for r in diverged]
        lines.append("")
    return "\n".join(lines)


def _full_run_text(v: dict) -> str:
    """What the flow verified of the training run: all of it, or why only a prefix."""
    run = v["full_run"]
    if v.get("epochs"):
        if not v["bit_exact"]:
            return f"**not bit-exact** over {v['epochs']} epochs"
        return (
            f"the RTL, trained on all {v['samples']:,} samples ({v['epochs']} epochs), reaches "
            f"{100 * v['rtl_test_accuracy']:.2f} % test accuracy, bit-exact with the golden model"
        )
    if not run["chosen"] and run.get("predicted_seconds") is not None:
        return (
            f"not run: its simulation, predicted at {run['predicted_seconds']:.0f} s, is over the "
            f"{run['threshold_seconds']:.0f} s limit; checked on {v['samples']} samples"
        )
    return f"not asked for (`--verify-samples`); checked on {v['samples']} samples"


def render_flow_report(s: Mapping[str, Any]) -> str:
    """``report.md`` of ``pbhw flow``: an HLS-style report of the training accelerator.

    ``s`` is the flow's summary (as ``summary.json`` holds it; the manifest as its JSON)."""
    cfg, v, e = s["config"], s["verify"], s["estimate"]
    m = Manifest.from_json(s["manifest"])
    fixed, sgd = s["train_fixed"], s["train_sgd"]
    opt, layers = cfg["optimizer"], cfg["network"]["layers"]
    clock = m.clock_mhz
    cycles = m.predicted_cycles_per_sample
    fmax = e.get("fmax_mhz")
    lines = [
        f"# {cfg['name']}: PB training accelerator report",
        "",
        f"Network {' -> '.join(map(str, layers))} ({len(layers) - 1} pipeline stages), loss "
        f"`{cfg['network']['loss']}`, PB with spike compensation "
        f"{'on' if opt['spike_compensation'] else 'off'} and weight prediction "
        f"`{opt['weight_prediction']}`; device `{m.device}` at {clock:g} MHz."
        + (
            f" Initial weights from the PyTorch checkpoint `{cfg['train']['init_from']}`."
            if cfg.get("train", {}).get("init_from")
            else ""
        ),
        "",
        "## Summary",
        "",
    ]
    delta = 100 * (fixed["test_accuracy"] - sgd["test_accuracy"])
    rows = [
        (
            "test accuracy, hardware arithmetic (PB, fixed point)",
            f"{100 * fixed['test_accuracy']:.2f} %",
        ),
        (
            f"test accuracy, float SGD baseline (batch {opt['reference_batch']})",
            f"{100 * sgd['test_accuracy']:.2f} % (difference {delta:+.2f} points)",
        ),
        (
            "RTL vs golden model",
            ("**bit-exact**" if v["bit_exact"] else f"**MISMATCH**: {v['mismatch']}")
            + f" ({v['samples']} samples, {v['steps']} steps, {v['simulator']})",
        ),
        *(
            [("whole training run on the RTL", _full_run_text(v))]
            if v.get("full_run") is not None
            else []
        ),
        (
            "cycles per sample (predicted / measured)",
            f"{cycles} / {v['measured_cycles_per_sample']}",
        ),
        (
            "Fmax (place and route)",
            "n/a"
            if fmax is None
            else f"{fmax:.1f} MHz"
            + (
                " (post-placement estimate: routing stopped, see Resources)"
                if any("post-placement" in n for n in e.get("notes", []))
                else ""
            )
            + (
                " at nextpnr's own placement seed (it varies by several MHz between seeds: "
                "`--pnr-seed`)"
                if s.get("pnr_seed") is None
                else f" at nextpnr placement seed {s['pnr_seed']}"
            ),
        ),
        (
            "training throughput at Fmax",
            "n/a" if fmax is None else f"{fmax * 1e6 / cycles:,.0f} samples/s",
        ),
        (f"training throughput at {clock:g} MHz", f"{clock * 1e6 / cycles:,.0f} samples/s"),
        ("multiplier utilization (predicted)", f"{m.predicted_multiplier_utilization:.3f}"),
        ("fits the device", "yes" if e["fits"] else f"**no**: short of {e['overflow']}"),
    ]
    lines += _table(("", "value"), rows) + ["", "![training curves](training.png)", ""]

    lines += ["## Resources", ""]
    res = []
    for key, label in (("lut", "LUT"), ("ff", "FF"), ("dsp", "DSP"), ("bram_bits", "BRAM bits")):
        if f"{key}_used" in e:
            used, avail = e[f"{key}_used"], e[f"{key}_available"]
            res.append((label, f"{used:,}", f"{avail:,}", f"{100 * used / max(1, avail):.1f} %"))
    lines += _table(("resource", "used", "available", "share"), res)
    lines += [
        "",
        f"Method: {e['method']} ({e['seconds']:.0f} s of tool time"
        f"{', cached' if e.get('cached') else ''}).",
        *(
            [f"Critical path: {_critical_path_text(e['critical_path'])}."]
            if e.get("critical_path")
            else []
        ),
        *(f"Note: {n}." for n in e.get("notes", [])),
        "",
        "![resources](resources.png)",
        "",
    ]

    lines += ["## Pipeline stages", ""]
    stage_rows = []
    for layer in m.layers:
        stage_rows.append(
            (
                str(layer.stage),
                f"{layer.n_in}x{layer.n_out}",
                str(layer.delay),
                str(layer.lanes),
                str(layer.rows),
                str(layer.cycles_per_step),
                f"{layer.multipliers.data} + {layer.multipliers.coefficient}",
                str(layer.dsp_blocks),
                f"{sum(layer.memory_bits.values()):,}",
            )
        )
    lines += _table(
        (
            "stage",
            "shape",
            "delay D",
            "lanes P",
            "rows",
            "cycles/step",
            "multipliers (data + coeff.)",
            "DSP blocks",
            "memory bits",
        ),
        stage_rows,
    )
    over = m.cycle_overhead
    lines += [
        "",
        f"A step takes rows + {over.stage} cycles plus the drain of the stage's lane "
        f"pipeline ({', '.join(str(d) for d in over.drain)} cycles); the last stage "
        f"also waits {over.loss_unit} cycles for the loss unit. The slowest stage sets "
        f"{cycles} cycles per sample.",
        "",
    ]

    lines += ["## Number formats (stage 1)", ""]
    fmt_rows = [
        (
            role,
            f"{'s' if f.signed else 'u'}{f.width}.{f.frac}",
            f.rounding.value,
            f.overflow.value,
        )
        for role, f in m.formats[0].roles().items()
    ]
    lines += _table(("role", "format", "rounding", "overflow"), fmt_rows)
    sat = {k: n for k, n in fixed.get("saturation", {}).items() if n}
    lines += [
        "",
        "Saturation events during training: "
        + (", ".join(f"{k} {n:,}" for k, n in sorted(sat.items())) or "none")
        + ".",
        "",
    ]

    lines += ["## Figures of merit", ""]
    mac = s.get("reference_mac") or {}
    lines += _table(
        ("", "predicted cycles", "measured cycles"),
        figures_rows(m, fmax, mac.get("fmax_mhz"), v.get("measured_cycles_per_sample")),
    )
    lines += [
        "",
        f"Useful multiplies per sample: {m.useful_multiplies:,} (2 per weight in stage 1, "
        "forward and gradient; 3 elsewhere, with the backward product; bias columns not "
        f"counted). The DSP-bound limit is the device's {m.dsp_available} DSP blocks each doing "
        "one useful multiply per cycle at the Fmax of a lone registered 16x16 + 40-bit MAC on "
        "the device's hard multiplier"
        + (
            f", {mac['fmax_mhz']:.1f} MHz placed and routed in the same run"
            if mac.get("fmax_mhz")
            else " (not placed and routed in this run: n/a)"
        )
        + "; the efficiency is samples/s over that limit.",
        "",
    ]

    lines += [f"## Memory (bits): pipelined against batch-parallel at batch {_batch(m)}", ""]
    lines += memory_table(m)
    lines += [
        "",
        "Pipelined: weights, velocities, w_prev (weight-difference prediction) and the stash of "
        "the last D + 1 inputs with their ReLU masks. Batch-parallel (no pipeline, batch size "
        f"{_batch(m)} = `optimizer.reference_batch`): the same weights and velocities and every "
        "stage's input for the whole batch. Words only; memory rows padded to the lanes are in "
        "the Pipeline stages table.",
        "",
    ]

    t = s["timings"]
    lines += ["## Flow", "", _fmt_timings(t), ""]
    return "\n".join(lines)


def _batch(m: Manifest) -> int:
    return m.memory_model.batch_size


def figures_rows(
    m: Manifest, fmax: float | None, mac_fmax: float | None, measured: float | None
) -> list[tuple[str, str, str]]:
    """The rows of the figures-of-merit table (:func:`pbhw.core.figures.figures_of_merit`):
    samples/s, the DSP-bound limit and the efficiency, at the predicted and at the measured
    cycles per sample; "n/a" where a number is missing (no routed Fmax, no MAC Fmax)."""
    cells = []
    for cycles in (m.predicted_cycles_per_sample, measured):
        if not fmax or not cycles:
            cells.append(None)
            continue
        cells.append(
            figures_of_merit(
                fmax_mhz=fmax,
                cycles_per_sample=cycles,
                useful=m.useful_multiplies,
                dsp_blocks=m.dsp_available,
                mac_fmax_mhz=mac_fmax,
            )
        )

    def row(label: str, value) -> tuple[str, str, str]:
        texts = ["n/a" if f is None or value(f) is None else _text(value(f)) for f in cells]
        return (label, *texts)

    def _text(x: float) -> str:
        return f"{x:.3f}" if x < 1 else f"{x:,.0f}"

    return [
        row("samples/s at the routed Fmax", lambda f: f.samples_per_second),
        row("DSP-bound limit (samples/s)", lambda f: f.dsp_bound),
        row("device efficiency", lambda f: f.efficiency),
    ]


def memory_table(m: Manifest) -> list[str]:
    """The memory model of the manifest as Markdown table lines, a row per stage and a total."""
    model = m.memory_model
    body = [
        (
            str(st.stage),
            *(
                f"{n:,}"
                for n in (
                    st.weight,
                    st.velocity,
                    st.w_prev,
                    st.stash,
                    st.pipelined,
                    st.batch_activation,
                    st.batch,
                )
            ),
        )
        for st in model.stages
    ]
    body.append(("total", *[""] * 4, f"{model.pipelined:,}", "", f"{model.batch:,}"))
    header = (
        "stage",
        "weights",
        "velocities",
        "w_prev",
        "stash",
        "pipelined",
        "batch activations",
        "batch-parallel",
    )
    return _table(header, body)


def _critical_path_text(path: Mapping[str, Any]) -> str:

    return critical_path_text(path)


def _fmt_timings(t: Mapping[str, float]) -> str:
    """The flow's timings: each step's wall time, then (``total``) the flow's own, which is
    less than the steps' sum when steps ran side by side."""
    steps = {k: v for k, v in t.items() if k != "total"}
    text = "Wall time per step: " + ", ".join(f"{k} {v:,.1f} s" for k, v in steps.items()) + "."
    if "total" in t:
        text += f" Total wall time of the flow: {t['total']:,.1f} s"
        added = sum(steps.values())
        if added > t["total"]:
            text += f" (the steps' wall times add up to {added:,.1f} s: some ran side by side)"
        text += "."
    return text
