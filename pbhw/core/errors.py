"""The one error hierarchy of pbhw.

Every error the library raises on purpose derives from :class:`PbhwError`. The command line maps
:class:`InputError` (and its subclasses) to one ``error:`` line and exit status 2, and
:class:`RunError` (a run that started and failed on its own terms) to exit status 1.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "InputError",
    "ManifestError",
    "PbhwError",
    "RunError",
    "SweepError",
    "TorchModelError",
    "ToolError",
    "TrainingDiverged",
    "UserError",
]


class PbhwError(Exception):
    """Base of every error pbhw raises on purpose."""


class InputError(PbhwError, ValueError):
    """Bad input from the user: reported as one ``error:`` line, exit status 2, nothing written."""


class ConfigError(InputError):
    """A configuration problem; the message names the key, the value and what is allowed."""


class DatasetError(InputError):
    """A dataset that cannot be loaded or does not fit the network."""


class ManifestError(InputError):
    """A ``manifest.json`` that is malformed or of another layout version; the message names the
    field."""


class UserError(InputError):
    """A bad command-line argument, detected outside config validation."""


class ToolError(InputError, RuntimeError):
    """An HDL tool (Verilator, Icarus, Yosys, nextpnr) is missing, too old, or rejected its
    input; the message holds its output. Reported like bad input: the fix is on the user's side
    (install the tool, or change the design)."""


class SweepError(InputError, RuntimeError):
    """A sweep cannot run as asked (e.g. its backend is not installed)."""


class RunError(PbhwError, RuntimeError):
    """A run that started and failed on its own terms: exit status 1."""


class TrainingDiverged(RunError):
    """The loss became non-finite or blew up; the message says where."""


class CheckpointError(ConfigError):
    """A PyTorch checkpoint (config key ``train.init_from``) that cannot be read or does not fit
    the network; the message names the file and the first key or shape that does not fit."""


class TorchModelError(InputError):
    """A PyTorch model that :func:`pbhw.from_torch` cannot represent; the message names the
    first unsupported module (index and type) or the first shape mismatch."""
