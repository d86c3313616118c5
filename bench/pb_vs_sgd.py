"""PB against SGD at batch size 1 on real data: does PB + LWP + SC match SGD?

The target of docs/design.md section 1: at batch size 1, PB with Linear Weight Prediction and
Spike Compensation matches SGD accuracy, while plain PB falls behind as the delay and the learning
rate grow. This benchmark trains the networks of a suite of :data:`BENCHES` with every method
of :data:`METHODS`, several seeds and learning rates (given for the configs' reference batch of
32; pbhw derives the batch-1 values), in float arithmetic. Suite ``mlp``: 5-stage MLPs (stage 1's
delay is 9) on ``digits`` and ``mnist1d``. Suite ``cnn``: convolutional networks, 1-D on
``mnist1d`` and 2-D on ``digits``, each without and with group norm (five stages, stage 1's delay
9), the ``mnist1d`` one also with Online Normalization, and a residual network on ``mnist1d``
(seven stages, delay 13).

Writes ``--out`` (JSON: one row per run, a summary per bench/lr/method, the machine and the
command), the same name with ``.md`` (tables of mean +- std test accuracy and of the difference
to SGD, and where PB + LWP + SC is within :data:`TARGET_POINTS` of SGD) and ``.png`` (a plot).
A run that diverges is recorded with ``diverged: true`` and chance-level accuracy.

    .venv/bin/python bench/pb_vs_sgd.py                # the MLP suite (~20 min, 2 cores)
    .venv/bin/python bench/pb_vs_sgd.py --suite cnn    # the CNN suite (~35 min, 2 workers, loaded)
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

from pbhw.core.io import write_json

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
    """A network's config (its dataset included), suite, default epochs (sized for the time
    budget), learning rates and a short description for titles.

    The first lr is one that trains well; the second is larger, where the delay starts to hurt.
    mnist1d's standardized inputs (mean square norm 40, digits' 15) take a smaller lr for the
    MLPs: at 0.1 even SGD collapses to a constant output on some seeds. The CNNs (softmax
    cross-entropy) train well at 0.05 on both datasets; at 0.2 SGD itself fails (3-epoch probes
    of seed 0 without norm: mnist1d 33 % against 80 % at 0.1, digits 84 % against 97 %), so
    their larger lr is 0.1. Their epochs are few: the whole CNN suite (180 runs) had to fit in
    about an hour of a 2-core machine shared with other jobs."""

    config: str
    suite: str
    epochs: int
    lrs: tuple[float, ...]
    title: str


BENCHES: dict[str, Bench] = {
    "digits": Bench("examples/mlp5_digits.toml", "mlp", 20, (0.1, 0.3), "5-stage MLP"),
    "mnist1d": Bench("examples/mlp5_mnist1d.toml", "mlp", 20, (0.03, 0.06), "5-stage MLP"),
    "mnist1d-cnn": Bench(
        "examples/cnn_mnist1d_plain.toml", "cnn", 3, (0.05, 0.1), "4 conv + dense, no norm"
    ),
    "mnist1d-cnn-gn": Bench(
        "examples/cnn_mnist1d_gn.toml", "cnn", 2, (0.05, 0.1), "4 conv + dense, group norm"
    ),
    "mnist1d-cnn-on": Bench(
        "examples/cnn_mnist1d_on.toml", "cnn", 2, (0.05, 0.1), "4 conv + dense, online norm"
    ),
    "digits-cnn": Bench(
        "examples/cnn_digits_plain.toml", "cnn", 4, (0.05, 0.1), "4 conv 3x3 + dense, no norm"
    ),
    "digits-cnn-gn": Bench(
        "examples/cnn_digits_gn.toml", "cnn", 4, (0.05, 0.1), "4 conv 3x3 + dense, group norm"
    ),
    "digits-cnn-on": Bench(
        "examples/cnn_digits_on.toml", "cnn", 4, (0.05, 0.1), "4 conv 3x3 + dense, online norm"
    ),
    "mnist1d-resnet": Bench(
        "examples/cnn_mnist1d_resnet.toml",
        "cnn",
        2,
        (0.05, 0.1),
        "2 residual blocks, group norm",
    ),
    "mnist1d-resnet-on": Bench(
        "examples/cnn_mnist1d_resnet_on.toml",
        "cnn",
        2,
        (0.05, 0.1),
        "2 residual blocks, online norm",
    ),
}

#: The suites of :data:`BENCHES`, each with its default output (in bench/results/).
SUITES: dict[str, str] = {"mlp": "pb_vs_sgd.json", "cnn": "pb_vs_sgd_cnn.json"}

#: The target: PB + LWP + SC within this many points of SGD (the mean of the paired difference).
TARGET_METHOD, TARGET_POINTS = "PB+LWP+SC", 0.5

#: A finished run whose test accuracy is below this multiple of chance has collapsed (typically
#: every ReLU dead, a constant output): not a divergence, but a failed run all the same.
COLLAPSE_FACTOR = 1.5


@dataclass(frozen=True)
class Point:
    bench: str
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
        )

    def label(self) -> str:
        return f"{self.bench} lr={self.lr:g} {self.method} seed={self.seed}"


def run_point(point: Point) -> dict[str, Any]:
    """Train one point in this (worker) process; a diverged run becomes a flagged row."""
    import torch

    torch.set_num_threads(1)  # one core per worker: the pool supplies the parallelism
    from pbhw.core.config import load
    from pbhw.core.datasets import load as load_dataset
    from pbhw.tools.train import TrainingDiverged, train

    config = load(ROOT / BENCHES[point.bench].config, point.sets)
    data = load_dataset(config.train.dataset)
    row: dict[str, Any] = {
        "bench": point.bench,
        "dataset": config.train.dataset,
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
    """Test-accuracy statistics per (bench, lr, method), in the order the rows were planned."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["bench"], row["lr"], row["method"]), []).append(row)
    sgd = {
        (r["bench"], r["lr"], r["seed"]): r["test_accuracy"] for r in rows if r["method"] == "SGD"
    }
    out = []
    for (bench, lr, method), group in groups.items():
        acc = [r["test_accuracy"] for r in group]
        # Same seed, same initial weights and sample order: the paired difference to SGD is far
        # less noisy than the difference of the means.
        delta = [
            r["test_accuracy"] - sgd[bench, lr, r["seed"]]
            for r in group
            if (bench, lr, r["seed"]) in sgd
        ]
        out.append(
            {
                "bench": bench,
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
    paired by seed (points): a row per method, a column per (bench, lr); the other way round
    when there are more (bench, lr) pairs than methods (the table stays narrow)."""
    pairs = list(dict.fromkeys((s["bench"], s["lr"]) for s in summary))
    methods = [m for m in dict.fromkeys(s["method"] for s in summary) if not delta or m != "SGD"]
    cell = {(s["bench"], s["lr"], s["method"]): s for s in summary}

    def text(bench: str, lr: float, method: str) -> str:
        s = cell.get((bench, lr, method))
        if s is None or (delta and s["delta_vs_sgd_mean"] is None):
            return ""
        if delta:
            mean = round(100 * s["delta_vs_sgd_mean"], 2) + 0.0  # no "-0.00"
            out = f"{mean:+.2f} ± {100 * (s['delta_vs_sgd_std'] or 0.0):.2f}"
        else:
            out = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
        notes = [f"{s[k]}/{s['runs']} {k}" for k in ("diverged", "collapsed") if s[k]]
        return out + (f" ({', '.join(notes)})" if notes else "")

    if len(pairs) > len(methods):
        lines = ["| network | lr | " + " | ".join(methods) + " |"]
        lines.append("|---|---:|" + "---:|" * len(methods))
        lines += [
            f"| {b} | {lr:g} | " + " | ".join(text(b, lr, m) for m in methods) + " |"
            for b, lr in pairs
        ]
    else:
        lines = ["| method | " + " | ".join(f"{b} lr={lr:g}" for b, lr in pairs) + " |"]
        lines.append("|---|" + "---:|" * len(pairs))
        lines += [
            f"| {m} | " + " | ".join(text(b, lr, m) for b, lr in pairs) + " |" for m in methods
        ]
    return "\n".join(lines) + "\n"


def _failed(row: dict[str, Any]) -> bool:
    return row["diverged"] or row["collapsed"]


def plot(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], path: Path) -> None:
    """Test accuracy per method: a panel per bench, grouped by lr, mean +- std and the seeds.

    Each panel's y range spans the seeds that trained, so that differences of a point stay
    visible; failed seeds (diverged or collapsed, near chance) and means below the range are
    drawn on its bottom edge with their value written next to them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(s["bench"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    colors = plt.get_cmap("tab10")
    ncols = min(len(benches), 3)
    nrows = -(-len(benches) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(6.5 * ncols, 5.0 * nrows),
        squeeze=False,
        layout="constrained",
    )
    width = 0.8 / len(methods)
    for ax in axes.flat[len(benches) :]:
        ax.axis("off")
    for ax, bench in zip(axes.flat, benches, strict=False):
        trained = [100 * r["test_accuracy"] for r in rows if r["bench"] == bench]
        trained = [
            100 * r["test_accuracy"] for r in rows if r["bench"] == bench and not _failed(r)
        ] or trained
        span = max(trained) - min(trained)
        bottom = min(trained) - max(0.08 * span, 0.5)
        top = min(100.0, max(trained) + max(0.05 * span, 0.5))
        ax.set_ylim(bottom, top)
        lrs = list(dict.fromkeys(s["lr"] for s in summary if s["bench"] == bench))
        for j, method in enumerate(methods):
            offset = (j - (len(methods) - 1) / 2) * width
            for k, lr in enumerate(lrs):
                key = (bench, lr, method)
                s = next((s for s in summary if (s["bench"], s["lr"], s["method"]) == key), None)
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
                    if (r["bench"], r["lr"], r["method"]) != key:
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
        ax.set_title(f"{bench}: {BENCHES[bench].title}, batch size 1", fontsize="medium")
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
        "(below the axis: drawn on its edge with its value); lr given for B_ref = 32",
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


def _lrs(specs: Sequence[str] | None, benches: Sequence[str]) -> dict[str, list[float]]:
    """``--lrs`` values, ``0.1,0.3`` (every bench) or ``digits=0.1,0.3``, over the defaults."""
    out = {b: list(BENCHES[b].lrs) for b in benches}
    for spec in specs or ():
        name, sep, values = spec.rpartition("=")
        lrs = [float(v) for v in values.split(",") if v]
        for b in [name] if sep else benches:
            out[b] = lrs
    return out


def verdicts(summary: Sequence[dict[str, Any]]) -> list[str]:
    """A sentence per (bench, lr): is :data:`TARGET_METHOD` within :data:`TARGET_POINTS` of SGD?

    Judged on the mean over seeds of the paired difference (same seed: same initial weights and
    sample order), given with its std and the seeds' spread of SGD itself."""
    sgd = {(s["bench"], s["lr"]): s for s in summary if s["method"] == "SGD"}
    out = []
    for s in summary:
        base = sgd.get((s["bench"], s["lr"]))
        if s["method"] != TARGET_METHOD or base is None or s["delta_vs_sgd_mean"] is None:
            continue
        # judged on the difference as printed (2 decimals): accuracies are counts over the test
        # set, and 100 * (0.821 - 0.826) is not exactly -0.5 in floating point
        delta = round(100 * s["delta_vs_sgd_mean"], 2) + 0.0  # no "-0.00"
        std = 100 * (s["delta_vs_sgd_std"] or 0.0)
        if abs(delta) <= TARGET_POINTS:
            verdict = f"within {TARGET_POINTS:g} points of SGD"
        elif delta > 0:
            verdict = f"above SGD by more than {TARGET_POINTS:g} points"
        else:
            verdict = f"NOT within {TARGET_POINTS:g} points of SGD (below it)"
        failed = [f"{s[k]}/{s['runs']} {k}" for k in ("diverged", "collapsed") if s[k]]
        out.append(
            f"{s['bench']} lr={s['lr']:g}: {TARGET_METHOD} {100 * s['mean']:.2f} ± "
            f"{100 * s['std']:.2f} against SGD {100 * base['mean']:.2f} ± {100 * base['std']:.2f}, "
            f"paired difference {delta:+.2f} ± {std:.2f}: {verdict}"
            + (f" ({', '.join(failed)})" if failed else "")
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="mlp",
        help="the default benches and output: "
        + "; ".join(
            f"{suite}: {', '.join(b for b, v in BENCHES.items() if v.suite == suite)}"
            for suite in SUITES
        ),
    )
    parser.add_argument(
        "--benches",
        "--datasets",
        dest="benches",
        help="comma-separated, from " + ", ".join(BENCHES) + " (default: the suite's)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument(
        "--lrs",
        action="append",
        help="reference-batch lrs, comma-separated, for every bench or as BENCH=LR,LR "
        "(repeatable; default: "
        + "; ".join(f"{d}={','.join(map(str, b.lrs))}" for d, b in BENCHES.items())
        + ")",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs for every bench (default: "
        + ", ".join(f"{d} {b.epochs}" for d, b in BENCHES.items())
        + ")",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON to write; .md and .png go next to it (default: bench/results/"
        + ", ".join(f"{name} for {suite}" for suite, name in SUITES.items())
        + "; with --quick the same name ending in _quick.json)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 1 lr, 2 epochs")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of a partial --out (written after every run) and train "
        "only the rest",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="recompute the summary, table and plot from the rows in --out; no training",
    )
    args = parser.parse_args(argv)
    default_out = ROOT / "bench/results" / SUITES[args.suite]
    out: Path = args.out or (
        default_out.with_name(default_out.stem + "_quick.json") if args.quick else default_out
    )
    if args.replot:
        payload = json.loads(out.read_text())
        for row in payload["rows"]:  # rows written before benches had names of their own
            row.setdefault("bench", row["dataset"])
        payload["summary"] = summarize(payload["rows"])
        write_json(out, payload)
        write_reports(payload, out)
        return

    benches = (
        [b for b in args.benches.split(",") if b]
        if args.benches
        else [b for b, v in BENCHES.items() if v.suite == args.suite]
    )
    methods = [m for m in args.methods.split(",") if m]
    for name, known, values in (("bench", BENCHES, benches), ("method", METHODS, methods)):
        for value in values:
            if value not in known:
                parser.error(f"{name} must be one of {', '.join(known)}, not {value!r}")
    for spec in args.lrs or ():
        name = spec.rpartition("=")[0]
        if name and name not in benches:
            parser.error(f"--lrs {spec}: bench must be one of {', '.join(benches)}")
    lrs = _lrs(args.lrs, benches)
    seeds = args.seeds
    if args.quick:
        seeds, lrs = 1, {b: values[:1] for b, values in lrs.items()}
    # Seed by seed: a run stopped midway (its finished runs are saved) has every network.
    points = [
        Point(b, lr, m, s, args.epochs or (2 if args.quick else BENCHES[b].epochs))
        for s in range(seeds)
        for b in benches
        for lr in lrs[b]
        for m in methods
    ]

    results: dict[Point, dict[str, Any]] = {}
    earlier = 0.0
    if args.resume and out.exists():
        previous = json.loads(out.read_text())
        earlier = previous.get("seconds", 0.0)
        for row in previous["rows"]:
            point = Point(row["bench"], row["lr"], row["method"], row["seed"], row["epochs"])
            if point in points:
                results[point] = row
    todo = [p for p in points if p not in results]
    print(f"{len(todo)} runs on {args.workers} workers ({len(results)} kept)", flush=True)
    start = time.perf_counter()

    def save() -> dict[str, Any]:
        """The payload of the runs finished so far, written to ``out`` (``partial`` until all
        are): a run stopped midway keeps them for ``--resume``."""
        rows = [results[p] for p in points if p in results]
        payload = {
            "benchmark": "pb_vs_sgd",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": earlier + time.perf_counter() - start,
            "partial": len(rows) < len(points),
            "machine": machine_info(),
            "configs": {b: BENCHES[b].config for b in benches},
            "methods": {m: list(METHODS[m]) for m in methods},
            "note": "lr is given for the configs' reference batch (32); diverged runs count as "
            f"chance accuracy; collapsed: finished below {COLLAPSE_FACTOR} x chance",
            "summary": summarize(rows),
            "rows": rows,
        }
        write_json(out, payload)
        return payload

    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_point, p): p for p in todo}
        for done, future in enumerate(as_completed(futures), start=1):
            point = futures[future]
            row = results[point] = future.result()
            save()
            status = "DIVERGED" if row["diverged"] else f"test {100 * row['test_accuracy']:.2f}%"
            print(
                f"[{done:3d}/{len(todo)}] {point.label()}: {status} "
                f"({row['seconds']:.1f} s; {time.perf_counter() - start:.0f} s elapsed)",
                flush=True,
            )
    write_reports(save(), out)


def write_reports(payload: dict[str, Any], out: Path) -> None:
    """The Markdown tables and the plot next to the JSON ``out``; prints the table."""
    summary = payload["summary"]
    table = markdown_table(summary)
    seeds = len({r["seed"] for r in payload["rows"]})
    epochs = {r["bench"]: r["epochs"] for r in payload["rows"]}
    networks = "".join(
        f"- `{b}`: `{config}` ({BENCHES[b].title}), {epochs[b]} epochs\n"
        for b, config in payload["configs"].items()
    )
    target = "".join(f"- {line}\n" for line in verdicts(summary))
    out.with_suffix(".md").write_text(
        f"Test accuracy (%), mean ± std over {seeds} seeds, at batch size 1 (lr given for "
        "B_ref = 32), float arithmetic:\n\n"
        + networks
        + "\n"
        + table
        + "\nDifference to SGD (points), paired by seed (same initial weights and sample "
        "order), mean ± std:\n\n"
        + markdown_table(summary, delta=True)
        + (
            f"\n{TARGET_METHOD} against SGD (within {TARGET_POINTS:g} points: the mean paired "
            f"difference is at most {TARGET_POINTS:g} points from zero):\n\n" + target
            if target
            else ""
        )
    )
    plot(payload["rows"], payload["summary"], out.with_suffix(".png"))
    print()
    print(table)
    print(target)
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
