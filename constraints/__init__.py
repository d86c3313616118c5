"""The device files, installed as the package data of ``pbhw.constraints`` (see README.md)."""
