"""The ``conv-burgess`` preset: the published architecture, and the initialisation that keeps it training."""

import pytest
import torch
import torch.nn as nn

from pyro_vae import ConfigError
from pyro_vae.data.sprites import sprites
from pyro_vae.networks import NETWORKS


@pytest.fixture(scope="module")
def images():
    return sprites(num_train=128, num_val=0, num_test=0).train


def test_conv_burgess_is_the_published_network():
    encoder = NETWORKS.build("conv-burgess", in_shape=(1, 64, 64), out_shape=(2, 10))
    decoder = NETWORKS.build("conv-burgess", in_shape=(10,), out_shape=(1, 64, 64))
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (4, 4), (2, 2))] * 4
    assert [m.out_features for m in encoder.modules() if isinstance(m, nn.Linear)] == [256, 256, 20]
    assert [m.out_features for m in decoder.modules() if isinstance(m, nn.Linear)] == [256, 256, 512]
    assert [m.out_channels for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)] == [32, 32, 32, 1]
    assert decoder(torch.zeros(3, 10)).shape == (3, 1, 64, 64)
    assert all(not m.bias.detach().any() for m in encoder.modules() if isinstance(m, nn.Linear))
    with pytest.raises(ConfigError, match="conv-burgess"):
        NETWORKS.build("conv-burgess", in_shape=(784,), out_shape=(2, 10))


def spread_of_means(spec, images):
    torch.manual_seed(0)
    encoder = NETWORKS.build(spec, in_shape=(1, 64, 64), out_shape=(2, 10))
    with torch.no_grad():
        return encoder(images)[:, 0].std(0).mean().item()


def test_he_initialisation_lets_the_codes_differ_between_images(images):
    """At the start, PyTorch's default init leaves the encoder means nearly equal for all images
    (so z says nothing about x and the decoder learns the mean image); He init does not."""
    assert spread_of_means("conv", images) < 0.01
    assert spread_of_means("conv-burgess", images) > 0.05


@pytest.mark.slow
def test_conv_burgess_does_not_collapse_on_sprites_at_a_short_budget(tmp_path):
    from pyro_vae import train

    config = {"data": {"name": "sprites", "num_train": 2000, "num_val": 300, "num_test": 10},
              "model": {"latent_dim": 10, "encoder": "conv-burgess", "decoder": "conv-burgess"},
              "optim": {"lr": 1e-3}, "train": {"epochs": 2, "batch_size": 64}}
    train(config, tmp_path / "run", progress=False)
    from pyro_vae.rundir import RunDir

    record = RunDir(tmp_path / "run").read_metrics()[-1]
    assert record["val_kl"]["z"] > 1 and record["active_units"]["z"] >= 2  # collapsed `conv`: 0.0004 and 0
