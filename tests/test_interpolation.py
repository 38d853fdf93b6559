"""pyro_vae.interpolation against closed forms."""

import math

import pytest
import torch

from pyro_vae import VAE
from pyro_vae.errors import ConfigError
from pyro_vae.interpolation import interpolate, lerp, slerp
from pyro_vae.plots import plot_interpolation


def test_lerp_is_the_straight_line():
    z0, z1 = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])
    path = lerp(z0, z1, 5)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    torch.testing.assert_close(path[2], (z0 + z1) / 2)


def test_slerp_of_orthogonal_unit_vectors_is_the_quarter_circle():
    e0, e1 = torch.eye(2, dtype=torch.float64)
    path = slerp(e0, e1, 7)
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    expected = torch.stack([torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)], 1)
    torch.testing.assert_close(path, expected)


def test_slerp_keeps_the_norm_between_the_ends_and_falls_back_to_lerp():
    z0 = torch.tensor([2.0, 0.0, 0.0])
    z1 = torch.tensor([0.0, 2.0, 2.0]) / math.sqrt(2)  # the same norm, 2
    norms = slerp(z0, z1, 9).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((9,), 2.0))
    assert lerp(z0, z1, 9).norm(dim=1)[4] < 1.5  # the linear midpoint falls inside the sphere
    torch.testing.assert_close(slerp(z0, 3 * z0, 4), lerp(z0, 3 * z0, 4))  # parallel ends


@pytest.mark.parametrize("latent_dim", [3, [4, 2]])
def test_interpolate_decodes_the_path_between_the_codes(latent_dim):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=latent_dim).eval()  # batch norm: running statistics
    x = torch.bernoulli(torch.full((2, 1, 8, 8), 0.5), generator=torch.Generator().manual_seed(0))
    codes, images = interpolate(vae, x[0], x[1], steps=5, method="spherical")
    top = vae.encode(x)[0].detach()
    torch.testing.assert_close(codes[0], top[0])
    torch.testing.assert_close(codes[-1], top[1])
    torch.testing.assert_close(images, vae.decode_top(codes, mean=True, sample_layers=False))
    assert images.shape == (5, 1, 8, 8)
    with pytest.raises(ConfigError, match="method"):
        interpolate(vae, x[0], x[1], method="cubic")
    with pytest.raises(ConfigError, match="two points of shape"):
        interpolate(vae, x[0].flatten(), x[1])
    figure = plot_interpolation(vae, x[0], x[1], steps=4)
    assert len(figure.axes) == 2 * (4 + 2)
