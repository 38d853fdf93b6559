"""Procedural sprites with known generative factors, in the spirit of dSprites (Matthey et al. 2017).

64×64 binary images of one white shape on black, rendered on the fly from five factors,
each an index into a grid (:data:`FACTOR_NAMES`, :data:`FACTOR_SIZES`):

=============  ====  ===========================================================
factor         size  value
=============  ====  ===========================================================
shape          3     square, ellipse (2:1), heart
scale          6     0.5 .. 1, linearly (a square of side 20 px at scale 1)
orientation    40    2πk/40 radians, anticlockwise on screen
pos_x          32    centre column 16 .. 48 px, linearly (left to right)
pos_y          32    centre row 16 .. 48 px, linearly (top to bottom)
=============  ====  ===========================================================

That is 737,280 images (:data:`NUM_SPRITES`), numbered in mixed radix with ``shape``
slowest and ``pos_y`` fastest, as in dSprites. Each pixel is on when its centre lies in
the shape: the centre is rotated and scaled into the shape's frame and tested against an
implicit description (``max(|u|, |v|) <= 1``, ``u² + (2v)² <= 1``, and the heart curve
``(u² + v² − 1)³ − u² v³ <= 0``), for a whole batch at once. The dataset ``"sprites"``
renders a seeded sample; :class:`SpritesDataset` renders any image when it is fetched.
"""

import math

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .checks import check_int
from .loading import DATASETS, make_splits
from .splits import Splits

__all__ = [
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "IMAGE_SIZE",
    "NUM_SPRITES",
    "SHAPES",
    "SpritesDataset",
    "factor_values",
    "factors_to_index",
    "index_to_factors",
    "render",
    "sprites",
]

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
NUM_SPRITES = math.prod(FACTOR_SIZES)
IMAGE_SIZE = 64

HALF_SIZE = 10.0
"""Half the side of the square at scale 1, in pixels."""
POSITION_RANGE = (16.0, 48.0)
"""First and last centre coordinate, in pixels; every shape stays inside the image."""
HEART_OFFSET = 0.118
"""Shifts the heart curve (which spans v in [−1, 1.236]) to centre it vertically."""

_RADICES = torch.tensor([math.prod(FACTOR_SIZES[k + 1 :]) for k in range(len(FACTOR_SIZES))])


def _check_factors(factors) -> torch.Tensor:
    factors = torch.as_tensor(factors)
    if factors.dim() != 2 or factors.shape[1] != len(FACTOR_SIZES) or factors.is_floating_point():
        raise DataError(f"Sprite factors must be an integer tensor of shape (N, 5), got {factors.dtype} "
                        f"of shape {tuple(factors.shape)}.")
    factors = factors.to(torch.int64)
    if ((factors < 0) | (factors >= torch.tensor(FACTOR_SIZES))).any():
        raise DataError(f"Sprite factors must lie in 0 .. size - 1 for sizes {FACTOR_SIZES}.")
    return factors


def index_to_factors(index) -> torch.Tensor:
    """Image numbers ``(N,)`` in ``0 .. NUM_SPRITES - 1`` -> factor indices ``(N, 5)``."""
    index = torch.as_tensor(index, dtype=torch.int64)
    if index.dim() != 1 or ((index < 0) | (index >= NUM_SPRITES)).any():
        raise DataError(f"Sprite numbers must be a 1-d tensor of integers in 0 .. {NUM_SPRITES - 1}.")
    return index.unsqueeze(1) // _RADICES % torch.tensor(FACTOR_SIZES)


def factors_to_index(factors) -> torch.Tensor:
    """Factor indices ``(N, 5)`` -> image numbers ``(N,)`` (inverse of :func:`index_to_factors`)."""
    return (_check_factors(factors) * _RADICES).sum(1)


def factor_values(factors) -> tuple:
    """Factor indices ``(N, 5)`` -> ``(shape, scale, angle, x, y)``: the shape number and
    float tensors of the scale, the angle in radians and the centre's column and row in
    pixels (pixel ``i`` covers ``[i, i + 1)``)."""
    factors = _check_factors(factors)
    shape, scale, orientation, pos_x, pos_y = factors.T
    first, last = POSITION_RANGE
    step = (last - first) / (FACTOR_SIZES[3] - 1)
    return (
        shape,
        0.5 + 0.5 * scale / (FACTOR_SIZES[1] - 1),
        2 * math.pi * orientation / FACTOR_SIZES[2],
        first + step * pos_x,
        first + step * pos_y,
    )


def render(factors, chunk_size: int = 2048) -> torch.Tensor:
    """Images of the sprites with factor indices ``(N, 5)``: a float32 ``(N, 1, 64, 64)`` tensor of 0/1."""
    factors = _check_factors(factors)
    out = torch.empty(len(factors), 1, IMAGE_SIZE, IMAGE_SIZE)
    for start in range(0, len(factors), chunk_size):
        out[start : start + chunk_size, 0] = _render(factors[start : start + chunk_size])
    return out


def _render(factors: torch.Tensor) -> torch.Tensor:
    shape, scale, angle, x, y = factor_values(factors)
    centres = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    right = (centres - x.view(-1, 1)).unsqueeze(1)  # screen offsets of the pixel centres: right, up
    up = (y.view(-1, 1) - centres).unsqueeze(2)
    cos = (torch.cos(angle) / (HALF_SIZE * scale)).view(-1, 1, 1)
    sin = (torch.sin(angle) / (HALF_SIZE * scale)).view(-1, 1, 1)
    u = cos * right + sin * up  # the shape's frame: rotated back by the angle, scaled
    v = cos * up - sin * right
    out = torch.empty(u.shape)
    for k, inside in enumerate((_square, _ellipse, _heart)):
        rows = shape == k
        out[rows] = inside(u[rows], v[rows]).to(torch.float32)
    return out


def _square(u, v):
    return torch.maximum(u.abs(), v.abs()) <= 1


def _ellipse(u, v):
    return u * u + 4 * v * v <= 1


def _heart(u, v):
    w = v + HEART_OFFSET
    u2, w2 = u * u, w * w
    a = u2 + w2 - 1
    return a * a * a <= u2 * w2 * w


class SpritesDataset(torch.utils.data.Dataset):
    """All :data:`NUM_SPRITES` sprites, each rendered when it is fetched (nothing is stored).

    ``dataset[i]`` is ``(image, factors)``: a float32 ``(1, 64, 64)`` image and the int64
    factor indices ``(5,)`` of sprite number ``i``. For streaming with a DataLoader.
    """

    def __len__(self):
        return NUM_SPRITES

    def __getitem__(self, i):
        if not 0 <= i < NUM_SPRITES:
            raise IndexError(f"sprite number {i} is outside 0 .. {NUM_SPRITES - 1}")
        factors = index_to_factors(torch.tensor([int(i)]))
        return render(factors)[0], factors[0]


@DATASETS.register("sprites")
def sprites(num_train: int = 20000, num_val: int = 2000, num_test: int = 2000, seed: int = 0) -> Splits:
    """A seeded sample (without replacement) of the 737,280 sprites, rendered into memory.

    Disjoint train/val/test sets of the given sizes: consecutive pieces of
    ``numpy.random.RandomState(seed).permutation(737280)``, in that random order; labels are the
    shape (0 square, 1 ellipse, 2 heart) and ``train_factors`` etc. hold all five factor
    indices. Images are binary, so no binarisation is applied.
    """
    what = "dataset 'sprites'"
    sizes = {
        "train": check_int("num_train", num_train, minimum=1, what=what),
        "val": check_int("num_val", num_val, minimum=0, what=what),
        "test": check_int("num_test", num_test, minimum=0, what=what),
    }
    seed = check_int("seed", seed, minimum=0, what=what)
    if sum(sizes.values()) > NUM_SPRITES:
        raise ConfigError(f"num_train + num_val + num_test of {what} must be at most {NUM_SPRITES}.")
    order = torch.from_numpy(np.random.RandomState(seed).permutation(NUM_SPRITES)[: sum(sizes.values())])
    factors = dict(zip(sizes, map(index_to_factors, order.split(list(sizes.values())))))
    data = {split: (render(f), f[:, 0]) for split, f in factors.items()}
    info = {
        "name": "sprites",
        "source": "pyro_vae.data.sprites (procedural, rendered from the factor grid)",
        "scale": "binary 0/1",
        "data_shape": [1, IMAGE_SIZE, IMAGE_SIZE],
        "num_classes": len(SHAPES),
        "class_names": list(SHAPES),
        "factor_names": list(FACTOR_NAMES),
        "factor_sizes": list(FACTOR_SIZES),
        "split": f"seeded sample without replacement of the {NUM_SPRITES} factor combinations",
        "seed": seed,
    }
    return make_splits(data, info, factors=factors)
