import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import Normal, kl_divergence

from pyro_vae import VAE, ConfigError
from pyro_vae.data import binarize_fixed, load_dataset
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.schedules import BETA_SCHEDULES


@pytest.fixture
def digits():
    return binarize_fixed(load_dataset("digits").train, seed=0)


def kl_to_standard_normal(vae, x):
    """KL(q(z|x) ‖ N(0, I)) summed over the batch, from torch.distributions."""
    loc, logvar = vae.encode(x)
    q = Normal(loc, torch.exp(0.5 * logvar))
    return kl_divergence(q, Normal(torch.zeros_like(loc), torch.ones_like(loc))).sum()


def loss_at(vae, objective, x, beta, seed=1):
    vae.beta = beta
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return objective.loss(vae.model, vae.guide, x)


def test_analytic_loss_is_exactly_linear_in_beta_with_slope_kl(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4)
    x = digits[:32]
    objective = OBJECTIVES.build("elbo-analytic")
    kl = kl_to_standard_normal(vae, x).item()
    base = loss_at(vae, objective, x, 0.0)
    for beta in (0.5, 1.0, 4.0):
        assert loss_at(vae, objective, x, beta) == pytest.approx(base + beta * kl, rel=1e-5, abs=1e-3)


def test_monte_carlo_loss_agrees_with_kl_in_expectation(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4)
    x = digits[:8]
    objective = OBJECTIVES.build({"name": "elbo", "num_particles": 4000})
    kl = kl_to_standard_normal(vae, x).item()
    # Same seed -> same z draws, so the difference is β times a Monte Carlo KL estimate.
    slope = (loss_at(vae, objective, x, 3.0) - loss_at(vae, objective, x, 0.0)) / 3.0
    assert slope == pytest.approx(kl, rel=0.02)


def test_beta_zero_drops_kl_but_keeps_encoder_gradient(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4, beta=0.0)
    x = digits[:16]
    loss = OBJECTIVES.build("elbo-analytic").differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.encoder.parameters())


def test_beta_rejects_bad_values():
    vae = VAE(data_shape=4, latent_dim=2)
    for bad in (-1.0, float("nan"), "big", True):
        with pytest.raises(ConfigError, match="beta"):
            vae.beta = bad


def test_plain_svi_trains_model_and_guide(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4, encoder={"name": "mlp", "hidden": [64]},
              decoder={"name": "mlp", "hidden": [64]})
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    x = digits[:512]
    losses = [svi.step(x) for _ in range(300)]
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:20]) / 20


@pytest.mark.parametrize("name", ["elbo", "elbo-analytic", "iwae"])
def test_vectorised_particles_give_finite_loss(name, digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3, beta=2.0)
    objective = OBJECTIVES.build({"name": name, "num_particles": 5})
    loss = objective.loss(vae.model, vae.guide, digits[:10])
    assert torch.isfinite(torch.tensor(loss))


def test_iwae_bound_is_tighter_than_elbo(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    x = digits[:64]
    elbo = OBJECTIVES.build({"name": "elbo", "num_particles": 200}).loss(vae.model, vae.guide, x)
    iwae = OBJECTIVES.build({"name": "iwae", "num_particles": 200}).loss(vae.model, vae.guide, x)
    assert iwae < elbo


def test_reconstruct_and_sample_shapes():
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3, likelihood={"name": "gaussian", "scale": "learned"})
    x = torch.rand(5, 1, 8, 8)
    assert vae.reconstruct(x).shape == (5, 1, 8, 8)
    assert vae.sample(7).shape == (7, 1, 8, 8)
    assert vae.sample(2, mean=False).shape == (2, 1, 8, 8)


def test_unknown_parts_are_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'bernoulli'"):
        VAE(data_shape=4, latent_dim=2, likelihood="bernouli")
    with pytest.raises(ConfigError, match="Valid options: .*hidden"):
        VAE(data_shape=4, latent_dim=2, encoder={"name": "mlp", "hiden": [3]})
    with pytest.raises(ConfigError, match="latent_dim"):
        VAE(data_shape=4, latent_dim=0)


def test_bernoulli_rejects_grey_levels():
    vae = VAE(data_shape=4, latent_dim=2)
    with pytest.raises(Exception, match="binary"):
        vae.likelihood.validate(torch.full((3, 4), 0.5))


@pytest.mark.parametrize(
    "spec, points",
    [
        ({"name": "constant", "beta": 4.0}, {0: 4.0, 7.5: 4.0}),
        ({"name": "linear", "beta": 2.0, "warmup_epochs": 4}, {0: 0.0, 1: 0.5, 4: 2.0, 9: 2.0}),
        ({"name": "cyclical", "beta": 1.0, "cycle_epochs": 4, "ratio": 0.5},
         {0: 0.0, 1: 0.5, 2: 1.0, 3.5: 1.0, 4: 0.0, 5: 0.5}),
    ],
)
def test_beta_schedules(spec, points):
    schedule = BETA_SCHEDULES.build(spec)
    for t, beta in points.items():
        assert schedule(t) == pytest.approx(beta)
