"""Binarisation and dequantisation: per training batch, as one fixed (seeded) draw, or at load time."""

import math

import numpy as np
import torch

from .checks import check_int


def binarize_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw per pixel of ``x`` (probabilities in ``[0, 1]``), on x's device.

    For dynamic binarisation: call once per training batch. ``generator``, if given, must
    be on the same device as ``x``.
    """
    return torch.bernoulli(x, generator=generator)


def binarize_fixed(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw per pixel of ``x``, determined by ``seed`` (same on every call).

    The uniform noise is drawn on the CPU from a generator seeded with ``seed``, so the
    result does not depend on x's device; it is returned on x's device with x's dtype.
    """
    noise = _fixed_noise(x, seed, "binarize_fixed")
    return (noise < x.detach().to("cpu", torch.float32)).to(device=x.device, dtype=x.dtype)


def dequantize_batch(x: torch.Tensor, generator: torch.Generator | None = None,
                     levels: int = 256) -> torch.Tensor:
    """Uniform dequantisation of data on ``levels`` L grey levels, ``x = k / (L − 1)``:
    ``(k + u) / L``, ``u ~ U[0, 1)`` (8-bit data: L = 256; ``digits``: L = 17).

    For ``dequantize: true``: call once per training batch; values lie strictly inside ``(0, 1)``.
    ``generator``, if given, must be on the same device as ``x``.
    """
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _dequantize(x, noise, levels)


def dequantize_fixed(x: torch.Tensor, seed: int, levels: int = 256) -> torch.Tensor:
    """:func:`dequantize_batch` with noise determined by ``seed`` (drawn on the CPU, as
    :func:`binarize_fixed`), for evaluation."""
    noise = _fixed_noise(x, seed, "dequantize_fixed")
    return _dequantize(x, noise.to(device=x.device, dtype=x.dtype), levels)


def _dequantize(x: torch.Tensor, noise: torch.Tensor, levels: int) -> torch.Tensor:
    """(k + u)/L, kept strictly inside (0, 1): u = 0 and float rounding near 1 would give
    exact 0 or 1, outside the support of likelihoods such as the Beta."""
    eps = torch.finfo(x.dtype).eps
    return ((torch.round(x * (levels - 1)) + noise) / levels).clamp_(eps, 1 - eps)


def bits_per_dim(log_px: float, info: dict) -> float | None:
    """Bits per dimension of a mean log-likelihood ``log_px`` (nats per data point) of the data
    described by ``info`` (a :class:`Splits`' ``info``), or ``None`` where it is not a
    discrete likelihood.

    With D = ∏ data_shape: binarised data (a probability of D bits) give
    −log p(x) / (D ln 2). Dequantised data (k + u)/L give a density on [0, 1]^D whose
    expectation over u bounds the probability of the levels k: log P(k) ≥
    E_u[log p((k + u)/L)] − D log L, so −log p(x) / (D ln 2) + log₂ L bits per dimension
    (an upper bound on the discrete model's). Grey levels scored by a continuous density
    (``binarize: none`` without ``dequantize``) have no such reading: ``None``.
    """
    size = math.prod(int(s) for s in info["data_shape"])
    nats = -float(log_px) / (size * math.log(2))
    if info.get("dequantize") in (True, "fixed"):
        return nats + math.log2(info.get("levels", 256))
    if info.get("binarize") not in (None, "none"):
        return nats
    return None


def _fixed_noise(x: torch.Tensor, seed: int, what: str) -> torch.Tensor:
    """Uniform float32 noise of x's shape on the CPU, determined by ``seed``."""
    seed = check_int("seed", seed, minimum=0, what=what)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=generator, dtype=torch.float32)


def apply_binarize(x: torch.Tensor, mode: str, seed: int, stream: int = 0) -> torch.Tensor:
    """Binarise at load time; a static draw uses sub-stream ``stream`` of ``seed``."""
    if mode == "static":
        return binarize_fixed(x, derive_seed(seed, stream))
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    return x  # "dynamic" and "none" keep grey levels


def derive_seed(seed: int, stream: int) -> int:
    """An independent seed for sub-stream ``stream`` of ``seed`` (stable across runs)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)
