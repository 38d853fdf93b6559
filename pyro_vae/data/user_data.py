"""Users' own data: ``array`` (a .npy, .npz or .pt file) and ``folder`` (PNG/JPEG images)."""

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..validation import check_choice
from .checks import check_fractions, check_preprocessing, check_size, path_option
from .loading import DATASETS, make_splits, split_indices
from .splits import Splits
from .transforms import apply_binarize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
    path = path_option(path, "path", what, must_be="file")
    if labels_path is not None:
        labels_path = path_option(labels_path, "labels_path", what, must_be="file")
    checked = check_preprocessing("array", split_seed, binarize, binarize_seed, dequantize)
    fractions = check_fractions(what, val_fraction, test_fraction)
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
    root = path_option(path, "path", what, must_be="folder")
    mode = check_choice(mode, f"Option 'mode' of {what}", ("grayscale", "rgb"))
    size = check_size(size, what)
    checked = check_preprocessing("folder", split_seed, binarize, binarize_seed, dequantize)
    fractions = check_fractions(what, val_fraction, test_fraction)
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


def first_sentence(error, limit=300):
    """The first sentence of ``error``'s message (at most ``limit`` characters, cut at a word),
    ending with a full stop: a message is never cut mid-sentence."""
    text = " ".join(str(error).split()) or type(error).__name__
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match.group(1) if match else text
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " …"
    return sentence if sentence.endswith((".", "!", "?", "…")) else sentence + "."


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
    except pickle.UnpicklingError:
        raise DataError(
            f"Could not read {path}: it holds pickled Python objects other than tensors, which "
            "torch.load(weights_only=True) refuses (loading them could run code). Save plain "
            "tensors or a dict of tensors with torch.save, or a numeric array with numpy.save."
        ) from None
    except (OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(
            f"Could not read {path}: {type(error).__name__}: {first_sentence(error)} Object "
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
    x = apply_binarize(x, binarize, binarize_seed)
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
    return make_splits(data, info, binarize, binarize_seed, dequantize)
