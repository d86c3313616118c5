"""``python -m pbhw.cli``: the ``pbhw`` command."""

from pbhw.cli import main

main()
