"""PB against SGD at batch size 1 on real data: does PB + LWP + SC match SGD?

The target of docs/design.md section 1: at batch size 1, PB with Linear Weight Prediction and
Spike Compensation matches SGD accuracy, while plain PB falls behind as the delay and the learning
rate grow. This benchmark trains 5-stage MLPs (stage 1's delay is 9) on ``digits`` and ``mnist1d``
with every method of :data:`METHODS`, several seeds and learning rates (given for the configs'
reference batch of 32; pbhw derives the batch-1 values), in float arithmetic.

Writes ``--out`` (JSON: one row per run, a summary per dataset/lr/method, the machine and the
command), the same name with ``.md`` (a table of mean +- std test accuracy) and ``.png`` (a plot).
A run that diverges is recorded with ``diverged: true`` and chance-level accuracy.

    .venv/bin/python bench/pb_vs_sgd.py                # the full default run (~20 min, 2 cores)
    .venv/bin/python bench/pb_vs_sgd.py --quick        # smoke test: 1 seed, 1 lr, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Each method is a list of ``--set`` overrides on the dataset's config.
METHODS: dict[str, tuple[str, ...]] = {
    "SGD": ('optimizer.algorithm="sgd"', "optimizer.batch_size=1"),
    "PB": (
        "optimizer.spike_compensation=false",
        'optimizer.weight_prediction="none"',
        "optimizer.weight_stashing=false",
    ),
    "PB+stashing": (
        "optimizer.spike_compensation=false",
        'optimizer.weight_prediction="none"',
        "optimizer.weight_stashing=true",
    ),
    "PB+SC": (
        "optimizer.spike_compensation=true",
        'optimizer.weight_prediction="none"',
        "optimizer.weight_stashing=false",
    ),
    "PB+LWP": (
        "optimizer.spike_compensation=false",
        'optimizer.weight_prediction="velocity"',
        "optimizer.weight_stashing=false",
    ),
    "PB+LWP+SC": (
        "optimizer.spike_compensation=true",
        'optimizer.weight_prediction="velocity"',
        "optimizer.weight_stashing=false",
    ),
}


@dataclass(frozen=True)
class Bench:
    """A dataset's config, default epochs (sized for the time budget) and learning rates.

    The first lr is the config's, one that trains well; the second is larger, where the delay
    starts to hurt. mnist1d's standardized inputs (mean square norm 40, digits' 15) take a smaller
    lr: at 0.1 even SGD collapses to a constant output on some seeds."""

    config: str
    epochs: int
    lrs: tuple[float, ...]


BENCHES: dict[str, Bench] = {
    "digits": Bench("examples/mlp5_digits.toml", 20, (0.1, 0.3)),
    "mnist1d": Bench("examples/mlp5_mnist1d.toml", 20, (0.03, 0.06)),
}

#: A finished run whose test accuracy is below this multiple of chance has collapsed (typically
#: every ReLU dead, a constant output): not a divergence, but a failed run all the same.
COLLAPSE_FACTOR = 1.5


@dataclass(frozen=True)
class Point:
    dataset: str
    lr: float
    method: str
    seed: int
    epochs: int

    @property
    def sets(self) -> tuple[str, ...]:
        return (
            *METHODS[self.method],
            f"optimizer.lr={self.lr!r}",
            f"seed={self.seed}",
            f"train.epochs={self.epochs}",
            f'train.dataset="{self.dataset}"',
        )

    def label(self) -> str:
        return f"{self.dataset} lr={self.lr:g} {self.method} seed={self.seed}"


def run_point(point: Point) -> dict[str, Any]:
    """Train one point in this (worker) process; a diverged run becomes a flagged row."""
    import torch

    torch.set_num_threads(1)  # one core per worker: the pool supplies the parallelism
    from pbhw.core.config import load
    from pbhw.core.datasets import load as load_dataset
    from pbhw.tools.train import TrainingDiverged, train

    config = load(ROOT / BENCHES[point.dataset].config, point.sets)
    data = load_dataset(config.train.dataset)
    row: dict[str, Any] = {
        "dataset": point.dataset,
        "lr": point.lr,
        "method": point.method,
        "seed": point.seed,
        "epochs": point.epochs,
        "sets": list(point.sets),
    }
    start = time.perf_counter()
    try:
        result = train(config, dataset=data)
    except TrainingDiverged as e:
        chance = 1.0 / data.num_classes
        row.update(
            test_accuracy=chance,
            train_accuracy=chance,
            final_loss=None,
            diverged=True,
            collapsed=False,
            error=str(e),
            test_accuracy_per_epoch=[],
        )
    else:
        row.update(
            test_accuracy=result.test_accuracy,
            train_accuracy=result.train_accuracy,
            final_loss=result.final_loss,
            diverged=False,
            collapsed=result.test_accuracy < COLLAPSE_FACTOR / data.num_classes,
            test_accuracy_per_epoch=[h.test_accuracy for h in result.history],
            lr_batch1=result.extra["lr_batch"],
            momentum_batch1=result.extra["momentum_batch"],
        )
    row["seconds"] = time.perf_counter() - start
    return row


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test-accuracy statistics per (dataset, lr, method), in the order the rows were planned."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["lr"], row["method"]), []).append(row)
    sgd = {
        (r["dataset"], r["lr"], r["seed"]): r["test_accuracy"] for r in rows if r["method"] == "SGD"
    }
    out = []
    for (dataset, lr, method), group in groups.items():
        acc = [r["test_accuracy"] for r in group]
        # Same seed, same initial weights and sample order: the paired difference to SGD is far
        # less noisy than the difference of the means.
        delta = [
            r["test_accuracy"] - sgd[dataset, lr, r["seed"]]
            for r in group
            if (dataset, lr, r["seed"]) in sgd
        ]
        out.append(
            {
                "dataset": dataset,
                "lr": lr,
                "method": method,
                "runs": len(acc),
                "diverged": sum(r["diverged"] for r in group),
                "collapsed": sum(r["collapsed"] for r in group),
                "mean": statistics.fmean(acc),
                "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "min": min(acc),
                "max": max(acc),
                "delta_vs_sgd_mean": statistics.fmean(delta) if delta else None,
                "delta_vs_sgd_std": statistics.stdev(delta) if len(delta) > 1 else None,
            }
        )
    return out


def markdown_table(summary: Sequence[dict[str, Any]], delta: bool = False) -> str:
    """Mean +- std test accuracy (%), or with ``delta`` the mean +- std of the difference to SGD
    paired by seed (points): a row per method, a column per (dataset, lr)."""
    columns = list(dict.fromkeys((s["dataset"], s["lr"]) for s in summary))
    cell = {(s["dataset"], s["lr"], s["method"]): s for s in summary}
    lines = [
        "| method | " + " | ".join(f"{d} lr={lr:g}" for d, lr in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method in dict.fromkeys(s["method"] for s in summary):
        if delta and method == "SGD":
            continue
        cells = []
        for d, lr in columns:
            s = cell.get((d, lr, method))
            if s is None:
                cells.append("")
                continue
            if delta:
                if s["delta_vs_sgd_mean"] is None:
                    cells.append("")
                    continue
                mean = round(100 * s["delta_vs_sgd_mean"], 2) + 0.0  # no "-0.00"
                text = f"{mean:+.2f} ± {100 * (s['delta_vs_sgd_std'] or 0.0):.2f}"
            else:
                text = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
            notes = [f"{s[k]}/{s['runs']} {k}" for k in ("diverged", "collapsed") if s[k]]
            if notes:
                text += f" ({', '.join(notes)})"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _failed(row: dict[str, Any]) -> bool:
    return row["diverged"] or row["collapsed"]


def plot(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], path: Path) -> None:
    """Test accuracy per method: a panel per dataset, grouped by lr, mean +- std and the seeds.

    Each panel's y range spans the seeds that trained, so that differences of a point stay
    visible; failed seeds (diverged or collapsed, near chance) and means below the range are
    drawn on its bottom edge with their value written next to them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(6.5 * len(datasets), 5.0), squeeze=False, layout="constrained"
    )
    width = 0.8 / len(methods)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        trained = [100 * r["test_accuracy"] for r in rows if r["dataset"] == dataset]
        trained = [
            100 * r["test_accuracy"] for r in rows if r["dataset"] == dataset and not _failed(r)
        ] or trained
        span = max(trained) - min(trained)
        bottom = min(trained) - max(0.08 * span, 0.5)
        top = min(100.0, max(trained) + max(0.05 * span, 0.5))
        ax.set_ylim(bottom, top)
        lrs = list(dict.fromkeys(s["lr"] for s in summary if s["dataset"] == dataset))
        for j, method in enumerate(methods):
            offset = (j - (len(methods) - 1) / 2) * width
            for k, lr in enumerate(lrs):
                key = (dataset, lr, method)
                s = next((s for s in summary if (s["dataset"], s["lr"], s["method"]) == key), None)
                if s is None:
                    continue
                x, mean = k + offset, 100 * s["mean"]
                ax.errorbar(
                    x,
                    mean,
                    yerr=100 * s["std"],
                    fmt="s",
                    color=colors(j),
                    capsize=3,
                    markersize=6,
                    label=method if k == 0 else None,
                )
                if mean < bottom:
                    ax.plot(x, bottom, "v", color=colors(j), markersize=8, clip_on=False)
                    ax.annotate(
                        f"mean\n{mean:.0f}",
                        (x, bottom),
                        xytext=(0, 8),
                        textcoords="offset points",
                        ha="center",
                        fontsize="x-small",
                        color=colors(j),
                    )
                for r in rows:
                    if (r["dataset"], r["lr"], r["method"]) != key:
                        continue
                    acc = 100 * r["test_accuracy"]
                    if acc < bottom:
                        ax.plot(x + width * 0.3, bottom, "x", color=colors(j), clip_on=False)
                        ax.annotate(
                            f"{acc:.0f}",
                            (x + width * 0.3, bottom),
                            xytext=(3, 3),
                            textcoords="offset points",
                            fontsize="x-small",
                            color=colors(j),
                        )
                    else:
                        ax.plot(
                            x + width * 0.3,
                            acc,
                            "x" if _failed(r) else ".",
                            color=colors(j),
                            alpha=0.7,
                        )
        ax.set_xticks(range(len(lrs)), [f"lr = {lr:g}" for lr in lrs])
        for k in range(1, len(lrs)):
            ax.axvline(k - 0.5, color="0.85", linewidth=0.8)
        ax.set_title(f"{dataset}: 5-stage MLP, batch size 1 (lr given for B_ref = 32)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=len(methods),
        fontsize="small",
        title="mean ± std over seeds; dots: seeds; x: a diverged or collapsed seed "
        "(below the axis: drawn on its edge with its value)",
        title_fontsize="small",
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
    }


def _lrs(specs: Sequence[str] | None, datasets: Sequence[str]) -> dict[str, list[float]]:
    """``--lrs`` values, ``0.1,0.3`` (every dataset) or ``digits=0.1,0.3``, over the defaults."""
    out = {d: list(BENCHES[d].lrs) for d in datasets}
    for spec in specs or ():
        name, sep, values = spec.rpartition("=")
        lrs = [float(v) for v in values.split(",") if v]
        for d in [name] if sep else datasets:
            out[d] = lrs
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist1d", help="comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument(
        "--lrs",
        action="append",
        help="reference-batch lrs, comma-separated, for every dataset or as DATASET=LR,LR "
        "(repeatable; default: "
        + "; ".join(f"{d}={','.join(map(str, b.lrs))}" for d, b in BENCHES.items())
        + ")",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs for every dataset (default: "
        + ", ".join(f"{d} {b.epochs}" for d, b in BENCHES.items())
        + ")",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON to write; .md and .png go next to it (default: bench/results/pb_vs_sgd.json, "
        "with --quick pb_vs_sgd_quick.json)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 1 lr, 2 epochs")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="recompute the summary, table and plot from the rows in --out; no training",
    )
    args = parser.parse_args(argv)
    out: Path = args.out or ROOT / "bench/results" / (
        "pb_vs_sgd_quick.json" if args.quick else "pb_vs_sgd.json"
    )
    if args.replot:
        payload = json.loads(out.read_text())
        payload["summary"] = summarize(payload["rows"])
        out.write_text(json.dumps(payload, indent=2) + "\n")
        write_reports(payload, out)
        return

    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    for name, known in (("dataset", BENCHES), ("method", METHODS)):
        for value in datasets if name == "dataset" else methods:
            if value not in known:
                parser.error(f"{name} must be one of {', '.join(known)}, not {value!r}")
    for spec in args.lrs or ():
        name = spec.rpartition("=")[0]
        if name and name not in datasets:
            parser.error(f"--lrs {spec}: dataset must be one of {', '.join(datasets)}")
    lrs = _lrs(args.lrs, datasets)
    seeds = args.seeds
    if args.quick:
        seeds, lrs = 1, {d: values[:1] for d, values in lrs.items()}
    points = [
        Point(d, lr, m, s, args.epochs or (2 if args.quick else BENCHES[d].epochs))
        for d in datasets
        for lr in lrs[d]
        for m in methods
        for s in range(seeds)
    ]

    print(f"{len(points)} runs on {args.workers} workers", flush=True)
    start = time.perf_counter()
    results: dict[Point, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_point, p): p for p in points}
        for future in as_completed(futures):
            point = futures[future]
            row = results[point] = future.result()
            status = "DIVERGED" if row["diverged"] else f"test {100 * row['test_accuracy']:.2f}%"
            print(
                f"[{len(results):3d}/{len(points)}] {point.label()}: {status} "
                f"({row['seconds']:.1f} s; {time.perf_counter() - start:.0f} s elapsed)",
                flush=True,
            )
    rows = [results[p] for p in points]
    summary = summarize(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "pb_vs_sgd",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
        "configs": {d: BENCHES[d].config for d in datasets},
        "methods": {m: list(METHODS[m]) for m in methods},
        "note": "lr is given for the configs' reference batch (32); diverged runs count as "
        f"chance accuracy; collapsed: finished below {COLLAPSE_FACTOR} x chance",
        "summary": summary,
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    write_reports(payload, out)


def write_reports(payload: dict[str, Any], out: Path) -> None:
    """The Markdown table and the plot next to the JSON ``out``; prints the table."""
    summary = payload["summary"]
    table = markdown_table(summary)
    seeds = len({r["seed"] for r in payload["rows"]})
    out.with_suffix(".md").write_text(
        f"Test accuracy (%), mean ± std over {seeds} seeds, 5-stage MLPs at batch size 1 "
        "(lr given for B_ref = 32).\n\n"
        + table
        + "\nDifference to SGD (points), paired by seed (same initial weights and sample "
        "order), mean ± std:\n\n" + markdown_table(summary, delta=True)
    )
    plot(payload["rows"], payload["summary"], out.with_suffix(".png"))
    print()
    print(table)
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
