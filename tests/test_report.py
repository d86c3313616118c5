"""Sweep reports: the Pareto front, the cost axis, the plot and the Markdown page."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbhw.core.io import write_atomic
from pbhw.flows.report import (
    front_axes,
    pareto_front,
    pareto_keys,
    plot_pareto,
    point_label,
    render_markdown,
)


def test_pareto_front_keeps_exactly_the_undominated_points_sorted_by_cost():
    points = [
        (1.0, 0.50),  # 0 front
        (2.0, 0.70),  # 1 front
        (2.0, 0.60),  # 2 dominated by 1 (same cost, lower accuracy)
        (3.0, 0.70),  # 3 dominated by 1 (higher cost, same accuracy)
        (0.5, 0.40),  # 4 front: cheapest
        (None, 0.90),  # 5 no cost: out
        (4.0, None),  # 6 diverged: out
        (5.0, 0.95),  # 7 front: most accurate
        (4.0, 0.65),  # 8 dominated by 1
    ]
    assert pareto_front(points) == [4, 0, 1, 7]


def test_pareto_front_keeps_ties_and_handles_degenerate_inputs():
    assert pareto_front([(1, 0.5), (1, 0.5)]) == [0, 1]
    assert pareto_front([]) == []
    assert pareto_front([(None, None)]) == []
    assert pareto_front([(3, 0.2)]) == [0]


def _row(key, acc, **extra):
    return {"key": key, "grid": {"formats.weight.width": key}, "test_accuracy": acc, **extra}


def test_front_axes_are_throughput_per_resource_else_weight_bits():
    timed = [_row(1, 0.5, dsp=2, lut=9, throughput=10.0), _row(2, 0.6, dsp=4, lut=9, throughput=5)]
    assert front_axes(timed) == ["throughput_per_dsp", "throughput_per_lut"]
    no_dsp = [_row(1, 0.5, dsp=0, lut=9, throughput=10.0), _row(2, 0.6, dsp=4, lut=9)]
    assert front_axes(no_dsp) == ["throughput_per_lut"]
    assert front_axes([_row(1, 0.5, weight_bits=8), _row(2, 0.6, weight_bits=12)]) == [
        "weight_bits"
    ]
    rows = [_row(8, 0.5, weight_bits=1), _row(12, 0.7, weight_bits=3), _row(16, 0.6, weight_bits=5)]
    assert pareto_keys(rows, ["weight_bits"]) == [8, 12]


def test_front_is_throughput_per_resource_not_dsp_count():
    """A slow design with few DSP blocks does not dominate a fast one with more: per LUT the
    fast one does more, so both are on the front (on today's main the front was accuracy
    against DSP count, and the 2,099-cycle design alone was on it)."""
    slow = _row("slow", 0.9, dsp=20, lut=9000, fits=True)
    fast = _row("fast", 0.9, dsp=114, lut=28000, fits=True)
    for row, cycles in ((slow, 2099), (fast, 371)):
        row["throughput"] = 88e6 / cycles
        row["throughput_per_dsp"] = row["throughput"] / row["dsp"]
        row["throughput_per_lut"] = row["throughput"] / row["lut"]
    axes = front_axes([slow, fast])
    assert pareto_keys([slow, fast], axes) == ["slow", "fast"]  # sorted by samples/s per DSP
    slow["test_accuracy"] = 0.89  # no longer better on any axis but samples/s per DSP
    assert pareto_keys([slow, fast], axes) == ["slow", "fast"]
    slow["dsp"], slow["throughput_per_dsp"] = 40, slow["throughput"] / 40
    assert pareto_keys([slow, fast], axes) == ["fast"]  # beaten on every axis


def test_a_design_that_does_not_fit_is_never_on_the_front():
    big = _row("big", 0.95, dsp=400, lut=90000, throughput=1e6, fits=False, weight_bits=8)
    small = _row("small", 0.80, dsp=10, lut=9000, throughput=1e4, fits=True, weight_bits=8)
    for row in (big, small):
        row["throughput_per_dsp"] = row["throughput"] / row["dsp"]
        row["throughput_per_lut"] = row["throughput"] / row["lut"]
    assert pareto_keys([big, small], front_axes([big, small])) == ["small"]
    text = render_markdown(
        {**_spec(), "estimate": True}, [big, small], front_axes([big, small]), ["small"]
    )
    assert "## Points that do not fit the device (never on the front)" in text
    assert "* width=big" in text and "| **no** |" in text


def _spec():
    return {
        "command": "pbhw sweep c.toml --grid formats.weight.width=8,12,16 -o out",
        "name": "demo",
        "grid": [{"key": "formats.weight.width", "values": [8, 12, 16]}],
        "dataset": "digits",
        "epochs": 1,
        "estimate": False,
    }


def _rows():
    return [
        _row(8, 0.40, weight_bits=800, saturation_total=10, diverged=None),
        _row(12, 0.90, weight_bits=1200, saturation_total=0, diverged=None),
        _row(16, 0.85, weight_bits=1600, saturation_total=0, diverged=None),
        _row(20, None, weight_bits=2000, saturation_total=None, diverged="training diverged"),
    ]


def test_point_labels_shorten_keys_but_keep_them_apart():
    row = {"grid": {"formats.weight.width": 8, "formats.error.width": 12, "seed": 1}}
    assert point_label(row, list(row["grid"])) == "weight.width=8 error.width=12 seed=1"
    assert point_label(row, ["formats.weight.width", "seed"]) == "width=8 seed=1"


def test_markdown_lists_points_by_accuracy_then_the_front(tmp_path):
    rows = _rows()
    text = render_markdown(_spec(), rows, ["weight_bits"], pareto_keys(rows, ["weight_bits"]))
    assert _spec()["command"] in text
    table = text.split("## Points by test accuracy")[1].split("## Pareto front")[0]
    order = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert order[1:] == ["12", "16", "8", "20"]  # after the header; diverged last
    front = text.split("## Pareto front")[1].split("![")[0]
    assert "| 8 |" in front and "| 12 |" in front and "| 16 |" not in front
    assert "## Diverged points" in text and "width=20: training diverged" in text


def test_plot_is_a_png_written_atomically(tmp_path):
    rows = _rows()
    path = tmp_path / "pareto.png"
    plot_pareto(
        path, rows, "weight_bits", pareto_keys(rows, ["weight_bits"]), ["formats.weight.width"]
    )
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["pareto.png"]


def test_write_atomic_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    write_atomic(path, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("pbhw.core.io.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["report.md"]


@pytest.fixture(scope="module")
def flow_summary():
    """A flow summary of the default example's manifest, with made-up measurements."""
    from pbhw.core.config import load
    from rtl_gen.design import build_design
    from rtl_gen.generate import manifest_of, top_name

    config = load(Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.toml")
    design = build_design(config)
    design.discard()
    manifest = manifest_of(design, top=top_name(config))
    return {
        "config": config.to_dict(),
        "manifest": manifest.to_json(),
        "train_fixed": {"test_accuracy": 0.9, "saturation": {}},
        "train_sgd": {"test_accuracy": 0.91},
        "verify": {
            "bit_exact": True,
            "mismatch": None,
            "samples": 8,
            "steps": 13,
            "simulator": "verilator",
            "measured_cycles_per_sample": 400,
        },
        "estimate": {
            "fmax_mhz": 88.0,
            "fits": True,
            "overflow": {},
            "method": "synthesis",
            "seconds": 1.0,
            "notes": [],
        },
        "reference_mac": {"fmax_mhz": 224.0},
        "pnr_seed": 1,
        "timings": {"generate": 1.0},
    }


def test_flow_report_shows_the_figures_of_merit(flow_summary):
    from pbhw.flows.report import render_flow_report

    m = flow_summary["manifest"]
    assert m["useful_multiplies"] == 8128
    cycles = m["predicted_cycles_per_sample"]
    samples = 88e6 / cycles
    bound = m["dsp_available"] * 224e6 / 8128
    report = render_flow_report(flow_summary)
    assert "## Figures of merit" in report
    assert f"| samples/s at the routed Fmax | {samples:,.0f} | {88e6 / 400:,.0f} |" in report
    assert f"| DSP-bound limit (samples/s) | {bound:,.0f} | {bound:,.0f} |" in report
    efficiency = f"{samples / bound:.3f} | {88e6 / 400 / bound:.3f} |"
    assert f"| device efficiency | {efficiency}" in report
    assert "224.0 MHz placed and routed in the same run" in report
    # without a routed MAC (an older summary): the limit and the efficiency are n/a
    report = render_flow_report({**flow_summary, "reference_mac": None})
    assert "| DSP-bound limit (samples/s) | n/a | n/a |" in report
    assert "| device efficiency | n/a | n/a |" in report


def test_flow_report_shows_the_memory_model(flow_summary):
    from pbhw.flows.report import render_flow_report

    model = flow_summary["manifest"]["memory_model"]
    report = render_flow_report(flow_summary)
    assert "## Memory (bits): pipelined against batch-parallel at batch 32" in report
    one = model["stages"][0]
    # stage 1 of 64-32-32-10: (64 + 1) x 32 weights of 16 bits, velocities of 20 bits; delay 5
    assert (one["weight"], one["velocity"], one["w_prev"]) == (65 * 32 * 16, 65 * 32 * 20, 0)
    assert one["stash"] == 6 * (64 * 16 + 32) and one["batch_activation"] == 32 * 64 * 16
    row = f"| 1 | {one['weight']:,} | {one['velocity']:,} | 0 | {one['stash']:,} |"
    assert row in report
    assert f"| total |  |  |  |  | {model['pipelined']:,} |  | {model['batch']:,} |" in report


def test_flow_report_states_what_was_verified_of_the_training_run(flow_summary):
    from pbhw.flows.report import render_flow_report

    run = {"chosen": True, "predicted_seconds": 133.0, "threshold_seconds": 300.0}
    whole = {
        **flow_summary["verify"],
        "samples": 14370,
        "epochs": 10,
        "rtl_test_accuracy": 0.969444,
        "full_run": run,
    }
    report = render_flow_report({**flow_summary, "verify": whole})
    assert (
        "| whole training run on the RTL | the RTL, trained on all 14,370 samples (10 epochs), "
        "reaches 96.94 % test accuracy, bit-exact with the golden model |" in report
    )
    over = {**run, "chosen": False, "predicted_seconds": 900.0}
    report = render_flow_report(
        {**flow_summary, "verify": {**flow_summary["verify"], "full_run": over}}
    )
    assert "not run: its simulation, predicted at 900 s, is over the 300 s limit" in report
    # an older summary without the entry: no row
    assert "whole training run" not in render_flow_report(flow_summary)
