"""``pbhw verify --epochs``: its arguments are checked before any work (one ``error:`` line, exit
status 2). The runs themselves are in tests/test_harness.py."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import pbhw.cli.commands as commands
from pbhw.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp_digits.toml"


@pytest.fixture
def no_work(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("work started")

    for name in ("run_verify", "run_verify_epochs"):
        monkeypatch.setattr(commands, name, started)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs must be a positive integer, not 0"),
        (["--epochs", "-3"], "--epochs must be a positive integer, not -3"),
        (["--epochs", "2", "--samples", "10"], "give either --samples or --epochs, not both"),
        (
            ["--epochs", "1", "--simulator", "icarus"],
            "--epochs runs on the compiled Verilator harness, not --simulator icarus",
        ),
        (["--epochs", "1", "--idle", "1.5"], "--idle must be a probability in [0, 1), not 1.5"),
    ],
)
def test_bad_epochs_arguments_are_refused_before_any_work(no_work, args, message):
    result = CliRunner().invoke(main, ["verify", str(EXAMPLE), *args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {message}"]


def test_samples_default_to_200_without_epochs(monkeypatch):
    seen = {}

    def fake(config, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(commands, "run_verify", fake)
    CliRunner().invoke(main, ["verify", str(EXAMPLE)])
    assert seen["samples"] == 200
