"""pbhw.cli: ``pbhw check`` output, ``--set`` and how bad input is reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pbhw.cli import main
from pbhw.cli.commands import overflow_summary

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mlp_digits.toml"
PBHW = Path(sys.executable).parent / "pbhw"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def table(output: str, title: str) -> list[dict[str, str]]:
    """The rows of the rich table titled ``title``, as header -> cell dictionaries."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    header: list[str] = []
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("┃"):
            header = [cell.strip() for cell in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows.append(dict(zip(header, cells, strict=True)))
        elif line.startswith("└"):
            break
    return rows


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_config_error(result: Result, *fragments: str) -> None:
    """Exit status 2, one ``error:`` line on stderr holding ``fragments``, nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# pbhw check on good configs


def test_check_prints_delays_and_coefficients_of_the_example():
    result = run("check", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("mlp_digits: 64 -> 32 -> 32 -> 10, loss mse, bias on, seed 0")
    assert "lr 0.1, momentum 0.9 at reference batch 32" in out
    assert "-> lr 0.000102722, momentum 0.996713 at batch 1" in " ".join(out.split())
    stages = table(out, "stages")
    assert [row["delay D"] for row in stages] == ["5", "3", "1"]
    assert [row["horizon T"] for row in stages] == ["5", "3", "1"]
    assert [row["shape"] for row in stages] == ["64x32", "32x32", "32x10"]
    assert [row["relu"] for row in stages] == ["yes", "yes", "no"]
    assert stages[-1]["SC b"] == "1"
    constants = table(out, "update constants (coefficient format)")
    assert [(r["stage"], r["constant"]) for r in constants[:4]] == [
        ("1", "momentum"),
        ("1", "eta_a"),
        ("1", "eta_b"),
        ("1", "eta_T"),
    ]
    assert constants[0]["code"] == "4180517"  # round(0.9^(1/32) * 2^22)
    assert "warning" not in out
    assert out.splitlines()[-1] == "config OK"


def test_check_shows_the_hardware_the_generator_would_build():
    result = run("check", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert (
        "hardware: lanes 14, 7, 3, 58 of 156 DSP blocks on ecp5-85k, predicted 170 cycles per "
        "sample" in result.output
    )
    assert "data: digits: 1437 train / 360 test" in result.output


@pytest.mark.parametrize(
    "item, fragments",
    [
        ("hardware.device='nope'", ["config key 'hardware.device'", "unknown device 'nope'"]),
        ("hardware.lanes=[9999, 1, 1]", ["config key 'hardware.lanes'", "2080 weights"]),
        ("formats.weight.frac=1000", ["weight accumulator needs", "config keys formats.*"]),
        ("network.layers=[50, 10]", ["network.layers [50, 10] does not fit dataset digits"]),
    ],
)
def test_check_refuses_what_a_later_command_would_refuse(item, fragments):
    """``pbhw check`` used to say "config OK" for each of these, which generate, train or
    estimate then refused."""
    result = run("check", EXAMPLE, "--set", item)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert all(f in lines[0] for f in fragments), lines[0]


def test_check_runs_as_a_console_script():
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "NO_COLOR")}
    env["PYTHONIOENCODING"] = "utf-8"
    proc = subprocess.run(
        [str(PBHW), "check", "examples/mlp_digits.toml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert [row["delay D"] for row in table(proc.stdout, "stages")] == ["5", "3", "1"]
    assert proc.stdout.splitlines()[-1] == "config OK"


def test_check_shows_formats_grouped_by_stage_with_overrides(tmp_path):
    path = write(
        tmp_path,
        "[network]\nlayers = [64, 6, 4, 10]\n"
        "[[overrides]]\nlayer = 2\nformats.weight = {width = 12, rounding = 'floor'}\n",
    )
    result = run("check", path)
    assert result.exit_code == 0, result.output
    weight = [row for row in table(result.stdout, "number formats") if row["role"] == "weight"]
    assert [(r["stages"], r["format"], r["rounding"]) for r in weight] == [
        ("1,3", "s16.13", "half_even"),
        ("2", "s12.13", "floor"),
    ]


def test_check_of_the_sgd_reference_has_no_delays():
    result = run("check", EXAMPLE, "--set", "optimizer.algorithm=sgd")
    assert result.exit_code == 0, result.output
    assert "optimizer sgd (non-pipelined reference)" in result.stdout
    stages = table(result.stdout, "stages")
    assert [(r["delay D"], r["horizon T"], r["SC a"], r["SC b"]) for r in stages] == [
        ("0", "0", "1", "0")
    ] * 3


def test_check_warns_about_a_constant_that_quantizes_to_zero():
    result = run("check", EXAMPLE, "--set", "formats.coefficient.frac=8")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings
    assert "stage 1: eta_a = 0.000101 quantizes to 0 in s24.8" in warnings[0]
    assert result.stdout.splitlines()[-1] == "config OK"


def test_check_with_fixed_arithmetic_rejects_a_constant_that_does_not_fit():
    result = run(
        "check",
        EXAMPLE,
        "--set",
        "optimizer.algorithm=sgd",
        "--set",
        "optimizer.reference_batch=1",
        "--set",
        "optimizer.lr=3",
        "--set",
        "train.arith=fixed",
    )
    assert_config_error(result, "update constant eta_a = 3 does not fit", "s24.22")


# --set


def test_set_shows_up_in_the_output():
    result = run("check", EXAMPLE, "--set", "optimizer.lr=0.05")
    assert result.exit_code == 0, result.output
    assert "lr 0.05, momentum 0.9 at reference batch 32" in result.stdout


def test_several_sets_apply_in_order():
    result = run(
        "check",
        EXAMPLE,
        "--set",
        "network.layers=[64, 16, 10]",
        "--set",
        "name=small",
        "--set",
        "seed=1",
        "--set",
        "seed=7",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("small: 64 -> 16 -> 10, loss mse, bias on, seed 7")
    assert [row["delay D"] for row in table(result.stdout, "stages")] == ["3", "1"]


@pytest.mark.parametrize(
    ("item", "fragments"),
    [
        ("optimizer.lrr=0.05", ("'optimizer.lrr'", "did you mean 'optimizer.lr'?")),
        ("optimizer.lr", ("--set takes KEY=VALUE", "'optimizer.lr'")),
        ("optimizer.momentum=1", ("'optimizer.momentum'", "[0, 1)", "integer 1")),
        ("seed.x=1", ("'seed' is a value, not a table",)),
        ("overrides.0.layer=1", ("overrides",)),
    ],
)
def test_bad_set_exits_2_with_one_error_line(item, fragments):
    assert_config_error(run("check", EXAMPLE, "--set", item), *fragments)


# bad configs


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[optimizer]\nlr = = 1\n", ("is not valid TOML", "line 2")),
        ("[optimizer]\nmomentun = 0.5\n", ("'optimizer.momentun'", "'optimizer.momentum'")),
        ("[network]\nlayers = [8, 0, 2]\n", ("'network.layers'", "[8, 0, 2]")),
        ("[optimizer]\nlr = -1\n", ("'optimizer.lr'", "a positive number", "-1")),
        ("[optimizer]\nbatch_size = 4\n", ("'optimizer.batch_size'", "not 4")),
        ("[formats.weight]\nwidth = 1\n", ("'formats.weight.width'", ">= 2", "1")),
        ("[formats.error]\nrounding = 'nearest'\n", ("'formats.error.rounding'", "'nearest'")),
        ("[formats.coefficient]\nrounding = 'stochastic'\n", ("'formats.coefficient.rounding'",)),
        ("[[overrides]]\nlayer = 9\n", ("'overrides.0.layer'", "not 9")),
        ("seed = -3\n", ("'seed'", "-3")),
    ],
)
def test_bad_config_exits_2_with_one_error_line_naming_the_key(tmp_path, text, fragments):
    path = write(tmp_path, text)
    assert_config_error(run("check", path), *fragments)


def test_missing_config_file_exits_2_with_a_clear_message(tmp_path):
    path = tmp_path / "missing.toml"
    result = run("check", path)
    assert_config_error(result)
    assert result.stderr == f"error: config file '{path}' does not exist\n"


def test_train_refuses_fixed_point_sgd_with_a_batch(tmp_path):
    out = tmp_path / "result.json"
    result = run(
        "train",
        EXAMPLE,
        "--arith",
        "fixed",
        "--epochs",
        "1",
        "--set",
        "optimizer.algorithm=sgd",
        "--set",
        "optimizer.batch_size=32",
        "--json",
        out,
    )
    assert_config_error(result, "'optimizer.batch_size' must be 1 when train.arith is 'fixed'")
    assert not out.exists()


def test_help_mentions_set():
    result = run("check", "--help")
    assert result.exit_code == 0
    assert "--set KEY=VALUE" in result.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--fast", "--pnr-seed", "3"], "--fast runs none"),
        (["--fast", "--pnr-timeout", "1"], "--fast runs none"),
        (["--pnr-seed", "0"], "0 is not in the range x>=1"),
    ],
)
def test_estimate_refuses_place_and_route_options_it_cannot_use(args, fragment):
    result = run("estimate", EXAMPLE, *args)
    assert result.exit_code == 2
    assert fragment in result.output


# unwritable output paths: refused before any work


@pytest.fixture
def no_work(monkeypatch):
    """Training, estimating, verifying and generating fail the test if they start."""
    import pbhw.cli.commands as commands
    import pbhw.flows.sweep as engine

    def started(*args, **kwargs):
        raise AssertionError("work started")

    for name in ("run_training", "run_estimate", "run_verify", "run_generate"):
        monkeypatch.setattr(commands, name, started)
    monkeypatch.setattr(engine, "run_points", started)


def _bad_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    return {
        "under a file": (a_file / "out" / "x.json", "is a file, not a folder"),
        "in /proc": (Path("/proc/pbhw-test/x.json"), "cannot be written"),
        "a folder": (a_dir, "is a folder"),
    }


@pytest.mark.parametrize("case", ["under a file", "in /proc", "a folder"])
@pytest.mark.parametrize(
    "command",
    [
        ["train", "--epochs", "1", "--json"],
        ["estimate", "--fast", "--json"],
        ["verify", "--samples", "4", "--json"],
    ],
    ids=["train", "estimate", "verify"],
)
def test_an_unwritable_json_path_is_refused_before_any_work(tmp_path, no_work, case, command):
    path, fragment = _bad_outputs(tmp_path)[case]
    result = run(command[0], EXAMPLE, *command[1:], path)
    assert_config_error(result, f"--json '{path}'", fragment)


@pytest.mark.parametrize("case", ["under a file", "in /proc"])
@pytest.mark.parametrize("command", ["generate", "flow", "sweep"])
def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, no_work, case, command):
    path, fragment = _bad_outputs(tmp_path)[case]
    extra = ["--grid", "seed=1,2"] if command == "sweep" else []
    result = run(command, EXAMPLE, "-o", path.parent, *extra)
    assert_config_error(result, f"-o '{path.parent}'", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]


def test_an_output_folder_that_is_a_file_is_refused(tmp_path, no_work):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    for command, extra in (("generate", []), ("flow", []), ("sweep", ["--grid", "seed=1,2"])):
        result = run(command, EXAMPLE, "-o", a_file, *extra)
        assert_config_error(result, f"-o '{a_file}' is a file")
    assert a_file.read_text() == "not a folder\n"


@pytest.mark.parametrize("minutes", ["0", "-1", "nan", "-inf"])
def test_estimate_refuses_a_pnr_timeout_that_is_not_positive(minutes, no_work):
    result = run("estimate", EXAMPLE, "--pnr-timeout", minutes)
    assert_config_error(result, "--pnr-timeout must be a positive number of minutes", minutes)


def test_the_overflow_line_names_the_largest_counters_first():
    counts = {
        "stage 1 gradient": 5,
        "stage 2 weight": 0,
        "stage 2 gradient": 1200,
        "stage 1 norm": 5,
    }
    assert overflow_summary(counts, most=2) == (
        "overflows: 1,210 values saturated or wrapped (stage 2 gradient 1,200, stage 1 gradient "
        "5, 1 more)"
    )
    assert overflow_summary({"stage 1 error": 3}) == (
        "overflows: 3 values saturated or wrapped (stage 1 error 3)"
    )
