import pyro
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pyro_vae import VAE
from pyro_vae.diagnostics import elbo_terms, latent_summary
from pyro_vae.objectives import OBJECTIVES


def test_elbo_terms_match_pyro_trace_elbo_for_the_same_draw():
    vae = VAE(data_shape=6, latent_dim=[3, 2], beta=[4.0, 0.0])  # β must not enter the terms
    vae.eval()  # batch normalisation of the latent networks: the running statistics in both
    x = torch.bernoulli(torch.full((10, 6), 0.4))
    pyro.set_rng_seed(5)
    terms = elbo_terms(vae, x)
    vae.beta = 1.0
    pyro.set_rng_seed(5)
    loss = OBJECTIVES.build("elbo").loss(vae.model, vae.guide, x)
    elbo = terms["recon"] - sum(terms["kl"].values())
    assert elbo.sum().item() == pytest.approx(-loss, rel=1e-5)


def test_kl_estimate_matches_closed_form():
    vae = VAE(data_shape=6, latent_dim=3)
    x = torch.bernoulli(torch.full((1, 6), 0.4)).expand(20000, 6)
    loc, logvar = vae.encode(x[:1])
    exact = kl_divergence(Normal(loc, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum().item()
    assert latent_summary(vae, x, batch_size=5000)["val_kl"]["z"] == pytest.approx(exact, rel=0.05, abs=0.01)


def test_active_units_count_dimensions_whose_posterior_mean_varies():
    vae = VAE(data_shape=6, latent_dim=4, encoder={"name": "mlp", "hidden": [16]})
    with torch.no_grad():  # collapse dimensions 2 and 3: their posterior mean ignores x
        head = vae.encoder.net[-1]
        head.weight.view(2, 4, -1)[0, 2:] = 0.0
        head.weight.mul_(20.0)
    x = torch.bernoulli(torch.full((500, 6), 0.5))
    summary = latent_summary(vae, x)
    assert summary["active_units"] == {"z": 2}
    assert summary["val_elbo"] == pytest.approx(summary["val_recon"] - summary["val_kl"]["z"])
