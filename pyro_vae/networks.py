"""Encoder and decoder networks, chosen by name.

Convention (any ``nn.Module`` that follows it can be passed instead of a name):

* an **encoder** maps ``x`` of shape ``(*batch, *data_shape)`` to a tensor of shape
  ``(*batch, 2, latent_dim)``: the guide's mean and log-variance stacked on dim ``-2``;
* a **decoder** maps ``z`` of shape ``(*batch, latent_dim)`` to the likelihood's
  parameters, a tensor of shape ``(*batch, *likelihood.param_shape)``.

Builders receive ``in_shape`` and ``out_shape`` from the library, so the output head
always matches the latent size and the chosen likelihood.
"""

import math

import torch.nn as nn

from .errors import ConfigError
from .registry import Registry, suggest

NETWORKS = Registry("network")

ACTIVATIONS = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def make_activation(name):
    """The activation module called ``name``."""
    if name not in ACTIVATIONS:
        raise ConfigError(
            f"Unknown activation '{name}'.{suggest(name, ACTIVATIONS)} "
            f"Valid activations: {', '.join(sorted(ACTIVATIONS))}."
        )
    return ACTIVATIONS[name]()


@NETWORKS.register("mlp")
class MLP(nn.Module):
    """Fully connected network: flatten ``in_shape``, hidden layers, linear head to ``out_shape``.

    Leading batch dimensions are kept, so a decoder applied to ``z`` of shape
    ``(particles, batch, latent_dim)`` returns ``(particles, batch, *out_shape)``.
    """

    def __init__(self, in_shape, out_shape, hidden=(400,), activation="relu"):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        widths = [math.prod(self.in_shape), *_check_widths(hidden)]
        layers = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), make_activation(activation)]
        layers.append(nn.Linear(widths[-1], math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, inputs):
        batch_shape = inputs.shape[: inputs.dim() - len(self.in_shape)]
        flat = inputs.reshape(*batch_shape, -1)
        return self.net(flat).reshape(*batch_shape, *self.out_shape)


def _check_widths(hidden):
    if isinstance(hidden, int):
        hidden = [hidden]
    widths = list(hidden)
    if not all(isinstance(w, int) and w > 0 for w in widths):
        raise ConfigError(f"Hidden widths must be positive integers, got {hidden!r}.")
    return widths


def build_network(spec, in_shape, out_shape):
    """An ``nn.Module`` from a name, a ``{"name": ..., **options}`` spec, or a module as is."""
    if isinstance(spec, nn.Module):
        return spec
    return NETWORKS.build(spec, in_shape=tuple(in_shape), out_shape=tuple(out_shape))
