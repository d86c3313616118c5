"""``pbhw sweep``: train (and estimate) every point of a grid of config values.

Registered on the ``pbhw`` group in :mod:`pbhw.cli`; the engine is :mod:`pbhw.flows.sweep`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pbhw.cli.common import (
    UserError,
    config_argument,
    load_config,
    progress_console,
    set_option,
    train_sets,
    user_errors,
    warn,
)
from pbhw.core.io import check_output_dir
from pbhw.flows import sweep as engine

__all__ = ["sweep"]


class _Interrupted(BaseException):
    """A signal that ends the sweep (SIGINT, SIGTERM, SIGHUP), raised in the main thread so that
    the engine stops its workers on the way out. A BaseException, as KeyboardInterrupt is, so
    that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupted(signum: int, frame: Any) -> None:
    for other in _SIGNALS:  # a second signal must not cut short the stopping of the workers
        signal.signal(other, signal.SIG_IGN)
    raise _Interrupted(signum)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`_Interrupted` while the block runs (by
    default SIGTERM and SIGHUP end the process at once, leaving its worker processes running)."""
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in _SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@click.command("sweep")
@config_argument
@click.option(
    "--grid",
    "grids",
    multiple=True,
    required=True,
    metavar="KEY=V1,V2,...",
    help="A grid axis, e.g. --grid formats.weight.width=8,12,16 (repeatable; the points are "
    "every combination). Values are read like --set values.",
)
@click.option(
    "--dataset", help="Dataset: digits, mnist1d, cifar10:PATH or npz:PATH (sets train.dataset)."
)
@click.option("--epochs", type=click.IntRange(min=1), help="Number of epochs (sets train.epochs).")
@click.option(
    "--arith",
    type=click.Choice(["float", "fixed"]),
    help="Arithmetic (sets train.arith). Default: fixed, the bit-exact hardware model, since a "
    "sweep compares number formats; --set train.arith=float or --arith float overrides it.",
)
@click.option(
    "--estimate",
    is_flag=True,
    help="Also estimate each point's hardware: LUT/FF/DSP/BRAM, Fmax and throughput.",
)
@click.option(
    "--fast-estimate",
    is_flag=True,
    help="With --estimate: the analytic model from the manifest (no tools, no Fmax).",
)
@click.option(
    "--backend",
    type=click.Choice(list(engine.BACKENDS)),
    default="local",
    show_default=True,
    help="Run the points in local processes or as Ray tasks.",
)
@click.option(
    "--address",
    help="Ray cluster address for --backend ray (default: start a local Ray).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Parallel workers (local processes, or the CPUs of a local Ray). Default: CPU count.",
)
@set_option
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="DIR",
    help="Output folder: results.csv, results.json, pareto.png, report.md, points/, sweep.json. "
    "New, empty, or an earlier output of pbhw sweep over the same grid (whose finished points "
    "are resumed).",
)
@user_errors
def sweep(
    config: str,
    grids: tuple[str, ...],
    dataset: str | None,
    epochs: int | None,
    arith: str | None,
    estimate: bool,
    fast_estimate: bool,
    backend: str,
    address: str | None,
    workers: int | None,
    sets: tuple[str, ...],
    output: str,
) -> None:
    """Train every point of a grid over CONFIG's keys and report accuracy against hardware cost.

    Points that differ only in formats, rounding or update constants train together in one
    vectorised fixed-point run. Finished points are kept in OUTPUT/points, so rerunning an
    interrupted sweep resumes it.
    """
    if address and backend != "ray":
        raise UserError("--address is for --backend ray")
    try:
        if backend == "ray":
            engine.require_ray()
        if fast_estimate and not estimate:
            raise engine.SweepError("--fast-estimate needs --estimate")
    except engine.SweepError as e:
        raise UserError(str(e)) from None
    axes = [engine.parse_grid(spec) for spec in grids]
    extra = train_sets(dataset, epochs, arith)
    base = load_config(config, ())
    points = engine.expand(base.to_dict(), axes, ['train.arith="fixed"', *sets, *extra])

    out_dir = Path(output)
    check_output_dir(out_dir, "-o", "pbhw sweep", engine.is_sweep_output, replaced=False)
    first = points[0].config
    spec: dict[str, Any] = {
        "command": _command(
            config, grids, dataset, epochs, arith, estimate, fast_estimate, sets, output
        ),
        "config": config,
        "name": first.name,
        "sets": list(sets),
        "grid": [{"key": a.key, "values": list(a.values)} for a in axes],
        "dataset": _common(p.config.train.dataset for p in points),
        "epochs": _common(p.config.train.epochs for p in points),
        "arith": _common(p.config.train.arith.value for p in points),
        "estimate": estimate,
    }
    try:
        engine.check_same_grid(out_dir, spec)
    except engine.SweepError as e:
        raise UserError(str(e)) from None
    engine.record_spec(out_dir, spec)
    console = progress_console()
    progress = Progress(
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("points", total=len(points))
    stale: dict[str, int] = {}

    def on_stale(point: engine.Point, reasons: list[str]) -> None:
        why = "; ".join(reasons)
        stale[why] = stale.get(why, 0) + 1

    def on_start(total: int, resumed: int, batches: int) -> None:
        if total < len(points):
            console.print(f"{len(points) - total} grid points share a config with another")
        where = address or "local"
        runs_on = (
            f"Ray ({where})"
            if backend == "ray"
            else f"{min(workers or os.cpu_count() or 1, max(batches, 1))} local process(es)"
        )
        for why, count in stale.items():
            console.print(
                f"{count} finished point(s) are stale and run again: {why}", soft_wrap=True
            )
        because = " (same config, dataset content and pbhw code)" if resumed else ""
        console.print(
            f"{total} points: {resumed} resumed from {out_dir / 'points'}{because}, "
            f"{total - resumed} to run in {batches} batch(es) on {runs_on}",
            soft_wrap=True,
        )
        progress.update(task, total=total, completed=resumed)
        progress.start()

    try:
        with _interruptible():
            records = engine.run_points(
                points,
                out_dir,
                estimate=estimate,
                estimator=engine.fast_estimate_point if fast_estimate else None,
                backend=backend,
                workers=workers,
                address=address,
                on_start=on_start,
                on_batch=lambda n: progress.advance(task, n),
                on_stale=on_stale,
            )
            progress.stop()
            rows = engine.result_rows(points, records, estimate)
            engine.write_results(out_dir, spec, rows)
    except (KeyboardInterrupt, _Interrupted) as e:
        # The engine has stopped the workers on its way out; every finished point is on disk.
        signum = e.signum if isinstance(e, _Interrupted) else signal.SIGINT
        progress.stop()  # before the message, so that the bar does not overwrite it
        click.echo(
            f"interrupted by {signal.Signals(signum).name}: finished points are kept in "
            f"{out_dir / 'points'}; rerun the same command to resume",
            err=True,
        )
        sys.exit(128 + signum)
    finally:
        progress.stop()
    best = max(
        (r for r in rows if r["test_accuracy"] is not None),
        key=lambda r: r["test_accuracy"],
        default=None,
    )
    if best is not None:
        values = " ".join(f"{k}={v}" for k, v in best["grid"].items())
        click.echo(f"best test accuracy {100 * best['test_accuracy']:.2f}% at {values}")
    diverged = sum(1 for r in rows if r["diverged"])
    if diverged:
        warn(f"{diverged} point(s) diverged (see report.md)")
    click.echo(f"wrote {out_dir / 'results.csv'}, results.json, pareto.png, report.md")


def _common(values: Any) -> Any:
    """The one value all points share, or ``"(varies)"``."""
    distinct = list(dict.fromkeys(values))
    return distinct[0] if len(distinct) == 1 else "(varies)"


def _command(
    config: str,
    grids: tuple[str, ...],
    dataset: str | None,
    epochs: int | None,
    arith: str | None,
    estimate: bool,
    fast_estimate: bool,
    sets: tuple[str, ...],
    output: str,
) -> str:
    """The command line that reproduces the sweep's results (backend options aside)."""
    args = ["pbhw", "sweep", config]
    for grid in grids:
        args += ["--grid", grid]
    for name, value in (("--dataset", dataset), ("--epochs", epochs), ("--arith", arith)):
        if value is not None:
            args += [name, str(value)]
    if estimate:
        args.append("--estimate")
    if fast_estimate:
        args.append("--fast-estimate")
    for item in sets:
        args += ["--set", item]
    return shlex.join([*args, "-o", output])
