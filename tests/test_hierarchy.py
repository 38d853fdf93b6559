import math
import warnings

import pyro
import pytest
import torch
import torch.nn as nn
from pyro import poutine

from pyro_vae import VAE, log_likelihood, train
from pyro_vae.data import binarize_fixed, load_dataset
from pyro_vae.objectives import OBJECTIVES, check_compatible


@pytest.fixture
def digits():
    return binarize_fixed(load_dataset("digits").train, seed=0)


def test_one_layer_hierarchy_is_the_plain_vae(digits):
    x = digits[:32]
    torch.manual_seed(3)
    plain = VAE(data_shape=(1, 8, 8), latent_dim=4)
    torch.manual_seed(3)
    layered = VAE(data_shape=(1, 8, 8), latent_dim=[4])
    plain_state, layered_state = plain.state_dict(), layered.state_dict()
    assert plain_state.keys() == layered_state.keys()
    assert all(torch.equal(plain_state[k], layered_state[k]) for k in plain_state)
    losses = []
    for vae in (plain, layered):
        pyro.set_rng_seed(7)
        losses.append(OBJECTIVES.build("elbo").loss(vae.model, vae.guide, x))
    assert losses[0] == losses[1]


@pytest.mark.parametrize("inference", ["bottom-up", "top-down", "residual"])
def test_sites_are_named_per_layer_and_usable_with_handlers(inference):
    vae = VAE(data_shape=6, latent_dim=[4, 3, 2], inference=inference, beta=[1.0, 2.0, 0.0])
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    guide = poutine.trace(vae.guide).get_trace(x)
    assert [n for n, s in guide.nodes.items() if s["type"] == "sample" and n != "data"] == (
        ["z1", "z2", "z3"] if inference == "bottom-up" else ["z3", "z2", "z1"]
    )
    assert guide.nodes["z2"]["scale"] == 2.0 and guide.nodes["z3"]["mask"] is False
    top = torch.zeros(5, 2)
    model = poutine.trace(poutine.condition(vae.model, data={"z3": top})).get_trace(x)
    assert torch.equal(model.nodes["z3"]["value"], top) and model.nodes["z2"]["value"].shape == (5, 3)
    blocked = poutine.trace(poutine.block(vae.model, hide=["z1"])).get_trace(x)
    assert "z1" not in blocked.nodes and "z2" in blocked.nodes


class Affine(nn.Module):
    """Outputs (W·input + b, constant log-variance) stacked on dim −2: a linear-Gaussian layer."""

    def __init__(self, weight, bias, variance):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.logvar = nn.Parameter(torch.log(variance))

    def forward(self, inputs):
        loc = inputs @ self.weight.T + self.bias
        return torch.stack([loc, self.logvar.expand_as(loc)], dim=-2)


class Linear(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, inputs):
        return inputs @ self.weight.T + self.bias


def linear_gaussian_hierarchy(exact_guide):
    """z2 ~ N(0,1), z1 | z2 ~ N(a·z2 + c, s²), x | z1 ~ N(W z1 + b, σ² I) with 1-d latents.

    Returns the VAE (its networks replaced by linear maps; the guide the exact posterior
    q(z1|x) p(z2|z1) if ``exact_guide``) and the closed-form log p(x).
    """
    a, c, s2, sigma = 1.5, 0.3, 0.5, 0.7
    W, b = torch.tensor([[1.0], [-2.0], [0.5]]), torch.tensor([0.1, -0.2, 0.3])
    vae = VAE(data_shape=3, latent_dim=[1, 1], likelihood={"name": "gaussian", "scale": sigma},
              inference="bottom-up", conditional_variance="learned")
    vae.downward[0] = Affine(torch.tensor([[a]]), torch.tensor([c]), torch.tensor([s2]))
    vae.decoder = Linear(W, b)
    var_z1 = a**2 + s2
    cov_x = var_z1 * W @ W.T + sigma**2 * torch.eye(3)
    mean_x = c * W[:, 0] + b
    if exact_guide:
        # p(z1|x): Gaussian conditioning of the joint of (z1, x)
        gain = var_z1 * W[:, 0] @ torch.linalg.inv(cov_x)  # (3,)
        post_var = var_z1 - gain @ (var_z1 * W[:, 0])
        vae.encoder = Affine(gain[None], (c - gain @ mean_x)[None], post_var[None])
        # p(z2|z1) = N(a (z1 − c)/var_z1, 1 − a²/var_z1)
        vae.upward[0] = Affine(torch.tensor([[a / var_z1]]), torch.tensor([-a * c / var_z1]),
                               torch.tensor([1 - a**2 / var_z1]))
    truth = torch.distributions.MultivariateNormal(mean_x, cov_x)
    return vae, truth


def test_estimator_is_exact_on_linear_gaussian_hierarchy_with_exact_guide():
    vae, truth = linear_gaussian_hierarchy(exact_guide=True)
    x = truth.sample((20,))
    for k in (1, 50):
        result = log_likelihood(vae.model, vae.guide, x, num_samples=k)
        assert torch.allclose(result.log_px.float(), truth.log_prob(x), atol=1e-4)


def test_estimator_converges_on_linear_gaussian_hierarchy_with_rough_guide():
    vae, truth = linear_gaussian_hierarchy(exact_guide=True)
    x = truth.sample((20,))
    with torch.no_grad():  # shift and widen both layers of the exact guide
        for net in (vae.encoder, vae.upward[0]):
            net.bias.add_(0.5)
            net.logvar.add_(math.log(3.0))
    few = log_likelihood(vae.model, vae.guide, x, num_samples=10)
    many = log_likelihood(vae.model, vae.guide, x, num_samples=20000)
    error = (many.log_px.float() - truth.log_prob(x)).abs()
    assert (error < 4 * many.stderr.float() + 1e-3).all()
    assert error.mean() < (few.log_px.float() - truth.log_prob(x)).abs().mean()
    assert (many.khat < many.khat_threshold).all()


@pytest.mark.parametrize(
    "inference, objective", [("bottom-up", "elbo"), ("bottom-up", "iwae"), ("top-down", "elbo-analytic"),
                             ("residual", "elbo-analytic")]
)
def test_hierarchy_trains(tmp_path, inference, objective):
    config = {
        "model": {"latent_dim": [8, 4], "inference": inference,
                  "encoder": {"hidden": [64]}, "decoder": {"hidden": [64]},
                  "latent_network": {"hidden": [32]}},
        "objective": {"name": objective},
        "beta_schedule": {"name": "constant", "beta": [1.0, 1.0]},
        "train": {"epochs": 3, "batch_size": 128},
    }
    run = train(config, tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    result = log_likelihood(run.vae.model, run.vae.guide, run.test[:20], num_samples=100)
    assert torch.isfinite(result.log_px).all()


def _bottom_up_elbo_by_hand(vae, x):
    """−[log p(x|z1) + log p(z1|z2) − log q(z1|x)] + KL(q(z2|z1) ‖ p(z2)) at one draw of the
    guide: the analytic KL only where the model's site depends on nothing drawn later."""
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    z1 = guide.nodes["z1"]
    q2, p2 = guide.nodes["z2"]["fn"], model.nodes["z2"]["fn"]
    kl2 = torch.distributions.kl_divergence(q2.base_dist, p2.base_dist).sum()
    return (-model.nodes["x"]["fn"].log_prob(x).sum() - model.nodes["z1"]["fn"].log_prob(z1["value"]).sum()
            + z1["fn"].log_prob(z1["value"]).sum() + kl2)


@pytest.mark.parametrize("validation", [True, False], ids=["pyro-path", "lean-path"])
def test_analytic_kl_of_a_bottom_up_hierarchy_is_the_elbo(validation):
    """elbo-analytic with a bottom-up guide: closed-form KL for the top layer only, the Monte
    Carlo term for z1 (whose prior p(z1|z2) depends on the z2 drawn after it): same draw,
    same loss as by hand; and over many draws the mean loss is the Monte Carlo ELBO's
    (before, the per-site closed form was biased)."""
    torch.manual_seed(0)  # random heads: p(z1|z2) depends on z2 from the start
    vae = VAE(data_shape=6, latent_dim=[3, 2], inference="bottom-up",
              latent_network={"name": "mlp", "hidden": [100, 100], "activation": "tanh"})
    x = torch.bernoulli(torch.full((8, 6), 0.4))
    check_compatible("elbo-analytic", vae)  # no longer refused
    analytic = OBJECTIVES.build("elbo-analytic")
    with pyro.validation_enabled(validation), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Failed to verify mean field")  # Pyro's order check
        pyro.set_rng_seed(3)
        loss = analytic.loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(3)
        assert loss == pytest.approx(_bottom_up_elbo_by_hand(vae, x).item(), rel=1e-6)
        many = OBJECTIVES.build({"name": "elbo-analytic", "num_particles": 500})
        monte_carlo = OBJECTIVES.build({"name": "elbo", "num_particles": 500})
        a = torch.tensor([many.loss(vae.model, vae.guide, x) for _ in range(40)])
        b = torch.tensor([monte_carlo.loss(vae.model, vae.guide, x) for _ in range(40)])
    stderr = (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert abs(a.mean() - b.mean()) < 4 * stderr + 1e-3


def test_analytic_objective_warns_when_the_prior_has_no_closed_form_kl():
    with pytest.warns(UserWarning, match="Monte Carlo"):
        check_compatible("elbo-analytic", VAE(data_shape=4, latent_dim=2, prior="mixture"))
