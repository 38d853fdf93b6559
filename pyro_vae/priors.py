"""Priors p(z) over one latent layer, chosen by name.

A prior is an ``nn.Module`` whose ``forward()`` returns a Pyro distribution with
``batch_shape == ()`` and ``event_shape == (latent_dim,)``; the model's data plate
broadcasts it over the batch. Constants are buffers, so ``.to(device)`` moves them.
"""

import pyro.distributions as dist
import torch
import torch.nn as nn

from .registry import Registry

PRIORS = Registry("prior")


@PRIORS.register("standard-normal")
class StandardNormal(nn.Module):
    """p(z) = N(0, I). Allows the analytic KL of ``elbo-analytic``."""

    analytic_kl = True

    def __init__(self, latent_dim):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self):
        return dist.Normal(self.loc, self.scale).to_event(1)


def build_prior(spec, latent_dim):
    """A prior module from a name, a spec mapping, or a module as is."""
    if isinstance(spec, nn.Module):
        return spec
    return PRIORS.build(spec, latent_dim=latent_dim)
