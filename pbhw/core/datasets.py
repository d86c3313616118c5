"""Datasets: train/test tensors for the golden model and the hardware runs, all read locally.

:func:`load` takes a spec string (one of :data:`DATASET_NAMES`) and returns a :class:`Dataset` of
float64 inputs of shape ``(N, F)`` and int64 labels ``0 .. C-1``. Nothing is downloaded and nothing
is written to disk. Any problem with the spec or the files raises :class:`DatasetError` with one
message naming the file, the array and what was expected.

Every train/test split here is fixed (:data:`SPLIT_SEED`) so that the test set never changes with
the training seed; callers shuffle the training set themselves.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from pbhw.core.errors import DatasetError

__all__ = ["DATASET_NAMES", "SPLIT_SEED", "Dataset", "DatasetError", "load"]

#: Accepted dataset specs, for help texts and error messages.
DATASET_NAMES = ("digits", "mnist1d", "cifar10:PATH", "npz:PATH")

#: Seed of every train/test split made here; independent of any training seed.
SPLIT_SEED = 0

#: Share of the rows that goes to the test set when a split is made here (rounded up, as
#: scikit-learn's ``train_test_split`` does: digits gives 1437 train / 360 test).
_TEST_PERCENT = 20

#: MNIST-1D generation: the package defaults, pinned here so that a new package release cannot
#: silently change the data (5000 samples, 80% train, the seed of the published dataset).
_MNIST1D_SAMPLES = 5000
_MNIST1D_TRAIN_SPLIT = 0.8
_MNIST1D_SEED = 42

_CIFAR10_DATA_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_FEATURES = 3 * 32 * 32
_CIFAR10_CLASSES = 10


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test sets of one classification problem.

    ``x_*`` are float64 tensors of shape ``(N, F)``, ``y_*`` int64 tensors of shape ``(N,)`` with
    labels in ``0 .. num_classes - 1``. Instances of ``digits`` and ``mnist1d`` are cached and
    shared by every caller in the process: do not modify their tensors in place.

    ``shape`` is the shape of one sample before flattening (``(1, 8, 8)`` for digits,
    ``(1, 40)`` for mnist1d, ``(3, 32, 32)`` for CIFAR-10, the shape of ``X``'s rows for an
    npz file; ``()`` means flat, ``(F,)``): a network whose ``network.input`` asks for it
    reads each row in that shape.

    Equality is identity (comparing tensors element-wise is the caller's choice).
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for part, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype != torch.float64 or x.ndim != 2:
                raise DatasetError(
                    f"{self.name}: x_{part} must be a float64 (N, F) tensor, not "
                    f"{x.dtype} of shape {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DatasetError(
                    f"{self.name}: y_{part} must be an int64 tensor of shape "
                    f"({x.shape[0]},), not {y.dtype} of shape {tuple(y.shape)}"
                )
            if len(y) and not 0 <= int(y.min()) <= int(y.max()) < self.num_classes:
                raise DatasetError(
                    f"{self.name}: y_{part} labels must lie in 0 .. "
                    f"{self.num_classes - 1}, found {int(y.min())} .. "
                    f"{int(y.max())}"
                )
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise DatasetError(
                f"{self.name}: x_test has {self.x_test.shape[1]} features, "
                f"x_train {self.x_train.shape[1]}"
            )
        if self.shape and int(np.prod(self.shape)) != self.x_train.shape[1]:
            raise DatasetError(
                f"{self.name}: sample shape {list(self.shape)} does not hold the "
                f"{self.x_train.shape[1]} features of a row"
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``shape``, or ``(F,)`` for a flat dataset."""
        return self.shape or (self.num_features,)

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    @functools.cached_property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the data itself: every array's shape, type and values and the
        number of classes, not the name or path (computed once per instance)."""
        digest = hashlib.sha256(f"classes {self.num_classes}\n".encode())
        for part in (self.x_train, self.y_train, self.x_test, self.y_test):
            array = np.ascontiguousarray(part.numpy())
            digest.update(f"{array.dtype.str} {array.shape}\n".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def describe(self) -> str:
        """One line such as ``digits: 1437 train / 360 test, 64 features, 10 classes``."""
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test, "
            f"{self.num_features} features, {self.num_classes} classes"
        )


def load(spec: str, *, seed: int = 0) -> Dataset:
    """Load the dataset named by ``spec`` (one of :data:`DATASET_NAMES`).

    * ``digits``: scikit-learn's 8x8 digits, pixels scaled from 0..16 to [0, 1]; 1437 train /
      360 test.
    * ``mnist1d``: MNIST-1D generated in memory from the package's templates with its default
      parameters (4000 train / 1000 test, 40 features), standardised with the scalar mean and
      (population) standard deviation of the training inputs.
    * ``cifar10:PATH``: the CIFAR-10 python batches in folder PATH (``test_batch`` and any of
      ``data_batch_1`` .. ``data_batch_5``), pixels scaled to [0, 1]. The batches are pickles,
      so PATH must be trusted. Note that the full set takes 1.5 GB as float64.
    * ``npz:PATH``: arrays ``X`` (N rows, flattened to N x F) and ``y`` (N labels >= 0), and
      optionally ``X_test`` and ``y_test``. Inputs are used as given, only cast to float64.
      ``num_classes`` is one more than the largest label in either set; the training labels
      must hold at least two classes.

    Where a dataset has no test set of its own, 20% of its rows (rounded up) are held out by a
    permutation with the fixed :data:`SPLIT_SEED`. ``seed`` is reserved for callers that shuffle
    the training set; the split does not depend on it. ``digits`` and ``mnist1d`` are built once
    per process and the same :class:`Dataset` is returned to every caller.
    """
    if not isinstance(spec, str):
        raise TypeError(f"dataset spec must be a str, not {spec!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, not {seed!r}")
    name, colon, path = spec.partition(":")
    if name in ("digits", "mnist1d"):
        if colon:
            raise DatasetError(f"dataset '{name}' takes no path, not {spec!r}")
        return _digits() if name == "digits" else _mnist1d()
    if name in ("cifar10", "npz"):
        if not path:
            raise DatasetError(f"dataset '{name}' needs a path: {name}:PATH")
        loader = _cifar10 if name == "cifar10" else _npz
        return loader(spec, Path(path).expanduser())
    by_name = {entry.partition(":")[0]: entry for entry in DATASET_NAMES}
    close = difflib.get_close_matches(name.lower(), list(by_name), n=1)
    hint = f" (did you mean '{by_name[close[0]]}'?)" if close else ""
    raise DatasetError(
        f"unknown dataset {spec!r}{hint}; expected one of {', '.join(DATASET_NAMES)}"
    )


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices of a fixed split of ``n`` rows."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    num_test = -(-n * _TEST_PERCENT // 100)  # integer ceil: no float rounding surprises
    return perm[num_test:], perm[:num_test]


def _dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    shape: tuple[int, ...] = (),
) -> Dataset:
    def inputs(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float64))

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    return Dataset(
        name, inputs(x_train), labels(y_train), inputs(x_test), labels(y_test), num_classes, shape
    )


@functools.cache
def _digits() -> Dataset:
    from sklearn.datasets import load_digits  # 1.5 s to import: only this dataset needs it

    x, y = load_digits(return_X_y=True)
    train, test = _split(len(y))
    x = x / 16.0
    return _dataset("digits", x[train], y[train], x[test], y[test], 10, (1, 8, 8))


@functools.cache
def _mnist1d() -> Dataset:
    # Imported here: mnist1d pulls in scipy, requests and matplotlib.pyplot (about a second).
    from mnist1d.data import get_dataset_args, get_templates, make_dataset

    args = get_dataset_args()
    args.num_samples = _MNIST1D_SAMPLES
    args.train_split = _MNIST1D_TRAIN_SPLIT
    args.seed = _MNIST1D_SEED
    # make_dataset seeds and draws from the global `random` and `np.random` generators; restore
    # them so that loading a dataset does not change anyone else's random stream. (The package's
    # get_dataset would download or read and write a pickle in the working directory.)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args, get_templates())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    mean, std = data["x"].mean(), data["x"].std()
    return _dataset(
        "mnist1d",
        (data["x"] - mean) / std,
        data["y"],
        (data["x_test"] - mean) / std,
        data["y_test"],
        10,
        (1, data["x"].shape[1]),
    )


def _cifar10(spec: str, folder: Path) -> Dataset:
    if not folder.is_dir():
        raise DatasetError(f"CIFAR-10 folder '{folder}' does not exist")
    present = [folder / name for name in _CIFAR10_DATA_BATCHES if (folder / name).is_file()]
    if not present:
        raise DatasetError(
            f"CIFAR-10 folder '{folder}' has none of the training batches "
            f"{', '.join(_CIFAR10_DATA_BATCHES)}"
        )
    if not (folder / "test_batch").is_file():
        raise DatasetError(f"CIFAR-10 folder '{folder}' has no test_batch")
    train = [_cifar10_batch(path) for path in present]
    x_test, y_test = _cifar10_batch(folder / "test_batch")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _dataset(
        spec, x_train / 255.0, y_train, x_test / 255.0, y_test, _CIFAR10_CLASSES, (3, 32, 32)
    )


def _cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the official batches are Python 2 pickles
    except Exception as e:  # unpickling garbage can raise almost anything
        raise DatasetError(f"CIFAR-10 batch '{path}' is not a readable pickle: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(
            f"CIFAR-10 batch '{path}' must be a dict with b'data' and b'labels', "
            f"not {type(batch).__name__}"
        )
    data = batch[b"data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _CIFAR10_FEATURES
    ):
        found = (
            f"{data.dtype} of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DatasetError(
            f"CIFAR-10 batch '{path}': b'data' must be uint8 of shape "
            f"(N, {_CIFAR10_FEATURES}), not {found}"
        )
    try:
        labels = np.asarray(batch[b"labels"])
    except (TypeError, ValueError) as e:
        raise DatasetError(f"CIFAR-10 batch '{path}': b'labels' is not a list: {e}") from None
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"CIFAR-10 batch '{path}': b'labels' must be {len(data)} integers, "
            f"not {labels.dtype} of shape {labels.shape}"
        )
    if len(labels) and not 0 <= labels.min() <= labels.max() < _CIFAR10_CLASSES:
        raise DatasetError(
            f"CIFAR-10 batch '{path}': b'labels' must lie in 0 .. "
            f"{_CIFAR10_CLASSES - 1}, found {labels.min()} .. {labels.max()}"
        )
    return data, labels


#: The first bytes of a zip archive (an .npz) and of a single .npy array.
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _npz(spec: str, path: Path) -> Dataset:
    try:
        # Opened here and handed to numpy, which would leave its own handle open when the zip
        # turns out damaged.
        with path.open("rb") as f:
            arrays = _npz_arrays(path, f)
    except FileNotFoundError:
        raise DatasetError(f"npz file '{path}' does not exist") from None
    except IsADirectoryError:
        raise DatasetError(f"npz file '{path}' is a folder, not a file") from None
    except OSError as e:
        raise DatasetError(f"npz file '{path}' cannot be read: {e.strerror or e}") from None
    for key in ("X", "y"):
        if key not in arrays:
            found = ", ".join(arrays) or "none"
            raise DatasetError(f"npz file '{path}' has no array '{key}' (found: {found})")
    if ("X_test" in arrays) != ("y_test" in arrays):
        given, missing = ("X_test", "y_test") if "X_test" in arrays else ("y_test", "X_test")
        raise DatasetError(f"npz file '{path}' has '{given}' but no '{missing}'")
    x, y = _npz_pair(path, arrays["X"], arrays["y"], "X", "y")
    if "X_test" in arrays:
        x_test, y_test = _npz_pair(path, arrays["X_test"], arrays["y_test"], "X_test", "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetError(
                f"npz file '{path}': X_test rows must have shape {x.shape[1:]} as "
                f"in X, not {x_test.shape[1:]}"
            )
    else:
        if len(y) < 2:
            raise DatasetError(
                f"npz file '{path}': X needs at least 2 rows to split off a test "
                f"set (or give X_test and y_test), found {len(y)}"
            )
        train, test = _split(len(y))
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
    classes = np.unique(y)
    if len(classes) < 2:
        raise DatasetError(
            f"npz file '{path}': y holds one class ({classes[0]}) only; training needs at least two"
        )
    num_classes = int(max(y.max(), y_test.max())) + 1
    return _dataset(spec, x, y, x_test, y_test, num_classes, tuple(x.shape[1:]))


def _npz_arrays(path: Path, f: BinaryIO) -> dict[str, np.ndarray]:
    """Every array of the open .npz file ``f``; :class:`DatasetError` for anything else (numpy
    takes any file that is neither a zip nor a .npy for a pickle, and advises allow_pickle:
    never the right advice here)."""
    magic = f.read(len(_NPY_MAGIC))
    if not magic:
        raise DatasetError(f"npz file '{path}' is empty")
    if magic.startswith(_NPY_MAGIC):
        raise DatasetError(f"npz file '{path}' holds a single .npy array, not an .npz archive")
    if not magic.startswith(_ZIP_MAGIC):
        raise DatasetError(
            f"npz file '{path}' is not an .npz archive (a zip of .npy arrays, as numpy.savez "
            "writes)"
        )
    f.seek(0)
    unreadable = (ValueError, EOFError, zipfile.BadZipFile)
    try:
        with np.load(f, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except unreadable as e:
        if "Object arrays" in str(e):  # an object array would need unpickling
            raise DatasetError(f"npz file '{path}' cannot be read: {e}") from None
        # (numpy takes a member that is not a .npy array for a pickle)
        why = "a member is not a .npy array" if "pickle" in str(e) else str(e)
        raise DatasetError(f"npz file '{path}' is damaged ({why})") from None


def _npz_pair(
    path: Path, x: np.ndarray, y: np.ndarray, x_name: str, y_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validated inputs and labels of one set."""
    where = f"npz file '{path}'"
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: {x_name} must be numeric, not {x.dtype}")
    if x.ndim < 2:
        raise DatasetError(f"{where}: {x_name} must have shape (N, F, ...), not {x.shape}")
    if x.size == 0:
        raise DatasetError(f"{where}: {x_name} must not be empty, found shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DatasetError(
            f"{where}: {x_name} must be finite, found {x[tuple(bad)]} at index "
            f"{tuple(int(i) for i in bad)}"
        )
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{where}: {y_name} must hold integer labels, not {y.dtype}")
    if y.shape != (len(x),):
        raise DatasetError(
            f"{where}: {y_name} must have shape ({len(x)},) to match {x_name}, not {y.shape}"
        )
    if y.min() < 0:
        raise DatasetError(f"{where}: {y_name} labels must be >= 0, found {y.min()}")
    return x, y
