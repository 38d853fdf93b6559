"""Data fixes of issue 21: digits dequantisation, bits per dimension, absolute data paths,
no empty folders after an offline download, whole-sentence read errors."""

import math
import os
import pickle

import numpy as np
import pytest
import torch

from pyro_vae.data import absolute_paths, bits_per_dim, dequantize_batch, load_dataset
from pyro_vae.data.user_data import first_sentence
from pyro_vae.errors import ConfigError, DataError


def test_digits_dequantize_puts_each_level_in_its_bin():
    plain = load_dataset({"name": "digits", "binarize": "none"})
    splits = load_dataset({"name": "digits", "binarize": "none", "dequantize": True})
    assert splits.info["dequantize"] is True and splits.levels == 17
    assert torch.equal(splits.train, plain.train)  # stored as the levels k / 16
    x = splits.transform_batch(splits.train[:200], torch.Generator().manual_seed(0))
    k = torch.round(plain.train[:200] * 16)
    assert ((x > k / 17) & (x < (k + 1) / 17)).all()  # (k + u) / 17 with u in (0, 1)
    view = splits.eval_view(seed=3)
    assert view.info["dequantize"] == "fixed" and torch.equal(view.test, splits.eval_view(seed=3).test)
    assert ((view.test > 0) & (view.test < 1)).all()


def test_digits_dequantize_needs_grey_levels():
    with pytest.raises(ConfigError, match="needs binarize: none"):
        load_dataset({"name": "digits", "dequantize": True})
    with pytest.raises(ConfigError, match="cannot be dequantised"):
        load_dataset({"name": "digits", "binarize": "none", "counts": True, "dequantize": True})


def test_dequantize_batch_of_8_bit_data_is_unchanged_by_the_levels_option():
    x = torch.arange(256, dtype=torch.float32) / 255
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(dequantize_batch(x, g1), ((torch.arange(256) + u) / 256).clamp(1e-7, 1 - 1e-7))
    g3 = torch.Generator().manual_seed(1)
    torch.testing.assert_close(dequantize_batch(x, g2, levels=256), dequantize_batch(x, g3))


def test_bits_per_dimension():
    info = {"data_shape": [1, 8, 8], "dequantize": "fixed", "levels": 17, "binarize": "none"}
    log_px = -100.0
    assert bits_per_dim(log_px, info) == pytest.approx(100 / (64 * math.log(2)) + math.log2(17))
    # the uniform density on [0, 1]^D scores 0 nats: log2(L) bits, the uniform distribution over L levels
    assert bits_per_dim(0.0, info) == pytest.approx(math.log2(17))
    binary = {"data_shape": [784], "binarize": "dynamic"}
    assert bits_per_dim(-784 * math.log(2), binary) == pytest.approx(1.0)  # a fair coin per pixel
    assert bits_per_dim(-10.0, {"data_shape": [4], "binarize": "none", "dequantize": False}) is None


def test_absolute_paths_make_relative_data_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = {"name": "array", "path": "data/u.npy", "labels_path": "~/y.npy", "key": "x"}
    assert absolute_paths(spec) == {"name": "array", "path": str(tmp_path / "data" / "u.npy"),
                                    "labels_path": os.path.expanduser("~/y.npy"), "key": "x"}
    assert absolute_paths({"name": "mnist", "root": "d"})["root"] == str(tmp_path / "d")
    assert absolute_paths("digits") == "digits"


@pytest.mark.parametrize("existing", [False, True])
def test_an_offline_download_leaves_no_empty_folders(tmp_path, monkeypatch, existing):
    import torchvision

    root = tmp_path / "data"
    if existing:  # a folder the user made (with a file of theirs) stays
        (root / "mine").mkdir(parents=True)
        (root / "mine" / "notes.txt").write_text("keep")

    class Offline:
        def __init__(self, root, **kwargs):
            os.makedirs(os.path.join(root, "MNIST", "raw"))  # as torchvision does before downloading
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError, match="download.*failed"):
        load_dataset({"name": "mnist", "root": str(root), "download": True})
    if existing:
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["mine", "mine/notes.txt"]
    else:
        assert not root.exists()


def test_a_pickled_pt_file_is_refused_in_whole_sentences(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(DataError) as caught:
        load_dataset({"name": "array", "path": str(path)})
    message = str(caught.value)
    assert "torch.load(weights_only=True) refuses" in message and message.endswith("numpy.save.")
    assert "got the file ." not in message


def test_first_sentence_never_cuts_mid_sentence():
    long = "Weights only load failed. " + "word " * 200
    assert first_sentence(ValueError(long)) == "Weights only load failed."
    cut = first_sentence(ValueError("x" * 10 + " y" * 400))
    assert cut.endswith(" …") and len(cut) <= 302
    assert first_sentence(ValueError("no stop")) == "no stop."
