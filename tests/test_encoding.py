"""pyro_vae.encoding: the codes are q's parameters along the path of means."""

import numpy as np
import pytest
import torch

from pyro_vae import VAE
from pyro_vae.encoding import encode, save_codes
from pyro_vae.model import gaussian_params

# latent networks with random heads: with the default zero heads every p(z_l|z_{l+1}) starts as
# N(0, I), which would make the combination of the two passes trivial
RANDOM_HEADS = {"name": "mlp", "hidden": [16], "batch_norm": True, "zero_init_head": False}


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((6, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))


def test_one_layer_codes_are_the_encoder_outputs(x):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    loc, logvar = gaussian_params(vae.encoder(x))
    codes = encode(vae, x, batch_size=4)  # two batches
    np.testing.assert_allclose(codes["z_mean"], loc.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(codes["z_logvar"], logvar.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_bottom_up_hierarchy_follows_the_means_upwards(x):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2]).eval()  # batch norm: running statistics
    codes = encode(vae, x)
    (m1, v1), (m2, v2) = ((a.detach().numpy(), b.detach().numpy()) for a, b in vae.encode_layers(x))
    for got, want in ((codes["z1_mean"], m1), (codes["z1_logvar"], v1), (codes["z2_mean"], m2),
                      (codes["z2_logvar"], v2)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def precision_weighted(loc_q, logvar_q, loc_p, logvar_p):
    precision = torch.exp(-logvar_q) + torch.exp(-logvar_p)
    return (loc_q * torch.exp(-logvar_q) + loc_p * torch.exp(-logvar_p)) / precision, -torch.log(precision)


def residual_normal(shift, log_scale2, loc_p, logvar_p):
    return loc_p + logvar_p.mul(0.5).exp() * shift, logvar_p + log_scale2


@pytest.mark.parametrize("conditional_variance", ["learned", "unit", "bounded"])
@pytest.mark.parametrize("inference, combine",
                         [("top-down", precision_weighted), ("residual", residual_normal)])
def test_top_down_hierarchies_combine_the_pass_with_the_prior_at_the_top_mean(
        x, inference, combine, conditional_variance):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2], inference=inference, latent_network=RANDOM_HEADS,
              conditional_variance=conditional_variance).eval()
    codes = encode(vae, x)
    with torch.no_grad():
        (loc_q, logvar_q), (top, _) = vae.encode_layers(x)
        loc, logvar = combine(loc_q, logvar_q, *vae.conditional_params(0, top))
    np.testing.assert_allclose(codes["z2_mean"], top.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(codes["z1_mean"], loc.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(codes["z1_logvar"], logvar.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("inference", ["bottom-up", "top-down", "residual"])
def test_guide_means_are_the_codes_along_the_path_of_means(x, inference):
    """VAE.guide_means (reconstructions, posterior_means) against encode, which runs the guide
    itself with every latent site set to its mean."""
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 3, 2], inference=inference,
              latent_network=RANDOM_HEADS).eval()
    codes = encode(vae, x)
    with torch.no_grad():
        means = vae.guide_means(x)
    for layer, mean in enumerate(means, start=1):
        np.testing.assert_allclose(codes[f"z{layer}_mean"], mean.numpy(), rtol=1e-5, atol=1e-6)


def test_encode_uses_running_statistics_and_leaves_the_mode_and_rng(x):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2]).train()
    state = torch.get_rng_state()
    codes = encode(vae, x[:1])  # one point: batch statistics would be degenerate
    assert vae.training and torch.equal(state, torch.get_rng_state())  # no draw was made
    np.testing.assert_allclose(codes["z2_mean"], encode(vae, x)["z2_mean"][:1], rtol=1e-5, atol=1e-6)


def test_save_codes_adds_the_suffix(tmp_path):
    path = save_codes({"z_mean": np.zeros((2, 3), np.float32), "class_names": np.asarray(["a", "b"])},
                      tmp_path / "codes")
    assert path == tmp_path / "codes.npz"
    with np.load(path, allow_pickle=False) as loaded:
        assert loaded["z_mean"].shape == (2, 3) and list(loaded["class_names"]) == ["a", "b"]
