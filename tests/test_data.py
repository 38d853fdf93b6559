"""Tests for pyro_vae.data: datasets, splits, binarisation and batching. No network use."""

import json
import os
import pickle
import socket
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from checks import write_idx

from pyro_vae.data import (
    BINARIZE_MODES,
    DATASETS,
    MNIST_FILES,
    Splits,
    batches,
    binarize_batch,
    binarize_fixed,
    dequantize_batch,
    dequantize_fixed,
    fits_on_device,
    list_datasets,
    load_dataset,
    make_loader,
    split_indices,
)
from pyro_vae.errors import ConfigError, DataError

N_TRAIN, N_TEST = 30, 10


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails, as on a machine without internet
    (local Unix sockets, which DataLoader workers use, still work)."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    connect = socket.socket.connect

    def local_only(sock, address):
        if sock.family != socket.AF_UNIX:
            refuse()
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_grey():
    return load_dataset({"name": "digits", "binarize": "none"})


EMNIST_FILES = tuple(
    f"emnist-balanced-{split}-{kind}"
    for split in ("train", "test")
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
)

# dataset -> (folder under root, [train images, train labels, test images, test labels],
# images stored transposed), as torchvision 0.29 lays them out
IDX_FAMILY = {
    "mnist": ("MNIST/raw", MNIST_FILES, False),
    "fashion-mnist": ("FashionMNIST/raw", MNIST_FILES, False),
    "kmnist": ("KMNIST/raw", MNIST_FILES, False),
    "emnist": ("EMNIST/raw", EMNIST_FILES, True),
}


def write_fake_idx(root, name="mnist", gz=False, n_train=N_TRAIN, n_test=N_TEST, seed=0):
    """Random IDX files where torchvision keeps ``name``; returns the upright uint8 images
    ``(N, 28, 28)`` and int64 labels of each split as tensors."""
    folder, files, transposed = IDX_FAMILY[name]
    rng = np.random.RandomState(seed)
    out = {}
    for split, n, (images_file, labels_file) in (("train", n_train, files[:2]), ("test", n_test, files[2:])):
        images, labels = rng.randint(0, 256, size=(n, 28, 28)), rng.randint(0, 47, size=n)
        write_idx(Path(root) / folder / images_file, images.transpose(0, 2, 1) if transposed else images, gz)
        write_idx(Path(root) / folder / labels_file, labels, gz)
        out[split] = torch.as_tensor(images.astype(np.uint8)), torch.as_tensor(labels.astype(np.int64))
    return out


def mnist_spec(root, name="mnist", **options):
    return {"name": name, "root": str(root), "val_size": 5, **options}


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


# ---------------------------------------------------------------------------- MNIST family

FAMILY = pytest.mark.parametrize("name", list(IDX_FAMILY))


@FAMILY
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_family_fake_files(tmp_path, name, gz):
    arrays = write_fake_idx(tmp_path, name, gz=gz)
    s = load_dataset(mnist_spec(tmp_path, name, binarize="none"))
    assert s.data_shape == (1, 28, 28)
    assert s.sizes == {"train": N_TRAIN - 5, "val": 5, "test": N_TEST}
    assert s.train.shape == (N_TRAIN - 5, 1, 28, 28) and s.train.dtype == torch.float32
    images, labels = arrays["train"]
    images = images.float().unsqueeze(1) / 255
    idx = split_indices(N_TRAIN, {"val": 5, "train": None}, seed=0)
    assert set(idx["val"].tolist()).isdisjoint(idx["train"].tolist())
    for split in ("train", "val"):
        torch.testing.assert_close(getattr(s, split), images[idx[split]])  # EMNIST: upright
        assert torch.equal(getattr(s, f"{split}_labels"), labels[idx[split]])
    torch.testing.assert_close(s.test, arrays["test"][0].float().unsqueeze(1) / 255)
    assert torch.equal(s.test_labels, arrays["test"][1])
    assert s.test_labels.dtype == torch.int64
    assert s.info["name"] == name and s.info["root"] == str(tmp_path)
    assert s.info["val_size"] == 5 and s.info["binarize"] == "none" and s.info["dequantize"] is False
    assert s.info["num_classes"] == (47 if name == "emnist" else 10)
    assert_serialisable(s.info)


@pytest.mark.parametrize(
    "name, cls, options",
    [
        ("fashion-mnist", "FashionMNIST", {}),
        ("kmnist", "KMNIST", {}),
        ("emnist", "EMNIST", {"split": "balanced"}),
    ],
)
def test_idx_fakes_are_what_torchvision_reads(tmp_path, name, cls, options):
    import torchvision

    arrays = write_fake_idx(tmp_path, name)
    for train, split in ((True, "train"), (False, "test")):
        ds = getattr(torchvision.datasets, cls)(str(tmp_path), train=train, **options)
        stored = arrays[split][0].transpose(1, 2) if name == "emnist" else arrays[split][0]
        assert torch.equal(ds.data, stored) and torch.equal(ds.targets, arrays[split][1])


@FAMILY
def test_idx_family_binarize_modes_and_split_seed(tmp_path, name):
    write_fake_idx(tmp_path, name)
    a = load_dataset(mnist_spec(tmp_path, name, binarize="static"))
    b = load_dataset(mnist_spec(tmp_path, name, binarize="static"))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert torch.all((a.train == 0) | (a.train == 1))
    d = load_dataset(mnist_spec(tmp_path, name))  # default: dynamic
    assert d.dynamic_binarization and d.info["binarize"] == "dynamic"
    assert not torch.all((d.train == 0) | (d.train == 1))
    first, second = d.transform_batch(d.train), d.transform_batch(d.train)
    assert torch.all((first == 0) | (first == 1)) and not torch.equal(first, second)
    other = load_dataset(mnist_spec(tmp_path, name, split_seed=1))
    assert not torch.equal(other.val, d.val)
    assert torch.equal(other.test, d.test)
    assert load_dataset(mnist_spec(tmp_path, name, val_size=0)).sizes["val"] == 0


def test_mnist_val_size_too_large(tmp_path):
    write_fake_idx(tmp_path)
    with pytest.raises(ConfigError, match=f"{N_TRAIN} training images"):
        load_dataset(mnist_spec(tmp_path, val_size=N_TRAIN))
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset({"name": "mnist", "root": str(tmp_path)})  # default 10000 > 30


# dataset -> (folder under root, the files that must be there, what the message hints at)
SOURCE_FILES = {
    **{name: (folder, files, ".gz") for name, (folder, files, _) in IDX_FAMILY.items()},
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
        "cifar-10-python.tar.gz",
    ),
}


def assert_names_files(message, root, name="mnist"):
    folder, files, hint = SOURCE_FILES[name]
    for file in files:
        assert os.path.join(str(root), *folder.split("/"), file) in message
    assert hint in message and "download: true" in message


@pytest.mark.parametrize("name", list(SOURCE_FILES))
def test_missing_files_named(tmp_path, name):
    with pytest.raises(DataError) as caught:
        load_dataset({"name": name, "root": str(tmp_path / "nowhere")})
    assert_names_files(str(caught.value), tmp_path / "nowhere", name)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_mnist_some_files_missing(tmp_path):
    write_fake_idx(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing: t10k-labels-idx1-ubyte"):
        load_dataset(mnist_spec(tmp_path))


@pytest.mark.parametrize(
    "error", [URLError("no route to host"), OSError(101, "Network is unreachable")]
)
@pytest.mark.parametrize("name", list(SOURCE_FILES))
def test_download_fails_offline(tmp_path, monkeypatch, error, name):
    import torchvision.datasets.cifar
    import torchvision.datasets.mnist

    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise error

    module = torchvision.datasets.cifar if name == "cifar10" else torchvision.datasets.mnist
    monkeypatch.setattr(module, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as caught:
        load_dataset({"name": name, "root": str(tmp_path), "download": True})
    assert calls, "the download should have been attempted (and refused)"
    message = str(caught.value)
    assert_names_files(message, tmp_path, name)
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
    write_fake_idx(tmp_path)
    image_file = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    image_file.write_bytes(image_file.read_bytes()[:7])
    with pytest.raises(DataError, match="Could not read"):
        load_dataset(mnist_spec(tmp_path))
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"")
    write_idx(image_file, np.zeros((0, 28, 28)))
    with pytest.raises(DataError):
        load_dataset(mnist_spec(tmp_path))


def test_mnist_label_count_mismatch(tmp_path):
    write_fake_idx(tmp_path)
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


# ---------------------------------------------------------------------------- CIFAR-10


def write_fake_cifar(root, n_per_batch=4, seed=0, byte_keys=True):
    """CIFAR-10 python batches (protocol-2 pickles, as the official ones) with random
    images; returns the uint8 ``(N, 3, 32, 32)`` images and labels of train and test."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    key = (lambda k: k.encode()) if byte_keys else (lambda k: k)
    out = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.randint(0, 256, size=(n_per_batch, 3072)).astype(np.uint8)
        labels = rng.randint(0, 10, size=n_per_batch).tolist()
        entry = {key("batch_label"): key(name), key("labels"): labels, key("data"): data,
                 key("filenames"): [key(f"{name}_{i}.png") for i in range(n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(data)
        out[split][1].extend(labels)
    meta = {key("label_names"): [key(c) for c in "abcdefghij"], key("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        split: (torch.as_tensor(np.concatenate(x)).reshape(-1, 3, 32, 32), torch.as_tensor(y))
        for split, (x, y) in out.items()
    }


@pytest.mark.parametrize("byte_keys", [True, False], ids=["bytes-keys", "str-keys"])
def test_cifar10_fake_batches(tmp_path, byte_keys):
    arrays = write_fake_cifar(tmp_path, byte_keys=byte_keys)
    s = load_dataset({"name": "cifar10", "root": str(tmp_path), "val_size": 3})
    assert s.data_shape == (3, 32, 32) and s.sizes == {"train": 17, "val": 3, "test": 4}
    images, labels = arrays["train"]
    idx = split_indices(20, {"val": 3, "train": None}, seed=0)
    for split in ("train", "val"):
        torch.testing.assert_close(getattr(s, split), images[idx[split]].float() / 255)
        assert torch.equal(getattr(s, f"{split}_labels"), labels[idx[split]])
    torch.testing.assert_close(s.test, arrays["test"][0].float() / 255)
    # channel-major rows: red plane, green plane, blue plane, each row by row
    first_test_row = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    row = first_test_row[b"data" if byte_keys else "data"][0]
    assert s.test[0, 1, 2, 3] * 255 == pytest.approx(float(row[1024 + 2 * 32 + 3]))
    assert s.info["binarize"] == "none" and s.info["num_classes"] == 10  # CIFAR default: grey levels
    static = load_dataset({"name": "cifar10", "root": str(tmp_path), "val_size": 3, "binarize": "static"})
    assert torch.all((static.train == 0) | (static.train == 1))
    assert_serialisable(s.info)


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar10_refuses_pickled_code(tmp_path, capsys):
    write_fake_cifar(tmp_path)
    payload = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4, b"x": Exploit()}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="data_batch_3.*refusing to load '(__builtin__|builtins).print'"):
        load_dataset({"name": "cifar10", "root": str(tmp_path), "val_size": 3})
    assert "never run" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "payload, match",
    [
        ([1, 2], "not a dict"),
        ({b"labels": [0] * 4}, "KeyError"),
        ({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, r"shape \(N, 3072\)"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "labels"),
    ],
)
def test_cifar10_malformed_batches(tmp_path, payload, match):
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=match):
        load_dataset({"name": "cifar10", "root": str(tmp_path), "val_size": 3})


# ---------------------------------------------------------------------------- dequantisation


def test_dequantize_batch_stays_in_its_bin():
    levels = torch.arange(256, dtype=torch.float32).repeat(20)
    x = levels / 255
    a, b = dequantize_batch(x), dequantize_batch(x)
    assert not torch.equal(a, b) and a.dtype == x.dtype and a.shape == x.shape
    assert torch.all(a >= levels / 256) and torch.all(a < (levels + 1) / 256)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(dequantize_batch(x, g1), dequantize_batch(x, g2))
    fixed = dequantize_fixed(x, seed=4)
    assert torch.equal(fixed, dequantize_fixed(x, seed=4)) and not torch.equal(fixed, dequantize_fixed(x, 5))
    assert torch.all(torch.floor(fixed * 256) == levels)


def test_dequantize_option_transform_and_eval_view(tmp_path):
    write_fake_idx(tmp_path)
    s = load_dataset(mnist_spec(tmp_path, binarize="none", dequantize=True))
    assert s.info["dequantize"] is True and s.dequantization and not s.dynamic_binarization
    batch = s.transform_batch(s.train[:4])
    assert torch.all(torch.floor(batch * 256) == torch.round(s.train[:4] * 255))
    view = s.eval_view(seed=1)
    assert view.info["dequantize"] == "fixed" and view.info["eval_dequantize_seed"] == 1
    assert not view.dequantization and torch.equal(view.transform_batch(view.test), view.test)
    assert torch.equal(view.test, s.eval_view(seed=1).test) and not torch.equal(view.test, s.test)
    grey = load_dataset(mnist_spec(tmp_path, binarize="none"))
    assert grey.transform_batch(grey.train) is grey.train and grey.eval_view() is grey
    with pytest.raises(ConfigError, match="binarize: none"):
        load_dataset(mnist_spec(tmp_path, dequantize=True))  # default binarize: dynamic
    with pytest.raises(ConfigError, match="true or false"):
        load_dataset(mnist_spec(tmp_path, binarize="none", dequantize="yes"))


# ---------------------------------------------------------------------------- Splits extras


def test_splits_factors_and_nbytes():
    x = torch.rand(4, 3)
    factors = torch.zeros(4, 5, dtype=torch.int32)
    s = Splits(
        train=x, val=x, test=x[:0], train_factors=factors, val_factors=factors, test_factors=factors[:0]
    )
    assert s.train_factors.dtype == torch.int64 and s.test_factors.shape == (0, 5)
    assert s.nbytes == 2 * 12 * 4 + 2 * 20 * 8  # float32 data, int64 factors
    moved = s.to("meta")
    assert moved.train_factors.device.type == "meta" and moved.val_labels is None
    with pytest.raises(DataError, match="val_factors has 3 entries"):
        Splits(train=x, val=x, test=x, val_factors=factors[:3])
    with pytest.raises(DataError, match="2-d"):
        Splits(train=x, val=x, test=x, train_factors=factors[:, 0])


# ---------------------------------------------------------------------------- users' arrays


def write_array(path, data):
    """Save ``data`` (an array, or a dict of them) as .npy, .npz or .pt by the suffix."""
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, **data)
    elif path.suffix == ".pt":
        torch.save(data, path)
    else:
        np.save(path, data, allow_pickle=True)
    return str(path)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_array_formats_load(tmp_path, suffix):
    data = np.random.RandomState(0).rand(50, 2, 3, 4).astype(np.float32)
    stored = {".npy": data, ".npz": {"x": data}, ".pt": torch.from_numpy(data)}[suffix]
    s = load_dataset({"name": "array", "path": write_array(tmp_path / f"d{suffix}", stored)})
    assert s.data_shape == (2, 3, 4) and s.sizes == {"train": 40, "val": 5, "test": 5}
    assert s.info["scale"] == "as stored" and s.info["binarize"] == "none" and s.train_labels is None
    joined = torch.cat([s.train, s.val, s.test])
    assert sorted(joined.sum((1, 2, 3)).tolist()) == pytest.approx(sorted(data.sum((1, 2, 3)).tolist()))
    again = load_dataset({"name": "array", "path": str(tmp_path / f"d{suffix}")})
    assert torch.equal(again.val, s.val)
    other = load_dataset({"name": "array", "path": str(tmp_path / f"d{suffix}"), "split_seed": 1})
    assert not torch.equal(other.val, s.val)
    assert_serialisable(s.info)


def test_array_keys_labels_and_uint8(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(30, 1, 5, 5)).astype(np.uint8)
    labels = rng.randint(0, 3, size=30)
    path = write_array(tmp_path / "d.npz", {"images": images, "labels": labels})
    s = load_dataset({"name": "array", "path": path, "key": "images", "labels_key": "labels",
                      "val_fraction": 0.2, "test_fraction": 0})
    assert s.sizes == {"train": 24, "val": 6, "test": 0} and s.info["scale"].startswith("uint8")
    idx = split_indices(30, {"test": 0, "val": 6, "train": None}, seed=0)
    torch.testing.assert_close(s.val, torch.as_tensor(images[idx["val"].numpy()]).float() / 255)
    assert torch.equal(s.val_labels, torch.as_tensor(labels[idx["val"].numpy()]))
    pt_labels = write_array(tmp_path / "y.pt", {"y": torch.as_tensor(labels)})
    t = load_dataset({"name": "array", "path": path, "key": "images", "labels_path": pt_labels})
    u = load_dataset({"name": "array", "path": path, "key": "images", "labels_key": "labels"})
    assert torch.equal(t.train_labels, u.train_labels) and torch.equal(t.test_labels, u.test_labels)
    static = load_dataset({"name": "array", "path": path, "key": "images", "binarize": "static"})
    assert torch.all((static.train == 0) | (static.train == 1))
    deq = load_dataset({"name": "array", "path": path, "key": "images", "dequantize": True})
    assert deq.dequantization


@pytest.mark.parametrize(
    "name, data, options, error, match",
    [
        ("d.npy", np.array([{"a": 1}, None] * 5, dtype=object), {}, DataError, "Object arrays"),
        ("d.npy", np.array(["a", "b"] * 5).reshape(10, 1), {}, DataError, "not numbers"),
        ("d.npy", np.arange(10.0), {}, DataError, r"\(N, 1\)"),
        ("d.npy", np.zeros((0, 3)), {}, DataError, "N >= 1"),
        ("d.npy", np.array([[0.0, np.nan]] * 10), {}, DataError, "10 NaN"),
        ("d.npy", np.zeros((10, 2), np.complex64), {}, DataError, "not numbers"),
        ("d.npy", np.zeros((10, 2)), {"key": "x"}, ConfigError, "holds one array"),
        ("d.npz", {"a": np.zeros((10, 2)), "b": np.zeros(10)}, {}, DataError, "holds 2 arrays"),
        ("d.npz", {"a": np.zeros((10, 2))}, {"key": "images"}, DataError, "no array 'images'.*a"),
        ("d.npz", {"a": np.zeros((10, 2)), "y": np.zeros(9, int)}, {"key": "a", "labels_key": "y"},
         DataError, r"shape \(10,\)"),
        ("d.npz", {"a": np.zeros((10, 2)), "y": np.zeros(10)}, {"key": "a", "labels_key": "y"},
         DataError, "integers"),
        ("d.npy", np.full((10, 2), 3.0), {"binarize": "static"}, DataError, r"\[0, 1\]"),
        ("d.npy", np.full((10, 2), 0.3), {"dequantize": True}, DataError, "8-bit"),
        ("d.npy", np.zeros((10, 2)), {"val_fraction": 0.5, "test_fraction": 0.5}, ConfigError, "fraction"),
        ("d.npy", np.zeros((10, 2)), {"test_fraction": 1.5}, ConfigError, r"\[0, 1\)"),
        ("d.txt", None, {}, DataError, r"\.npy, \.npz or \.pt"),
    ],
)
def test_array_errors(tmp_path, name, data, options, error, match):
    path = tmp_path / name
    if data is None:
        path.write_text("1 2 3")
    else:
        write_array(path, data)
    with pytest.raises(error, match=match):
        load_dataset({"name": "array", "path": str(path), **options})


def test_array_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset({"name": "array", "path": str(tmp_path / "missing.npy")})
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="Could not read"):
        load_dataset({"name": "array", "path": str(tmp_path / "bad.pt")})
    torch.save({"x": Exploit()}, tmp_path / "code.pt")  # weights_only refuses arbitrary objects
    with pytest.raises(DataError, match="Could not read"):
        load_dataset({"name": "array", "path": str(tmp_path / "code.pt")})


# ---------------------------------------------------------------------------- image folders


def write_images(folder, n, size=(6, 5), mode="L", seed=0, suffix=".png"):
    """``n`` random images of ``size`` (width, height) in ``folder``; returns them as arrays."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    arrays = [rng.randint(0, 256, size=shape).astype(np.uint8) for _ in range(n)]
    for i, a in enumerate(arrays):
        Image.fromarray(a, mode=mode).save(folder / f"img{i:02d}{suffix}")
    return arrays


def test_folder_grayscale_loads(tmp_path):
    arrays = write_images(tmp_path, 20)
    s = load_dataset({"name": "folder", "path": str(tmp_path)})
    assert s.data_shape == (1, 5, 6) and s.sizes == {"train": 16, "val": 2, "test": 2}
    assert s.train_labels is None and s.info["class_names"] is None
    everything = torch.as_tensor(np.stack(arrays)).unsqueeze(1).float() / 255
    idx = split_indices(20, {"test": 2, "val": 2, "train": None}, seed=0)
    torch.testing.assert_close(s.val, everything[idx["val"]])
    assert_serialisable(s.info)


def test_folder_rgb_classes_and_resize(tmp_path):
    write_images(tmp_path / "cats", 6, mode="RGB")
    write_images(tmp_path / "dogs", 4, size=(8, 8), mode="RGB", suffix=".jpg")
    with pytest.raises(DataError, match="differ in size.*'size'"):
        load_dataset({"name": "folder", "path": str(tmp_path), "mode": "rgb"})
    s = load_dataset({"name": "folder", "path": str(tmp_path), "mode": "rgb", "size": [4, 3],
                      "val_fraction": 0, "test_fraction": 0})
    assert s.data_shape == (3, 4, 3) and s.info["class_names"] == ["cats", "dogs"]
    assert s.train_labels.tolist() == [0] * 6 + [1] * 4
    grey = load_dataset({"name": "folder", "path": str(tmp_path), "size": 7})
    assert grey.data_shape == (1, 7, 7)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_dataset({"name": "folder", "path": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="No images"):
        load_dataset({"name": "folder", "path": str(tmp_path)})
    write_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset({"name": "folder", "path": str(tmp_path)})
    for options, match in [({"mode": "cmyk"}, "grayscale"), ({"size": [0, 3]}, "size")]:
        with pytest.raises(ConfigError, match=match):
            load_dataset({"name": "folder", "path": str(tmp_path), **options})


# ---------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("num_workers", [0, 1])
def test_make_loader_same_batches_as_batches(num_workers):
    x = torch.randn(50, 3)
    state = torch.get_rng_state()
    for drop_last in (False, True):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        expected = [x[i] for i in batches(50, 8, g1, drop_last=drop_last)]
        got = list(make_loader(x, 8, g2, device="cpu", num_workers=num_workers, drop_last=drop_last))
        assert len(got) == len(expected) == (6 if drop_last else 7)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(torch.cat(list(make_loader(x, 16, shuffle=False))), x)
    with pytest.raises(ConfigError, match="batch_size"):
        make_loader(x, 0)


def test_fits_on_device(monkeypatch, digits):
    assert digits.nbytes > 0 and fits_on_device(digits, "cpu")
    assert not fits_on_device(digits, "cpu", cpu_limit_bytes=digits.nbytes - 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * digits.nbytes, 10**12))
    assert fits_on_device(digits, "cuda", fraction=0.5)
    assert not fits_on_device(digits, "cuda", fraction=0.2)


def test_digits_counts_keeps_integer_levels():
    splits = load_dataset({"name": "digits", "binarize": "none", "counts": True})
    assert splits.train.max() == 16 and torch.equal(splits.train, splits.train.round())
    with pytest.raises(ConfigError, match="binarize: none"):
        load_dataset({"name": "digits", "counts": True})
