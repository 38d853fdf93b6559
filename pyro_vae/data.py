"""Datasets as in-memory tensors, their train/val/test splits, per-batch transforms and batching.

Datasets are built by name through the registry :data:`DATASETS` (``load_dataset("digits")``
or ``load_dataset({"name": "mnist", "root": "data", "val_size": 10000})``) and come back as
a :class:`Splits`: three float32 tensors of shape ``(N, C, H, W)`` (or ``(N, *shape)`` for
users' arrays) with values in ``[0, 1]``, their labels, and an ``info`` dict recording the
preprocessing (JSON/YAML serialisable, so a run's config can store it).

Registered datasets: ``digits`` (scikit-learn, no download); the torchvision family
``mnist``, ``fashion-mnist``, ``kmnist``, ``emnist`` (balanced split) and ``cifar10``;
``sprites`` (procedural, with known factors, :mod:`pyro_vae.sprites`); users' own data,
``array`` (a .npy/.npz/.pt file) and ``folder`` (a folder of PNG/JPEG images).

Binarisation (option ``binarize``; default ``"dynamic"`` for the grey-level image sets,
``"none"`` for CIFAR-10 and users' data):

* ``"dynamic"``: the tensors keep their grey levels; the training loop draws a fresh
  Bernoulli sample per batch with :func:`binarize_batch`. For evaluating a Bernoulli
  likelihood, use one fixed draw: :meth:`Splits.eval_view` or :func:`binarize_fixed`.
* ``"static"``: one Bernoulli draw per pixel, made once at load time with
  ``binarize_seed`` (the same on every load).
* ``"threshold"``: ``x > 0.5``.
* ``"none"``: grey levels, for likelihoods on ``[0, 1]`` (e.g. continuous Bernoulli, Beta).

Dequantisation (option ``dequantize: true``, 8-bit data with ``binarize: none``): the
tensors keep the levels ``k / 255``; each training batch becomes ``(k + u) / 256`` with
``u ~ U[0, 1)`` (:func:`dequantize_batch`), so a continuous density on ``[0, 1]`` bounds
the 8-bit likelihood. :meth:`Splits.transform_batch` applies whichever per-batch transform
``info`` asks for.

A dataset small enough for the training device lives there; :func:`batches` yields
shuffled index tensors to slice it with. Otherwise :func:`make_loader` streams batches
from host memory (:func:`fits_on_device` decides).
"""

import codecs
import copy
import dataclasses
import gzip
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError
from .registry import Registry

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "IMAGE_SUFFIXES",
    "MNIST_FILES",
    "Splits",
    "array",
    "batches",
    "binarize_batch",
    "binarize_fixed",
    "cifar10",
    "dequantize_batch",
    "dequantize_fixed",
    "digits",
    "emnist",
    "fashion_mnist",
    "fits_on_device",
    "folder",
    "kmnist",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "mnist",
    "split_indices",
]

DATASETS = Registry("dataset")

BINARIZE_MODES = ("dynamic", "static", "threshold", "none")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _idx_files(train: str, test: str) -> tuple:
    """Names of the four IDX files of an MNIST-like set, training then test."""
    return tuple(f"{p}-{kind}" for p in (train, test) for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


MNIST_FILES = _idx_files("train", "t10k")

_SPLITS = ("train", "val", "test")

# What torchvision's IDX reader and the CIFAR-10 unpickler raise on malformed files.
_READ_ERRORS = (
    AssertionError, EOFError, IndexError, KeyError, OSError, RuntimeError, TypeError, ValueError,
    pickle.UnpicklingError,
)


# --------------------------------------------------------------------------------------
# Splits


@dataclass(eq=False, repr=False)
class Splits:
    """Train/val/test tensors of one dataset, with labels and a record of the preprocessing.

    ``train``, ``val`` and ``test`` are float32 tensors of shape ``(N, *data_shape)``;
    ``val`` and ``test`` may be empty (``N == 0``), ``train`` may not. Labels are int64
    tensors of shape ``(N,)`` or ``None``; factors (datasets with known generative
    factors, such as ``sprites``) are int64 tensors of shape ``(N, F)`` or ``None``.
    ``data_shape`` defaults to ``train.shape[1:]``. ``info`` holds plain Python values
    only (str, int, float, bool, None, lists, dicts).
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    data_shape: tuple | None = None
    info: dict = field(default_factory=dict)
    train_factors: torch.Tensor | None = None
    val_factors: torch.Tensor | None = None
    test_factors: torch.Tensor | None = None

    def __post_init__(self):
        for split in _SPLITS:
            x = getattr(self, split)
            if not isinstance(x, torch.Tensor):
                raise DataError(f"Splits.{split} must be a torch.Tensor, got {type(x).__name__}.")
            if not x.is_floating_point():
                raise DataError(f"Splits.{split} must be a floating-point tensor, got {x.dtype}.")
            if x.dim() < 1:
                raise DataError(f"Splits.{split} must have a leading sample dimension.")
            setattr(self, split, x.to(torch.float32))
        if self.train.shape[0] == 0:
            raise DataError("The training split is empty: a dataset needs at least one example.")
        shape = tuple(int(s) for s in self.train.shape[1:])
        if self.data_shape is None:
            self.data_shape = shape
        self.data_shape = tuple(int(s) for s in self.data_shape)
        for split in _SPLITS:
            got = tuple(getattr(self, split).shape[1:])
            if got != self.data_shape:
                raise DataError(
                    f"Splits.{split} has examples of shape {got}, expected {self.data_shape}."
                )
            self._check_per_example(split, "labels", ndim=1)
            self._check_per_example(split, "factors", ndim=2)
        if not isinstance(self.info, dict):
            raise DataError(f"Splits.info must be a dict, got {type(self.info).__name__}.")

    def _check_per_example(self, split: str, kind: str, ndim: int):
        """Check (and cast to int64) ``{split}_{kind}``: None or one row per example."""
        name = f"{split}_{kind}"
        value = getattr(self, name)
        if value is None:
            return
        if not isinstance(value, torch.Tensor) or value.dim() != ndim:
            raise DataError(f"Splits.{name} must be a {ndim}-d tensor or None.")
        n = getattr(self, split).shape[0]
        if value.shape[0] != n:
            raise DataError(f"Splits.{name} has {value.shape[0]} entries for {n} examples.")
        setattr(self, name, value.to(torch.int64))

    @property
    def dynamic_binarization(self) -> bool:
        """Whether the training loop should binarise each batch with :func:`binarize_batch`."""
        return self.info.get("binarize") == "dynamic"

    @property
    def dequantization(self) -> bool:
        """Whether the training loop should dequantise each batch with :func:`dequantize_batch`."""
        return self.info.get("dequantize") is True

    @property
    def sizes(self) -> dict:
        """``{"train": n, "val": n, "test": n}``."""
        return {split: int(getattr(self, split).shape[0]) for split in _SPLITS}

    @property
    def nbytes(self) -> int:
        """Bytes taken by all tensors (data, labels, factors)."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values() if t is not None)

    def _tensors(self) -> dict:
        names = [f"{split}{suffix}" for split in _SPLITS for suffix in ("", "_labels", "_factors")]
        return {name: getattr(self, name) for name in names}

    def transform_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The per-batch transform ``info`` asks for: a fresh binarisation
        (:func:`binarize_batch`), a fresh dequantisation (:func:`dequantize_batch`) or
        none (``x`` itself). The training loop calls it on every batch."""
        if self.dynamic_binarization:
            return binarize_batch(x, generator)
        if self.dequantization:
            return dequantize_batch(x, generator)
        return x

    def to(self, device) -> "Splits":
        """A copy with every tensor (data, labels, factors) moved to ``device``; ``info`` is copied."""
        moved = {name: None if t is None else t.to(device) for name, t in self._tensors().items()}
        return dataclasses.replace(self, **moved, info=copy.deepcopy(self.info))

    def fixed_transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """One draw of the per-batch transform of ``x`` determined by ``seed``
        (:func:`binarize_fixed` or :func:`dequantize_fixed`), or ``x`` itself."""
        seed = _check_int("seed", seed, minimum=0, what="fixed_transform")
        if self.dynamic_binarization:
            return binarize_fixed(x, seed)
        if self.dequantization:
            return dequantize_fixed(x, seed)
        return x

    def eval_split(self, split: str, seed: int = 0) -> torch.Tensor:
        """The ``split`` ("train", "val" or "test") of :meth:`eval_view`, computed alone."""
        seed = _check_int("seed", seed, minimum=0, what="eval_split")
        return self.fixed_transform(getattr(self, split), _derive_seed(seed, _SPLITS.index(split)))

    def eval_view(self, seed: int = 0) -> "Splits":
        """The splits with one fixed draw of the per-batch transform, for evaluation.

        Under dynamic binarisation the stored tensors hold grey levels, which are outside
        a Bernoulli likelihood's support; under dequantisation they hold the 8-bit levels
        rather than the dequantised values the model is trained on. Evaluate on this view
        instead: one Bernoulli draw (:func:`binarize_fixed`) or one uniform dequantisation
        (:func:`dequantize_fixed`) per pixel. The draw for each split depends only on
        ``seed`` and that split's tensor (not on the device or the other splits), so it is
        the same on every call. Without a per-batch transform, returns ``self``. The
        view's ``info`` has ``binarize: "fixed"`` and ``eval_binarize_seed: seed`` (or
        ``dequantize: "fixed"`` and ``eval_dequantize_seed: seed``).
        """
        if self.dynamic_binarization:
            key = "binarize"
        elif self.dequantization:
            key = "dequantize"
        else:
            return self
        fixed = {split: self.eval_split(split, seed) for split in _SPLITS}
        info = copy.deepcopy(self.info)
        info[key] = "fixed"
        info[f"eval_{key}_seed"] = seed
        return dataclasses.replace(self, **fixed, info=info)

    def __repr__(self):
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (
            f"Splits(name={self.info.get('name')!r}, {sizes}, data_shape={self.data_shape}, "
            f"binarize={self.info.get('binarize')!r}, device={self.train.device})"
        )


# --------------------------------------------------------------------------------------
# Per-batch transforms


def binarize_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw per pixel of ``x`` (probabilities in ``[0, 1]``), on x's device.

    For dynamic binarisation: call once per training batch. ``generator``, if given, must
    be on the same device as ``x``.
    """
    return torch.bernoulli(x, generator=generator)


def binarize_fixed(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw per pixel of ``x``, determined by ``seed`` (same on every call).

    The uniform noise is drawn on the CPU from a generator seeded with ``seed``, so the
    result does not depend on x's device; it is returned on x's device with x's dtype.
    """
    noise = _fixed_noise(x, seed, "binarize_fixed")
    return (noise < x.detach().to("cpu", torch.float32)).to(device=x.device, dtype=x.dtype)


def dequantize_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of 8-bit data ``x = k / 255``: ``(k + u) / 256``, ``u ~ U[0, 1)``.

    For ``dequantize: true``: call once per training batch; values lie strictly inside ``(0, 1)``.
    ``generator``, if given, must be on the same device as ``x``.
    """
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _dequantize(x, noise)


def dequantize_fixed(x: torch.Tensor, seed: int) -> torch.Tensor:
    """:func:`dequantize_batch` with noise determined by ``seed`` (drawn on the CPU, as
    :func:`binarize_fixed`), for evaluation."""
    noise = _fixed_noise(x, seed, "dequantize_fixed")
    return _dequantize(x, noise.to(device=x.device, dtype=x.dtype))


def _dequantize(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(k + u)/256, kept strictly inside (0, 1): u = 0 and float rounding near 1 would give
    exact 0 or 1, outside the support of likelihoods such as the Beta."""
    eps = torch.finfo(x.dtype).eps
    return ((torch.round(x * 255) + noise) / 256).clamp_(eps, 1 - eps)


def _fixed_noise(x: torch.Tensor, seed: int, what: str) -> torch.Tensor:
    """Uniform float32 noise of x's shape on the CPU, determined by ``seed``."""
    seed = _check_int("seed", seed, minimum=0, what=what)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=generator, dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Batching and streaming


def batches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device=None,
    drop_last: bool = False,
    shuffle: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield int64 index tensors on ``device`` covering ``range(n)`` once (one epoch).

    With ``shuffle`` (default) the order is ``torch.randperm(n, generator=generator)``,
    made on the generator's device (the CPU when ``generator`` is None or a CPU generator,
    so results are reproducible across devices) and moved to ``device`` once per call.
    Index an on-device tensor with each batch: ``for idx in batches(...): x = data[idx]``.
    The last batch is smaller unless ``drop_last``. Arguments are checked on the call,
    the permutation is drawn when iteration starts.
    """
    n = _check_int("n", n, minimum=0, what="batches")
    if n == 0:
        raise DataError("batches() got n=0: the dataset to batch is empty.")
    batch_size = _check_int("batch_size", batch_size, minimum=1, what="batches")
    if drop_last and batch_size > n:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the {n} examples and drop_last is set, "
            "so an epoch would have no batches; lower batch_size."
        )
    return _batches(n, batch_size, generator, device, drop_last, shuffle)


def _batches(n, batch_size, generator, device, drop_last, shuffle):
    if shuffle:
        source = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=source)
    else:
        order = torch.arange(n)
    if device is not None:
        order = order.to(device)
    stop = n - n % batch_size if drop_last else n
    yield from torch.split(order[:stop], batch_size)


class _Rows(torch.utils.data.Dataset):
    """``dataset[index_tensor]`` is the batch ``x[index_tensor]`` (one fetch per batch)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __getitem__(self, index):
        return self.x[index]

    def __len__(self):
        return len(self.x)


def make_loader(
    x: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    device=None,
    num_workers: int = 0,
    drop_last: bool = False,
    shuffle: bool = True,
) -> Iterator[torch.Tensor]:
    """One epoch of batches of the host tensor ``x``, copied to ``device`` as they are used.

    For data too large for the device (see :func:`fits_on_device`). Yields
    ``x[idx].to(device)`` for ``idx in batches(len(x), batch_size, generator, None,
    drop_last, shuffle)``: the same batches, in the same order, as indexing an on-device
    copy. The batches are gathered by a ``torch.utils.data.DataLoader`` (``num_workers``
    background processes), in pinned memory when ``device`` is CUDA, and copied with
    ``non_blocking=True``. The loader draws no numbers from the global RNG.
    """
    order = batches(len(x), batch_size, generator, None, drop_last, shuffle)
    device = torch.device("cpu" if device is None else device)
    num_workers = _check_int("num_workers", num_workers, minimum=0, what="make_loader")
    loader = torch.utils.data.DataLoader(
        _Rows(x), sampler=order, batch_size=None, num_workers=num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator(),
    )
    return (batch.to(device, non_blocking=True) for batch in loader)


def fits_on_device(splits: Splits, device, fraction: float = 0.5, cpu_limit_bytes: int | None = None) -> bool:
    """Whether ``splits`` (all its tensors) should be moved to ``device`` whole.

    CUDA: if they take at most ``fraction`` of the device's free memory
    (``torch.cuda.mem_get_info``); otherwise stream them with :func:`make_loader`.
    Other devices: always, unless ``cpu_limit_bytes`` is set and they are larger.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return splits.nbytes <= fraction * free
    return cpu_limit_bytes is None or splits.nbytes <= cpu_limit_bytes


# --------------------------------------------------------------------------------------
# Loading


def load_dataset(spec="digits") -> Splits:
    """Load a dataset from a spec: a name (``"digits"``) or ``{"name": ..., **options}``.

    Unknown names and options raise :class:`ConfigError` with the valid ones; missing or
    unreadable files raise :class:`DataError`.
    """
    splits = DATASETS.build(spec)
    if not isinstance(splits, Splits):
        raise ConfigError(f"Dataset {spec!r} returned {type(splits).__name__}, not Splits.")
    return splits


def list_datasets() -> list:
    """Names of the registered datasets."""
    return DATASETS.names()


def split_indices(n: int, sizes: dict, seed: int) -> dict:
    """Disjoint sorted int64 index tensors covering ``range(n)`` from a seeded permutation.

    ``sizes`` maps split names to sizes, one of them ``None`` for "the rest"; the splits
    take consecutive pieces of ``numpy.random.RandomState(seed).permutation(n)`` in the
    order given (a legacy numpy stream, stable across numpy versions).
    """
    perm = np.random.RandomState(seed).permutation(n)
    fixed = sum(size for size in sizes.values() if size is not None)
    out, start = {}, 0
    for name, size in sizes.items():
        size = n - fixed if size is None else size
        out[name] = torch.from_numpy(np.sort(perm[start : start + size])).to(torch.int64)
        start += size
    return out


@DATASETS.register("digits")
def digits(
    binarize: str = "dynamic",
    binarize_seed: int = 0,
    split_seed: int = 0,
    val_size: int = 180,
    test_size: int = 360,
    counts: bool = False,
) -> Splits:
    """scikit-learn's bundled handwritten digits (1797 images of 8x8, no download).

    Grey levels 0..16 are divided by 16 into ``[0, 1]``; data_shape is ``(1, 8, 8)``.
    With ``counts: true`` the integer levels 0..16 are kept as they are (count data for
    the Poisson and negative-binomial likelihoods; needs ``binarize: none``).
    A permutation seeded by ``split_seed`` gives ``test_size`` test images (360),
    ``val_size`` validation images (180) and the rest (1257) for training. ``binarize``
    is applied as described in this module's docstring; a static binarisation is drawn
    on the full 1797 images before splitting, so it does not depend on the split.
    """
    binarize = _check_binarize(binarize, "digits")
    binarize_seed = _check_int("binarize_seed", binarize_seed, minimum=0, what="dataset 'digits'")
    split_seed = _check_int("split_seed", split_seed, minimum=0, what="dataset 'digits'")
    val_size = _check_int("val_size", val_size, minimum=0, what="dataset 'digits'")
    test_size = _check_int("test_size", test_size, minimum=0, what="dataset 'digits'")

    from sklearn.datasets import load_digits

    bunch = load_digits()
    n = bunch.images.shape[0]
    if n == 0:
        raise DataError("scikit-learn's digits dataset came back empty.")
    if val_size + test_size >= n:
        raise ConfigError(
            f"val_size ({val_size}) + test_size ({test_size}) of dataset 'digits' must be less "
            f"than its {n} images, to leave a training set."
        )
    if not isinstance(counts, bool):
        raise ConfigError(f"Option 'counts' of dataset 'digits' must be true or false, got {counts!r}.")
    if counts and binarize != "none":
        raise ConfigError("Dataset 'digits' with counts: true needs binarize: none (counts are 0..16).")
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    x = x if counts else x.div_(16.0)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    x = _apply_binarize(x, binarize, binarize_seed)
    idx = split_indices(n, {"test": test_size, "val": val_size, "train": None}, split_seed)
    info = {
        "name": "digits",
        "source": "sklearn.datasets.load_digits",
        "scale": "integer grey levels 0..16 (counts)" if counts else "grey levels 0..16 divided by 16",
        "data_shape": [1, 8, 8],
        "num_classes": 10,
        "split": "seeded permutation of all 1797 images: test, val, rest -> train",
        "split_seed": split_seed,
        "val_size": val_size,
        "test_size": test_size,
    }
    data = {split: (x[i], y[i]) for split, i in idx.items()}
    return _make_splits(data, info, binarize, binarize_seed)


# --------------------------------------------------------------------------------------
# The torchvision family: MNIST, Fashion-MNIST, KMNIST, EMNIST (balanced), CIFAR-10


def _read_idx(folder: Path, source: "_Source") -> dict:
    """The four IDX files of an MNIST-like set as uint8 ``(N, 1, H, W)`` images and labels."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    out = {}
    for split, (images_file, labels_file) in (("train", source.files[:2]), ("test", source.files[2:])):
        images = read_image_file(str(folder / images_file))
        if source.transpose:
            images = images.transpose(1, 2)
        out[split] = images.unsqueeze(1), read_label_file(str(folder / labels_file))
    return out


def _read_cifar(folder: Path, source: "_Source") -> dict:
    """CIFAR-10's python batches (the last file is the test batch) as uint8 ``(N, 3, 32, 32)``."""
    out = {}
    for split, names in (("train", source.files[:-1]), ("test", source.files[-1:])):
        parts = [_load_cifar_batch(folder / name) for name in names]
        images = np.concatenate([part["data"] for part in parts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(part["labels"], dtype=np.int64) for part in parts])
        out[split] = torch.from_numpy(images), torch.from_numpy(labels)
    return out


class _BatchUnpickler(pickle.Unpickler):
    """Builds plain containers, strings, numbers and numpy arrays; refuses every other global.

    CIFAR-10's batches are pickles. torchvision unpickles them with ``pickle.load``, which
    runs any code a tampered file names; this unpickler only reconstructs numpy arrays
    (and bytes, which protocol-2 pickles written by Python 3 build with ``_codecs.encode``).
    """

    _GLOBALS = {
        "_reconstruct": np.empty(0).__reduce__()[0],
        "ndarray": np.ndarray,
        "dtype": np.dtype,
    }

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" and name in self._GLOBALS:
            return self._GLOBALS[name]
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}': only numpy arrays are allowed")


def _load_cifar_batch(path: Path) -> dict:
    """One CIFAR-10 python batch: ``{"data": uint8 array (N, 3072), "labels": N ints}``."""
    try:
        with open(path, "rb") as handle:
            entry = _BatchUnpickler(handle, encoding="latin1").load()
    except _READ_ERRORS as error:
        raise ValueError(f"{path.name} is not a CIFAR-10 batch ({type(error).__name__}: {error})") from None
    if not isinstance(entry, dict):
        raise TypeError(f"{path.name} holds a {type(entry).__name__}, not a dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        raise ValueError(f"'data' in {path.name} is not a uint8 array of shape (N, 3072)")
    return {"data": data, "labels": entry["labels"]}


@dataclass(frozen=True)
class _Source:
    """Where one torchvision dataset lives under ``root``, and how to read it."""

    name: str  # registry name
    title: str
    cls: str  # the torchvision.datasets class (used to download)
    folder: str  # folder under root holding the files
    files: tuple  # training files, then test files
    read: Callable  # (folder, source) -> {"train": (uint8 images, labels), "test": ...}
    hint: str  # what the files are, for the missing-files message
    num_classes: int
    val_size: int = 10000
    binarize: str = "dynamic"
    options: tuple = ()  # extra (key, value) arguments of the torchvision class
    transpose: bool = False  # images stored transposed (EMNIST)


_IDX_HINT = "uncompressed IDX files (or their .gz versions)"

_SOURCES = (
    _Source("mnist", "MNIST", "MNIST", "MNIST/raw", MNIST_FILES, _read_idx, _IDX_HINT, 10),
    _Source(
        "fashion-mnist", "Fashion-MNIST", "FashionMNIST", "FashionMNIST/raw", MNIST_FILES, _read_idx,
        _IDX_HINT, 10,
    ),
    _Source("kmnist", "KMNIST", "KMNIST", "KMNIST/raw", MNIST_FILES, _read_idx, _IDX_HINT, 10),
    _Source(
        "emnist", "EMNIST (balanced)", "EMNIST", "EMNIST/raw",
        _idx_files("emnist-balanced-train", "emnist-balanced-test"), _read_idx,
        _IDX_HINT + ", from the gzip/ folder of EMNIST's gzip.zip", 47,
        options=(("split", "balanced"),), transpose=True,
    ),
    _Source(
        "cifar10", "CIFAR-10", "CIFAR10", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",), _read_cifar,
        "python-version batch files (extract cifar-10-python.tar.gz into root)", 10,
        val_size=5000, binarize="none",
    ),
)


_TORCHVISION_DOC = """\
    IDX files may be ``.gz``, which are unpacked next to them; ``download=True`` fetches
    missing files when online, and a missing file offline raises :class:`DataError` naming
    each file and where to put it. Pixel values are divided by 255 into ``[0, 1]``.
    ``val_size`` images of the official training set (chosen by a permutation seeded with
    ``split_seed``) form the validation split; the official test set is the test split. A
    static binarisation is drawn per official set before the validation split is taken.
    EMNIST's images, stored transposed, are turned upright.
    """


def _load_torchvision(source, root, download, val_size, split_seed, binarize, binarize_seed, dequantize):
    """A dataset of the torchvision family (``source``) from ``<root>/<source.folder>/``."""
    what = f"dataset '{source.name}'"
    root = _path_option(root, "root", what)
    if not isinstance(download, bool):
        raise ConfigError(f"Option 'download' of {what} must be true or false, got {download!r}.")
    val_size = _check_int("val_size", val_size, minimum=0, what=what)
    split_seed, binarize, binarize_seed, dequantize = _check_preprocessing(
        source.name, split_seed, binarize, binarize_seed, dequantize
    )
    data = _read_source(source, root, download)
    n_train = data["train"][0].shape[0]
    if val_size >= n_train:
        raise ConfigError(
            f"val_size ({val_size}) of {what} must be less than the {n_train} training images "
            f"found in {root / source.folder}, to leave a training set."
        )
    train_x, test_x = (
        _apply_binarize(data[split][0].to(torch.float32).div_(255.0), binarize, binarize_seed, stream=k)
        for k, split in enumerate(("train", "test"))
    )
    train_y, test_y = data["train"][1], data["test"][1]
    idx = split_indices(n_train, {"val": val_size, "train": None}, split_seed)
    options = ", ".join(f"{k}={v!r}" for k, v in source.options)
    info = {
        "name": source.name,
        "source": f"torchvision.datasets.{source.cls}" + (f"({options})" if options else "")
        + (", images transposed upright" if source.transpose else ""),
        "root": str(root),
        "scale": "pixel values 0..255 divided by 255",
        "data_shape": [int(s) for s in train_x.shape[1:]],
        "num_classes": source.num_classes,
        "split": "official test set; val: seeded permutation of the official training set",
        "split_seed": split_seed,
        "val_size": val_size,
        "test_size": int(test_x.shape[0]),
    }
    parts = {split: (train_x[i], train_y[i]) for split, i in idx.items()}
    parts["test"] = (test_x, test_y)
    return _make_splits(parts, info, binarize, binarize_seed, dequantize)


def _register(source: _Source) -> Callable:
    """Register ``source`` in :data:`DATASETS` with the options of :func:`_load_torchvision`."""

    def load(
        root: str = "data",
        download: bool = False,
        val_size: int = source.val_size,
        split_seed: int = 0,
        binarize: str = source.binarize,
        binarize_seed: int = 0,
        dequantize: bool = False,
    ) -> Splits:
        return _load_torchvision(
            source, root, download, val_size, split_seed, binarize, binarize_seed, dequantize
        )

    load.__name__ = load.__qualname__ = source.name.replace("-", "_")
    load.__doc__ = (
        f"{source.title} via ``torchvision.datasets.{source.cls}``, from the files "
        f"{', '.join(source.files)} in ``<root>/{source.folder}/``.\n\n{_TORCHVISION_DOC}"
    )
    return DATASETS.register(source.name, load)


mnist, fashion_mnist, kmnist, emnist, cifar10 = (_register(source) for source in _SOURCES)


def _read_source(source: _Source, root: Path, download: bool) -> dict:
    """Read (after unpacking and, if asked, downloading) and check one source's files."""
    folder = root / source.folder
    _unpack_gz(folder, source.files)
    if _missing(folder, source.files) and download:
        _download(source, root)
    missing = _missing(folder, source.files)
    if missing:
        raise DataError(_missing_message(source, root, missing))
    try:
        data = source.read(folder, source)
    except _READ_ERRORS as error:  # malformed files: the readers assert or raise
        raise DataError(
            f"Could not read the {source.title} files in {folder}: {type(error).__name__}: {error}. "
            f"Replace them with the original files ({', '.join(source.files)})."
        ) from None
    for split, which in (("train", "training"), ("test", "test")):
        images, labels = data[split]
        if images.shape[0] == 0:
            raise DataError(f"The {source.title} {which} files in {folder} hold no images.")
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"The {source.title} {which} files in {folder} hold {images.shape[0]} images but "
                f"{labels.shape[0]} labels."
            )
    shapes = [tuple(data[split][0].shape[1:]) for split in ("train", "test")]
    if shapes[0] != shapes[1]:
        raise DataError(
            f"The {source.title} training images in {folder} are {shapes[0]} but the test images "
            f"are {shapes[1]}."
        )
    return data


def _download(source: _Source, root: Path):
    """Fetch ``source`` with torchvision; a failure raises the missing-files message."""
    import torchvision

    try:
        download_class = getattr(torchvision.datasets, source.cls)
        download_class(str(root), train=True, download=True, **dict(source.options))
    except (RuntimeError, OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        missing = _missing(root / source.folder, source.files)
        message = _missing_message(source, root, missing, download_error=error, reason=reason)
        raise DataError(message) from None


def _missing(folder: Path, files: tuple) -> list:
    return [name for name in files if not (folder / name).is_file()]


def _unpack_gz(folder: Path, files: tuple):
    """Unpack ``<name>.gz`` next to itself for each file present only as .gz."""
    for name in files:
        target, packed = folder / name, folder / f"{name}.gz"
        if target.is_file() or not packed.is_file():
            continue
        partial = folder / f"{name}.partial"
        try:
            with gzip.open(packed, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(partial, target)
        except (OSError, EOFError) as error:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"Could not unpack {packed} into {target}: {type(error).__name__}: {error}. "
                "Put the uncompressed file there instead."
            ) from None


def _missing_message(source: _Source, root: Path, missing: list, download_error=None, reason="") -> str:
    folder = (root / source.folder).absolute()
    wanted = "\n".join(f"  {folder / name}" for name in source.files)
    message = (
        f"{source.title} files not found in {folder} (missing: {', '.join(missing)}). Put the "
        f"{len(source.files)} {source.hint} at:\n{wanted}\n"
    )
    if download_error is None:
        return message + (
            f"(that is, under the dataset option 'root' = {str(root)!r}), or set the dataset "
            "option 'download: true' to fetch them when online."
        )
    return message + (
        f"(under the dataset option 'root' = {str(root)!r}). The download requested by "
        f"'download: true' failed ({type(download_error).__name__}: {reason[:200]}); "
        "without internet access, copy the files there by hand."
    )


# --------------------------------------------------------------------------------------
# Users' own data


@DATASETS.register("array")
def array(
    path: str,
    key: str | None = None,
    labels_path: str | None = None,
    labels_key: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    binarize: str = "none",
    binarize_seed: int = 0,
    dequantize: bool = False,
) -> Splits:
    """Your own data: a ``.npy``, ``.npz`` or ``.pt`` file holding ``(N, *shape)`` numbers.

    ``key`` picks the array of an ``.npz`` file or of a ``.pt`` file holding a dict of
    tensors (default: its only entry). ``.npy``/``.npz`` files are read without pickles,
    ``.pt`` files with ``torch.load(weights_only=True)``. uint8 data are divided by 255;
    other numeric data are used as stored. Optional integer labels of shape ``(N,)``
    come from ``labels_key`` in ``labels_path`` (default: the data file). Seeded
    fractions ``val_fraction`` and ``test_fraction`` of the examples form val and test.
    """
    what = "dataset 'array'"
    path = _path_option(path, "path", what, must_be="file")
    if labels_path is not None:
        labels_path = _path_option(labels_path, "labels_path", what, must_be="file")
    checked = _check_preprocessing("array", split_seed, binarize, binarize_seed, dequantize)
    fractions = _check_fractions(what, val_fraction, test_fraction)
    stored = _to_tensor(_read_array(path, key, "key"), path)
    if stored.dim() < 2 or stored.shape[0] == 0:
        raise DataError(
            f"{path} must hold data of shape (N, *shape) with N >= 1, got shape {tuple(stored.shape)} "
            "(a vector of N numbers needs shape (N, 1))."
        )
    x = stored.to(torch.float32)
    if stored.dtype == torch.uint8:
        x /= 255
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise DataError(f"{path} holds {bad} NaN or infinite values; clean or drop those examples.")
    y = None
    if labels_path is not None or labels_key is not None:
        source = labels_path or path
        y = _to_tensor(_read_array(source, labels_key, "labels_key"), source)
        if y.is_floating_point() or y.is_complex() or y.shape != (len(x),):
            raise DataError(
                f"The labels in {source} must be integers of shape ({len(x)},), got {y.dtype} of "
                f"shape {tuple(y.shape)}."
            )
    info = {
        "name": "array",
        "source": str(path),
        "key": key,
        "labels_path": None if labels_path is None else str(labels_path),
        "labels_key": labels_key,
        "scale": "uint8 0..255 divided by 255" if stored.dtype == torch.uint8 else "as stored",
    }
    return _user_splits(x, y, info, what, fractions, *checked)


@DATASETS.register("folder")
def folder(
    path: str,
    mode: str = "grayscale",
    size: int | list | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    binarize: str = "none",
    binarize_seed: int = 0,
    dequantize: bool = False,
) -> Splits:
    """Your own images: every PNG/JPEG file under the folder ``path``, as ``(N, C, H, W)`` in ``[0, 1]``.

    ``mode``: ``"grayscale"`` (C = 1) or ``"rgb"`` (C = 3). The images must share one size
    unless ``size`` (``S`` or ``[H, W]``) resizes them all (bilinear). Files are taken in
    sorted path order; if every image sits in a direct subfolder of ``path`` (one per
    class, as for torchvision's ImageFolder), the sorted subfolder names give labels
    ``0..K-1`` (``info["class_names"]``). Seeded fractions ``val_fraction`` and
    ``test_fraction`` of the images form val and test.
    """
    what = "dataset 'folder'"
    root = _path_option(path, "path", what, must_be="folder")
    if mode not in ("grayscale", "rgb"):
        raise ConfigError(f"Option 'mode' of {what} must be 'grayscale' or 'rgb', got {mode!r}.")
    size = _check_size(size, what)
    checked = _check_preprocessing("folder", split_seed, binarize, binarize_seed, dequantize)
    fractions = _check_fractions(what, val_fraction, test_fraction)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)} files) found under {root}.")
    images = [_read_image(p, mode, size) for p in files]
    for p, image in zip(files, images):
        if image.shape != images[0].shape:
            raise DataError(
                f"The images under {root} differ in size: {files[0].name} is {images[0].shape[1]}x"
                f"{images[0].shape[0]} but {p.relative_to(root)} is {image.shape[1]}x{image.shape[0]} "
                "(width x height); set the dataset option 'size' (e.g. size: [64, 64]) to resize them."
            )
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    classes = sorted({p.parent.name for p in files}) if all(p.parent.parent == root for p in files) else None
    y = None
    if classes:
        number = {name: k for k, name in enumerate(classes)}
        y = torch.tensor([number[p.parent.name] for p in files], dtype=torch.int64)
    info = {
        "name": "folder",
        "source": str(root),
        "mode": mode,
        "size": None if size is None else list(size),
        "scale": "pixel values 0..255 divided by 255",
        "class_names": classes,
    }
    return _user_splits(x, y, info, what, fractions, *checked)


def _read_array(path: Path, key, option: str):
    """The array or tensor in ``path``; ``key`` picks one from an .npz file or a .pt dict."""
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".pt"):
        raise DataError(f"{path} is not a .npy, .npz or .pt file; save the data with numpy or torch.save.")
    try:
        if suffix == ".pt":
            stored = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                stored = {name: archive[name] for name in archive.files}
        else:
            stored = np.load(path, allow_pickle=False)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise DataError(
            f"Could not read {path}: {type(error).__name__}: {str(error).strip()[:300]}. Object "
            "arrays and pickled Python objects are refused; save plain numeric arrays or tensors."
        ) from None
    if not isinstance(stored, dict):
        if key is not None:
            raise ConfigError(
                f"Option '{option}' applies to .npz files and .pt dicts; {path} holds one array."
            )
        return stored
    names = ", ".join(map(str, stored))
    if key is None:
        if len(stored) != 1:
            raise DataError(
                f"{path} holds {len(stored)} arrays ({names}); choose one with option '{option}'."
            )
        key = next(iter(stored))
    if key not in stored:
        raise DataError(f"{path} has no array '{key}' (option '{option}'); it holds: {names}.")
    return stored[key]


def _to_tensor(value, path: Path) -> torch.Tensor:
    """A numeric (bool, integer or real) numpy array or tensor as a tensor."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor) or value.is_complex():
        kind = value.dtype if isinstance(value, (np.ndarray, torch.Tensor)) else type(value).__name__
        raise DataError(f"{path} holds {kind} values, not numbers (bool, integer or real).")
    return value


def _read_image(path: Path, mode: str, size) -> np.ndarray:
    """One image as a uint8 ``(H, W, C)`` array."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if mode == "grayscale" else "RGB")
            if size is not None:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image).reshape(image.height, image.width, -1)
    except (OSError, ValueError) as error:
        raise DataError(f"Could not read the image {path}: {type(error).__name__}: {error}.") from None


def _user_splits(x, y, info, what, fractions, split_seed, binarize, binarize_seed, dequantize) -> Splits:
    """Split users' data by seeded fractions and binarise them, checking the values allow it."""
    if binarize != "none" and (x.min() < 0 or x.max() > 1):
        raise DataError(f"binarize: {binarize} in {what} needs values in [0, 1]; the data span "
                        f"[{float(x.min()):g}, {float(x.max()):g}].")
    if dequantize and (x.min() < 0 or x.max() > 1 or (x * 255 - torch.round(x * 255)).abs().max() > 1e-3):
        raise DataError(f"dequantize: true in {what} needs 8-bit data (values k / 255 in [0, 1]).")
    n = len(x)
    n_val, n_test = (round(n * f) for f in fractions)
    if n_val + n_test >= n:
        raise ConfigError(
            f"val_fraction and test_fraction of {what} leave no training examples out of {n}; lower them."
        )
    x = _apply_binarize(x, binarize, binarize_seed)
    idx = split_indices(n, {"test": n_test, "val": n_val, "train": None}, split_seed)
    info = {
        **info,
        "data_shape": [int(s) for s in x.shape[1:]],
        "split": "seeded permutation of all examples: test, val, rest -> train",
        "split_seed": split_seed,
        "val_fraction": fractions[0],
        "test_fraction": fractions[1],
    }
    data = {split: (x[i], None if y is None else y[i]) for split, i in idx.items()}
    return _make_splits(data, info, binarize, binarize_seed, dequantize)


# --------------------------------------------------------------------------------------
# Helpers


def _apply_binarize(x: torch.Tensor, mode: str, seed: int, stream: int = 0) -> torch.Tensor:
    """Binarise at load time; a static draw uses sub-stream ``stream`` of ``seed``."""
    if mode == "static":
        return binarize_fixed(x, _derive_seed(seed, stream))
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    return x  # "dynamic" and "none" keep grey levels


def _make_splits(data: dict, info: dict, binarize="none", binarize_seed=None, dequantize=False, factors=None):
    """``data`` maps each split to ``(examples, labels)``, ``factors`` (optional) each split
    to its factors; completes ``info``."""
    info = dict(info)
    info["sizes"] = {split: int(data[split][0].shape[0]) for split in _SPLITS}
    info["binarize"] = binarize
    info["binarize_seed"] = binarize_seed if binarize == "static" else None
    info["dequantize"] = dequantize
    tensors = {split: data[split][0].contiguous() for split in _SPLITS}
    labels = {f"{split}_labels": data[split][1] for split in _SPLITS}
    per_split_factors = {f"{split}_factors": (factors or {}).get(split) for split in _SPLITS}
    return Splits(**tensors, **labels, **per_split_factors, data_shape=tuple(info["data_shape"]), info=info)


def _derive_seed(seed: int, stream: int) -> int:
    """An independent seed for sub-stream ``stream`` of ``seed`` (stable across runs)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _check_binarize(mode, dataset: str) -> str:
    if mode not in BINARIZE_MODES:
        raise ConfigError(
            f"Option 'binarize' of dataset '{dataset}' must be one of "
            f"{', '.join(repr(m) for m in BINARIZE_MODES)}; got {mode!r}."
        )
    return mode


def _check_preprocessing(name: str, split_seed, binarize, binarize_seed, dequantize) -> tuple:
    """The checked ``(split_seed, binarize, binarize_seed, dequantize)`` options of dataset ``name``."""
    what = f"dataset '{name}'"
    split_seed = _check_int("split_seed", split_seed, minimum=0, what=what)
    binarize = _check_binarize(binarize, name)
    binarize_seed = _check_int("binarize_seed", binarize_seed, minimum=0, what=what)
    if not isinstance(dequantize, bool):
        raise ConfigError(f"Option 'dequantize' of {what} must be true or false, got {dequantize!r}.")
    if dequantize and binarize != "none":
        raise ConfigError(
            f"Option 'dequantize' of {what} needs binarize: none (dequantised data are continuous), "
            f"got binarize: {binarize}."
        )
    return split_seed, binarize, binarize_seed, dequantize


def _check_fractions(what: str, *fractions) -> tuple:
    """``(val_fraction, test_fraction)`` as floats in ``[0, 1)``."""
    for name, value in zip(("val_fraction", "test_fraction"), fractions):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"Option '{name}' of {what} must be a number in [0, 1), got {value!r}.")
    return tuple(float(f) for f in fractions)


def _check_size(size, what: str):
    """``None``, ``S`` or ``[H, W]`` -> ``None`` or ``(H, W)``."""
    if size is None:
        return None
    sizes = [size, size] if isinstance(size, int) else size
    if not isinstance(sizes, (list, tuple)) or len(sizes) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ConfigError(
            f"Option 'size' of {what} must be a positive integer or [height, width], got {size!r}."
        )
    return tuple(sizes)


def _path_option(value, option: str, what: str, must_be: str | None = None) -> Path:
    """A path option as a ``Path``; ``must_be`` ("file" or "folder") checks that it exists."""
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise ConfigError(f"Option '{option}' of {what} must be a path, got {value!r}.")
    path = Path(value).expanduser()
    if must_be == "file" and not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(f"Option '{option}' of {what}: {path} {problem}.")
    if must_be == "folder" and not path.is_dir():
        raise DataError(f"Option '{option}' of {what}: {path} is not a folder.")
    return path


def _check_int(name: str, value, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"Option '{name}' of {what} must be an integer, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"Option '{name}' of {what} must be >= {minimum}, got {value}.")
    return int(value)


from . import sprites as _sprites  # noqa: E402, F401  (registers the "sprites" dataset)
