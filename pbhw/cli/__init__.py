"""The ``pbhw`` command line.

Every command takes a config file and ``--set KEY=VALUE`` overrides. A bad config, dataset or
argument is reported as one ``error:`` line on stderr with exit status 2 and nothing written.
Results go to stdout, progress to stderr (``pbhw --quiet COMMAND`` silences it; see
:mod:`pbhw.cli.common`).
The commands live in :mod:`pbhw.cli.commands` and :mod:`pbhw.cli.sweep`; what they share in
:mod:`pbhw.cli.common`.
"""

from __future__ import annotations

import click

from pbhw import __version__
from pbhw.cli.commands import check, estimate, flow, generate, train, verify
from pbhw.cli.sweep import sweep

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pbhw")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print no progress (results, warnings and errors still appear).",
)
def main(quiet: bool) -> None:
    """Co-design FPGA hardware that trains neural networks with Pipelined Backpropagation.

    Results go to stdout; progress, warnings and errors to stderr."""


for _command in (check, train, generate, verify, estimate, flow, sweep):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
