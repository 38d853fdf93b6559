"""Checks of dataset options, raising :class:`~pyro_vae.errors.ConfigError` or
:class:`~pyro_vae.errors.DataError` with the option's name and the dataset's."""

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

BINARIZE_MODES = ("dynamic", "static", "threshold", "none")


def check_binarize(mode, dataset: str) -> str:
    if mode not in BINARIZE_MODES:
        raise ConfigError(
            f"Option 'binarize' of dataset '{dataset}' must be one of "
            f"{', '.join(repr(m) for m in BINARIZE_MODES)}; got {mode!r}."
        )
    return mode


def check_preprocessing(name: str, split_seed, binarize, binarize_seed, dequantize) -> tuple:
    """The checked ``(split_seed, binarize, binarize_seed, dequantize)`` options of dataset ``name``."""
    what = f"dataset '{name}'"
    split_seed = check_int("split_seed", split_seed, minimum=0, what=what)
    binarize = check_binarize(binarize, name)
    binarize_seed = check_int("binarize_seed", binarize_seed, minimum=0, what=what)
    if not isinstance(dequantize, bool):
        raise ConfigError(f"Option 'dequantize' of {what} must be true or false, got {dequantize!r}.")
    if dequantize and binarize != "none":
        raise ConfigError(
            f"Option 'dequantize' of {what} needs binarize: none (dequantised data are continuous), "
            f"got binarize: {binarize}."
        )
    return split_seed, binarize, binarize_seed, dequantize


def check_fractions(what: str, *fractions) -> tuple:
    """``(val_fraction, test_fraction)`` as floats in ``[0, 1)``."""
    for name, value in zip(("val_fraction", "test_fraction"), fractions):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"Option '{name}' of {what} must be a number in [0, 1), got {value!r}.")
    return tuple(float(f) for f in fractions)


def check_size(size, what: str):
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


def path_option(value, option: str, what: str, must_be: str | None = None) -> Path:
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


def check_int(name: str, value, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"Option '{name}' of {what} must be an integer, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"Option '{name}' of {what} must be >= {minimum}, got {value}.")
    return int(value)
