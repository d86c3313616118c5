"""``python -m pbhw``: the ``pbhw`` command."""

from pbhw.cli import main

main()
