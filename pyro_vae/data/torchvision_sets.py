"""The torchvision family: MNIST, Fashion-MNIST, KMNIST, EMNIST (balanced) and CIFAR-10,
read from torchvision's folder layout under ``root`` (downloaded only when asked)."""

import codecs
import gzip
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import ConfigError, DataError
from ..validation import check_bool
from .checks import check_int, check_preprocessing, path_option
from .loading import DATASETS, make_splits, split_indices
from .splits import SPLITS, Splits
from .transforms import apply_binarize


def _idx_files(train: str, test: str) -> tuple:
    """Names of the four IDX files of an MNIST-like set, training then test."""
    return tuple(f"{p}-{kind}" for p in (train, test) for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


MNIST_FILES = _idx_files("train", "t10k")

# What torchvision's IDX reader and the CIFAR-10 unpickler raise on malformed files.
_READ_ERRORS = (
    AssertionError, EOFError, IndexError, KeyError, OSError, RuntimeError, TypeError, ValueError,
    pickle.UnpicklingError,
)


def _read_idx(folder: Path, source: "_Source", sets: tuple) -> dict:
    """The IDX files of the official ``sets`` ("train", "test") of an MNIST-like set as uint8
    ``(N, 1, H, W)`` images and labels."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    out = {}
    for split in sets:
        images_file, labels_file = source.files_of(split)
        images = read_image_file(str(folder / images_file))
        if source.transpose:
            images = images.transpose(1, 2)
        out[split] = images.unsqueeze(1), read_label_file(str(folder / labels_file))
    return out


def _read_cifar(folder: Path, source: "_Source", sets: tuple) -> dict:
    """CIFAR-10's python batches of the official ``sets`` (the last file is the test batch) as
    uint8 ``(N, 3, 32, 32)``."""
    out = {}
    for split in sets:
        parts = [_load_cifar_batch(folder / name) for name in source.files_of(split)]
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
    files: tuple  # training files, then test files (the last ``num_test_files``)
    read: Callable  # (folder, source, sets) -> {"train": (uint8 images, labels), "test": ...}
    hint: str  # what the files are, for the missing-files message
    num_classes: int
    val_size: int = 10000
    binarize: str = "dynamic"
    options: tuple = ()  # extra (key, value) arguments of the torchvision class
    transpose: bool = False  # images stored transposed (EMNIST)
    num_test_files: int = 2

    def files_of(self, official_set: str) -> tuple:
        """The files of the official ``"train"`` or ``"test"`` set."""
        cut = len(self.files) - self.num_test_files
        return self.files[:cut] if official_set == "train" else self.files[cut:]


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
        val_size=5000, binarize="none", num_test_files=1,
    ),
)


_TORCHVISION_DOC = """\
    IDX files may be ``.gz``, which are unpacked next to them; ``download=True`` fetches
    missing files when online, and a missing file offline raises :class:`DataError` naming
    each file and where to put it. Pixel values are divided by 255 into ``[0, 1]``.
    ``val_size`` images of the official training set (chosen by a permutation seeded with
    ``split_seed``) form the validation split; the official test set is the test split. A
    static binarisation is drawn per official set before the validation split is taken.
    When only the test split is needed (``pyro-vae evaluate``), only the test files are read.
    EMNIST's images, stored transposed, are turned upright.
    """


def _load_torchvision(source, root, download, val_size, split_seed, binarize, binarize_seed, dequantize,
                      context):
    """A dataset of the torchvision family (``source``) from ``<root>/<source.folder>/``; the
    official training files are read only if ``context.splits`` asks for train or val."""
    what = f"dataset '{source.name}'"
    root = path_option(root, "root", what)
    download = check_bool(download, f"Option 'download' of {what}")
    val_size = check_int("val_size", val_size, minimum=0, what=what)
    split_seed, binarize, binarize_seed, dequantize = check_preprocessing(
        source.name, split_seed, binarize, binarize_seed, dequantize
    )
    needed = SPLITS if context is None else context.splits
    sets = ("train", "test") if {"train", "val"} & set(needed) else ("test",)
    data = _read_source(source, root, download, sets)
    if "train" not in data:  # an empty stand-in: only the test split is loaded
        data["train"] = data["test"][0][:0], data["test"][1][:0]
    n_train = data["train"][0].shape[0]
    if "train" in sets and val_size >= n_train:
        raise ConfigError(
            f"val_size ({val_size}) of {what} must be less than the {n_train} training images "
            f"found in {root / source.folder}, to leave a training set."
        )
    train_x, test_x = (
        apply_binarize(data[split][0].to(torch.float32).div_(255.0), binarize, binarize_seed, stream=k)
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
    loaded = SPLITS if "train" in sets else ("test",)
    return make_splits(parts, info, binarize, binarize_seed, dequantize, loaded=loaded)


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
        context=None,
    ) -> Splits:
        return _load_torchvision(
            source, root, download, val_size, split_seed, binarize, binarize_seed, dequantize, context
        )

    load.__name__ = load.__qualname__ = source.name.replace("-", "_")
    load.__doc__ = (
        f"{source.title} via ``torchvision.datasets.{source.cls}``, from the files "
        f"{', '.join(source.files)} in ``<root>/{source.folder}/``.\n\n{_TORCHVISION_DOC}"
    )
    return DATASETS.register(source.name, load)


mnist, fashion_mnist, kmnist, emnist, cifar10 = (_register(source) for source in _SOURCES)


def _read_source(source: _Source, root: Path, download: bool, sets=("train", "test")) -> dict:
    """Read (after unpacking and, if asked, downloading) and check the files of one source's
    official ``sets``."""
    folder = root / source.folder
    files = tuple(name for official_set in sets for name in source.files_of(official_set))
    _unpack_gz(folder, files)
    if _missing(folder, files) and download:
        _download(source, root)
    missing = _missing(folder, files)
    if missing:
        raise DataError(_missing_message(source, root, missing))
    try:
        data = source.read(folder, source, sets)
    except _READ_ERRORS as error:  # malformed files: the readers assert or raise
        raise DataError(
            f"Could not read the {source.title} files in {folder}: {type(error).__name__}: {error}. "
            f"Replace them with the original files ({', '.join(source.files)})."
        ) from None
    for split in sets:
        which = {"train": "training", "test": "test"}[split]
        images, labels = data[split]
        if images.shape[0] == 0:
            raise DataError(f"The {source.title} {which} files in {folder} hold no images.")
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"The {source.title} {which} files in {folder} hold {images.shape[0]} images but "
                f"{labels.shape[0]} labels."
            )
    shapes = [tuple(data[split][0].shape[1:]) for split in sets]
    if len(shapes) == 2 and shapes[0] != shapes[1]:
        raise DataError(
            f"The {source.title} training images in {folder} are {shapes[0]} but the test images "
            f"are {shapes[1]}."
        )
    return data


def _download(source: _Source, root: Path):
    """Fetch ``source`` with torchvision; a failure removes the empty folders the attempt made
    (torchvision creates ``<root>/<folder>/raw`` before it fails offline) and raises the
    missing-files message."""
    import torchvision

    new_folders = _missing_ancestors(root)
    existing = {path for path in root.rglob("*") if path.is_dir()} if root.is_dir() else set()
    try:
        download_class = getattr(torchvision.datasets, source.cls)
        download_class(str(root), train=True, download=True, **dict(source.options))
    except (RuntimeError, OSError, ValueError) as error:
        _remove_empty_folders(root, existing, new_folders)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        missing = _missing(root / source.folder, source.files)
        message = _missing_message(source, root, missing, download_error=error, reason=reason)
        raise DataError(message) from None


def _missing_ancestors(path: Path) -> list:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_empty_folders(root: Path, existing: set, new_folders: list):
    """Remove the empty folders under ``root`` that are not in ``existing``, then the empty ones of
    ``new_folders`` (created by the attempt); files and folders that existed are left alone."""
    if root.is_dir():
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and path not in existing and not any(path.iterdir()):
                path.rmdir()
    for folder in new_folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _missing(folder: Path, files: tuple) -> list:
    return [name for name in files if not (folder / name).is_file()]


def _unpack_gz(folder: Path, files: tuple):
    """Unpack ``<name>.gz`` next to itself for each file present only as .gz."""
    for name in files:
        target, packed = folder / name, folder / f"{name}.gz"
        if target.is_file() or not packed.is_file():
            continue
        try:
            with atomic_write(target) as partial, gzip.open(packed, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as error:
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
