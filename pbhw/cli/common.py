"""What every ``pbhw`` command shares: the config argument and ``--set``, the common options,
the mapping of the library's errors to one ``error:`` line (exit status 2 for bad input,
1 for a run that failed on its own terms), and where output goes.

Output discipline: a command's results go to stdout (:func:`result_console`, ``click.echo``);
progress goes to stderr through :func:`say` or :func:`progress_console`, silenced by the
global ``pbhw --quiet``; warnings (:func:`warn`) and errors go to stderr always. Neither console
wraps lines when its stream is not a terminal, so piped output keeps one record per line.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from pbhw.core.config import Config, load
from pbhw.core.errors import InputError, RunError, UserError
from pbhw.core.torch_io import read_checkpoint

__all__ = [
    "UserError",
    "config_argument",
    "fail",
    "is_quiet",
    "progress_console",
    "result_console",
    "say",
    "warn",
    "init_from_option",
    "lanes_text",
    "load_config",
    "pnr_seed_option",
    "pnr_timeout_seconds",
    "set_option",
    "simulator_option",
    "train_sets",
    "user_errors",
]

SET_HELP = "Override a config key, e.g. --set optimizer.lr=0.05 (repeatable)."


def is_quiet() -> bool:
    """Whether the command runs under ``pbhw --quiet`` (progress silenced)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("quiet"))


def say(message: str) -> None:
    """A progress message: to stderr, unless ``--quiet``."""
    if not is_quiet():
        click.echo(message, err=True)


def warn(message: str) -> None:
    """A warning: ``warning: MESSAGE`` on stderr, also under ``--quiet``."""
    click.echo(f"warning: {message}", err=True)


def _console(stream: Any, *, quiet: bool = False) -> Console:
    """A rich console on ``stream`` that wraps nothing unless the stream is a terminal."""
    tty = stream.isatty()
    return Console(
        file=stream,
        highlight=False,
        soft_wrap=not tty,
        width=None if tty else 10_000,
        quiet=quiet,
    )


def result_console() -> Console:
    """A rich console for results (tables and lines on stdout)."""
    return _console(click.get_text_stream("stdout"))


def progress_console() -> Console:
    """A rich console for progress on stderr (silent under ``--quiet``)."""
    return _console(click.get_text_stream("stderr"), quiet=is_quiet())


def fail(message: str, status: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's errors into one ``error:`` line: exit status 2 for bad input
    (:class:`~pbhw.core.errors.InputError`), 1 for a run that failed
    (:class:`~pbhw.core.errors.RunError`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as e:
            fail(str(e))
        except RunError as e:
            fail(str(e), status=1)

    return wrapper


def load_config(path: str, sets: tuple[str, ...], init_from: str | None = None) -> Config:
    """The config at ``path`` with ``--set`` overrides and ``--init-from`` (``train.init_from``)
    applied; a checkpoint it names is read and checked against the network here, before any
    work."""
    cfg = load(Path(path), sets)
    if init_from is not None:
        cfg = cfg.replace({"train.init_from": init_from})
    if cfg.train.init_from:
        read_checkpoint(cfg)
    return cfg


config_argument = click.argument("config")
set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
init_from_option = click.option(
    "--init-from",
    "init_from",
    metavar="PATH",
    help="Start from the weights of a PyTorch checkpoint: the state_dict of the network's "
    "nn.Sequential of nn.Linear and nn.ReLU, saved with torch.save (sets train.init_from).",
)
simulator_option = click.option(
    "--simulator",
    type=click.Choice(["verilator", "icarus"]),
    default="verilator",
    show_default=True,
    help="RTL simulator for the bit-exact check.",
)
pnr_seed_option = click.option(
    "--pnr-seed",
    type=click.IntRange(min=1),
    metavar="N",
    help="nextpnr placement seed (default: nextpnr's own); the routed Fmax of a large design "
    "varies by several MHz between seeds.",
)


def pnr_timeout_seconds(minutes: float | None) -> float | None:
    """``--pnr-timeout`` in seconds; :class:`UserError` unless it is a positive number."""
    if minutes is None:
        return None
    if not (math.isfinite(minutes) and minutes > 0):
        raise UserError(f"--pnr-timeout must be a positive number of minutes, not {minutes:g}")
    return 60 * minutes


def lanes_text(cfg: Config) -> str:
    lanes = cfg.hardware.lanes
    return lanes if isinstance(lanes, str) else ", ".join(map(str, lanes))


def train_sets(
    dataset: str | None, epochs: int | None, arith: str | None, seed: int | None = None
) -> list[str]:
    """The ``--set`` overrides of the training options a command was given (``None``: not given)."""
    return [
        f"{key}={value}"
        for key, value in (
            ("train.dataset", None if dataset is None else f'"{dataset}"'),
            ("train.epochs", epochs),
            ("train.arith", None if arith is None else f'"{arith}"'),
            ("seed", seed),
        )
        if value is not None
    ]
