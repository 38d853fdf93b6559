"""Tests for pyro_vae.data.sprites: the factor grid, the renderer and the sprites datasets."""

import importlib
import math
from pathlib import Path

import pytest
import torch

import pyro_vae.data
from pyro_vae.data import (
    DATASETS,
    FACTOR_NAMES,
    FACTOR_SIZES,
    NUM_SPRITES,
    SpritesDataset,
    factor_values,
    factors_to_index,
    index_to_factors,
    load_dataset,
    render,
)
from pyro_vae.errors import ConfigError, DataError

SQUARE, ELLIPSE, HEART = 0, 1, 2
BASE = [ELLIPSE, 3, 7, 12, 20]  # every factor can go one step up from here


def image(*factors):
    return render(torch.tensor([factors]))[0, 0]


def centroid(img):
    """(column, row) of the on-pixels' centre of mass, pixel i covering [i, i + 1)."""
    rows, cols = torch.nonzero(img, as_tuple=True)
    return cols.float().mean().item() + 0.5, rows.float().mean().item() + 0.5


def test_sprites_is_a_module_of_the_data_package():
    module = importlib.import_module("pyro_vae.data.sprites")
    assert DATASETS.get("sprites") is module.sprites
    assert all(getattr(pyro_vae.data, name) is getattr(module, name) for name in module.__all__)
    assert set(module.__all__) <= set(pyro_vae.data.__all__)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pyro_vae.sprites")


def test_grid():
    assert FACTOR_SIZES == (3, 6, 40, 32, 32) and NUM_SPRITES == 737_280
    assert FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    _, scale, angle, x, y = factor_values(torch.tensor([[0, 0, 0, 0, 0], [2, 5, 39, 31, 31]]))
    assert scale.tolist() == pytest.approx([0.5, 1.0])
    assert angle.tolist() == pytest.approx([0.0, 2 * math.pi * 39 / 40])
    assert x.tolist() == pytest.approx([16.0, 48.0]) and y.tolist() == pytest.approx([16.0, 48.0])


def test_index_factors_round_trip():
    index = torch.cat([torch.tensor([0, 1, 32, NUM_SPRITES - 1]), torch.randint(NUM_SPRITES, (1000,))])
    factors = index_to_factors(index)
    assert factors.shape == (1004, 5) and factors.dtype == torch.int64
    assert factors[0].tolist() == [0] * 5 and factors[1].tolist() == [0, 0, 0, 0, 1]
    assert factors[2].tolist() == [0, 0, 0, 1, 0]
    assert factors[3].tolist() == [s - 1 for s in FACTOR_SIZES]
    assert torch.equal(factors_to_index(factors), index)
    every = torch.arange(NUM_SPRITES)
    assert torch.equal(factors_to_index(index_to_factors(every)), every)
    with pytest.raises(DataError):
        index_to_factors(torch.tensor([NUM_SPRITES]))
    with pytest.raises(DataError):
        render(torch.tensor([[3, 0, 0, 0, 0]]))
    with pytest.raises(DataError):
        render(torch.zeros(2, 4, dtype=torch.int64))


def test_render_deterministic_and_binary():
    factors = index_to_factors(torch.randint(NUM_SPRITES, (300,), generator=torch.Generator().manual_seed(0)))
    images = render(factors, chunk_size=64)
    assert images.shape == (300, 1, 64, 64) and images.dtype == torch.float32
    assert torch.all((images == 0) | (images == 1))
    assert torch.equal(images, render(factors))  # chunking does not matter
    assert torch.all(images.sum((1, 2, 3)) > 0)


def test_each_factor_changes_the_image():
    base = image(*BASE)
    for k in range(5):
        changed = list(BASE)
        changed[k] += 1
        assert not torch.equal(image(*changed), base), FACTOR_NAMES[k]


def test_shapes_differ():
    images = [image(shape, 5, 0, 16, 16) for shape in (SQUARE, ELLIPSE, HEART)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert (images[a] != images[b]).sum() > 20


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_scale_grows_the_shape(shape):
    counts = [image(shape, scale, 3, 16, 16).sum().item() for scale in range(6)]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts
    if shape == SQUARE:  # side 20 px at scale 1, 10 px at scale 0.5 (area up to edge pixels)
        assert counts[-1] == pytest.approx(400, abs=45) and counts[0] == pytest.approx(100, abs=25)


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE])
def test_position_moves_the_centre_of_mass(shape):
    for pos_x, pos_y in [(0, 0), (31, 0), (0, 31), (31, 31), (10, 22)]:
        factors = torch.tensor([[shape, 2, 5, pos_x, pos_y]])
        _, _, _, x, y = factor_values(factors)
        col, row = centroid(render(factors)[0, 0])
        assert col == pytest.approx(x.item(), abs=1.0) and row == pytest.approx(y.item(), abs=1.0)


def test_pos_x_moves_right_and_pos_y_down():
    left, right = centroid(image(HEART, 4, 0, 0, 16)), centroid(image(HEART, 4, 0, 31, 16))
    assert right[0] - left[0] == pytest.approx(32, abs=1) and right[1] == pytest.approx(left[1], abs=0.1)
    top, bottom = centroid(image(HEART, 4, 0, 16, 0)), centroid(image(HEART, 4, 0, 16, 31))
    assert bottom[1] - top[1] == pytest.approx(32, abs=1) and bottom[0] == pytest.approx(top[0], abs=0.1)


def corner(shape, orientation):
    """The 32x32 top-left block of a scale-1 sprite centred at (16, 16), where a quarter turn
    about the centre maps pixel centres onto pixel centres."""
    return image(shape, 5, orientation, 0, 0)[:32, :32]


def test_orientation_rotates():
    assert image(SQUARE, 5, 0, 0, 0)[32:].sum() == 0 and image(SQUARE, 5, 0, 0, 0)[:, 32:].sum() == 0
    square = [corner(SQUARE, k) for k in (0, 5, 10)]  # 0, π/4, π/2
    assert (square[0] != square[2]).sum() <= 2  # the same square up to pixel rounding
    assert (square[0] != square[1]).sum() > 40
    ellipse = [corner(ELLIPSE, k) for k in (0, 10, 20)]  # 0, π/2, π
    assert (ellipse[0] != ellipse[1]).sum() > 40
    assert (ellipse[0] != ellipse[2]).sum() <= 2
    for k in (10, 20, 30):  # quarter turns anticlockwise, as torch.rot90 turns an image
        turned = torch.rot90(corner(HEART, 0), k // 10)
        assert (turned != corner(HEART, k)).sum() <= 2
        assert (turned != corner(HEART, 0)).sum() > 40


def test_heart_is_upright_with_lobes_on_top():
    heart = image(HEART, 5, 0, 15, 15)
    rows = torch.nonzero(heart.sum(1)).flatten()
    top, bottom = rows[0].item(), rows[-1].item()
    widths = heart.sum(1)
    assert widths[top + 3] > 3 * widths[bottom - 1]  # broad lobes above, a point below
    row_profile = heart[top + 2]
    on = torch.nonzero(row_profile).flatten()
    assert (row_profile[on[0] : on[-1] + 1] == 0).any()  # the notch between the lobes


def test_shapes_stay_inside_the_image():
    corners = [[s, 5, o, x, y] for s in range(3) for o in range(40) for x in (0, 31) for y in (0, 31)]
    images = render(torch.tensor(corners))[:, 0]
    border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], dim=1)
    assert border.sum() == 0


def test_sprites_dataset_splits():
    spec = {"name": "sprites", "num_train": 300, "num_val": 50, "num_test": 60, "seed": 1}
    s = load_dataset(spec)
    assert s.sizes == {"train": 300, "val": 50, "test": 60} and s.data_shape == (1, 64, 64)
    numbers = [set(factors_to_index(getattr(s, f"{split}_factors")).tolist()) for split in s.sizes]
    assert sum(map(len, numbers)) == 410 and len(set.union(*numbers)) == 410  # no repeats, disjoint
    for split in ("train", "val", "test"):
        factors = getattr(s, f"{split}_factors")
        assert factors.shape == (s.sizes[split], 5) and factors.dtype == torch.int64
        assert torch.equal(getattr(s, split), render(factors))
        assert torch.equal(getattr(s, f"{split}_labels"), factors[:, 0])
    info = s.info
    assert info["factor_names"] == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert info["factor_sizes"] == [3, 6, 40, 32, 32] and info["binarize"] == "none"
    assert info["num_classes"] == 3 and not s.dynamic_binarization and not s.dequantization
    again = load_dataset(spec)
    assert torch.equal(again.val_factors, s.val_factors) and torch.equal(again.test, s.test)
    other = load_dataset({**spec, "seed": 2})
    assert not torch.equal(other.train_factors, s.train_factors)
    with pytest.raises(ConfigError, match="at most 737280"):
        load_dataset({"name": "sprites", "num_train": NUM_SPRITES})
    with pytest.raises(ConfigError, match="num_train"):
        load_dataset({"name": "sprites", "num_train": 0})


def test_lazy_sprites_dataset():
    dataset = SpritesDataset()
    assert len(dataset) == NUM_SPRITES
    img, factors = dataset[NUM_SPRITES - 1]
    assert img.shape == (1, 64, 64) and factors.tolist() == [s - 1 for s in FACTOR_SIZES]
    with pytest.raises(IndexError):
        dataset[NUM_SPRITES]
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=[5, 100_000, 700_000])
    images, factors = next(iter(loader))
    assert torch.equal(images, render(index_to_factors(torch.tensor([5, 100_000, 700_000]))))


def test_sprites_example_config_resolves():
    from pyro_vae import config as configuration

    path = Path(__file__).parents[1] / "examples" / "configs" / "sprites-beta-vae.yaml"
    config = configuration.check(configuration.resolve(configuration.load_yaml(path)))
    assert config["data"]["name"] == "sprites"
    assert config["beta_schedule"] == {"name": "constant", "beta": 4}
    assert config["model"]["latent_dim"] == 10
    small = load_dataset({**config["data"], "num_train": 10, "num_val": 2, "num_test": 2})
    assert small.data_shape == (1, 64, 64)
