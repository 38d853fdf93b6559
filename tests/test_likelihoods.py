import math

import numpy as np
import pytest
import torch
from checks import assert_trains_and_evaluates
from scipy import special, stats

from pyro_vae import VAE, ConfigError, DataError
from pyro_vae.data import binarize_fixed, load_dataset
from pyro_vae.likelihoods import LIKELIHOODS, DiscretizedLogisticMixture, GridCategorical
from pyro_vae.objectives import OBJECTIVES

pytestmark = pytest.mark.filterwarnings("ignore::pyro_vae.marginal.ImportanceSamplingWarning")

SHAPE = (1, 4, 4)
LOG_BOUND = math.log(1e3)


def bounded_exp(raw, bound=LOG_BOUND):
    return np.exp(bound * np.tanh(raw / bound))


def build(spec, shape=SHAPE):
    return LIKELIHOODS.build(spec, data_shape=shape).double()


def log_prob(lik, params, x):
    """The likelihood's log p(x | params) per data point, as numpy."""
    return lik(torch.as_tensor(params)).log_prob(torch.as_tensor(x)).detach().numpy()


def per_point(log_density):
    return log_density.reshape(len(log_density), -1).sum(-1)


def test_registered_names():
    assert LIKELIHOODS.names() == sorted([
        "bernoulli", "continuous-bernoulli", "gaussian", "laplace", "beta", "categorical",
        "discretized-logistic", "poisson", "negative-binomial",
    ])


# --------------------------------------------------------------------------------------
# log-densities against scipy / closed forms

rng = np.random.default_rng(0)


def test_bernoulli_against_scipy():
    params, x = rng.normal(size=(3, *SHAPE)), rng.integers(0, 2, size=(3, *SHAPE)).astype(float)
    expected = stats.bernoulli(special.expit(params)).logpmf(x)
    np.testing.assert_allclose(log_prob(build("bernoulli"), params, x), per_point(expected), rtol=1e-10)


def test_continuous_bernoulli_against_closed_form():
    params, x = rng.normal(size=(3, *SHAPE)), rng.uniform(size=(3, *SHAPE))
    x[0, 0, 0, :2] = [0.0, 1.0]
    lam = special.expit(params)
    log_norm = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = log_norm + x * np.log(lam) + (1 - x) * np.log1p(-lam)
    lik = build("continuous-bernoulli")
    np.testing.assert_allclose(log_prob(lik, params, x), per_point(expected), rtol=1e-6)


DISPERSED = {
    "gaussian": (lambda main, theta: stats.norm(main, theta), "scale"),
    "laplace": (lambda main, theta: stats.laplace(main, theta), "scale"),
    "negative-binomial": (lambda main, theta: stats.nbinom(theta, 1 - special.expit(main)), "total_count"),
}


@pytest.mark.parametrize("mode", ["fixed", "learned", "predicted"])
@pytest.mark.parametrize("name", DISPERSED)
def test_dispersion_families_against_scipy(name, mode):
    reference, option = DISPERSED[name]
    lik = build({"name": name, option: {"fixed": 2.5, "learned": "learned", "predicted": "predicted"}[mode]})
    params = rng.normal(size=(3, *lik.param_shape))
    if name == "negative-binomial":
        x = rng.integers(0, 20, size=(3, *SHAPE)).astype(float)
    else:
        x = rng.normal(size=(3, *SHAPE))
    if mode == "fixed":
        main, theta = params, 2.5
    elif mode == "learned":
        lik.raw_theta.data.fill_(0.7)
        main, theta = params, bounded_exp(0.7)
    else:
        main, theta = params[:, 0], bounded_exp(params[:, 1])
    expected = reference(main, theta)
    expected = expected.logpmf(x) if name == "negative-binomial" else expected.logpdf(x)
    np.testing.assert_allclose(log_prob(lik, params, x), per_point(expected), rtol=1e-8)


def test_beta_against_scipy():
    params, x = rng.normal(size=(3, 2, *SHAPE)), rng.uniform(0.01, 0.99, size=(3, *SHAPE))
    expected = stats.beta(bounded_exp(params[:, 0]), bounded_exp(params[:, 1])).logpdf(x)
    np.testing.assert_allclose(log_prob(build("beta"), params, x), per_point(expected), rtol=1e-8)


def test_poisson_against_scipy():
    params, x = rng.normal(size=(3, *SHAPE)), rng.integers(0, 10, size=(3, *SHAPE)).astype(float)
    expected = stats.poisson(bounded_exp(params, 20.0)).logpmf(x)
    np.testing.assert_allclose(log_prob(build("poisson"), params, x), per_point(expected), rtol=1e-8)


def test_categorical_on_the_level_grid():
    levels = 5
    params = rng.normal(size=(3, levels, *SHAPE))
    k = rng.integers(0, levels, size=(3, *SHAPE))
    expected = np.take_along_axis(special.log_softmax(params, axis=1), k[:, None], axis=1)[:, 0]
    lik = build({"name": "categorical", "levels": levels})
    np.testing.assert_allclose(log_prob(lik, params, k / (levels - 1)), per_point(expected), rtol=1e-10)


def discretized_logistic_pmf(x, logits, locs, scales, levels):
    """Σ_m π_m P_m(x) by CDF differences with scipy; mixture axis 1, edges take the tails."""
    y, h = (2 * x - 1)[:, None], 1 / (levels - 1)
    upper = stats.logistic.cdf((y + h - locs) / scales)
    lower = stats.logistic.cdf((y - h - locs) / scales)
    mass = np.where(y < -1 + h / 2, upper, np.where(y > 1 - h / 2, 1 - lower, upper - lower))
    return (special.softmax(logits, axis=1) * mass).sum(1)


@pytest.mark.parametrize("levels", [5, 256])
def test_discretized_logistic_against_scipy_cdf_differences(levels):
    lik = build({"name": "discretized-logistic", "levels": levels, "num_mixtures": 3})
    params = rng.normal(size=(4, 3, 3, *SHAPE))
    params[:, 2] -= 1.5  # scales around 0.2, comparable to the bins at 5 levels
    k = rng.integers(0, levels, size=(4, *SHAPE))
    k[0, 0, 0, :2] = [0, levels - 1]  # both edges
    x = k / (levels - 1)
    pmf = discretized_logistic_pmf(x, params[:, 0], params[:, 1], bounded_exp(params[:, 2]), levels)
    np.testing.assert_allclose(log_prob(lik, params, x), per_point(np.log(pmf)), rtol=1e-8)


def grid_distributions(levels):
    """Single-pixel grid distributions (batch 4) with mild and extreme parameters, float64."""
    g = torch.Generator().manual_seed(0)
    locs = torch.tensor([[0.0, 0.5, -0.3], [-1.0, 1.0, 0.0], [3.0, -3.0, 1.0], [0.2, -0.999, 0.999]])
    scales = torch.tensor([[0.3, 0.1, 1.0], [1e-3, 1e-3, 1e-3], [0.05, 0.05, 10.0], [1e-2, 2e-3, 2e-3]])
    logits = torch.randn(4, 3, generator=g)
    return {
        "categorical": GridCategorical(torch.randn(4, levels, generator=g, dtype=torch.float64)),
        "discretized-logistic": DiscretizedLogisticMixture(
            logits.double(), locs.double(), scales.double(), levels=levels
        ),
    }


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("name", ["categorical", "discretized-logistic"])
def test_grid_distributions_normalise_sample_and_mean(name, levels):
    d = grid_distributions(levels)[name]
    grid = torch.linspace(0, 1, levels, dtype=torch.float64)[:, None]
    log_pmf = d.log_prob(grid)  # (levels, 4)
    assert torch.isfinite(log_pmf).all()
    torch.testing.assert_close(log_pmf.logsumexp(0), torch.zeros(4, dtype=torch.float64), atol=1e-9, rtol=0)
    pmf = log_pmf.exp()
    torch.testing.assert_close(d.mean, (pmf * grid).sum(0), atol=1e-9, rtol=0)
    draws = d.sample((20000,))
    assert draws.shape == (20000, 4)
    k = (draws * (levels - 1)).round().long()
    assert torch.allclose(draws * (levels - 1), k.double(), atol=1e-9)
    frequencies = torch.stack([(k == j).double().mean(0) for j in range(levels)])
    assert (frequencies - pmf).abs().max() < 0.015


def test_discretized_logistic_is_stable_in_float32_at_extreme_parameters():
    d = grid_distributions(256)["discretized-logistic"]
    locs = d.locs.float().requires_grad_()
    d32 = DiscretizedLogisticMixture(d.logits.float(), locs, d.scales.float(), levels=256)
    log_pmf = d32.log_prob(torch.linspace(0, 1, 256)[:, None])
    log_pmf.sum().backward()
    assert torch.isfinite(log_pmf).all() and torch.isfinite(locs.grad).all()
    torch.testing.assert_close(log_pmf.logsumexp(0), torch.zeros(4), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------
# shapes under vectorised particles, support of samples

SPECS = {
    "bernoulli": "bernoulli",
    "continuous-bernoulli": "continuous-bernoulli",
    "gaussian": "gaussian",
    "gaussian-learned": {"name": "gaussian", "scale": "learned"},
    "gaussian-predicted": {"name": "gaussian", "scale": "predicted"},
    "laplace-predicted": {"name": "laplace", "scale": "predicted"},
    "beta": "beta",
    "categorical": {"name": "categorical", "levels": 17},
    "discretized-logistic": {"name": "discretized-logistic", "levels": 17, "num_mixtures": 3},
    "poisson": "poisson",
    "negative-binomial": "negative-binomial",
}


@pytest.mark.parametrize("name", SPECS)
def test_shapes_with_particle_dims_and_samples_in_support(name):
    lik = LIKELIHOODS.build(SPECS[name], data_shape=SHAPE)
    params = 0.5 * torch.randn(3, 5, *lik.param_shape)
    d = lik(params)
    assert d.batch_shape == (3, 5) and d.event_shape == SHAPE
    x = d.sample()
    assert x.shape == (3, 5, *SHAPE)
    assert d.log_prob(x[0]).shape == (3, 5)  # data (batch, *shape) broadcast over particles
    assert torch.isfinite(d.log_prob(x)).all()
    assert d.expand((2, 3, 5)).log_prob(x).shape == (2, 3, 5)  # as Pyro's plates may ask
    assert lik.mean(params).shape == (3, 5, *SHAPE)
    lik.validate(x.reshape(-1, *SHAPE))


# --------------------------------------------------------------------------------------
# validation of the data's support

GREY = torch.arange(16.0).reshape(1, *SHAPE) / 16  # digits-like levels k/16


@pytest.mark.parametrize(
    "spec, x, match",
    [
        ("bernoulli", GREY, "binary"),
        ("continuous-bernoulli", GREY * 2, r"\[0, 1\]"),
        ("gaussian", torch.full((1, *SHAPE), math.nan), "NaN"),
        ("gaussian", torch.zeros(1, 16), "shape"),
        ("beta", GREY, r"strictly inside \(0, 1\).*dequantise"),
        ("beta", 1 - GREY, "clamp"),
        ({"name": "categorical", "levels": 17}, GREY + 0.01, "k/16"),
        ({"name": "categorical", "levels": 17}, GREY * 2, "levels"),
        ({"name": "discretized-logistic"}, GREY, "levels=256"),
        ("poisson", GREY, "counts"),
        ("poisson", -GREY * 16, "counts"),
        ("negative-binomial", GREY * 8, "counts"),
    ],
)
def test_wrong_support_is_a_data_error(spec, x, match):
    with pytest.raises(DataError, match=match):
        LIKELIHOODS.build(spec, data_shape=SHAPE).validate(x)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "gaussian", "scale": -1.0}, "scale"),
        ({"name": "laplace", "scale": "big"}, "predicted"),
        ({"name": "negative-binomial", "total_count": 0}, "total_count"),
        ({"name": "categorical", "levels": 1}, "levels"),
        ({"name": "discretized-logistic", "num_mixtures": 0}, "num_mixtures"),
        ({"name": "gaussian", "sigma": 1.0}, "Valid options"),
    ],
)
def test_bad_options_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        LIKELIHOODS.build(spec, data_shape=SHAPE)


# --------------------------------------------------------------------------------------
# training a VAE with each likelihood on data of its support


@pytest.fixture(scope="module")
def grey():
    return load_dataset({"name": "digits", "binarize": "none"}).train[:128]


def data_for(name, grey):
    if name == "bernoulli":
        return binarize_fixed(grey, seed=0)
    if name == "beta":  # dequantised: (k + u) / 17 strictly inside (0, 1)
        u = torch.rand(grey.shape, generator=torch.Generator().manual_seed(0)).clamp(1e-3, 1 - 1e-3)
        return (grey * 16 + u) / 17
    if name in ("poisson", "negative-binomial"):
        return grey * 16  # counts 0..16
    return grey


@pytest.mark.parametrize("name", SPECS)
def test_trains_and_evaluates(name, grey):
    x = data_for(name, grey)
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4, likelihood=SPECS[name],
              encoder={"name": "mlp", "hidden": [32]}, decoder={"name": "mlp", "hidden": [32]})
    vae.likelihood.validate(x)
    assert_trains_and_evaluates(vae, x, lr=1e-2)


def test_learned_scale_is_trained(grey):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4, likelihood={"name": "gaussian", "scale": "learned"})
    elbo = OBJECTIVES.build("elbo")
    optimiser = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(5):
        optimiser.zero_grad()
        elbo.loss_and_grads(vae.model, vae.guide, grey)
        optimiser.step()
    assert vae.likelihood.raw_theta.item() < 0  # σ shrinks from 1 towards the data's spread
