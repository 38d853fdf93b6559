r"""Pareto :math:`\hat k` of importance weights: the PSIS reliability diagnostic.

PSIS (Vehtari et al. 2024) fits a generalised Pareto distribution to the
:math:`M = \lceil\min(K/5, 3\sqrt K)\rceil` largest of :math:`K` importance weights; the
fitted shape :math:`\hat k` says how heavy their tail is. Estimates from weights with
:math:`\hat k` above :func:`khat_threshold` are unreliable. :func:`psis_khat` computes
:math:`\hat k` from all the weights (through ArviZ when installed);
:func:`khat_from_top` from only the :math:`M + 1` largest, which is all that
:func:`pyro_vae.marginal.log_likelihood` keeps per point while it streams over samples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .errors import PyroVAEError

__all__ = ["khat_threshold", "psis_khat", "khat_from_top", "kept_top", "tail_length", "MIN_TAIL"]

MIN_TAIL = 5  # the GPD fit needs at least five tail draws (as in ArviZ)
_GPD_BLOCK_ELEMENTS = 2**20  # bound on the (rows, grid, tail) array of one vectorised GPD fit


def khat_threshold(num_samples: int) -> float:
    r"""Sample-size dependent :math:`\hat k` threshold :math:`\min(1 - 1/\log_{10} K, 0.7)`.

    Below it the PSIS estimate is reliable (Vehtari et al. 2024, sec. 3.2.3). Returns
    ``-inf`` for :math:`K = 1`, where no threshold can be met.
    """
    if num_samples <= 1:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)



def tail_length(num_samples: int) -> int:
    r"""PSIS tail length :math:`M = \lceil \min(K/5,\ 3\sqrt{K}) \rceil` (ArviZ < 1, r_eff=1).

    ArviZ 0.x ``psislw`` takes ``cutoff_ind = -ceil(min(S / 5, 3 * sqrt(S / reff))) - 1``;
    the same float expression is used here so that the tails agree exactly.
    """
    return int(np.ceil(min(num_samples / 5.0, 3 * (num_samples / 1.0) ** 0.5)))


def kept_top(num_samples: int) -> int:
    """How many of the largest log weights per point the streaming pass keeps: M + 1."""
    return min(tail_length(num_samples) + 1, num_samples)


def _gpd_khat(y: np.ndarray) -> np.ndarray:
    r"""Zhang & Stephens (2009) empirical-Bayes GPD shape, row-wise, with the PSIS prior.

    ``y`` has shape ``(R, n)``: positive exceedances sorted ascending. On a grid of
    :math:`m = 30 + \lfloor\sqrt n\rfloor` values
    :math:`\theta_j = 1/y_{(n)} + (1 - \sqrt{m/(j - 1/2)}) / (3\, y_{(\lfloor n/4 + 1/2
    \rfloor)})`, the profile log-likelihood is
    :math:`\ell(\theta) = n(\log(-\theta/k(\theta)) - k(\theta) - 1)` with
    :math:`k(\theta) = \frac1n\sum_i \log(1 - \theta y_i)`. The posterior mean
    :math:`\hat\theta = \sum_j \theta_j\, \mathrm{softmax}(\ell)_j` (weights below
    :math:`10\epsilon` dropped) gives :math:`\hat k = k(\hat\theta)`, shrunk towards 0.5 by the
    weakly informative prior of PSIS: :math:`(n \hat k + 10 \cdot 0.5) / (n + 10)`.
    Returns :math:`\hat k` in the usual sign convention (positive = heavy tail).
    """
    rows, n = y.shape
    m = 30 + int(n**0.5)
    grid = 1.0 - np.sqrt(m / (np.arange(1, m + 1, dtype=np.float64) - 0.5))
    out = np.empty(rows, dtype=np.float64)
    block = max(1, _GPD_BLOCK_ELEMENTS // (m * n))  # memory independent of K
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, rows, block):
            yb = y[start : start + block]
            quartile = yb[:, int(n / 4 + 0.5) - 1]
            theta = grid[None, :] / (3.0 * quartile[:, None]) + 1.0 / yb[:, -1:]
            k = np.log1p(-theta[:, :, None] * yb[:, None, :]).mean(axis=-1)
            loglik = n * (np.log(-theta / k) - k - 1.0)
            loglik = np.where(np.isnan(loglik), -np.inf, loglik)
            loglik -= loglik.max(axis=1, keepdims=True)
            w = np.exp(loglik)
            w /= w.sum(axis=1, keepdims=True)
            w = np.where(w >= 10 * np.finfo(np.float64).eps, w, 0.0)
            w /= w.sum(axis=1, keepdims=True)
            theta_hat = (w * theta).sum(axis=1)
            k_hat = np.log1p(-theta_hat[:, None] * yb).mean(axis=1)
            out[start : start + block] = (n * k_hat + 10 * 0.5) / (n + 10)
    return out


def khat_from_top(top: np.ndarray, num_samples: int) -> np.ndarray:
    r"""Pareto :math:`\hat k` per row from its largest log weights.

    ``top`` has shape ``(R, L)``, each row sorted in decreasing order and holding (at least)
    the :math:`M + 1` largest of :math:`K` = ``num_samples`` log weights. As in PSIS: with
    :math:`\ell_{\max}` the largest and :math:`c = \max(\ell_{(M+1)} - \ell_{\max},
    \log \mathrm{tiny})` the cutoff, the tail is the weights with
    :math:`\ell - \ell_{\max} > c` (at most :math:`M`) and the GPD is fitted to
    :math:`e^{\ell - \ell_{\max}} - e^{c}`. Fewer than five tail weights give ``inf``
    (ArviZ's convention; always the case for ``K <= 20``), except when that is caused by
    ties at the top (the cutoff was not clamped): the weights are then numerically bounded
    and ``-inf`` is returned. Rows whose weights are all zero (``-inf``) give NaN.
    """
    top = np.asarray(top, dtype=np.float64)
    rows = top.shape[0]
    m_tail = tail_length(num_samples)
    khat = np.full(rows, np.inf)
    if m_tail < MIN_TAIL or top.shape[1] < m_tail + 1:
        khat[~np.isfinite(top[:, 0])] = np.nan
        return khat
    top = top[:, : m_tail + 1]
    top_max = top[:, :1]
    dead = ~np.isfinite(top_max[:, 0])
    with np.errstate(invalid="ignore"):
        rel = top - np.where(dead[:, None], 0.0, top_max)
    log_tiny = np.log(np.finfo(np.float64).tiny)
    raw_cut = rel[:, m_tail]
    clamped = ~(raw_cut >= log_tiny)  # also catches -inf
    cut = np.maximum(raw_cut, log_tiny)
    in_tail = rel[:, :m_tail] > cut[:, None]
    tail_len = in_tail.sum(axis=1)
    khat[(tail_len < MIN_TAIL) & ~clamped] = -np.inf
    khat[dead] = np.nan
    fit = (tail_len >= MIN_TAIL) & ~dead
    for length in np.unique(tail_len[fit]):
        idx = np.nonzero(fit & (tail_len == length))[0]
        # the tail is the first `length` entries (rows are sorted decreasingly)
        tail = rel[idx, :length][:, ::-1]
        y = np.exp(tail) - np.exp(cut[idx])[:, None]
        khat[idx] = _gpd_khat(y)
    return khat


def _psis_khat_own(log_weights: np.ndarray) -> np.ndarray:
    """Own PSIS k-hat over the last axis (same rule as the streaming estimator)."""
    lw = np.asarray(log_weights, dtype=np.float64)
    shape = lw.shape[:-1]
    flat = lw.reshape(-1, lw.shape[-1])
    top = -np.sort(-flat, axis=1)[:, : kept_top(flat.shape[1])]
    return khat_from_top(top, flat.shape[1]).reshape(shape)


def _arviz_backend() -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
    """The installed ArviZ PSIS function as ``(name, f)`` with ``f(lw) -> khat``, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ 0.x warns about its refactor on import
        try:
            import arviz
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            arviz = None
        version = getattr(arviz, "__version__", "0")
        try:
            major = int(str(version).split(".")[0])
        except ValueError:
            major = 0
        if arviz is not None and major < 1 and hasattr(arviz, "psislw"):
            # ArviZ 0.x: psislw(log_weights, reff=1.0) -> (smoothed lw, khat), samples last.
            def _az0(lw: np.ndarray) -> np.ndarray:
                return np.asarray(arviz.psislw(lw, reff=1.0)[1], dtype=np.float64)

            return "arviz.psislw", _az0
        try:
            from arviz_stats.base import array_stats
        except Exception:  # noqa: BLE001
            return None

    # ArviZ >= 1.0 (arviz-stats): array_stats.psislw(ary, r_eff=1, axis=-1) takes the
    # log-likelihood and negates it internally; check the orientation on the output.
    def _az1(lw: np.ndarray) -> np.ndarray:
        smoothed, khat = array_stats.psislw(-lw, r_eff=1.0, axis=-1)
        if not np.all(np.argmax(smoothed, axis=-1) == np.argmax(lw, axis=-1)):
            smoothed, khat = array_stats.psislw(lw, r_eff=1.0, axis=-1)
        return np.asarray(khat, dtype=np.float64)

    return "arviz_stats.base.array_stats.psislw", _az1


def psis_khat(log_weights: Any, use_arviz: bool = True) -> np.ndarray:
    r"""Pareto :math:`\hat k` of importance weights, over the last axis of ``log_weights``.

    With ``use_arviz`` the installed ArviZ is used: ``arviz.psislw(lw, reff=1)`` on
    ArviZ 0.x, ``arviz_stats.base.array_stats.psislw`` on ArviZ >= 1.0 (whose tail length is
    :math:`\lfloor 3\sqrt K\rfloor` rather than :math:`\lceil\cdot\rceil`, so values differ
    slightly). If ArviZ is missing or raises (e.g. arviz-stats rejects tied tails), the
    own implementation is used: the same tail rule and GPD fit as ArviZ 0.x (see
    :func:`khat_from_top`), which is what :func:`log_likelihood` reports.
    """
    lw = np.asarray(
        log_weights.detach().cpu().double() if torch.is_tensor(log_weights) else log_weights,
        dtype=np.float64,
    )
    if lw.ndim == 0 or lw.shape[-1] == 0:
        raise PyroVAEError("psis_khat needs at least one log weight along the last axis")
    if use_arviz:
        backend = _arviz_backend()
        if backend is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return backend[1](lw.copy())
            except Exception:  # noqa: BLE001 - fall back to the own implementation
                pass
    return _psis_khat_own(lw)
