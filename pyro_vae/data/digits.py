"""The ``digits`` dataset: scikit-learn's bundled 8x8 handwritten digits (no download)."""

import torch

from ..errors import ConfigError, DataError
from ..validation import check_bool
from .checks import check_int, check_preprocessing
from .loading import DATASETS, make_splits, split_indices
from .splits import Splits
from .transforms import apply_binarize


@DATASETS.register("digits")
def digits(
    binarize: str = "dynamic",
    binarize_seed: int = 0,
    split_seed: int = 0,
    val_size: int = 180,
    test_size: int = 360,
    counts: bool = False,
    dequantize: bool = False,
) -> Splits:
    """scikit-learn's bundled handwritten digits (1797 images of 8x8, no download).

    Grey levels 0..16 are divided by 16 into ``[0, 1]``; data_shape is ``(1, 8, 8)``.
    With ``counts: true`` the integer levels 0..16 are kept as they are (count data for
    the Poisson and negative-binomial likelihoods; needs ``binarize: none``).
    With ``dequantize: true`` (needs ``binarize: none``) each training batch becomes
    ``(k + u) / 17`` with ``u ~ U[0, 1)`` (17 levels; evaluation uses one fixed draw), for
    continuous likelihoods on [0, 1] such as ``beta`` or ``continuous-bernoulli``.
    A permutation seeded by ``split_seed`` gives ``test_size`` test images (360),
    ``val_size`` validation images (180) and the rest (1257) for training. ``binarize``
    is applied as described in this module's docstring; a static binarisation is drawn
    on the full 1797 images before splitting, so it does not depend on the split.
    """
    split_seed, binarize, binarize_seed, dequantize = check_preprocessing(
        "digits", split_seed, binarize, binarize_seed, dequantize)
    val_size = check_int("val_size", val_size, minimum=0, what="dataset 'digits'")
    test_size = check_int("test_size", test_size, minimum=0, what="dataset 'digits'")

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
    counts = check_bool(counts, "Option 'counts' of dataset 'digits'")
    if counts and binarize != "none":
        raise ConfigError("Dataset 'digits' with counts: true needs binarize: none (counts are 0..16).")
    if counts and dequantize:
        raise ConfigError("Dataset 'digits' with counts: true keeps integer counts; it cannot be dequantised "
                          "(dequantize: true needs counts: false).")
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    x = x if counts else x.div_(16.0)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    x = apply_binarize(x, binarize, binarize_seed)
    idx = split_indices(n, {"test": test_size, "val": val_size, "train": None}, split_seed)
    info = {
        "name": "digits",
        "source": "sklearn.datasets.load_digits",
        "scale": "integer grey levels 0..16 (counts)" if counts else "grey levels 0..16 divided by 16",
        "data_shape": [1, 8, 8],
        "num_classes": 10,
        "levels": 17,
        "split": "seeded permutation of all 1797 images: test, val, rest -> train",
        "split_seed": split_seed,
        "val_size": val_size,
        "test_size": test_size,
    }
    data = {split: (x[i], y[i]) for split, i in idx.items()}
    return make_splits(data, info, binarize, binarize_seed, dequantize)
