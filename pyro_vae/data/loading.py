"""The dataset registry :data:`DATASETS` and what every dataset uses to build its :class:`Splits`."""

import os

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import Registry
from .splits import SPLITS, Splits

DATASETS = Registry("dataset")


def load_dataset(spec="digits", context=None) -> Splits:
    """Load a dataset from a spec: a name (``"digits"``) or ``{"name": ..., **options}``.

    ``context`` (a :class:`~pyro_vae.registry.BuildContext`) may name the splits needed;
    datasets that can skip files do so (the torchvision family reads only the official
    test files for ``splits=("test",)``), the others load everything. Unknown names and
    options raise :class:`ConfigError` with the valid ones; missing or unreadable files
    raise :class:`DataError`.
    """
    splits = DATASETS.build(spec, context)
    if not isinstance(splits, Splits):
        raise ConfigError(f"Dataset {spec!r} returned {type(splits).__name__}, not Splits.")
    return splits


PATH_OPTIONS = ("root", "path", "labels_path")
"""Dataset options that name files or folders (torchvision ``root``, ``array``/``folder`` ``path``
and ``labels_path``)."""


def absolute_paths(spec):
    """``spec`` with its :data:`PATH_OPTIONS` made absolute (``~`` expanded), so that a run
    stored with it finds its data from any working directory; other specs unchanged."""
    if not isinstance(spec, dict):
        return spec
    return {key: os.path.abspath(os.path.expanduser(value)) if key in PATH_OPTIONS and isinstance(value, str)
            else value for key, value in spec.items()}


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


def make_splits(data: dict, info: dict, binarize="none", binarize_seed=None, dequantize=False, factors=None,
                loaded=SPLITS):
    """``data`` maps each split to ``(examples, labels)``, ``factors`` (optional) each split
    to its factors; completes ``info``. ``loaded``: the splits that were read."""
    info = dict(info)
    info["sizes"] = {split: int(data[split][0].shape[0]) for split in SPLITS}
    info["binarize"] = binarize
    info["binarize_seed"] = binarize_seed if binarize == "static" else None
    info["dequantize"] = dequantize
    tensors = {split: data[split][0].contiguous() for split in SPLITS}
    labels = {f"{split}_labels": data[split][1] for split in SPLITS}
    per_split_factors = {f"{split}_factors": (factors or {}).get(split) for split in SPLITS}
    return Splits(**tensors, **labels, **per_split_factors, data_shape=tuple(info["data_shape"]), info=info,
                  loaded=loaded)
