"""Shared assertions for the catalogue tests (imported by the test modules next to it)."""

import math

import numpy as np
import torch

import pyro_vae
from pyro_vae.objectives import OBJECTIVES


def assert_trains_and_evaluates(vae, x, lr, objective="elbo", points=16, steps=30):
    """A few Adam steps give finite, decreasing losses, and log p(x) is finite per point."""
    elbo = OBJECTIVES.build(objective)
    optimiser = torch.optim.Adam(vae.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        losses.append(elbo.loss_and_grads(vae.model, vae.guide, x))
        optimiser.step()
    assert all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    log_px = pyro_vae.log_likelihood(vae.model, vae.guide, x[:points], num_samples=50).log_px
    assert log_px.shape == (min(points, len(x)),) and torch.isfinite(log_px).all()
