"""Datasets as in-memory tensors, their train/val/test splits, binarisation and batching.

Datasets are built by name through the registry :data:`DATASETS` (``load_dataset("digits")``
or ``load_dataset({"name": "mnist", "root": "data", "val_size": 10000})``) and come back as
a :class:`Splits`: three float32 tensors of shape ``(N, C, H, W)`` with values in
``[0, 1]``, their labels, and an ``info`` dict recording the preprocessing (JSON/YAML
serialisable, so a run's config can store it).

Binarisation (option ``binarize`` of every dataset, default ``"dynamic"``):

* ``"dynamic"``: the tensors keep their grey levels; the training loop draws a fresh
  Bernoulli sample per batch with :func:`binarize_batch`. For evaluating a Bernoulli
  likelihood, use one fixed draw: :meth:`Splits.eval_view` or :func:`binarize_fixed`.
* ``"static"``: one Bernoulli draw per pixel, made once at load time with
  ``binarize_seed`` (the same on every load).
* ``"threshold"``: ``x > 0.5``.
* ``"none"``: grey levels, for likelihoods on ``[0, 1]`` (e.g. continuous Bernoulli, Beta).

The whole dataset is small enough to live on the training device; :func:`batches`
yields shuffled index tensors to slice it with.
"""

import copy
import dataclasses
import gzip
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError
from .registry import Registry

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "MNIST_FILES",
    "Splits",
    "batches",
    "binarize_batch",
    "binarize_fixed",
    "digits",
    "list_datasets",
    "load_dataset",
    "mnist",
    "split_indices",
]

DATASETS = Registry("dataset")

BINARIZE_MODES = ("dynamic", "static", "threshold", "none")

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_SPLITS = ("train", "val", "test")

# What torchvision's IDX (or legacy .pt cache) readers raise on malformed files.
_READ_ERRORS = (
    AssertionError, EOFError, IndexError, OSError, RuntimeError, TypeError, ValueError,
    pickle.UnpicklingError,
)


# --------------------------------------------------------------------------------------
# Splits


@dataclass(eq=False, repr=False)
class Splits:
    """Train/val/test tensors of one dataset, with labels and a record of the preprocessing.

    ``train``, ``val`` and ``test`` are float32 tensors of shape ``(N, *data_shape)``;
    ``val`` and ``test`` may be empty (``N == 0``), ``train`` may not. Labels are int64
    tensors of shape ``(N,)`` or ``None``. ``data_shape`` defaults to ``train.shape[1:]``.
    ``info`` holds plain Python values only (str, int, float, bool, None, lists, dicts).
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    data_shape: tuple | None = None
    info: dict = field(default_factory=dict)

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
            labels = getattr(self, f"{split}_labels")
            if labels is None:
                continue
            if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
                raise DataError(f"Splits.{split}_labels must be a 1-d tensor or None.")
            if labels.shape[0] != getattr(self, split).shape[0]:
                raise DataError(
                    f"Splits.{split}_labels has {labels.shape[0]} entries for "
                    f"{getattr(self, split).shape[0]} examples."
                )
            setattr(self, f"{split}_labels", labels.to(torch.int64))
        if not isinstance(self.info, dict):
            raise DataError(f"Splits.info must be a dict, got {type(self.info).__name__}.")

    @property
    def dynamic_binarization(self) -> bool:
        """Whether the training loop should binarise each batch with :func:`binarize_batch`."""
        return self.info.get("binarize") == "dynamic"

    @property
    def sizes(self) -> dict:
        """``{"train": n, "val": n, "test": n}``."""
        return {split: int(getattr(self, split).shape[0]) for split in _SPLITS}

    def to(self, device) -> "Splits":
        """A copy with every tensor (data and labels) moved to ``device``; ``info`` is copied."""
        moved = {}
        for split in _SPLITS:
            moved[split] = getattr(self, split).to(device)
            labels = getattr(self, f"{split}_labels")
            moved[f"{split}_labels"] = None if labels is None else labels.to(device)
        return dataclasses.replace(self, **moved, info=copy.deepcopy(self.info))

    def eval_view(self, seed: int = 0) -> "Splits":
        """The splits with one fixed Bernoulli draw per pixel, for evaluation.

        Under dynamic binarisation the stored tensors hold grey levels, which are outside
        a Bernoulli likelihood's support; evaluate on this view instead. The draw for each
        split depends only on ``seed`` and that split's tensor (not on the device or the
        other splits), so it is the same on every call. If the data are not dynamically
        binarised, returns ``self`` unchanged. The view's ``info`` has
        ``binarize: "fixed"`` and ``eval_binarize_seed: seed``.
        """
        if not self.dynamic_binarization:
            return self
        seed = _check_int("seed", seed, minimum=0, what="eval_view")
        fixed = {
            split: binarize_fixed(getattr(self, split), _derive_seed(seed, k))
            for k, split in enumerate(_SPLITS)
        }
        info = copy.deepcopy(self.info)
        info["binarize"] = "fixed"
        info["eval_binarize_seed"] = seed
        return dataclasses.replace(self, **fixed, info=info)

    def __repr__(self):
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (
            f"Splits(name={self.info.get('name')!r}, {sizes}, data_shape={self.data_shape}, "
            f"binarize={self.info.get('binarize')!r}, device={self.train.device})"
        )


# --------------------------------------------------------------------------------------
# Binarisation and batching


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
    seed = _check_int("seed", seed, minimum=0, what="binarize_fixed")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float32)
    return (noise < x.detach().to("cpu", torch.float32)).to(device=x.device, dtype=x.dtype)


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
) -> Splits:
    """scikit-learn's bundled handwritten digits (1797 images of 8x8, no download).

    Grey levels 0..16 are divided by 16 into ``[0, 1]``; data_shape is ``(1, 8, 8)``.
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
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    x = _apply_binarize(x, binarize, binarize_seed)
    idx = split_indices(n, {"test": test_size, "val": val_size, "train": None}, split_seed)
    info = {
        "name": "digits",
        "source": "sklearn.datasets.load_digits",
        "scale": "grey levels 0..16 divided by 16",
        "data_shape": [1, 8, 8],
        "num_classes": 10,
        "split": "seeded permutation of all 1797 images: test, val, rest -> train",
        "split_seed": split_seed,
        "val_size": val_size,
        "test_size": test_size,
    }
    data = {split: (x[i], y[i]) for split, i in idx.items()}
    return _make_splits(data, info, binarize, binarize_seed)


@DATASETS.register("mnist")
def mnist(
    root: str = "data",
    download: bool = False,
    val_size: int = 10000,
    split_seed: int = 0,
    binarize: str = "dynamic",
    binarize_seed: int = 0,
) -> Splits:
    """MNIST (60000 train + 10000 test images of 28x28) via ``torchvision.datasets.MNIST``.

    Reads the raw IDX files in ``<root>/MNIST/raw/`` (uncompressed, or ``.gz`` which are
    unpacked next to them); ``download=True`` fetches them when online. Pixel values are
    divided by 255 into ``[0, 1]``; data_shape is ``(1, 28, 28)``. ``val_size`` images of
    the official training set (chosen by a permutation seeded with ``split_seed``) form
    the validation split; the official test set is the test split. A static binarisation
    is drawn per official set before the validation split is taken.
    """
    what = "dataset 'mnist'"
    if not isinstance(root, (str, os.PathLike)) or str(root) == "":
        raise ConfigError(f"Option 'root' of {what} must be a directory path, got {root!r}.")
    if not isinstance(download, bool):
        raise ConfigError(f"Option 'download' of {what} must be true or false, got {download!r}.")
    val_size = _check_int("val_size", val_size, minimum=0, what=what)
    split_seed = _check_int("split_seed", split_seed, minimum=0, what=what)
    binarize = _check_binarize(binarize, "mnist")
    binarize_seed = _check_int("binarize_seed", binarize_seed, minimum=0, what=what)

    root_path = Path(root).expanduser()
    train_x, train_y, test_x, test_y = _read_mnist(root_path, download)
    n_train = train_x.shape[0]
    if val_size >= n_train:
        raise ConfigError(
            f"val_size ({val_size}) of {what} must be less than the {n_train} training images "
            f"found in {root_path / 'MNIST' / 'raw'}, to leave a training set."
        )
    train_x = train_x.to(torch.float32).div_(255.0).unsqueeze(1)
    test_x = test_x.to(torch.float32).div_(255.0).unsqueeze(1)
    train_x = _apply_binarize(train_x, binarize, binarize_seed, stream=0)
    test_x = _apply_binarize(test_x, binarize, binarize_seed, stream=1)
    idx = split_indices(n_train, {"val": val_size, "train": None}, split_seed)
    info = {
        "name": "mnist",
        "source": "torchvision.datasets.MNIST",
        "root": str(root),
        "scale": "pixel values 0..255 divided by 255",
        "data_shape": [int(s) for s in train_x.shape[1:]],
        "num_classes": 10,
        "split": "official test set; val: seeded permutation of the official training set",
        "split_seed": split_seed,
        "val_size": val_size,
        "test_size": int(test_x.shape[0]),
    }
    data = {split: (train_x[i], train_y[i]) for split, i in idx.items()}
    data["test"] = (test_x, test_y)
    return _make_splits(data, info, binarize, binarize_seed)


# --------------------------------------------------------------------------------------
# Helpers


def _read_mnist(root: Path, download: bool):
    """Return uint8 ``(train_images, train_labels, test_images, test_labels)`` tensors."""
    raw = root / "MNIST" / "raw"
    _unpack_gz(raw)
    if _mnist_missing(root) and download:
        try:
            import torchvision

            torchvision.datasets.MNIST(str(root), train=True, download=True)
        except (RuntimeError, OSError, ValueError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise DataError(
                _missing_message(root, _mnist_missing(root), download_error=error, reason=reason)
            ) from None
    missing = _mnist_missing(root)
    if missing:
        raise DataError(_missing_message(root, missing))

    import torchvision

    out = []
    for train in (True, False):
        try:
            ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
            images, labels = ds.data, ds.targets
        except _READ_ERRORS as error:  # malformed files: torchvision asserts or raises
            raise DataError(
                f"Could not read the MNIST {'training' if train else 'test'} files in {raw}: "
                f"{type(error).__name__}: {error}. Replace them with the original IDX files "
                f"({', '.join(MNIST_FILES)})."
            ) from None
        which = "training" if train else "test"
        if images.dim() != 3 or images.shape[0] == 0:
            raise DataError(
                f"The MNIST {which} images in {raw} are empty or not (N, rows, cols) "
                f"(got shape {tuple(images.shape)})."
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"The MNIST {which} files in {raw} hold {images.shape[0]} images but "
                f"{labels.shape[0] if labels.dim() else 0} labels."
            )
        out += [images, labels.to(torch.int64)]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise DataError(
            f"The MNIST training images in {raw} are {tuple(out[0].shape[1:])} but the test "
            f"images are {tuple(out[2].shape[1:])}."
        )
    return tuple(out)


def _mnist_missing(root: Path) -> list:
    """Raw MNIST files absent from ``<root>/MNIST/raw`` (none if torchvision's .pt cache exists)."""
    processed = root / "MNIST" / "processed"
    if (processed / "training.pt").is_file() and (processed / "test.pt").is_file():
        return []
    raw = root / "MNIST" / "raw"
    return [name for name in MNIST_FILES if not (raw / name).is_file()]


def _unpack_gz(raw: Path):
    """Unpack ``<name>.gz`` next to itself for each raw MNIST file present only as .gz."""
    for name in MNIST_FILES:
        target, packed = raw / name, raw / f"{name}.gz"
        if target.is_file() or not packed.is_file():
            continue
        partial = raw / f"{name}.partial"
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


def _missing_message(root: Path, missing: list, download_error=None, reason="") -> str:
    raw = (root / "MNIST" / "raw").absolute()
    wanted = "\n".join(f"  {raw / name}" for name in MNIST_FILES)
    message = (
        f"MNIST files not found in {raw} (missing: {', '.join(missing)}). Put the four "
        f"uncompressed IDX files (or their .gz versions) at:\n{wanted}\n"
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


def _apply_binarize(x: torch.Tensor, mode: str, seed: int, stream: int = 0) -> torch.Tensor:
    """Binarise at load time; a static draw uses sub-stream ``stream`` of ``seed``."""
    if mode == "static":
        return binarize_fixed(x, _derive_seed(seed, stream))
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    return x  # "dynamic" and "none" keep grey levels


def _make_splits(data: dict, info: dict, binarize: str, binarize_seed: int) -> Splits:
    """``data`` maps each split to ``(images, labels)``; completes ``info``."""
    info = dict(info)
    info["sizes"] = {split: int(data[split][0].shape[0]) for split in _SPLITS}
    info["binarize"] = binarize
    info["binarize_seed"] = binarize_seed if binarize == "static" else None
    tensors = {split: data[split][0].contiguous() for split in _SPLITS}
    labels = {f"{split}_labels": data[split][1] for split in _SPLITS}
    return Splits(**tensors, **labels, data_shape=tuple(info["data_shape"]), info=info)


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


def _check_int(name: str, value, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"Option '{name}' of {what} must be an integer, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"Option '{name}' of {what} must be >= {minimum}, got {value}.")
    return int(value)
