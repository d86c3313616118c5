"""Design-space sweeps: train (and optionally estimate) every point of a grid of config values.

A grid is a list of axes ``KEY=V1,V2,...``; its points are the cartesian product, each a config
with those ``--set`` values applied and validated up front (:func:`expand`), so a bad key or value
is one :class:`~pbhw.core.config.ConfigError` before any work starts. Points that differ only in
what :func:`pbhw.tools.train.train_many` can vectorise (formats, rounding, update constants, in
fixed-point arithmetic) are trained together in one batch (:func:`group_points`); the batches
run in local processes or as Ray tasks (:func:`run_points`). Every finished point is recorded in
``DIR/points/<key>.json`` (the key is a hash of the resolved config) with its provenance: the
content hash of the dataset it trained on, pbhw's version and a fingerprint of the code that
computes results (:func:`provenance`). An interrupted sweep resumes from the finished points
whose config and provenance equal the run's; a point whose dataset or code changed is trained
again. The trainer is deterministic given the config, so the results do not depend on the
backend, the number of workers or how points are batched.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import pbhw
from pbhw.core.config import Arith, Config, ConfigError, apply_sets, from_dict
from pbhw.core.datasets import load as load_dataset
from pbhw.core.devices import CONSTRAINTS_DIR
from pbhw.core.errors import SweepError
from pbhw.core.io import write_atomic
from pbhw.flows import report
from pbhw.tools import estimate as estimate_module
from pbhw.tools.train import TrainingDiverged, check_trainable, train_many

__all__ = [
    "BACKENDS",
    "ESTIMATE_COLUMNS",
    "TRAIN_COLUMNS",
    "GridAxis",
    "Point",
    "SweepError",
    "check_same_grid",
    "check_trainable",
    "code_fingerprint",
    "config_key",
    "estimate_point",
    "expand",
    "group_points",
    "is_sweep_output",
    "parse_grid",
    "provenance",
    "record_spec",
    "require_ray",
    "result_rows",
    "run_batch",
    "run_points",
    "weight_bits",
    "write_results",
]

BACKENDS = ("local", "ray")

#: Columns a point gets from :func:`estimate_point`, in table order.
ESTIMATE_COLUMNS = (
    "lut",
    "ff",
    "dsp",
    "bram_bits",
    "fmax_mhz",
    "fits",
    "cycles_per_sample",
    "throughput",
    "throughput_estimated",
    "throughput_per_dsp",
    "throughput_per_lut",
)

#: Columns every point gets from training, in table order.
TRAIN_COLUMNS = (
    "test_accuracy",
    "train_accuracy",
    "final_loss",
    "saturation_total",
    "collapsed",
    "diverged",
)

#: Optimizer keys that only change the update constants, which a batched run holds per config.
_CONSTANT_KEYS = frozenset(
    {"lr", "momentum", "reference_batch", "spike_compensation", "prediction_horizon"}
)


# --------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid KEY=V1,V2,...``: the key, each value's text (as for ``--set``) and value."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]

    def sets(self) -> list[str]:
        return [f"{self.key}={text}" for text in self.texts]


def _split_values(text: str) -> list[str]:
    """Split on commas outside ``[...]``, ``{...}`` and quotes (``[8,4],[4,4]`` is two values)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_grid(spec: str) -> GridAxis:
    """Parse ``KEY=V1,V2,...``; each value is read like a ``--set`` value (a TOML scalar or
    array, or a bare string)."""
    key, sep, text = spec.partition("=")
    key = key.strip()
    example = "e.g. formats.weight.width=8,12,16"
    if not sep or not key or not text.strip():
        raise ConfigError(f"--grid takes KEY=V1,V2,... ({example}), not {spec!r}")
    texts = _split_values(text)
    if any(not t for t in texts):
        raise ConfigError(f"--grid {key}: empty value in {text.strip()!r} ({example})")
    # apply_sets parses a value exactly as --set does.
    values = tuple(apply_sets({}, [f"v={t}"])["v"] for t in texts)
    for i, value in enumerate(values):
        if value in values[:i]:
            raise ConfigError(f"--grid {key}: value {texts[i]!r} is listed twice")
    return GridAxis(key, tuple(texts), values)


@dataclass(frozen=True)
class Point:
    """One grid point: the grid's values there, the validated config, its key and the content
    hash of its dataset (as loaded when the grid was expanded)."""

    values: dict[str, Any]
    sets: tuple[str, ...]
    config: Config
    key: str
    dataset_sha256: str | None = None

    def describe(self) -> str:
        return " ".join(self.sets) or "(base config)"


def config_key(config: Config) -> str:
    """A short hash of the resolved config (its ``name`` aside) and of the content of the
    checkpoint ``train.init_from`` names: the point's identity on disk."""
    data = config.to_dict()
    data.pop("name", None)
    if config.train.init_from:  # the same path with other weights is another point
        content = Path(config.train.init_from).read_bytes()
        data["train"]["init_from_sha256"] = hashlib.sha256(content).hexdigest()
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(
    raw: Mapping[str, Any], axes: Sequence[GridAxis], sets: Sequence[str] = ()
) -> list[Point]:
    """Every point of the grid (the first axis varies slowest), each validated.

    ``raw`` is the config file's contents and ``sets`` the ``--set`` overrides applied before
    the grid's values. Raises :class:`ConfigError` naming the first bad point."""
    keys = [axis.key for axis in axes]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid")
    points = []
    datasets: dict[str, Any] = {}  # each dataset is loaded (and checked) once
    for combo in itertools.product(*(range(len(axis.values)) for axis in axes)):
        point_sets = tuple(axis.sets()[i] for axis, i in zip(axes, combo, strict=True))
        try:
            config = from_dict(apply_sets(raw, [*sets, *point_sets]))
            config.network.require_dense()  # its costs and estimates are the hardware's
            check_trainable(config, datasets)
        except ConfigError as e:
            where = " ".join(point_sets) or "the base config"
            raise ConfigError(f"grid point {where}: {e}") from None
        values = {axis.key: axis.values[i] for axis, i in zip(axes, combo, strict=True)}
        data_hash = datasets[config.train.dataset].content_hash
        points.append(Point(values, point_sets, config, config_key(config), data_hash))
    return points


#: What decides a point's results besides its config: the packages and data files that train
#: and estimate it (the command line and the reports aside).
_RESULT_PACKAGES = ("golden", "rtl_gen", "pbhw.core", "pbhw.tools")
_RESULT_SUFFIXES = frozenset({".py", ".v", ".vlt", ".toml", ".sdc"})


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 (hex) over the source and data files of the code that computes a point's
    results (the golden model, the trainer, the generator, the estimator, the device files and
    this module), so that a finished point is not resumed by changed code whose version number
    stayed the same."""
    folders = [CONSTRAINTS_DIR]
    for name in _RESULT_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations is not None, name
        folders += [Path(p) for p in spec.submodule_search_locations]
    files = [Path(__file__)]
    for folder in folders:
        files += sorted(
            p
            for p in folder.rglob("*")
            if p.suffix in _RESULT_SUFFIXES and "__pycache__" not in p.parts and p.is_file()
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.parent.name}/{path.name}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def provenance(dataset: str, dataset_sha256: str | None) -> dict[str, Any]:
    """What a point's results depend on besides its config: the dataset's content, pbhw's
    version and :func:`code_fingerprint`."""
    return {
        "dataset": dataset,
        "dataset_sha256": dataset_sha256,
        "pbhw_version": pbhw.__version__,
        "code_sha256": code_fingerprint(),
    }


def stale_reasons(recorded: Any, expected: Mapping[str, Any]) -> list[str]:
    """Why a finished point's recorded provenance does not match the run's (empty: it does)."""
    if not isinstance(recorded, Mapping) or not recorded.get("dataset_sha256"):
        return ["no record of the dataset and code it was trained with (an older pbhw wrote it)"]
    reasons = []
    if recorded.get("dataset_sha256") != expected["dataset_sha256"]:
        reasons.append(
            f"the content of dataset {expected['dataset']} changed since they were trained"
        )
    if recorded.get("pbhw_version") != expected["pbhw_version"]:
        reasons.append(
            f"they were trained by pbhw {recorded.get('pbhw_version')}, this is "
            f"{expected['pbhw_version']}"
        )
    elif recorded.get("code_sha256") != expected["code_sha256"]:
        reasons.append("pbhw's code changed since they were trained")
    return reasons


# --------------------------------------------------------------------------------------------
# Batching


def _batch_key(config: Config) -> str | None:
    """Configs with equal keys can be trained in one :func:`~pbhw.tools.train.train_many` run;
    ``None`` means the config trains alone (float arithmetic)."""
    if config.train.arith is not Arith.FIXED:
        return None
    data = config.to_dict()
    for key in ("name", "formats", "overrides", "hardware"):
        data.pop(key)
    data["optimizer"] = {k: v for k, v in data["optimizer"].items() if k not in _CONSTANT_KEYS}
    return json.dumps(data, sort_keys=True)


def group_points(points: Sequence[Point], max_batch: int | None = None) -> list[list[Point]]:
    """Points in batches that one vectorised run can train, each at most ``max_batch`` long,
    in grid order (a batch holds the points of one group in their order)."""
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, not {max_batch!r}")
    groups: dict[Any, list[Point]] = {}
    for i, point in enumerate(points):
        key = _batch_key(point.config)
        groups.setdefault(("alone", i) if key is None else key, []).append(point)
    size = max_batch or max((len(g) for g in groups.values()), default=1)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


# --------------------------------------------------------------------------------------------
# Work: one batch, run in a worker process, a Ray task or in-process


def estimate_point(config: Config, fast: bool = False) -> dict[str, Any]:
    """Resources, Fmax and cycles per sample of the hardware for ``config`` (synthesis and
    place-and-route through :func:`pbhw.tools.estimate.estimate`, or its analytic model)."""
    result = estimate_module.estimate(config, fast=fast)
    est = result.to_json()

    def pick(*names: str) -> Any:
        # Resource counts are "lut" or "lut_used" in an estimate's JSON row.
        return next((est[n] for n in names if n in est), None)

    cycles = pick("predicted_cycles_per_sample", "cycles_per_sample")
    if cycles is None:
        cycles = getattr(result, "predicted_cycles_per_sample", None)
    out = {key: pick(key, f"{key}_used") for key in ("lut", "ff", "dsp", "bram_bits")}
    out.update(
        fmax_mhz=est.get("fmax_mhz"),
        fits=est.get("fits"),
        cycles_per_sample=cycles,
        method=est.get("method", "synthesis"),
    )
    return out


def fast_estimate_point(config: Config) -> dict[str, Any]:
    """:func:`estimate_point` with the analytic model (no tools, no Fmax)."""
    return estimate_point(config, fast=True)


def _train_record(result: Any, diverged: str | None) -> dict[str, Any]:
    if diverged is not None:
        return {**dict.fromkeys(TRAIN_COLUMNS), "diverged": diverged}
    return {
        "test_accuracy": result.test_accuracy,
        "train_accuracy": result.train_accuracy,
        "final_loss": result.final_loss,
        "saturation_total": result.extra.get("saturation_total"),
        "collapsed": result.extra["collapsed"],
        "diverged": None,
        "saturation": result.extra.get("saturation"),
    }


def run_batch(
    configs: Sequence[Mapping[str, Any]],
    estimate: bool = False,
    estimator: Callable[[Config], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train the configs (resolved dictionaries, as :meth:`Config.to_dict` gives) in one run and,
    with ``estimate``, estimate each; one record per config, as stored in ``points/``.

    Takes dictionaries, not :class:`Config` objects, so it can be shipped to other processes."""

    cfgs = [from_dict(c) for c in configs]
    start = time.perf_counter()
    # One dataset for the batch (a batch shares train.dataset): its hash is what was trained on.
    data = load_dataset(cfgs[0].train.dataset)
    origin = provenance(cfgs[0].train.dataset, data.content_hash)
    try:
        results = train_many(cfgs, dataset=data)
        diverged = [r.extra.get("diverged") for r in results]
    except TrainingDiverged as e:  # a config trained alone stops at divergence
        results, diverged = [None], [str(e)]
    seconds = (time.perf_counter() - start) / len(cfgs)
    records = []
    for cfg, result, div in zip(cfgs, results, diverged, strict=True):
        record: dict[str, Any] = {
            "key": config_key(cfg),
            "config": cfg.to_dict(),
            "provenance": origin,
            "train": _train_record(result, div),
            "train_seconds": seconds,
        }
        if estimate:
            start = time.perf_counter()
            record["estimate"] = (estimator or estimate_point)(cfg)
            record["estimate_seconds"] = time.perf_counter() - start
        records.append(record)
    return records


def _init_worker(threads: int) -> None:
    """Worker initializer: keep workers x threads within the machine's cores, and leave
    Ctrl-C to the parent, which stops the pool."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def require_ray() -> Any:
    """The ``ray`` module, or :class:`SweepError` saying how to install it."""
    try:
        import ray  # optional (pbhw[ray]), and 0.6 s to import
    except ImportError:
        raise SweepError(
            "--backend ray needs Ray, which is not installed: pip install 'pbhw[ray]'"
        ) from None
    return ray


Batch = list[dict[str, Any]]


def _run_in_process(batches: Sequence[Batch], estimate: bool, estimator: Any) -> Iterator[Batch]:
    for batch in batches:
        yield run_batch(batch, estimate, estimator)


def _run_local(
    batches: Sequence[Batch], estimate: bool, estimator: Any, workers: int
) -> Iterator[Batch]:

    # spawn, not fork: forking a process that has used torch's thread pool can deadlock.
    # A multiprocessing pool rather than concurrent.futures: on an interrupt or an error it
    # can stop the workers at once (terminate) instead of letting them finish queued batches.
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = context.Pool(workers, initializer=_init_worker, initargs=(threads,))
    try:
        jobs = [(batch, estimate, estimator) for batch in batches]
        yield from pool.imap_unordered(_run_batch_job, jobs)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _run_batch_job(job: tuple[Batch, bool, Any]) -> list[dict[str, Any]]:
    return run_batch(*job)


def _run_ray(
    batches: Sequence[Batch],
    estimate: bool,
    estimator: Any,
    workers: int,
    address: str | None,
) -> Iterator[Batch]:
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR"}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers, **options)
    pending: list[Any] = []
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_batch)
        pending = [task.remote(batch, estimate, estimator) for batch in batches]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref)
        if started:
            ray.shutdown()


def run_points(
    points: Sequence[Point],
    out_dir: Path,
    *,
    estimate: bool = False,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    estimator: Callable[[Config], dict[str, Any]] | None = None,
    on_start: Callable[[int, int, int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_stale: Callable[[Point, list[str]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the unfinished points and return every point's record by key.

    Finished points are read from ``out_dir/points``: one is resumed only if its config and its
    provenance (the dataset's content hash, pbhw's version and code, :func:`provenance`) equal
    the run's; a stale one is run again and reported to ``on_stale(point, reasons)``. Each newly
    finished point is written there at once. ``on_start(total, resumed, batches)`` is called
    before the work starts and ``on_batch(points)`` as each batch finishes. ``estimator``
    replaces :func:`estimate_point` (it must be picklable by reference for process and Ray
    backends)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    workers = workers or os.cpu_count() or 1
    if estimate and estimator is None:
        estimator = estimate_point  # looked up here so that a replacement reaches the workers
    store = out_dir / "points"
    records: dict[str, dict[str, Any]] = {}
    todo: list[Point] = []
    for point in {p.key: p for p in points}.values():
        method = "analytic" if estimator is fast_estimate_point else "synthesis"
        record = _read_record(store / f"{point.key}.json", point.key, method if estimate else False)
        if record is not None:
            expected = provenance(point.config.train.dataset, point.dataset_sha256)
            reasons = stale_reasons(record.get("provenance"), expected)
            if reasons:
                record = None
                if on_stale is not None:
                    on_stale(point, reasons)
        if record is None:
            todo.append(point)
        else:
            records[point.key] = record
    batches = [
        [p.config.to_dict() for p in batch]
        for batch in group_points(todo, max_batch=math.ceil(len(todo) / workers) or None)
    ]
    if on_start is not None:
        on_start(len(records) + len(todo), len(records), len(batches))
    if not batches:
        return records
    if backend == "ray":
        finished = _run_ray(batches, estimate, estimator, workers, address)
    elif workers == 1 or len(batches) == 1:
        finished = _run_in_process(batches, estimate, estimator)
    else:
        finished = _run_local(batches, estimate, estimator, min(workers, len(batches)))
    try:
        for batch in finished:
            for record in batch:
                write_atomic(store / f"{record['key']}.json", _dumps(record))
                records[record["key"]] = record
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        finished.close()  # stops the workers if the loop ended early (Ctrl-C, an error)
    return records


def _read_record(path: Path, key: str, estimate: bool | str) -> dict[str, Any] | None:
    """A finished point's record, or ``None`` if absent, unreadable or missing the estimate."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or "train" not in record:
        return None
    if estimate and "estimate" not in record:
        return None
    if isinstance(estimate, str) and record["estimate"].get("method", "synthesis") != estimate:
        return None  # estimated by the other method
    return record


# --------------------------------------------------------------------------------------------
# Results


_POINT_FILE = re.compile(r"[0-9a-f]{16}\.json")


def _recorded_spec(path: Path) -> dict[str, Any] | None:
    """The spec an earlier ``pbhw sweep`` recorded in ``path`` (``sweep.json``, written when it
    started, or ``results.json``), or None."""
    for name in ("sweep.json", "results.json"):
        try:
            data = json.loads((Path(path) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        spec = data.get("spec") if isinstance(data, dict) else None
        if isinstance(spec, dict) and str(spec.get("command", "")).startswith("pbhw sweep"):
            return spec
    return None


def check_same_grid(out_dir: Path, spec: Mapping[str, Any], option: str = "-o") -> None:
    """Refuse to add a sweep's points to an output folder made for another grid.

    Raises
    ------
    SweepError
        If ``out_dir`` holds a ``pbhw sweep`` output whose grid (keys and values, in order)
        is not ``spec["grid"]``: its report would mix the two.
    """
    old = _recorded_spec(out_dir)
    if old is None or json.dumps(old.get("grid")) == json.dumps(list(spec["grid"])):
        return

    def text(grid: Any) -> str:
        try:
            return " ".join(
                f"--grid {a['key']}={','.join(_cell(v) for v in a['values'])}" for a in grid
            )
        except (TypeError, KeyError):
            return repr(grid)

    raise SweepError(
        f"{option} {out_dir} holds a sweep over another grid ({text(old.get('grid'))}), not "
        f"{text(spec['grid'])}; choose another output folder, or rerun with that grid to resume it"
    )


def record_spec(out_dir: Path, spec: Mapping[str, Any]) -> None:
    """Write ``sweep.json`` (the spec) before any point runs, so that even an interrupted sweep's
    folder says which grid it belongs to (:func:`check_same_grid`)."""
    write_atomic(Path(out_dir) / "sweep.json", _dumps({"spec": dict(spec)}))


def is_sweep_output(path: Path) -> bool:
    """Whether ``path`` holds an earlier (perhaps interrupted) output of ``pbhw sweep``: its
    ``sweep.json`` or ``results.json``, or a ``points/`` folder of nothing but point records."""
    if _recorded_spec(path) is not None:
        return True
    points = Path(path) / "points"
    if not points.is_dir():
        return False
    names = [p.name for p in points.iterdir()]
    return bool(names) and all(_POINT_FILE.fullmatch(n) or n.startswith(".") for n in names)


def weight_bits(config: Config) -> int:
    """Bits of weight memory: every stage's weights (and biases) at its weight width."""
    bias = 1 if config.network.bias else 0
    layers = config.network.layers
    return sum(
        (n_in + bias) * n_out * fmt.weight.format.width
        for n_in, n_out, fmt in zip(layers[:-1], layers[1:], config.layer_formats, strict=True)
    )


def _throughput(est: Mapping[str, Any], clock_mhz: float) -> dict[str, Any]:
    """Samples/s at the routed Fmax or, without one, at the target clock (the analytic estimate,
    ``throughput_estimated``), and per DSP block and per LUT of the design."""
    fmax, cycles = est.get("fmax_mhz"), est.get("cycles_per_sample")
    estimated = not fmax
    throughput = (clock_mhz if estimated else fmax) * 1e6 / cycles if cycles else None
    dsp, lut = est.get("dsp"), est.get("lut")
    return {
        "throughput": throughput,
        "throughput_estimated": estimated if throughput is not None else None,
        "throughput_per_dsp": throughput / dsp if throughput and dsp else None,
        "throughput_per_lut": throughput / lut if throughput and lut else None,
    }


def result_rows(
    points: Sequence[Point], records: Mapping[str, Mapping[str, Any]], estimate: bool
) -> list[dict[str, Any]]:
    """One row per point, in grid order: the grid's values, training results, and with
    ``estimate`` resources, Fmax and throughput (samples/s at the routed Fmax, else at the target
    clock ``hardware.clock_mhz`` with ``throughput_estimated`` true; and per DSP block and per
    LUT). No timings, so rows are the same whatever ran them."""
    rows = []
    for point in points:
        record = records[point.key]
        train = record["train"]
        row: dict[str, Any] = {
            "grid": dict(point.values),
            **{column: train[column] for column in TRAIN_COLUMNS},
            "saturation": train.get("saturation"),
            "weight_bits": weight_bits(point.config),
        }
        if estimate:
            est = record["estimate"]
            row.update({column: est.get(column) for column in ESTIMATE_COLUMNS[:7]})
            row.update(_throughput(est, point.config.hardware.clock_mhz))
        row["key"] = point.key
        rows.append(row)
    return rows


def _csv_text(rows: Sequence[Mapping[str, Any]], grid_keys: Sequence[str]) -> str:
    """The rows as CSV. Booleans are ``true``/``false`` in every column, ``diverged`` too (its
    reason is in ``diverged_reason``); an empty cell is a value that does not exist (the
    accuracy or ``collapsed`` of a diverged point, the Fmax of an unrouted design)."""
    names = [k for k in rows[0] if k not in ("grid", "saturation")]
    at = names.index("diverged") + 1 if "diverged" in names else len(names)
    columns = [*grid_keys, *names[:at], "diverged_reason", *names[at:]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = {
            **row,
            "diverged": bool(row.get("diverged")),
            "diverged_reason": row.get("diverged"),
        }
        cells = [row["grid"][k] for k in grid_keys] + [values[k] for k in columns[len(grid_keys) :]]
        writer.writerow(["" if v is None else _cell(v) for v in cells])
    return out.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2, allow_nan=False) + "\n"


def write_results(
    out_dir: Path,
    spec: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """Write ``results.csv``, ``results.json``, ``pareto.png`` and ``report.md`` (atomically)."""

    grid_keys = [axis["key"] for axis in spec["grid"]]
    axes = report.front_axes(rows)
    front = report.pareto_keys(rows, axes)
    payload = {"spec": dict(spec), "front_axes": axes, "pareto": front, "points": list(rows)}
    write_atomic(out_dir / "results.csv", _csv_text(rows, grid_keys))
    write_atomic(out_dir / "results.json", _dumps(payload))
    report.plot_pareto(out_dir / "pareto.png", rows, axes[0], front, grid_keys)
    write_atomic(out_dir / "report.md", report.render_markdown(spec, rows, axes, front))
