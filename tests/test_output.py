"""Output discipline of the ``pbhw`` commands: results on stdout, progress and warnings on
stderr, ``--quiet`` silences progress only, and nothing is wrapped when not on a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pbhw.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mlp_digits.toml"
PBHW = Path(sys.executable).parent / "pbhw"


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_check_puts_warnings_on_stderr_and_the_plan_on_stdout():
    for quiet in ([], ["--quiet"]):
        result = run(*quiet, "check", EXAMPLE, "--set", "formats.coefficient.frac=8")
        assert result.exit_code == 0, result.output
        assert not any(line.startswith("warning:") for line in result.stdout.splitlines())
        warnings = result.stderr.splitlines()
        assert warnings and all(line.startswith("warning: stage ") for line in warnings)
        assert "stage 1: eta_a = 0.000101 quantizes to 0 in s24.8" in warnings[0]
        assert result.stdout.splitlines()[-1] == "config OK"


def test_check_does_not_wrap_lines_into_a_pipe():
    name = "a_config_name_long_enough_that_any_terminal_width_would_wrap_it_" * 3
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "NO_COLOR")}
    proc = subprocess.run(
        [str(PBHW), "check", "examples/mlp_digits.toml", "--set", f"name='{name}'"],
        cwd=ROOT,
        env={**env, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"{name}: 64 -> 32 -> 32 -> 10, loss mse")
    assert first.endswith("seed 0")


def test_generate_reports_progress_on_stderr_and_results_on_stdout(tmp_path):
    sets = ["--set", "network.layers=[4, 3, 2]", "--set", "hardware.lanes=[2, 1]"]
    result = run("generate", EXAMPLE, *sets, "-o", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("generating mlp_digits (4 -> 3 -> 2) ...")
    assert "generating" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("lanes 2, 1;") and lines[-1].startswith("wrote ")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert lines[-1] == f"wrote {tmp_path / 'a'}/mlp_digits.v and {len(files) - 1} more files"

    quiet = run("--quiet", "generate", EXAMPLE, *sets, "-o", tmp_path / "b")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    assert quiet.stdout == result.stdout.replace(str(tmp_path / "a"), str(tmp_path / "b"))


def test_quiet_keeps_errors():
    result = run("--quiet", "check", EXAMPLE, "--set", "optimizer.lr=-1")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stdout == ""
