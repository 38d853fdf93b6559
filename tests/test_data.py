"""Tests for pyro_vae.data: datasets, splits, binarisation and batching. No network use."""

import gzip
import json
import os
import socket
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from pyro_vae.data import (
    BINARIZE_MODES,
    DATASETS,
    MNIST_FILES,
    Splits,
    batches,
    binarize_batch,
    binarize_fixed,
    list_datasets,
    load_dataset,
    split_indices,
)
from pyro_vae.errors import ConfigError, DataError

N_TRAIN, N_TEST = 30, 10


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails, as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_grey():
    return load_dataset({"name": "digits", "binarize": "none"})


def write_idx(path, array, gz=False):
    """Write uint8 images (magic 2051) or labels (magic 2049) in the big-endian IDX format."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 2051 if array.ndim == 3 else 2049
    payload = struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()
    path = Path(f"{path}.gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)


def write_fake_mnist(root, gz=False, n_train=N_TRAIN, n_test=N_TEST, seed=0):
    rng = np.random.RandomState(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, size=(n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, size=n_train),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, size=(n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, size=n_test),
    }
    for name, array in arrays.items():
        write_idx(Path(root) / "MNIST" / "raw" / name, array, gz=gz)
    return {name: torch.as_tensor(a.astype(np.int64)) for name, a in arrays.items()}


def mnist_spec(root, **options):
    return {"name": "mnist", "root": str(root), "val_size": 5, **options}


def assert_serialisable(info):
    json.dumps(info)
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(yaml.safe_dump(info)) == info


# ---------------------------------------------------------------------------- registry


def test_list_datasets():
    assert {"digits", "mnist"} <= set(list_datasets())
    assert list_datasets() == DATASETS.names()


def test_unknown_dataset_suggests_close_match():
    with pytest.raises(ConfigError, match="Did you mean 'mnist'"):
        load_dataset("mnsit")
    with pytest.raises(ConfigError, match="Did you mean 'digits'"):
        load_dataset({"name": "digit"})


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "digits", "val_sise": 10}, "Did you mean 'val_size'"),
        ({"name": "digits", "binarize": "bernoulli"}, "'dynamic', 'static', 'threshold', 'none'"),
        ({"name": "digits", "binarize": None}, "binarize"),
        ({"name": "digits", "val_size": -1}, "val_size"),
        ({"name": "digits", "val_size": 1.5}, "integer"),
        ({"name": "digits", "split_seed": True}, "integer"),
        ({"name": "digits", "val_size": 1000, "test_size": 797}, "training set"),
        ({"name": "mnist", "download": "yes"}, "true or false"),
        ({"name": "mnist", "val_size": -5}, ">= 0"),
        ({"name": "mnist", "binarize": "Dynamic"}, "'dynamic'"),
        ({"name": "mnist", "root": ""}, "root"),
        ({"name": "mnist", "rot": "data"}, "Did you mean 'root'"),
        ({"root": "data"}, "'name' key"),
    ],
)
def test_bad_options_rejected(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_dataset(spec)


# ---------------------------------------------------------------------------- digits


def test_digits_shapes_sizes_values(digits):
    assert digits.data_shape == (1, 8, 8)
    assert digits.sizes == {"train": 1257, "val": 180, "test": 360}
    for split, n in digits.sizes.items():
        x, y = getattr(digits, split), getattr(digits, f"{split}_labels")
        assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert set(y.tolist()) <= set(range(10))
    info = digits.info
    assert info["name"] == "digits" and info["binarize"] == "dynamic"
    assert info["sizes"] == digits.sizes and info["data_shape"] == [1, 8, 8]
    assert info["split_seed"] == 0 and info["binarize_seed"] is None
    assert "source" in info
    assert_serialisable(info)
    assert digits.dynamic_binarization
    # dynamic binarisation keeps the grey levels in the stored tensors
    assert not torch.all((digits.train == 0) | (digits.train == 1))
    assert "train=1257" in repr(digits)


def test_digits_split_disjoint_and_matches_source(digits_grey):
    from sklearn.datasets import load_digits

    idx = split_indices(1797, {"test": 360, "val": 180, "train": None}, seed=0)
    joined = torch.cat([idx["train"], idx["val"], idx["test"]])
    assert len(set(joined.tolist())) == 1797 == len(joined)  # disjoint and complete
    source = load_digits()
    images = torch.as_tensor(source.images, dtype=torch.float32).unsqueeze(1) / 16
    for split in ("train", "val", "test"):
        torch.testing.assert_close(getattr(digits_grey, split), images[idx[split]])
        assert torch.equal(
            getattr(digits_grey, f"{split}_labels"), torch.as_tensor(source.target)[idx[split]]
        )


def test_digits_deterministic_and_split_seed(digits_grey):
    again = load_dataset({"name": "digits", "binarize": "none"})
    for split in ("train", "val", "test", "train_labels", "test_labels"):
        assert torch.equal(getattr(again, split), getattr(digits_grey, split))
    other = load_dataset({"name": "digits", "binarize": "none", "split_seed": 1})
    assert not torch.equal(other.test, digits_grey.test)
    assert other.info["split_seed"] == 1


def test_digits_custom_sizes():
    s = load_dataset({"name": "digits", "val_size": 0, "test_size": 97})
    assert s.sizes == {"train": 1700, "val": 0, "test": 97}
    assert s.val.shape == (0, 1, 8, 8)


# ---------------------------------------------------------------------------- binarisation


def test_static_binarization_fixed_and_binary(digits_grey):
    a = load_dataset({"name": "digits", "binarize": "static"})
    b = load_dataset({"name": "digits", "binarize": "static"})
    for split in ("train", "val", "test"):
        x = getattr(a, split)
        assert torch.equal(x, getattr(b, split))
        assert torch.all((x == 0) | (x == 1))
    assert a.info["binarize"] == "static" and a.info["binarize_seed"] == 0
    assert not a.dynamic_binarization
    assert abs(a.train.mean() - digits_grey.train.mean()) < 0.01
    assert torch.all(a.train[digits_grey.train == 0] == 0)  # p = 0 is never drawn as 1
    c = load_dataset({"name": "digits", "binarize": "static", "binarize_seed": 1})
    assert not torch.equal(a.train, c.train)
    assert_serialisable(a.info)


def test_static_binarization_independent_of_split():
    def full(seed):
        s = load_dataset({"name": "digits", "binarize": "static", "split_seed": seed})
        idx = split_indices(1797, {"test": 360, "val": 180, "train": None}, seed=seed)
        out = torch.empty(1797, 1, 8, 8)
        for split in ("train", "val", "test"):
            out[idx[split]] = getattr(s, split)
        return out

    assert torch.equal(full(0), full(3))


def test_threshold_binarization(digits_grey):
    s = load_dataset({"name": "digits", "binarize": "threshold"})
    assert torch.equal(s.train, (digits_grey.train > 0.5).float())
    assert s.info["binarize"] == "threshold" and not s.dynamic_binarization


def test_binarize_batch_fresh_draws_with_grey_level_mean(digits):
    x = digits.train[:64]
    first, second = binarize_batch(x), binarize_batch(x)
    assert first.shape == x.shape and first.device == x.device
    assert torch.all((first == 0) | (first == 1))
    assert not torch.equal(first, second)
    draws = torch.stack([binarize_batch(x) for _ in range(400)])
    assert (draws.mean(0) - x).abs().max() < 0.12
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(binarize_batch(x, generator=g1), binarize_batch(x, generator=g2))


def test_binarize_fixed_deterministic(digits):
    x = digits.test
    a, b = binarize_fixed(x, seed=7), binarize_fixed(x, seed=7)
    assert torch.equal(a, b) and a.dtype == x.dtype
    assert torch.all((a == 0) | (a == 1))
    assert not torch.equal(a, binarize_fixed(x, seed=8))
    assert abs(a.mean() - x.mean()) < 0.02
    with pytest.raises(ConfigError):
        binarize_fixed(x, seed=-1)


def test_eval_view(digits):
    view = digits.eval_view(seed=0)
    assert view is not digits and digits.dynamic_binarization
    assert not view.dynamic_binarization
    assert view.info["binarize"] == "fixed" and view.info["eval_binarize_seed"] == 0
    assert digits.info["binarize"] == "dynamic"  # original untouched
    for split in ("train", "val", "test"):
        x = getattr(view, split)
        assert torch.all((x == 0) | (x == 1))
        assert torch.equal(x, getattr(digits.eval_view(seed=0), split))
    assert torch.equal(view.test_labels, digits.test_labels)
    assert not torch.equal(view.test, digits.eval_view(seed=1).test)
    static = load_dataset({"name": "digits", "binarize": "static"})
    assert static.eval_view() is static
    assert_serialisable(view.info)


# ---------------------------------------------------------------------------- Splits


def test_splits_to_device(digits):
    moved = digits.to("meta")  # a device move that needs no accelerator
    assert moved is not digits
    for name in ("train", "val", "test", "train_labels", "val_labels", "test_labels"):
        assert getattr(moved, name).device.type == "meta"
        assert getattr(digits, name).device.type == "cpu"
    assert moved.info == digits.info and moved.info is not digits.info
    assert moved.data_shape == digits.data_shape
    back = digits.to("cpu")
    assert torch.equal(back.train, digits.train)


def test_splits_validation():
    x = torch.rand(4, 3)
    with pytest.raises(DataError, match="empty"):
        Splits(train=torch.zeros(0, 3), val=x, test=x)
    with pytest.raises(DataError, match="shape"):
        Splits(train=x, val=torch.rand(2, 4), test=x)
    with pytest.raises(DataError, match="labels"):
        Splits(train=x, val=x, test=x, train_labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(DataError, match="Tensor"):
        Splits(train=x.numpy(), val=x, test=x)
    s = Splits(train=x.double(), val=x, test=x[:0])
    assert s.train.dtype == torch.float32 and s.data_shape == (3,)
    assert s.sizes == {"train": 4, "val": 4, "test": 0}
    assert s.train_labels is None and not s.dynamic_binarization


# ---------------------------------------------------------------------------- batches


def test_batches_cover_each_index_once():
    g = torch.Generator().manual_seed(0)
    out = list(batches(10, 4, generator=g))
    assert [len(b) for b in out] == [4, 4, 2]
    assert sorted(torch.cat(out).tolist()) == list(range(10))
    assert all(b.dtype == torch.int64 for b in out)
    assert [len(b) for b in batches(10, 4, drop_last=True)] == [4, 4]
    assert [len(b) for b in batches(8, 4, drop_last=True)] == [4, 4]
    assert torch.equal(torch.cat(list(batches(5, 2, shuffle=False))), torch.arange(5))


def test_batches_reproducible_and_on_device():
    def epoch(seed, device=None):
        return torch.cat(list(batches(50, 8, torch.Generator().manual_seed(seed), device)))

    assert torch.equal(epoch(1), epoch(1))
    assert not torch.equal(epoch(1), epoch(2))
    g = torch.Generator().manual_seed(1)
    assert all(b.device.type == "meta" for b in batches(50, 8, g, device="meta"))


def test_batches_bad_arguments():
    with pytest.raises(DataError, match="empty"):
        batches(0, 4)  # checked on the call, before iterating
    with pytest.raises(ConfigError, match="batch_size"):
        batches(10, 0)
    with pytest.raises(ConfigError, match="drop_last"):
        batches(3, 4, drop_last=True)


# ---------------------------------------------------------------------------- mnist


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_fake_files(tmp_path, gz):
    arrays = write_fake_mnist(tmp_path, gz=gz)
    s = load_dataset(mnist_spec(tmp_path, binarize="none"))
    assert s.data_shape == (1, 28, 28)
    assert s.sizes == {"train": N_TRAIN - 5, "val": 5, "test": N_TEST}
    assert s.train.shape == (N_TRAIN - 5, 1, 28, 28) and s.train.dtype == torch.float32
    images = arrays["train-images-idx3-ubyte"].float().unsqueeze(1) / 255
    labels = arrays["train-labels-idx1-ubyte"]
    idx = split_indices(N_TRAIN, {"val": 5, "train": None}, seed=0)
    assert set(idx["val"].tolist()).isdisjoint(idx["train"].tolist())
    for split in ("train", "val"):
        torch.testing.assert_close(getattr(s, split), images[idx[split]])
        assert torch.equal(getattr(s, f"{split}_labels"), labels[idx[split]])
    torch.testing.assert_close(
        s.test, arrays["t10k-images-idx3-ubyte"].float().unsqueeze(1) / 255
    )
    assert torch.equal(s.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert s.test_labels.dtype == torch.int64
    assert s.info["name"] == "mnist" and s.info["root"] == str(tmp_path)
    assert s.info["val_size"] == 5 and s.info["binarize"] == "none"
    assert_serialisable(s.info)


def test_mnist_binarize_modes_and_split_seed(tmp_path):
    write_fake_mnist(tmp_path)
    a = load_dataset(mnist_spec(tmp_path, binarize="static"))
    b = load_dataset(mnist_spec(tmp_path, binarize="static"))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert torch.all((a.train == 0) | (a.train == 1))
    d = load_dataset(mnist_spec(tmp_path))  # default: dynamic
    assert d.dynamic_binarization and d.info["binarize"] == "dynamic"
    assert not torch.all((d.train == 0) | (d.train == 1))
    other = load_dataset(mnist_spec(tmp_path, split_seed=1))
    assert not torch.equal(other.val, d.val)
    assert torch.equal(other.test, d.test)
    assert load_dataset(mnist_spec(tmp_path, val_size=0)).sizes["val"] == 0


def test_mnist_val_size_too_large(tmp_path):
    write_fake_mnist(tmp_path)
    with pytest.raises(ConfigError, match=f"{N_TRAIN} training images"):
        load_dataset(mnist_spec(tmp_path, val_size=N_TRAIN))
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset({"name": "mnist", "root": str(tmp_path)})  # default 10000 > 30


def assert_names_files(message, root):
    raw = os.path.join(str(root), "MNIST", "raw")
    for name in MNIST_FILES:
        assert os.path.join(raw, name) in message
    assert ".gz" in message and "download: true" in message


def test_mnist_missing_files(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset({"name": "mnist", "root": str(tmp_path / "nowhere")})
    assert_names_files(str(caught.value), tmp_path / "nowhere")
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_mnist_some_files_missing(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing: t10k-labels-idx1-ubyte"):
        load_dataset(mnist_spec(tmp_path))


@pytest.mark.parametrize(
    "error", [URLError("no route to host"), OSError(101, "Network is unreachable")]
)
def test_mnist_download_fails_offline(tmp_path, monkeypatch, error):
    import torchvision.datasets.mnist

    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise error

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as caught:
        load_dataset({"name": "mnist", "root": str(tmp_path), "download": True})
    assert calls, "the download should have been attempted (and refused)"
    message = str(caught.value)
    assert_names_files(message, tmp_path)
    assert "download requested by 'download: true' failed" in message and "Traceback" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_mnist_download_method_fails(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried ...")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match="download.*failed"):
        load_dataset({"name": "mnist", "root": str(tmp_path), "download": True})


def test_mnist_malformed_and_empty_files(tmp_path):
    write_fake_mnist(tmp_path)
    image_file = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    image_file.write_bytes(image_file.read_bytes()[:7])
    with pytest.raises(DataError, match="Could not read"):
        load_dataset(mnist_spec(tmp_path))
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"")
    write_idx(image_file, np.zeros((0, 28, 28)))
    with pytest.raises(DataError):
        load_dataset(mnist_spec(tmp_path))


def test_mnist_label_count_mismatch(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(N_TEST - 1))
    with pytest.raises(DataError, match="labels"):
        load_dataset(mnist_spec(tmp_path))


@pytest.mark.skipif(
    not os.environ.get("PYRO_VAE_MNIST_ROOT"),
    reason="set PYRO_VAE_MNIST_ROOT to a folder holding MNIST/raw/ to test real MNIST",
)
def test_real_mnist():
    root = os.environ["PYRO_VAE_MNIST_ROOT"]
    s = load_dataset({"name": "mnist", "root": root, "binarize": "none"})
    assert s.sizes == {"train": 50000, "val": 10000, "test": 10000}
    assert s.data_shape == (1, 28, 28)
    assert s.train.min() == 0 and s.train.max() == 1
    assert s.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(s.train_labels, minlength=10).min() > 4000


def test_binarize_modes_constant():
    assert BINARIZE_MODES == ("dynamic", "static", "threshold", "none")
