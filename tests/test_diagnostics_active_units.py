"""Active units per layer: Cov_x(E_q[z_l|x]) > 0.01 with E_q[z_l|x] the mean of z_l under q
marginally over the layers drawn before it, checked on models whose answer is known."""

import pytest
import torch
import torch.nn as nn

from pyro_vae import VAE
from pyro_vae.diagnostics import ACTIVE_UNIT_THRESHOLD, elbo_terms, latent_summary, mean_variances


class Affine(nn.Module):
    """(W·input + b, log-variance) stacked on dim −2; the log-variance is ``logvar`` or, when
    ``logvar_weight`` is given, an affine function of the input too."""

    def __init__(self, weight, bias, logvar, logvar_weight=None):
        super().__init__()
        self.weight, self.bias, self.logvar = nn.Parameter(weight), nn.Parameter(bias), nn.Parameter(logvar)
        self.logvar_weight = None if logvar_weight is None else nn.Parameter(logvar_weight)

    def forward(self, inputs):
        inputs = inputs.flatten(1) if inputs.dim() == 2 else inputs
        loc = inputs @ self.weight.T + self.bias
        logvar = self.logvar.expand_as(loc)
        if self.logvar_weight is not None:
            logvar = logvar + inputs @ self.logvar_weight.T
        return torch.stack([loc, logvar], dim=-2)


def bottom_up(encoder, upward, data_dim=4, dims=(2, 2)):
    vae = VAE(data_shape=data_dim, latent_dim=list(dims), likelihood={"name": "gaussian", "scale": 1.0},
              inference="bottom-up")
    vae.encoder, vae.upward[0] = encoder, upward
    return vae


def test_constant_posterior_mean_of_the_top_layer_gives_no_active_units():
    """q(z1|x) = N(0, s²(x)) and q(z2|z1) = N(z1, 1): E_q[z1|x] = E_q[z2|x] = 0 for every x, so
    no unit is active, although the guide's mean of z2 at a *drawn* z1 (what a single draw
    of the guide gives) varies across x with variance E_x s²(x) ≈ 1."""
    torch.manual_seed(0)
    encoder = Affine(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), logvar_weight=0.1 * torch.randn(2, 4))
    upward = Affine(torch.eye(2), torch.zeros(2), torch.zeros(2))
    vae = bottom_up(encoder, upward)
    x = torch.randn(4000, 4)
    assert (elbo_terms(vae, x)["means"]["z2"].var(0) > 0.5).all()  # one draw: both units look active
    variances = mean_variances(vae, x)
    assert variances["z1"].abs().max() < 1e-12  # exact: the first site drawn
    assert variances["z2"].abs().max() < ACTIVE_UNIT_THRESHOLD / 2
    assert latent_summary(vae, x)["active_units"] == {"z1": 0, "z2": 0}


def test_linear_gaussian_bottom_up_variances_match_the_closed_form():
    """z1|x ~ N(W x, I), z2|z1 ~ N(z1 + c, I): E_q[z2|x] = W x + c. Row 0 of W is zero, so
    dimension 0 of both layers ignores x (though z1[0] + c at a *drawn* z1 has variance 1
    across x); dimension 1 varies across x by 0.05, above the threshold of 0.01."""
    torch.manual_seed(1)
    W = torch.zeros(2, 4)
    W[1, 1] = 0.05**0.5
    encoder = Affine(W, torch.zeros(2), torch.zeros(2))
    upward = Affine(torch.eye(2), torch.tensor([0.5, -0.5]), torch.zeros(2))
    vae = bottom_up(encoder, upward)
    x = torch.randn(4000, 4)
    exact = (x @ W.T)[:, 1].var().item()
    variances = mean_variances(vae, x, num_draws=32)
    assert variances["z1"][0] == 0 and variances["z1"][1].item() == pytest.approx(exact, rel=1e-5)
    assert abs(variances["z2"][0].item()) < 0.004
    assert variances["z2"][1].item() == pytest.approx(exact, abs=0.006)
    assert latent_summary(vae, x)["active_units"] == {"z1": 1, "z2": 1}


def test_linear_gaussian_top_down_variances_match_the_closed_form():
    """Top-down guide: q(z2|x) = N(μ̂2, σ̂2²) exactly; q(z1|z2, x) is the precision-weighted
    product of N(μ̂1(x), σ̂1²) and p(z1|z2) = N(a z2, s²), so
    E_q[z1|x] = (μ̂1 P̂1 + a μ̂2 P)/(P̂1 + P), with P̂1 = 1/σ̂1², P = 1/s²."""
    torch.manual_seed(2)
    vae = VAE(data_shape=3, latent_dim=[1, 1], inference="top-down",
              likelihood={"name": "gaussian", "scale": 1.0}, conditional_variance="learned")
    w1, v1 = torch.tensor([[0.8, -0.4, 0.3]]), 0.5
    b2, v2 = 0.7, 0.2
    a, s2 = 1.5, 0.25
    vae.encoder = Affine(w1, torch.zeros(1), torch.log(torch.tensor([v1])))
    vae.upward[0] = Affine(torch.tensor([[b2]]), torch.zeros(1), torch.log(torch.tensor([v2])))
    vae.downward[0] = Affine(torch.tensor([[a]]), torch.zeros(1), torch.log(torch.tensor([s2])))
    x = torch.randn(4000, 3)
    mu1 = x @ w1.T
    mu2 = b2 * mu1
    mean_z1 = (mu1 / v1 + a * mu2 / s2) / (1 / v1 + 1 / s2)
    variances = mean_variances(vae, x, num_draws=32)
    assert variances["z2"].item() == pytest.approx(mu2.var().item(), rel=1e-5)
    assert variances["z1"].item() == pytest.approx(mean_z1.var().item(), rel=0.03)


def test_active_units_leave_batch_norm_statistics_and_the_mode_alone():
    vae = VAE(data_shape=6, latent_dim=[4, 2],
              latent_network={"name": "mlp", "hidden": [8], "batch_norm": True})
    x = torch.bernoulli(torch.full((64, 6), 0.5))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    latent_summary(vae, x)
    assert vae.training
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())


def test_mean_variances_need_an_even_number_of_draws():
    with pytest.raises(ValueError, match="even"):
        mean_variances(VAE(data_shape=4, latent_dim=[2, 2]), torch.zeros(3, 4), num_draws=3)
