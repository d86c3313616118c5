import pickle
import random
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from sklearn.datasets import load_digits

from pbhw.core import datasets
from pbhw.core.datasets import DATASET_NAMES, Dataset, DatasetError, load


def row_set(*xs: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for x in xs for row in x}


# digits


def test_digits_shapes_dtypes_and_range():
    ds = load("digits")
    assert (ds.x_train.shape, ds.y_train.shape) == ((1437, 64), (1437,))
    assert (ds.x_test.shape, ds.y_test.shape) == ((360, 64), (360,))
    assert (ds.num_features, ds.num_classes) == (64, 10)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float64
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(ds.y_train.tolist()) == set(ds.y_test.tolist()) == set(range(10))


def test_digits_describe():
    assert load("digits").describe() == "digits: 1437 train / 360 test, 64 features, 10 classes"


def test_digits_split_is_a_partition_of_all_samples():
    ds = load("digits")
    train, test = row_set(ds.x_train), row_set(ds.x_test)
    assert len(train) == 1437 and len(test) == 360  # digits has no duplicate images
    assert not train & test
    assert train | test == row_set(torch.from_numpy(load_digits().data / 16.0))


def test_digits_is_cached_and_split_ignores_seed():
    first = load("digits")
    assert load("digits", seed=123) is first


def test_digits_rebuilt_equals_cached():
    first = load("digits")
    datasets._digits.cache_clear()
    second = load("digits")
    assert second is not first
    for a, b in zip(
        (first.x_train, first.y_train, first.x_test, first.y_test),
        (second.x_train, second.y_train, second.x_test, second.y_test),
        strict=True,
    ):
        assert torch.equal(a, b)


# mnist1d


def test_mnist1d_shapes_and_dtypes():
    ds = load("mnist1d")
    assert (ds.x_train.shape, ds.y_train.shape) == ((4000, 40), (4000,))
    assert (ds.x_test.shape, ds.y_test.shape) == ((1000, 40), (1000,))
    assert (ds.num_features, ds.num_classes) == (40, 10)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float64
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert set(ds.y_train.tolist()) == set(ds.y_test.tolist()) == set(range(10))


def test_mnist1d_standardised_with_train_statistics():
    ds = load("mnist1d")
    assert abs(ds.x_train.mean().item()) < 1e-9
    assert abs(ds.x_train.std(correction=0).item() - 1) < 1e-9
    # The test set is scaled with the train statistics, so it is only close to standard.
    assert abs(ds.x_test.mean().item()) < 0.05
    assert abs(ds.x_test.std(correction=0).item() - 1) < 0.05


def test_mnist1d_regenerates_identically_offline_without_side_effects(monkeypatch, tmp_path):
    first = load("mnist1d")
    datasets._mnist1d.cache_clear()

    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d tried to use the network or a pickle")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "to_pickle", refuse)
    monkeypatch.setattr(mnist1d.data, "from_pickle", refuse)
    monkeypatch.chdir(tmp_path)
    np_state, py_state = np.random.get_state(), random.getstate()

    second = load("mnist1d")

    assert second is not first
    for a, b in zip(
        (first.x_train, first.y_train, first.x_test, first.y_test),
        (second.x_train, second.y_train, second.x_test, second.y_test),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert list(tmp_path.iterdir()) == []
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]


# cifar10


def write_batch(path: Path, rows: int, seed: int, *, features: int = 3072) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows, features), dtype=np.uint8)
    data[0, :2] = (0, 255)
    batch = {b"data": data, b"labels": rng.integers(0, 10, size=rows).tolist()}
    with path.open("wb") as f:
        pickle.dump(batch, f)
    return batch


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_batch(folder / "data_batch_1", 7, seed=1)
    write_batch(folder / "data_batch_2", 7, seed=2)
    write_batch(folder / "test_batch", 5, seed=3)
    return folder


def test_cifar10_loads_present_batches_scaled(cifar_dir):
    ds = load(f"cifar10:{cifar_dir}")
    assert ds.describe() == f"cifar10:{cifar_dir}: 14 train / 5 test, 3072 features, 10 classes"
    assert ds.x_train.dtype == torch.float64 and ds.y_train.dtype == torch.int64
    batches = [
        pickle.loads((cifar_dir / name).read_bytes())
        for name in ("data_batch_1", "data_batch_2", "test_batch")
    ]
    data = np.concatenate([b[b"data"] for b in batches[:2]])
    assert torch.equal(ds.x_train, torch.from_numpy(data / 255.0))
    assert torch.equal(ds.x_test, torch.from_numpy(batches[2][b"data"] / 255.0))
    assert ds.y_train.tolist() == batches[0][b"labels"] + batches[1][b"labels"]
    assert ds.y_test.tolist() == batches[2][b"labels"]
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # The batches' rows are the red, green and blue planes of 32 x 32 pixels, in that order.
    assert ds.sample_shape == (3, 32, 32)


def test_cifar10_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load(f"cifar10:{tmp_path / 'nowhere'}")


def test_cifar10_without_data_batches(cifar_dir):
    for name in ("data_batch_1", "data_batch_2"):
        (cifar_dir / name).unlink()
    with pytest.raises(DatasetError, match="none of the training batches data_batch_1"):
        load(f"cifar10:{cifar_dir}")


def test_cifar10_without_test_batch(cifar_dir):
    (cifar_dir / "test_batch").unlink()
    with pytest.raises(DatasetError, match="no test_batch"):
        load(f"cifar10:{cifar_dir}")


def test_cifar10_wrong_data_shape(cifar_dir):
    write_batch(cifar_dir / "data_batch_2", 7, seed=2, features=3071)
    with pytest.raises(DatasetError, match=r"data_batch_2': b'data' must be uint8 of shape"):
        load(f"cifar10:{cifar_dir}")


def test_cifar10_unreadable_pickle(cifar_dir):
    (cifar_dir / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch' is not a readable pickle"):
        load(f"cifar10:{cifar_dir}")


def test_cifar10_labels_count_mismatch(cifar_dir):
    batch = write_batch(cifar_dir / "test_batch", 5, seed=3)
    batch[b"labels"] = batch[b"labels"][:4]
    (cifar_dir / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetError, match="b'labels' must be 5 integers"):
        load(f"cifar10:{cifar_dir}")


# npz


def test_npz_with_test_arrays_used_as_given(tmp_path):
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(6, 2, 3)), rng.integers(-5, 5, size=(3, 2, 3))
    y, y_test = np.array([0, 1, 2, 0, 1, 2]), np.array([4, 0, 1], dtype=np.uint8)
    np.savez(tmp_path / "d.npz", X=x, y=y, X_test=x_test, y_test=y_test)
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    assert torch.equal(ds.x_train, torch.from_numpy(x.reshape(6, 6)))
    assert torch.equal(ds.x_test, torch.from_numpy(x_test.reshape(3, 6).astype(np.float64)))
    assert ds.y_train.tolist() == y.tolist() and ds.y_test.tolist() == y_test.tolist()
    assert ds.y_test.dtype == torch.int64
    assert (ds.num_features, ds.num_classes) == (6, 5)  # classes from the largest label anywhere


def test_npz_without_test_arrays_split_80_20_independent_of_seed(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.savez(tmp_path / "d.npz", X=x, y=np.arange(10) % 3)
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    again = load(f"npz:{tmp_path / 'd.npz'}", seed=7)
    assert (len(ds.y_train), len(ds.y_test), ds.num_classes) == (8, 2, 3)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.x_test, again.x_test)
    train, test = row_set(ds.x_train), row_set(ds.x_test)
    assert not train & test
    assert train | test == row_set(torch.from_numpy(x.astype(np.float64)))
    rows = ds.x_train[:, 0].long() // 4  # row i holds 4i .. 4i+3, label i % 3
    assert torch.equal(ds.y_train, rows % 3)


X, Y = np.zeros((4, 3)), np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    "arrays, expected",
    [
        pytest.param({"y": Y}, "has no array 'X' (found: y)", id="no X"),
        pytest.param({"X": X}, "has no array 'y' (found: X)", id="no y"),
        pytest.param({"X": X, "y": Y, "y_test": Y}, "has 'y_test' but no 'X_test'", id="half test"),
        pytest.param(
            {"X": X, "y": Y[:3]}, "y must have shape (4,) to match X, not (3,)", id="length"
        ),
        pytest.param(
            {"X": X, "y": Y * 1.0}, "y must hold integer labels, not float64", id="float labels"
        ),
        pytest.param(
            {"X": X, "y": Y, "X_test": X, "y_test": -Y},
            "y_test labels must be >= 0, found -1",
            id="negative labels",
        ),
        pytest.param(
            {"X": X, "y": Y, "X_test": X[:, :2], "y_test": Y},
            "X_test rows must have shape (3,) as in X, not (2,)",
            id="features",
        ),
        pytest.param(
            {"X": np.array([[0, 1, np.nan]] * 4), "y": Y},
            "X must be finite, found nan at index (0, 2)",
            id="nan",
        ),
        pytest.param(
            {"X": X, "y": Y, "X_test": X + np.inf, "y_test": Y},
            "X_test must be finite, found inf at index (0, 0)",
            id="inf",
        ),
        pytest.param(
            {"X": X[:0], "y": Y[:0]}, "X must not be empty, found shape (0, 3)", id="empty"
        ),
        pytest.param({"X": X[:, 0], "y": Y}, "X must have shape (N, F, ...), not (4,)", id="1-D"),
        pytest.param(
            {"X": np.array([["a"] * 3] * 4), "y": Y}, "X must be numeric, not <U1", id="strings"
        ),
        pytest.param({"X": X[:1], "y": Y[:1]}, "X needs at least 2 rows", id="too few to split"),
    ],
)
def test_npz_errors_name_file_and_array(tmp_path, arrays, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as info:
        load(f"npz:{path}")
    assert str(info.value).startswith(f"npz file '{path}'")
    assert expected in str(info.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"npz file '.*missing\.npz' does not exist"):
        load(f"npz:{tmp_path / 'missing.npz'}")


def test_npz_not_an_archive(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="single .npy array, not an .npz archive"):
        load(f"npz:{tmp_path / 'one.npy'}")
    with pytest.raises(DatasetError, match="junk.npz' is not an .npz archive"):
        load(f"npz:{tmp_path / 'junk.npz'}")


def test_npz_object_arrays_are_refused_not_unpickled(tmp_path):
    np.savez(tmp_path / "obj.npz", X=np.zeros((2, 2)), y=np.array([0, None], dtype=object))
    with pytest.raises(DatasetError, match="obj.npz' cannot be read: Object arrays"):
        load(f"npz:{tmp_path / 'obj.npz'}")


# specs


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DatasetError) as info:
        load("foo")
    assert str(info.value) == (
        "unknown dataset 'foo'; expected one of digits, mnist1d, cifar10:PATH, npz:PATH"
    )
    assert ", ".join(DATASET_NAMES) in str(info.value)


@pytest.mark.parametrize(
    "spec, suggestion",
    [("digit", "digits"), ("MNIST1D", "mnist1d"), ("cifar", "cifar10:PATH"), ("npy:x", "npz:PATH")],
)
def test_unknown_dataset_suggests_a_close_name(spec, suggestion):
    with pytest.raises(
        DatasetError, match=f"unknown dataset '{spec}' \\(did you mean '{suggestion}'"
    ):
        load(spec)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("cifar10", "dataset 'cifar10' needs a path: cifar10:PATH"),
        ("npz:", "dataset 'npz' needs a path: npz:PATH"),
        ("digits:x", "dataset 'digits' takes no path, not 'digits:x'"),
    ],
)
def test_path_required_exactly_where_expected(spec, expected):
    with pytest.raises(DatasetError) as info:
        load(spec)
    assert str(info.value) == expected


def test_spec_and_seed_types():
    with pytest.raises(TypeError, match="dataset spec must be a str, not 3"):
        load(3)
    with pytest.raises(TypeError, match="seed must be an int, not True"):
        load("digits", seed=True)


def test_dataset_rejects_inconsistent_tensors():
    x, y = torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0, 1, 2])
    Dataset("ok", x, y, x, y, 3)
    with pytest.raises(DatasetError, match="x_train must be a float64"):
        Dataset("bad", x.float(), y, x, y, 3)
    with pytest.raises(DatasetError, match=r"y_test must be an int64 tensor of shape \(3,\)"):
        Dataset("bad", x, y, x, y[:2], 3)
    with pytest.raises(DatasetError, match=r"y_train labels must lie in 0 .. 1, found 0 .. 2"):
        Dataset("bad", x, y, x, y, 2)
    with pytest.raises(DatasetError, match=r"sample shape \[1, 3\] does not hold the 2"):
        Dataset("bad", x, y, x, y, 3, (1, 3))
    assert Dataset("flat", x, y, x, y, 3).sample_shape == (2,)


def test_npz_sample_shape_is_the_shape_of_the_rows(tmp_path):
    x = np.arange(2 * 10 * 3 * 4, dtype=np.float64).reshape(10, 2, 3, 4)
    np.savez(tmp_path / "d.npz", X=x, y=np.arange(10) % 3)
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    assert ds.sample_shape == (2, 3, 4) and ds.num_features == 24


def test_content_hash_follows_the_data_not_the_path(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((20, 3)), rng.integers(0, 3, 20)
    path = tmp_path / "d.npz"
    np.savez(path, X=x, y=y)
    first = load(f"npz:{path}").content_hash
    assert len(first) == 64 and first == load(f"npz:{path}").content_hash
    copy = tmp_path / "copy.npz"
    np.savez(copy, X=x, y=y)
    assert load(f"npz:{copy}").content_hash == first  # same data elsewhere: same hash
    y[0] = (y[0] + 1) % 3
    np.savez(path, X=x, y=y)
    assert load(f"npz:{path}").content_hash != first  # one label changed


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda good: b"hello, not numpy\n" * 20, "is not an .npz archive"),
        (lambda good: b"", "is empty"),
        (lambda good: good[: len(good) // 2], "is damaged (File is not a zip file)"),
        (
            lambda good: good[:200] + bytes([good[200] ^ 0xFF]) + good[201:],
            "is damaged (Bad CRC-32",
        ),
    ],
    ids=["garbage", "empty", "truncated", "flipped byte"],
)
def test_a_corrupt_npz_is_named_as_such_without_pickle_advice(tmp_path, damage, expected):
    good = tmp_path / "good.npz"
    np.savez(good, X=np.arange(60.0).reshape(20, 3), y=np.arange(20) % 3)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(DatasetError) as info:
        load(f"npz:{bad}")
    message = str(info.value)
    assert message.startswith(f"npz file '{bad}' ")
    assert expected in message
    assert "pickle" not in message


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"y": np.zeros(20, int)}, "y holds one class (0) only; training needs at least two"),
        (
            {"y": np.full(20, 4), "X_test": np.ones((4, 3)), "y_test": np.array([0, 1, 2, 4])},
            "y holds one class (4) only; training needs at least two",
        ),
    ],
    ids=["one class", "one training class"],
)
def test_one_class_data_is_refused(tmp_path, arrays, expected):
    path = tmp_path / "one.npz"
    np.savez(path, **{"X": np.arange(60.0).reshape(20, 3), **arrays})
    with pytest.raises(DatasetError) as info:
        load(f"npz:{path}")
    assert str(info.value) == f"npz file '{path}': {expected}"
