"""The posterior and prior predictive with pyro.infer.Predictive."""

import pyro
import pytest
import torch

from pyro_vae import VAE, posterior_predictive
from pyro_vae.errors import DataError
from pyro_vae.predictive import prior_predictive


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((3, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))


def test_plain_predictive_returns_the_observed_x(x):
    """What users tried first (the reason for posterior_predictive): x is the data, repeated."""
    vae = VAE(data_shape=(1, 8, 8), latent_dim=2)
    out = pyro.infer.Predictive(vae.model, guide=vae.guide, num_samples=4)(x)
    assert torch.equal(out["x"], x.expand(4, *x.shape))


@pytest.mark.parametrize("latent_dim", [2, [4, 2]])
def test_posterior_predictive_replicates_x_given_the_guides_z(x, latent_dim):
    torch.manual_seed(0)
    vae = VAE(data_shape=(1, 8, 8), latent_dim=latent_dim)
    draws = 3000
    out = posterior_predictive(vae, x, num_samples=draws)
    assert set(out) == {"x", *vae.sites}
    assert out["x"].shape == (draws, *x.shape) and out[vae.sites[-1]].shape[:2] == (draws, len(x))
    # x̃ | z ~ p(x | z_1): its mean over the draws matches the decoder's mean at the same z_1
    with torch.no_grad():
        probs = vae.likelihood.mean(vae.decoder(out[vae.sites[0]]))
    assert (out["x"].mean(0) - probs.mean(0)).abs().max() < 4 * 0.5 / draws**0.5
    # z ~ q(z | x): the draws of the first layer centre on q's mean
    if vae.sites == ("z",):
        loc, logvar = vae.encode(x)
        sd = torch.exp(0.5 * logvar).detach()
        assert ((out["z"].mean(0) - loc.detach()).abs() < 5 * sd / draws**0.5).all()


def test_prior_predictive_needs_a_batch_size(x):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2])
    out = prior_predictive(vae, batch_size=5, num_samples=2)
    assert out["x"].shape == (2, 5, 1, 8, 8) and out["z2"].shape == (2, 5, 2)
    assert set(out["x"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(DataError, match="batch_size"):
        vae.model(None)
    assert vae.model(None, batch_size=4).shape == (4, 1, 8, 8)
