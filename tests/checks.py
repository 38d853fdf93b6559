"""Shared assertions and fixtures-on-disk of the tests (imported by the test modules next to it)."""

import gzip
import math
import struct
from pathlib import Path

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


def write_idx(path, array, gz=False):
    """Write uint8 images (magic 2051) or labels (magic 2049) in the big-endian IDX format."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 2051 if array.ndim == 3 else 2049
    payload = struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()
    path = Path(f"{path}.gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)


def write_fake_mnist(root, n_train=120, n_test=40, seed=0):
    """A small stand-in for MNIST in torchvision's layout (``root/MNIST/raw``): blurry random
    strokes, so that a VAE has something to learn; returns ``root``."""
    rng = np.random.RandomState(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28))
        rows, cols = rng.randint(6, 22, size=(2, n))
        for i in range(n):
            images[i, rows[i] - 4:rows[i] + 4, 4:24] = 255
            images[i, 4:24, cols[i] - 2:cols[i] + 2] = 255
        write_idx(Path(root) / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(Path(root) / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, size=n))
    return root
