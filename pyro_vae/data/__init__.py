"""Datasets as in-memory tensors, their train/val/test splits, per-batch transforms and batching.

Datasets are built by name through the registry :data:`DATASETS` (``load_dataset("digits")``
or ``load_dataset({"name": "mnist", "root": "data", "val_size": 10000})``) and come back as
a :class:`Splits`: three float32 tensors of shape ``(N, C, H, W)`` (or ``(N, *shape)`` for
users' arrays) with values in ``[0, 1]``, their labels, and an ``info`` dict recording the
preprocessing (JSON/YAML serialisable, so a run's config can store it).

Registered datasets: ``digits`` (scikit-learn, no download); the torchvision family
``mnist``, ``fashion-mnist``, ``kmnist``, ``emnist`` (balanced split) and ``cifar10``;
``sprites`` (procedural, with known factors, :mod:`pyro_vae.data.sprites`); users' own data,
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

The modules of this package: ``splits`` (:class:`Splits`), ``transforms`` (binarisation,
dequantisation), ``batching``, ``loading`` (the registry and what every dataset uses),
``checks`` (option checks), and the datasets ``digits``, ``torchvision_sets``, ``sprites``
and ``user_data``. Everything public is importable from ``pyro_vae.data``.
"""

from .batching import batches, fits_on_device, make_loader
from .checks import BINARIZE_MODES
from .digits import digits
from .loading import DATASETS, PATH_OPTIONS, absolute_paths, list_datasets, load_dataset, split_indices
from .splits import Splits
from .sprites import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    IMAGE_SIZE,
    NUM_SPRITES,
    SHAPES,
    SpritesDataset,
    factor_values,
    factors_to_index,
    index_to_factors,
    render,
    sprites,
)
from .torchvision_sets import MNIST_FILES, cifar10, emnist, fashion_mnist, kmnist, mnist
from .transforms import binarize_batch, binarize_fixed, bits_per_dim, dequantize_batch, dequantize_fixed
from .user_data import IMAGE_SUFFIXES, array, folder

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "IMAGE_SIZE",
    "IMAGE_SUFFIXES",
    "MNIST_FILES",
    "NUM_SPRITES",
    "PATH_OPTIONS",
    "SHAPES",
    "Splits",
    "SpritesDataset",
    "absolute_paths",
    "array",
    "batches",
    "binarize_batch",
    "binarize_fixed",
    "bits_per_dim",
    "cifar10",
    "dequantize_batch",
    "dequantize_fixed",
    "digits",
    "emnist",
    "factor_values",
    "factors_to_index",
    "fashion_mnist",
    "fits_on_device",
    "folder",
    "index_to_factors",
    "kmnist",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "mnist",
    "render",
    "split_indices",
    "sprites",
]
