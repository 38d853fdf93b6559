import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from checks import assert_trains_and_evaluates

from pyro_vae import VAE, ConfigError
from pyro_vae.data import binarize_fixed, load_dataset
from pyro_vae.networks import NETWORKS, ConvDecoder, ConvEncoder, build_network

pytestmark = pytest.mark.filterwarnings("ignore::pyro_vae.marginal.ImportanceSamplingWarning")

IMAGES = [(1, 28, 28), (3, 64, 64)]


@pytest.mark.parametrize("image", IMAGES)
def test_conv_encoder_keeps_particle_dims(image):
    encoder = NETWORKS.build("conv", in_shape=image, out_shape=(2, 6))
    assert isinstance(encoder, ConvEncoder)
    assert encoder(torch.rand(3, 5, *image)).shape == (3, 5, 2, 6)
    assert encoder(torch.rand(*image)).shape == (2, 6)


@pytest.mark.parametrize("params", [(), (2,), (3, 4)])
@pytest.mark.parametrize("image", IMAGES)
def test_conv_decoder_outputs_stacked_parameters(image, params):
    decoder = NETWORKS.build("conv", in_shape=(6,), out_shape=(*params, *image))
    assert isinstance(decoder, ConvDecoder)
    assert decoder(torch.randn(3, 5, 6)).shape == (3, 5, *params, *image)
    assert decoder.net[-1].out_channels == math.prod(params) * image[0]


@pytest.mark.parametrize("image, layers", [((1, 28, 28), 2), ((3, 64, 64), 4), ((1, 8, 8), 1)])
def test_default_depth_halves_down_to_at_least_4x4(image, layers):
    encoder = NETWORKS.build("conv", in_shape=image, out_shape=(2, 6))
    convs = [m for m in encoder.net if isinstance(m, nn.Conv2d)]
    assert len(convs) == layers
    feature_map = image[1] >> layers
    assert encoder.net[len(convs) * 2 + 1].in_features == convs[-1].out_channels * feature_map**2


def test_likelihood_parameters_reach_a_conv_decoder():
    vae = VAE(data_shape=(1, 28, 28), latent_dim=4, likelihood={"name": "gaussian", "scale": "predicted"},
              encoder="conv", decoder={"name": "conv", "channels": [16, 16], "hidden": 64})
    d = vae.likelihood(vae.decoder(torch.randn(3, 5, 4)))
    assert d.batch_shape == (3, 5) and d.event_shape == (1, 28, 28)


@pytest.mark.parametrize(
    "in_shape, out_shape, options, match",
    [
        ((784,), (2, 4), {}, r"images shaped \(C, H, W\)"),
        ((4,), (2, 4), {}, "use 'mlp'"),
        ((1, 27, 27), (2, 4), {}, "cannot halve 27x27"),
        ((1, 28, 28), (2, 4), {"channels": [8, 8, 8]}, "divisible"),
        ((4,), (1, 30, 30), {"channels": [8, 8]}, "divisible by 4, but the images are 30x30"),
        ((1, 28, 28), (2, 4), {"hidden": [64, 64]}, "hidden"),
        ((1, 28, 28), (2, 4), {"kernel": 3}, "Valid options"),
    ],
)
def test_unsupported_shapes_and_options_are_config_errors(in_shape, out_shape, options, match):
    with pytest.raises(ConfigError, match=match):
        NETWORKS.build({"name": "conv", **options}, in_shape=in_shape, out_shape=out_shape)


def test_mlp_keeps_particle_dims():
    decoder = NETWORKS.build("mlp", in_shape=(6,), out_shape=(2, 1, 8, 8))
    assert decoder(torch.randn(3, 5, 6)).shape == (3, 5, 2, 1, 8, 8)


def test_user_modules_pass_through():
    module = nn.Linear(3, 3)
    assert build_network(module, in_shape=(3,), out_shape=(3,)) is module


def test_conv_vae_trains_on_28x28_and_evaluates():
    digits = load_dataset({"name": "digits", "binarize": "none"}).train[:64]
    x = binarize_fixed(F.interpolate(digits, size=(28, 28), mode="bilinear"), seed=0)
    conv = {"name": "conv", "channels": [16, 32], "hidden": 64}
    vae = VAE(data_shape=(1, 28, 28), latent_dim=4, encoder=conv, decoder=conv)
    assert_trains_and_evaluates(vae, x, lr=3e-3, points=8)
