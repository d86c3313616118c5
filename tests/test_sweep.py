"""Sweeps: grid parsing and validation, batching, determinism, resume, outputs, backends."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pbhw.flows.sweep as engine
from pbhw.cli.sweep import sweep
from pbhw.core.config import ConfigError
from pbhw.core.datasets import load as load_dataset
from pbhw.flows.sweep import GridAxis, expand, group_points, parse_grid, run_batch, run_points
from pbhw.tools.train import train

#: A small network on a slice of digits: a fixed-point epoch takes a fraction of a second.
TINY = """\
name = "tiny"
[network]
layers = [64, 12, 10]
[train]
dataset = "npz:{data}"
epochs = 1
arith = "fixed"
"""

GRID = [
    "--grid",
    "formats.weight.width=10,12,14",
    "--grid",
    "formats.weight.rounding=half_even,stochastic",
]


@pytest.fixture(scope="session")
def digits_slice(tmp_path_factory) -> Path:
    data = load_dataset("digits")
    path = tmp_path_factory.mktemp("data") / "digits_slice.npz"
    np.savez(
        path,
        X=data.x_train[:300].numpy(),
        y=data.y_train[:300].numpy(),
        X_test=data.x_test[:100].numpy(),
        y_test=data.y_test[:100].numpy(),
    )
    return path


@pytest.fixture
def tiny(tmp_path: Path, digits_slice: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(data=digits_slice))
    return path


@pytest.fixture
def raw(digits_slice: Path) -> dict:
    return {
        "name": "tiny",
        "network": {"layers": [64, 12, 10]},
        "train": {"epochs": 1, "arith": "fixed", "dataset": f"npz:{digits_slice}"},
    }


def _run(args: list[str]):
    return CliRunner().invoke(sweep, args, catch_exceptions=False)


def fake_estimate(config) -> dict:
    """A deterministic stand-in for pbhw.tools.estimate (plumbing tests only): cost grows with
    width."""
    width = config.formats.weight.format.width
    stochastic = config.formats.weight.rounding.value == "stochastic"
    return {
        "lut": 1000 * width + (300 if stochastic else 0),
        "ff": 800 * width,
        "dsp": 2 * width,
        "bram_bits": 64 * 12 * width,
        "fmax_mhz": 150.0 - width,
        "fits": True,
        "cycles_per_sample": 400,
    }


# --------------------------------------------------------------------------------------------
# grid


def test_grid_values_are_read_like_set_values():
    assert parse_grid("formats.weight.width=8,12,16") == GridAxis(
        "formats.weight.width", ("8", "12", "16"), (8, 12, 16)
    )
    assert parse_grid("formats.weight.rounding=floor, half_even").values == ("floor", "half_even")
    assert parse_grid('train.dataset="digits",mnist1d').values == ("digits", "mnist1d")
    assert parse_grid("optimizer.lr=0.05,1e-2").values == (0.05, 0.01)
    assert parse_grid("hardware.lanes=[1,2],[2, 4]").values == ([1, 2], [2, 4])
    assert parse_grid("optimizer.spike_compensation=true,false").values == (True, False)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("formats.weight.width", "KEY=V1,V2"),
        ("=8,12", "KEY=V1,V2"),
        ("formats.weight.width=", "KEY=V1,V2"),
        ("formats.weight.width=8,,12", "empty value"),
        ("formats.weight.width=8,12,8", "listed twice"),
    ],
)
def test_malformed_grid_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(spec)


def test_points_are_the_cartesian_product_in_grid_order(raw):
    axes = [parse_grid("formats.weight.width=10,12"), parse_grid("seed=1,2,3")]
    points = expand(raw, axes)
    assert [(p.values["formats.weight.width"], p.values["seed"]) for p in points] == [
        (10, 1),
        (10, 2),
        (10, 3),
        (12, 1),
        (12, 2),
        (12, 3),
    ]
    assert points[4].config.formats.weight.format.width == 12 and points[4].config.seed == 2
    assert len({p.key for p in points}) == 6


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("formats.wieght.width=8,12", "unknown config key 'formats.wieght'.*did you mean"),
        ("formats.weight.width=8,99", r"grid point formats.weight.width=99: .*width"),
        ("formats.weight.rounding=floor,nearest", "grid point .*must be one of"),
        ("network.layers=[64,10],[63,10]", "grid point .*needs 64 inputs"),
        ("formats.weight.width=8,40", "grid point .*bits"),  # accumulator too wide to model
    ],
)
def test_a_bad_grid_point_is_one_config_error_naming_it(raw, spec, message):
    with pytest.raises(ConfigError, match=message):
        expand(raw, [parse_grid(spec)])


def test_cli_bad_grid_exits_2_and_writes_nothing(tiny, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        sweep, [str(tiny), "--grid", "formats.weight.widht=8,12", "-o", str(out)]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: grid point formats.weight.widht=8")
    assert "did you mean 'formats.weight.width'" in result.stderr
    assert not out.exists()


def test_fixed_point_sgd_batches_are_refused_before_any_work(tiny, tmp_path, monkeypatch):
    """The sweep default is fixed point, which trains sgd one sample per update: a batch
    point is refused up front, naming it, not trained as another algorithm."""
    monkeypatch.setattr(engine, "run_batch", lambda *a: pytest.fail("work started"))
    out = tmp_path / "out"
    grid = ["--grid", "optimizer.batch_size=1,32", "--set", "optimizer.algorithm=sgd"]
    result = CliRunner().invoke(sweep, [str(tiny), *grid, "-o", str(out)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: grid point optimizer.batch_size=32: ")
    assert "must be 1 when train.arith is 'fixed'" in line
    assert not out.exists()


def test_cli_grid_key_twice_and_address_without_ray_are_errors(tiny, tmp_path):
    out = tmp_path / "out"
    twice = ["--grid", "seed=1,2", "--grid", "seed=3"]
    result = CliRunner().invoke(sweep, [str(tiny), *twice, "-o", str(out)])
    assert result.exit_code == 2 and "given twice" in result.stderr
    result = CliRunner().invoke(sweep, [str(tiny), *GRID, "--address", "auto", "-o", str(out)])
    assert result.exit_code == 2 and "--address is for --backend ray" in result.stderr
    assert not out.exists()


def test_missing_ray_says_how_to_install_it(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "out"
    result = CliRunner().invoke(sweep, [str(tiny), *GRID, "--backend", "ray", "-o", str(out)])
    assert result.exit_code == 2
    assert "pip install 'pbhw[ray]'" in result.stderr
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# batching and determinism


def test_points_that_differ_in_formats_and_constants_share_a_batch(raw):
    axes = [
        parse_grid("formats.weight.width=10,12"),
        parse_grid("optimizer.lr=0.05,0.1"),
        parse_grid("network.layers=[64,12,10],[64,8,10]"),
    ]
    points = expand(raw, axes)
    batches = group_points(points)
    assert len(batches) == 2  # one per network shape, each holding 2 widths x 2 lrs
    for batch in batches:
        assert len(batch) == 4
        assert len({p.config.network.layers for p in batch}) == 1
    assert [len(b) for b in group_points(points, max_batch=3)] == [3, 1, 3, 1]


def test_float_points_and_points_with_other_seeds_train_apart(raw):
    axes = [parse_grid("seed=1,2"), parse_grid("train.arith=fixed,float")]
    batches = group_points(expand(raw, axes))
    assert sorted(len(b) for b in batches) == [1, 1, 1, 1]


def test_batched_results_equal_one_by_one_runs(raw):
    axes = [
        parse_grid("formats.weight.width=10,14"),
        parse_grid("formats.weight.rounding=half_even,stochastic"),
    ]
    points = expand(raw, axes)
    (batch,) = group_points(points)
    records = run_batch([p.config.to_dict() for p in batch])
    for point, record in zip(points, records, strict=True):
        alone = train(point.config)
        assert record["key"] == point.key
        assert record["train"]["test_accuracy"] == alone.test_accuracy
        assert record["train"]["final_loss"] == alone.final_loss
        assert record["train"]["saturation"] == alone.extra["saturation"]


# --------------------------------------------------------------------------------------------
# the command: outputs, resume


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_csv_json_png_and_report(tiny, tmp_path):
    out = tmp_path / "out"
    result = _run([str(tiny), *GRID, "--workers", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 points: 0 resumed" in result.stderr
    assert "best test accuracy" in result.stdout
    rows = _rows(out)
    assert len(rows) == 6
    assert list(rows[0])[:3] == ["formats.weight.width", "formats.weight.rounding", "test_accuracy"]
    assert [(r["formats.weight.width"], r["formats.weight.rounding"]) for r in rows[:2]] == [
        ("10", "half_even"),
        ("10", "stochastic"),
    ]
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
    data = json.loads((out / "results.json").read_text())
    assert data["spec"]["grid"][0] == {"key": "formats.weight.width", "values": [10, 12, 14]}
    assert data["spec"]["command"].startswith("pbhw sweep ")
    assert data["front_axes"] == ["weight_bits"]
    assert set(data["pareto"]) <= {p["key"] for p in data["points"]}
    assert all("saturation" in p for p in data["points"])
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert data["spec"]["command"] in report and "## Pareto front" in report
    assert len(list((out / "points").glob("*.json"))) == 6
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_rerun_resumes_and_computes_only_missing_points(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = [str(tiny), *GRID, "--workers", "1", "-o", str(out)]
    assert _run(args).exit_code == 0
    before = (out / "results.csv").read_text()
    computed: list[str] = []
    real_run_batch = engine.run_batch

    def counting_run_batch(configs, *rest):
        computed.extend(c["formats"]["weight"]["width"] for c in configs)
        return real_run_batch(configs, *rest)

    monkeypatch.setattr(engine, "run_batch", counting_run_batch)
    result = _run(args)
    assert "6 points: 6 resumed" in result.stderr and computed == []

    point_files = sorted((out / "points").glob("*.json"))
    victim = json.loads(point_files[0].read_text())
    point_files[0].unlink()
    result = _run(args)
    assert "6 points: 5 resumed" in result.stderr
    assert computed == [victim["config"]["formats"]["weight"]["width"]]
    assert (out / "results.csv").read_text() == before

    # Another grid in the same folder is refused (test_an_output_folder_of_another_grid_...).
    computed.clear()
    grid = ["--grid", "formats.weight.width=12,16", "--grid", "formats.weight.rounding=half_even"]
    result = _run([str(tiny), *grid, "--workers", "1", "-o", str(out)])
    assert result.exit_code == 2 and computed == []
    assert (out / "results.csv").read_text() == before


@pytest.fixture
def own_data(tmp_path: Path, digits_slice: Path) -> Path:
    """A private copy of the digits slice that a test may change."""
    path = tmp_path / "data.npz"
    path.write_bytes(digits_slice.read_bytes())
    return path


def test_a_changed_dataset_behind_the_same_path_is_not_resumed(tmp_path, own_data, monkeypatch):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(data=own_data))
    out = tmp_path / "out"
    args = [str(config), "--grid", "formats.weight.width=10,12", "--workers", "1", "-o", str(out)]
    assert _run(args).exit_code == 0
    before = (out / "results.csv").read_text()
    result = _run(args)
    assert "2 points: 2 resumed" in result.stderr
    assert "same config, dataset content and pbhw code" in result.stderr

    # The same path now holds other data: every point is trained again, and stderr says why.
    with np.load(own_data) as archive:
        arrays = dict(archive)
    arrays["y"] = (arrays["y"] + 1) % 10
    np.savez(own_data, **arrays)
    computed: list[int] = []
    real_run_batch = engine.run_batch

    def counting_run_batch(configs, *rest):
        computed.extend(c["formats"]["weight"]["width"] for c in configs)
        return real_run_batch(configs, *rest)

    monkeypatch.setattr(engine, "run_batch", counting_run_batch)
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert "2 points: 0 resumed" in result.stderr
    assert sorted(computed) == [10, 12]
    assert "2 finished point(s) are stale and run again" in result.stderr
    assert f"the content of dataset npz:{own_data} changed" in result.stderr
    assert (out / "results.csv").read_text() != before
    result = _run(args)
    assert "2 points: 2 resumed" in result.stderr and sorted(computed) == [10, 12]


def test_points_trained_by_other_code_or_without_provenance_are_not_resumed(
    tiny, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    args = [str(tiny), "--grid", "formats.weight.width=10,12", "--workers", "1", "-o", str(out)]
    assert _run(args).exit_code == 0
    monkeypatch.setattr(engine, "code_fingerprint", lambda: "0" * 64)
    result = _run(args)
    assert "2 points: 0 resumed" in result.stderr
    assert "pbhw's code changed since they were trained" in result.stderr
    assert "2 points: 2 resumed" in _run(args).stderr

    # A record written before records carried their provenance is not trusted either.
    victim = sorted((out / "points").glob("*.json"))[0]
    record = json.loads(victim.read_text())
    del record["provenance"]
    victim.write_text(json.dumps(record))
    result = _run(args)
    assert "2 points: 1 resumed" in result.stderr
    assert "1 finished point(s) are stale and run again: no record of the dataset" in result.stderr


def test_estimate_columns_and_throughput_plumbing(tiny, tmp_path, monkeypatch):
    """Plumbing only: pbhw.tools.estimate is replaced by a deterministic fake (the real end-to-end
    test lives with the estimator)."""
    monkeypatch.setattr(engine, "estimate_point", fake_estimate)
    out = tmp_path / "out"
    result = _run([str(tiny), *GRID, "--estimate", "--workers", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    for row in rows:
        width = int(row["formats.weight.width"])
        assert int(row["dsp"]) == 2 * width and row["fits"] == "true"
        assert float(row["throughput"]) == pytest.approx((150.0 - width) * 1e6 / 400)
    data = json.loads((out / "results.json").read_text())
    assert data["front_axes"] == ["throughput_per_dsp", "throughput_per_lut"]
    assert all(row["throughput_estimated"] == "false" for row in rows)
    assert "Fmax MHz" in (out / "report.md").read_text()

    # An earlier run without --estimate does not count as finished for an --estimate run.
    out2 = tmp_path / "out2"
    assert _run([str(tiny), *GRID, "--workers", "1", "-o", str(out2)]).exit_code == 0
    result = _run([str(tiny), *GRID, "--estimate", "--workers", "1", "-o", str(out2)])
    assert "6 points: 0 resumed" in result.stderr
    assert (out2 / "results.csv").read_text() == (out / "results.csv").read_text()


# --------------------------------------------------------------------------------------------
# backends


@pytest.mark.slow
def test_process_pool_and_ray_give_the_results_of_an_in_process_run(tiny, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'pbhw[ray]'")
    outs = {}
    for name, options in (
        ("serial", ["--workers", "1"]),
        ("pool", ["--workers", "2"]),
        ("ray", ["--backend", "ray", "--workers", "2"]),
    ):
        outs[name] = tmp_path / name
        result = _run([str(tiny), *GRID, *options, "-o", str(outs[name])])
        assert result.exit_code == 0, result.output
        assert "in 2 batch(es)" in result.stderr or name == "serial"
    serial = outs["serial"]
    for name in ("pool", "ray"):
        assert (outs[name] / "results.csv").read_text() == (serial / "results.csv").read_text()
        assert (outs[name] / "results.json").read_text().replace(str(outs[name]), str(serial)) == (
            serial / "results.json"
        ).read_text()


@pytest.mark.slow
def test_ray_tasks_carry_the_estimator(raw, tmp_path):
    """Plumbing: a replacement estimator reaches Ray workers and its numbers come back."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'pbhw[ray]'")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    points = expand(raw, [parse_grid("formats.weight.width=10,12")])
    records = run_points(
        points, tmp_path, estimate=True, backend="ray", workers=2, estimator=fake_estimate
    )
    assert [records[p.key]["estimate"]["dsp"] for p in points] == [20, 24]


def test_a_diverged_point_is_reported_and_the_sweep_goes_on(tiny, tmp_path):
    out = tmp_path / "out"
    sets = ["--set", "optimizer.momentum=0.0", "--set", "optimizer.reference_batch=1"]
    grid = ["--grid", "optimizer.lr=0.1,1e4"]
    args = [str(tiny), *grid, *sets, "--arith", "float", "--workers", "1", "-o", str(out)]
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert "1 point(s) diverged" in result.stderr
    good, bad = json.loads((out / "results.json").read_text())["points"]
    assert good["diverged"] is None and good["test_accuracy"] is not None
    assert bad["test_accuracy"] is None and "diverged" in bad["diverged"]
    assert "## Diverged points" in (out / "report.md").read_text()
    # the CSV's booleans are true/false in every column, diverged too
    rows = _rows(out)
    assert [r["diverged"] for r in rows] == ["false", "true"]
    assert rows[1]["diverged_reason"] == bad["diverged"] and rows[0]["diverged_reason"] == ""
    assert rows[0]["collapsed"] in ("true", "false") and rows[1]["collapsed"] == ""


def unrouted_estimate(config) -> dict:
    """:func:`fake_estimate` without a routed Fmax (the analytic model's answer), the widest
    point too big for the device."""
    width = config.formats.weight.format.width
    return {**fake_estimate(config), "fmax_mhz": None, "fits": width < 14}


def test_throughput_without_a_routed_fmax_is_estimated_and_labelled(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "estimate_point", unrouted_estimate)
    out = tmp_path / "out"
    result = _run([str(tiny), *GRID, "--estimate", "--workers", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    for row in rows:  # at the target clock, hardware.clock_mhz = 100, over the cycles
        assert float(row["throughput"]) == 100e6 / 400 and row["throughput_estimated"] == "true"
        assert float(row["throughput_per_dsp"]) == 100e6 / 400 / int(row["dsp"])
        assert row["fits"] == ("true" if int(row["formats.weight.width"]) < 14 else "false")
    data = json.loads((out / "results.json").read_text())
    front = {p["key"]: p for p in data["points"] if p["key"] in data["pareto"]}
    assert front and all(p["fits"] for p in front.values())
    report = (out / "report.md").read_text()
    assert " (est.) |" in report and "(est.): no routed Fmax" in report
    assert "## Points that do not fit the device (never on the front)" in report


def test_an_output_folder_of_another_grid_is_refused(tiny, tmp_path):
    out = tmp_path / "out"
    assert _run([str(tiny), "--grid", "formats.weight.width=10,12", "-o", str(out)]).exit_code == 0
    before = sorted(p.name for p in (out / "points").iterdir())
    result = _run([str(tiny), "--grid", "formats.weight.width=10,14", "-o", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: -o {out} holds a sweep over another grid (--grid formats.weight.width=10,12), "
        "not --grid formats.weight.width=10,14; choose another output folder, or rerun with "
        "that grid to resume it"
    ]
    assert sorted(p.name for p in (out / "points").iterdir()) == before
    # the same grid resumes
    result = _run([str(tiny), "--grid", "formats.weight.width=10,12", "-o", str(out)])
    assert result.exit_code == 0 and "2 resumed" in result.stderr


def test_an_interrupted_folder_of_another_grid_is_refused(tiny, tmp_path):
    """sweep.json is written before any point runs: a folder without results.json is checked."""
    out = tmp_path / "out"
    spec = {"command": "pbhw sweep x", "grid": [{"key": "seed", "values": [1, 2]}]}
    engine.record_spec(out, spec)
    result = _run([str(tiny), "--grid", "formats.weight.width=10,12", "-o", str(out)])
    assert result.exit_code == 2 and "holds a sweep over another grid (--grid seed=1,2)" in (
        result.stderr
    )


@pytest.mark.parametrize("suffix", ["", "_used"])
def test_estimate_point_reads_an_estimate_row(raw, monkeypatch, suffix):
    """Plumbing: the row's resource keys may be ``lut`` or ``lut_used``."""
    import pbhw.tools.estimate

    class FakeEstimate:
        predicted_cycles_per_sample = 500

        def to_json(self):
            row = {f"{k}{suffix}": n for k, n in (("lut", 9), ("ff", 8), ("dsp", 7))}
            return {**row, f"bram_bits{suffix}": 6, "fmax_mhz": 50.0, "fits": True}

    calls = []
    monkeypatch.setattr(
        pbhw.tools.estimate,
        "estimate",
        lambda config, fast: calls.append(fast) or FakeEstimate(),
        raising=False,
    )
    (point,) = expand(raw, [parse_grid("seed=1")])
    assert engine.estimate_point(point.config) == {
        "lut": 9,
        "ff": 8,
        "dsp": 7,
        "bram_bits": 6,
        "fmax_mhz": 50.0,
        "fits": True,
        "cycles_per_sample": 500,
        "method": "synthesis",
    }
    assert calls == [False]


@pytest.mark.slow
def test_estimated_sweep_is_identical_locally_and_on_ray(tiny, tmp_path):
    """3 weight widths x 2 roundings with the real estimator (its analytic model: place and
    route of every point takes minutes; `pbhw sweep --estimate` without --fast-estimate runs
    Yosys and nextpnr per point the same way)."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'pbhw[ray]'")
    outs = {}
    for name, options in (("local", ["--workers", "2"]), ("ray", ["--backend", "ray"])):
        outs[name] = tmp_path / name
        args = [str(tiny), *GRID, "--estimate", "--fast-estimate", *options, "-o", str(outs[name])]
        result = _run(args)
        assert result.exit_code == 0, result.output
    local = (outs["local"] / "results.csv").read_text()
    assert (outs["ray"] / "results.csv").read_text() == local
    rows = list(csv.DictReader(local.splitlines()))
    assert len(rows) == 6
    dsp = {row["formats.weight.width"]: int(row["dsp"]) for row in rows}
    assert all(n > 0 for n in dsp.values())
    luts = [int(row["lut"]) for row in rows]
    assert len(set(luts)) > 1  # the width reaches the estimate


# --------------------------------------------------------------------------------------------
# interruption


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_sweep_stops_its_workers_and_keeps_finished_points(
    tmp_path, digits_slice, signum
):
    """A real ``pbhw sweep`` in a subprocess with two worker processes: one point finishes at
    once, two would train for minutes; the signal arrives while they run."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(data=digits_slice))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "pbhw", "sweep", str(config), "--workers", "2", "-o", str(out)]
    args += ["--grid", "train.epochs=1,500,501"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # Files, not pipes: workers that outlive the sweep would hold pipes open.
    stderr_file = tmp_path / "stderr.txt"
    with stderr_file.open("wb") as err:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not list((out / "points").glob("*.json")):
            assert proc.poll() is None, stderr_file.read_text()
            assert time.monotonic() < deadline, "the quick point never finished"
            time.sleep(0.2)
        time.sleep(1.0)  # the pool hands the next point to the free worker
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers  # two workers (and multiprocessing's tracker)
        proc.send_signal(signum)
        proc.wait(timeout=60)
        text = stderr_file.read_text()
        assert proc.returncode == 128 + signum, text
        assert "Traceback" not in text
        lines = [line for line in text.splitlines() if line.startswith("interrupted")]
        assert len(lines) == 1, text
        assert f"finished points are kept in {out / 'points'}" in lines[0]
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the sweep"
        (point,) = (out / "points").glob("*.json")
        assert json.loads(point.read_text())["config"]["train"]["epochs"] == 1
        assert not (out / "results.csv").exists()
        assert not list(out.rglob(".*"))  # no temporary files
    finally:
        for pid in {proc.pid, *workers}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
