"""The ``pbhw`` command line.

Every command takes a config file and ``--set KEY=VALUE`` overrides. A bad config, dataset or
argument is reported as one ``error:`` line on stderr with exit status 2 and nothing written.
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
def main() -> None:
    """Co-design FPGA hardware that trains neural networks with Pipelined Backpropagation."""


for _command in (check, train, generate, verify, estimate, flow, sweep):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
