"""PyTorch in and out, for the layers pbhw supports: ``nn.Linear`` and ``nn.ReLU``.

:func:`from_torch` reads an ``nn.Sequential`` into a :class:`~pbhw.core.config.Config`;
:func:`read_checkpoint` reads that model's ``state_dict`` (``train.init_from``) as float64
initial weights, checked against the config (``pbhw.core.weights`` is its one reader);
:func:`write_state_dict` writes trained weights back as a ``state_dict`` of the same model.

The ``state_dict`` of ``nn.Sequential(Linear, ReLU, ..., Linear)`` names stage ``k``'s tensors
``'<i>.weight'`` and ``'<i>.bias'`` with module index ``i = 2k`` (``2k + 1`` after a leading
``nn.Flatten``).
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbhw.core.config import Config, from_dict
from pbhw.core.errors import CheckpointError, ConfigError, TorchModelError
from pbhw.core.io import write_atomic

__all__ = [
    "Checkpoint",
    "check_exportable",
    "from_torch",
    "read_checkpoint",
    "state_dict_keys",
    "write_state_dict",
]

SUPPORTED = (
    "pbhw takes an nn.Sequential of nn.Linear and nn.ReLU with a ReLU after every Linear but "
    "the last (an nn.Flatten() may come first)"
)

_KEY = re.compile(r"(\d+)\.(weight|bias)")


def _shape_of(input_shape: Any) -> tuple[int, ...]:
    shape = (input_shape,) if isinstance(input_shape, int) else input_shape
    if (
        not isinstance(shape, Sequence | torch.Size)
        or not shape
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape)
    ):
        raise TorchModelError(
            "input_shape must be the shape of one sample without the batch dimension, a "
            f"positive integer or a tuple of them (e.g. (64,) or (1, 8, 8)), not {input_shape!r}"
        )
    return tuple(shape)


def from_torch(model: nn.Module, input_shape: int | Sequence[int], **settings: Any) -> Config:
    """The pbhw config of ``model``: ``network.layers`` from its ``nn.Linear`` sizes,
    ``network.bias`` from their biases (all or none), every other key its default or as given.

    Parameters
    ----------
    model
        An ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU``, a ReLU after every Linear but
        the last; an ``nn.Flatten()`` may come first.
    input_shape
        The shape of one sample without the batch dimension: ``(64,)``, or ``(1, 8, 8)``
        after an ``nn.Flatten()``.
    settings
        Top-level config keys and tables, as the TOML file holds them: ``name="net"``,
        ``optimizer={"lr": 0.05}``, ``train={"dataset": "digits", "epochs": 5}``.

    Raises
    ------
    TorchModelError
        Naming the first unsupported module (its index and type) or the first shape mismatch.
    ConfigError
        A setting that is not allowed.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> from_torch(net, (64,)).network.layers
    (64, 32, 10)
    """
    if not isinstance(model, nn.Sequential):
        raise TorchModelError(f"{SUPPORTED}, not a {type(model).__name__}")
    shape = _shape_of(input_shape)
    modules = list(model)
    start = 0
    if modules and isinstance(modules[0], nn.Flatten):
        if (modules[0].start_dim, modules[0].end_dim) != (1, -1):
            raise TorchModelError(
                f"module 0 (Flatten) has start_dim={modules[0].start_dim}, "
                f"end_dim={modules[0].end_dim}: only nn.Flatten() (every dimension but the "
                "batch's) is supported"
            )
        start = 1
    layers = [math.prod(shape)]
    bias: bool | None = None
    first = last = None  # module indices of the first and the last Linear
    previous = None  # "linear" or "relu"
    for i, m in enumerate(modules[start:], start):
        kind = type(m).__name__
        if isinstance(m, nn.Linear):
            if previous == "linear":
                raise TorchModelError(
                    f"module {i} ({kind}) follows the Linear at module {last} without an "
                    f"nn.ReLU between them: {SUPPORTED}"
                )
            if last is None and start == 0 and len(shape) != 1:
                raise TorchModelError(
                    f"input_shape {shape} has {len(shape)} dimensions, but module {i} ({kind}) "
                    "takes one: put an nn.Flatten() first"
                )
            if m.in_features != layers[-1]:
                source = (
                    f"input_shape {shape} gives {layers[-1]}"
                    if last is None
                    else f"module {last} (Linear) gives {layers[-1]} outputs"
                )
                raise TorchModelError(
                    f"module {i} ({kind}) takes {m.in_features} inputs but {source}"
                )
            has_bias = m.bias is not None
            if bias is not None and has_bias != bias:
                raise TorchModelError(
                    f"module {i} ({kind}) {'has a' if has_bias else 'has no'} bias but module "
                    f"{first} {'has one' if bias else 'has none'}: pbhw's network.bias is one "
                    "switch for every layer"
                )
            bias, first, last, previous = has_bias, first if first is not None else i, i, "linear"
            layers.append(m.out_features)
        elif isinstance(m, nn.ReLU):
            if previous != "linear":
                raise TorchModelError(
                    f"module {i} ({kind}) does not follow an nn.Linear: {SUPPORTED}"
                )
            previous = "relu"
        else:
            raise TorchModelError(f"module {i} ({kind}) is not supported: {SUPPORTED}")
    if last is None:
        raise TorchModelError(f"the model has no nn.Linear: {SUPPORTED}")
    if previous == "relu":
        raise TorchModelError(
            f"module {len(modules) - 1} (ReLU) follows the last Linear: pbhw's networks end in "
            f"a Linear, whose outputs the loss reads; {SUPPORTED}"
        )
    raw = dict(settings)
    if not isinstance(raw.get("network", {}), Mapping):
        raise TorchModelError(f"network must be a table (a dict), not {raw['network']!r}")
    network = dict(raw.get("network", {}))
    for key, value in (("layers", layers), ("bias", bias)):
        if key in network and network[key] != value:
            raise TorchModelError(
                f"network.{key} = {network[key]!r} was given, but the model has {value!r}"
            )
        network[key] = value
    raw["network"] = network
    return from_dict(raw)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's weights, float64 per stage ``(w [n_out, n_in], b [n_out] or None)``, and
    the module index of each stage's Linear (the ``'<i>.weight'`` keys)."""

    weights: list[tuple[torch.Tensor, torch.Tensor | None]]
    indices: tuple[int, ...]


def state_dict_keys(config: Config, first: int = 0) -> list[str]:
    """The keys of the ``state_dict`` of the config's ``nn.Sequential`` whose first Linear is
    module ``first`` (1 after an ``nn.Flatten``)."""
    keys = []
    for k in range(config.network.num_stages):
        keys.append(f"{first + 2 * k}.weight")
        if config.network.bias:
            keys.append(f"{first + 2 * k}.bias")
    return keys


def read_checkpoint(config: Config, path: str | Path | None = None) -> Checkpoint:
    """Read ``path`` (default: the config's ``train.init_from``), a ``state_dict`` saved with
    ``torch.save``, loaded with ``weights_only=True``; raises :class:`CheckpointError` naming
    the file and the first key or shape that does not fit the config."""
    path = Path(config.train.init_from if path is None else path)
    where = f"train.init_from: checkpoint '{path}'"
    if not path.exists():
        raise CheckpointError(f"{where} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{where} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip, EOF and runtime errors alike
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{where} holds Python objects besides tensors (a whole model saved with "
                "torch.save(model)?), which pbhw does not unpickle: save model.state_dict()"
            ) from None
        text = str(e).strip().splitlines()
        raise CheckpointError(
            f"{where} cannot be read by torch.load(weights_only=True) (save the model's "
            f"state_dict() with torch.save): {text[0] if text else type(e).__name__}"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        what = (
            "a mapping whose entries are not all names to tensors"
            if isinstance(state, Mapping)
            else f"a {type(state).__name__}"
        )
        raise CheckpointError(
            f"{where} is not a state_dict (names to tensors, as model.state_dict() gives) but "
            f"{what}"
        )
    indices = sorted(int(m[1]) for k in state if (m := _KEY.fullmatch(k)))
    first = 1 if indices and indices[0] == 1 else 0
    expected = state_dict_keys(config, first)
    net = config.network
    layout = (
        f"the keys of the nn.Sequential of network.layers {list(net.layers)} "
        f"{'with' if net.bias else 'without'} bias: {', '.join(map(repr, expected))}"
    )
    for key in state:
        if key not in expected:
            hint = " (network.bias is false)" if key.endswith(".bias") and not net.bias else ""
            raise CheckpointError(f"{where} has an unexpected key '{key}'{hint}; expected {layout}")
    for key in expected:
        if key not in state:
            raise CheckpointError(f"{where} has no key '{key}'; expected {layout}")
    weights = []
    for k in range(net.num_stages):
        n_in, n_out = net.layers[k], net.layers[k + 1]
        pair = []
        for name, want in (("weight", [n_out, n_in]), ("bias", [n_out])):
            key = f"{first + 2 * k}.{name}"
            if key not in state:
                pair.append(None)
                continue
            t = state[key]
            if list(t.shape) != want:
                raise CheckpointError(
                    f"{where}: tensor '{key}' has shape {list(t.shape)}, expected {want} "
                    f"(stage {k + 1} of network.layers {list(net.layers)})"
                )
            if not t.is_floating_point():
                raise CheckpointError(f"{where}: tensor '{key}' is {t.dtype}, not floating point")
            t = t.detach().to(torch.float64).clone()
            if not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{where}: tensor '{key}' holds NaN or infinity")
            pair.append(t)
        weights.append((pair[0], pair[1]))
    return Checkpoint(weights, tuple(first + 2 * k for k in range(net.num_stages)))


def check_exportable(config: Config) -> None:
    """Raise :class:`ConfigError` unless :func:`write_state_dict` can write ``config``'s trained
    weights: an ``nn.Sequential`` of Linears takes dense layers only."""
    if config.network.convolutional:
        raise ConfigError(
            "--export writes an nn.Sequential of nn.Linear layers; network.layers has "
            "convolutional stages, which it does not write yet"
        )


def write_state_dict(
    path: str | Path,
    weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    indices: Sequence[int] | None = None,
) -> None:
    """Write ``weights`` (per stage ``(w, b)``) atomically as a float64 ``state_dict`` of the
    ``nn.Sequential`` whose Linears are modules ``indices`` (default 0, 2, 4, ...)."""
    indices = list(range(0, 2 * len(weights), 2)) if indices is None else list(indices)
    state: dict[str, torch.Tensor] = {}
    for i, (w, b) in zip(indices, weights, strict=True):
        state[f"{i}.weight"] = w.detach().to(torch.float64).clone()
        if b is not None:
            state[f"{i}.bias"] = b.detach().to(torch.float64).clone()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(Path(path), buffer.getvalue())
