"""One convention for traces and per-point log-densities (pyro_vae.traces), checked through
its three consumers on a linear-Gaussian model with an exact closed form:

    z ~ N(0, I_d),  x | z ~ N(W z + b, s² I_D)   =>   log p(x) = log N(x; b, W Wᵀ + s² I),
    p(z | x) = N(Σ Wᵀ (x − b) / s², Σ),  Σ = (I + Wᵀ W / s²)⁻¹.

With the exact posterior as the guide every importance weight log p(x, z) − log q(z | x)
equals log p(x), so each per-point quantity is exact for any draw.
"""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.poutine.guide import GuideMessenger

from pyro_vae import diagnostics, log_likelihood
from pyro_vae.arviz_export import log_px_from, to_inference_data
from pyro_vae.traces import per_point, per_point_log_prob, trace_model_and_guide

D, d, N, S = 4, 2, 6, 0.7
_g = torch.Generator().manual_seed(0)
W, B = torch.randn(D, d, generator=_g), torch.randn(D, generator=_g)
X = torch.randn(N, D, generator=_g) * 2
COV = torch.linalg.inv(torch.eye(d) + W.T @ W / S**2)


def exact_log_px(x):
    return dist.MultivariateNormal(B, W @ W.T + S**2 * torch.eye(D)).log_prob(x).double()


def posterior(x):
    return dist.MultivariateNormal((x - B) @ W @ COV.T / S**2, covariance_matrix=COV)


class Pair:
    """The duck-typed ``vae`` of diagnostics and arviz_export: model, guide, sites, train/eval."""

    training = False
    sites = ("z",)

    def __init__(self, model, guide):
        self.model, self.guide = model, guide

    def eval(self):
        return self

    def train(self, mode=True):
        return self


# -- (a) GuideMessenger guides -----------------------------------------------------------

DROPOUT = torch.nn.Dropout(0.3)  # randomness outside the sample sites (train mode)


def dropout_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(DROPOUT(z) @ W.T + B, S).to_event(1), obs=x)


def linear_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, S).to_event(1), obs=x)


def posterior_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", posterior(x))


class PosteriorMessenger(GuideMessenger):
    """The same q(z | x) as ``posterior_guide``, as an effect-based guide."""

    def get_posterior(self, name, prior):
        (x,), _ = self.args_kwargs
        return posterior(x)


def _both(fn, model):
    """``fn(model, guide)`` for the function guide and the GuideMessenger, from one seed."""
    out = []
    for guide in (posterior_guide, PosteriorMessenger(model)):
        pyro.set_rng_seed(3)
        out.append(fn(model, guide))
    return out


def _log_px(model, guide):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # K = 8: no k-hat
        return log_likelihood(model, guide, X, num_samples=8).log_px


def _elbo(model, guide):
    terms = diagnostics.elbo_terms(Pair(model, guide), X)
    return terms["recon"] - sum(terms["kl"].values())


@pytest.mark.parametrize("fn", [_log_px, _elbo], ids=["log_likelihood", "elbo_terms"])
def test_guide_messenger_matches_the_guide_function_exactly(fn):
    function, messenger = _both(fn, linear_model)
    torch.testing.assert_close(messenger, function)
    torch.testing.assert_close(messenger.double(), exact_log_px(X), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fn", [_log_px, _elbo], ids=["log_likelihood", "elbo_terms"])
def test_guide_messenger_runs_the_model_once(fn):
    """A GuideMessenger runs the model itself: replaying the model a second time (what a
    trace-and-replay of the guide does) would draw a second dropout mask."""
    DROPOUT.train()
    function, messenger = _both(fn, dropout_model)
    torch.testing.assert_close(messenger, function)


def test_traces_of_a_guide_messenger_hold_prior_and_posterior():
    model_trace, guide_trace = trace_model_and_guide(linear_model, PosteriorMessenger(linear_model), X,
                                                     num_particles=5, max_plate_nesting=1)
    p, q = model_trace.nodes["z"], guide_trace.nodes["z"]
    assert "x" not in guide_trace.nodes and model_trace.nodes["x"]["is_observed"]
    torch.testing.assert_close(per_point_log_prob(q, N, 5), posterior(X).log_prob(q["value"]))
    assert per_point_log_prob(p, N, 5).shape == (5, N) and per_point(q["value"], q, N, 5).shape == (5, N, d)
    torch.testing.assert_close(per_point_log_prob(p, N, 5),
                               dist.Normal(0.0, 1.0).log_prob(q["value"]).sum(-1))


# -- (b) a "data" plate that is not the leftmost batch dim -------------------------------


def data_left_of_features(x):
    """The data plate at dim -2, features at -1 (x_nj in both)."""
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))  # batch (..., N, 1)
        with pyro.plate("features", D, dim=-1):
            pyro.sample("x", dist.Normal((z @ W.T + B).squeeze(-2), S), obs=x)


def guide_left_of_features(x):
    with pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("z", dist.MultivariateNormal(posterior(x).loc.unsqueeze(-2), covariance_matrix=COV))


def features_left_of_data(x):
    """The features plate at dim -2, the data plate at -1: x enters transposed, (D, N)."""
    data, features = pyro.plate("data", x.shape[0], dim=-1), pyro.plate("features", D, dim=-2)
    with data:
        z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))  # batch (..., [1,] N)
    loc = (z @ W.T + B).transpose(-1, -2)  # (..., [1,] D, N)
    if loc.dim() > 2:
        loc = loc.squeeze(-3)  # the particle case: (P, 1, D, N) -> (P, D, N)
    with features, data:
        pyro.sample("x", dist.Normal(loc, S), obs=x.T)


LAYOUTS = {
    "data-left-of-features": (data_left_of_features, guide_left_of_features),
    "features-left-of-data": (features_left_of_data, posterior_guide),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_per_point_values_agree_with_the_closed_form_whatever_the_plate_layout(layout):
    model, guide = LAYOUTS[layout]
    exact = exact_log_px(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant weights: k-hat is -inf
        marginal = log_likelihood(model, guide, X, num_samples=30)
    torch.testing.assert_close(marginal.log_px, exact, atol=1e-4, rtol=0)
    torch.testing.assert_close(marginal.elbo, exact, atol=1e-4, rtol=0)

    terms = diagnostics.elbo_terms(Pair(model, guide), X)
    assert terms["recon"].shape == (N,) and terms["kl"]["z"].shape == (N,)
    torch.testing.assert_close((terms["recon"] - terms["kl"]["z"]).double(), exact, atol=1e-4, rtol=0)
    torch.testing.assert_close(terms["means"]["z"], posterior(X).loc)

    K = 400
    idata = to_inference_data(Pair(model, guide), X, num_samples=K, seed=0)
    log_weight = idata.sample_stats["log_weight"].values[0]  # (draw, point)
    np.testing.assert_allclose(log_weight, exact.expand(K, N).numpy(), atol=1e-4)
    np.testing.assert_allclose(log_px_from(idata), exact.numpy(), atol=1e-4)
    z = torch.as_tensor(idata.posterior["z"].values[0])  # (draw, point, d), each point's own draws
    assert z.shape == (K, N, d)
    log_lik = dist.Normal(z @ W.T + B, S).log_prob(X).sum(-1).double()  # log p(x_n | z_nk) per draw
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], log_lik.numpy(), atol=1e-4)
    log_q = posterior(X).log_prob(z).double()
    np.testing.assert_allclose(idata.sample_stats["log_q"].values[0], log_q.numpy(), atol=1e-4)
    assert torch.all((z.mean(0) - posterior(X).loc).abs() < 5 * COV.diagonal().sqrt() / K**0.5)
