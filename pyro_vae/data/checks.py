"""Checks of dataset options, raising :class:`~pyro_vae.errors.ConfigError` or
:class:`~pyro_vae.errors.DataError` with the option's name and the dataset's."""

import os
from pathlib import Path

from .. import validation
from ..errors import ConfigError, DataError

BINARIZE_MODES = ("dynamic", "static", "threshold", "none")


def check_binarize(mode, dataset: str) -> str:
    return validation.check_choice(mode, f"Option 'binarize' of dataset '{dataset}'", BINARIZE_MODES)


def check_preprocessing(name: str, split_seed, binarize, binarize_seed, dequantize) -> tuple:
    """The checked ``(split_seed, binarize, binarize_seed, dequantize)`` options of dataset ``name``."""
    what = f"dataset '{name}'"
    split_seed = check_int("split_seed", split_seed, minimum=0, what=what)
    binarize = check_binarize(binarize, name)
    binarize_seed = check_int("binarize_seed", binarize_seed, minimum=0, what=what)
    dequantize = validation.check_bool(dequantize, f"Option 'dequantize' of {what}")
    if dequantize and binarize != "none":
        raise ConfigError(
            f"Option 'dequantize' of {what} needs binarize: none (dequantised data are continuous), "
            f"got binarize: {binarize}."
        )
    return split_seed, binarize, binarize_seed, dequantize


def check_fractions(what: str, *fractions) -> tuple:
    """``(val_fraction, test_fraction)`` as floats in ``[0, 1)``."""
    return tuple(
        validation.check_number(value, f"Option '{name}' of {what}", minimum=0, less_than=1)
        for name, value in zip(("val_fraction", "test_fraction"), fractions)
    )


def check_size(size, what: str):
    """``None``, ``S`` or ``[H, W]`` -> ``None`` or ``(H, W)``."""
    if size is None:
        return None
    sizes = validation.check_ints(size, f"Option 'size' of {what}", length=2)
    return sizes * 2 if len(sizes) == 1 else sizes


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
    """:func:`pyro_vae.validation.check_int` of option ``name`` of ``what`` (e.g. "dataset 'mnist'")."""
    return validation.check_int(value, f"Option '{name}' of {what}", minimum=minimum)
