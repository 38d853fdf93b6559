from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyro_vae import VAE, DataError
from pyro_vae.disentanglement import dci, disentanglement_scores, latent_codes, mig, score_run

SIZES = (3, 6, 10, 8)
NAMES = ["shape", "scale", "orientation", "position"]


@pytest.fixture(scope="module")
def factors():
    rng = np.random.default_rng(0)
    return np.stack([rng.integers(0, size, 3000) for size in SIZES], axis=1)


def disentangled(factors, seed=1):
    """Each latent is a monotone transform of one factor (plus a little noise); one extra unused latent."""
    rng = np.random.default_rng(seed)
    v = factors.astype(np.float64)
    codes = np.stack([np.exp(0.4 * v[:, 0]), 2 * v[:, 1] - 3, np.tanh(v[:, 2] / 10), np.sqrt(v[:, 3])], 1)
    codes += 1e-3 * rng.normal(size=codes.shape)
    return np.concatenate([codes, 0.01 * rng.normal(size=(len(v), 1))], axis=1)


def test_disentangled_code_scores_near_one(factors):
    scores = disentanglement_scores(disentangled(factors), factors, NAMES, regressor="extra-trees")
    assert scores["mig"] > 0.9
    assert scores["dci_disentanglement"] > 0.95
    assert scores["dci_completeness"] > 0.95
    assert scores["dci_informativeness"] > 0.95
    assert [scores["per_factor"][name]["best_code"] for name in NAMES] == [0, 1, 2, 3]


def test_random_code_scores_near_zero(factors):
    codes = np.random.default_rng(2).normal(size=(len(factors), 5))
    scores = disentanglement_scores(codes, factors, regressor="extra-trees")
    assert scores["mig"] < 0.1
    assert scores["dci_disentanglement"] < 0.2
    assert scores["dci_informativeness"] < 0.5  # chance level is 1/size per factor
    assert list(scores["per_factor"]) == ["factor_0", "factor_1", "factor_2", "factor_3"]


def test_mixing_factors_lowers_the_scores(factors):
    clean = disentangled(factors)
    rotation = np.linalg.qr(np.random.default_rng(3).normal(size=(5, 5)))[0]
    standardised = (clean - clean.mean(0)) / clean.std(0)
    mixed = standardised @ rotation
    good, bad = (disentanglement_scores(c, factors, regressor="extra-trees") for c in (clean, mixed))
    assert bad["mig"] < good["mig"] - 0.3
    assert bad["dci_disentanglement"] < good["dci_disentanglement"] - 0.2
    assert bad["dci_completeness"] < good["dci_completeness"] - 0.2


def test_mig_normalises_by_factor_entropy_and_skips_constant_factors():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 4, size=(2000, 1))
    factors = np.concatenate([v, np.zeros_like(v)], axis=1)  # the second factor never varies
    codes = np.concatenate([v + 0.01 * rng.normal(size=v.shape), v + 0.01 * rng.normal(size=v.shape)], axis=1)
    result = mig(codes, factors)
    np.testing.assert_allclose(result["factor_entropy"][0], np.log(4), rtol=0.01)
    assert np.isnan(result["mig_per_factor"][1])
    assert result["mig"] < 0.05  # two codes carry the factor equally: no gap
    assert dci(codes, factors)["importance"].shape == (2, 2)


def test_bad_shapes_are_rejected():
    with pytest.raises(DataError, match="same N"):
        disentanglement_scores(np.zeros((10, 2)), np.zeros((9, 1), dtype=int))
    with pytest.raises(DataError, match="integer"):
        disentanglement_scores(np.random.rand(10, 2), np.random.rand(10, 1))
    with pytest.raises(DataError, match="factor names"):
        disentanglement_scores(np.random.rand(10, 2), np.zeros((10, 2), dtype=int), ["one"])


def test_latent_codes_are_top_layer_posterior_means():
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2])
    x = torch.bernoulli(torch.full((7, 1, 8, 8), 0.3))
    codes = latent_codes(vae, x, batch_size=3)
    assert codes.shape == (7, 2) and codes.dtype == np.float64
    np.testing.assert_allclose(codes, vae.encode(x)[0].detach().numpy(), atol=1e-5)


def test_score_run_uses_the_split_factors(factors):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    x = torch.bernoulli(torch.full((200, 1, 8, 8), 0.3))
    info = {"factor_names": NAMES, "name": "toy"}
    splits = SimpleNamespace(test_factors=torch.as_tensor(factors[:200]), info=info)
    scores = score_run(SimpleNamespace(vae=vae, splits=splits, test=x, val=x[:0]), split="test")
    assert set(scores["per_factor"]) == set(NAMES) and scores["num_points"] == 200
    splits.val_factors = None
    with pytest.raises(DataError, match="no generative factors"):
        score_run(SimpleNamespace(vae=vae, splits=splits, test=x, val=x[:0]), split="val")
