"""Matplotlib figures of a VAE. Every function returns a ``Figure``; nothing opens a window."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120


def save_figure(figure, path):
    """Save ``figure`` as PNG (creating folders) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def as_images(x, data_shape):
    """``(n, *data_shape)`` -> ``(n, H, W)`` or ``(n, H, W, 3)`` numpy images, or ``None``.

    Image-like shapes are ``(H, W)``, ``(1|3, H, W)`` and flat vectors of a square length.
    """
    x = x.detach().float().cpu()
    if len(data_shape) == 1 and math.isqrt(data_shape[0]) ** 2 == data_shape[0]:
        side = math.isqrt(data_shape[0])
        return x.reshape(-1, side, side).numpy()
    if len(data_shape) == 2:
        return x.numpy()
    if len(data_shape) == 3 and data_shape[0] == 1:
        return x[:, 0].numpy()
    if len(data_shape) == 3 and data_shape[0] == 3:
        return x.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    return None


def _show_row(axes, images, vectors, label):
    for i, ax in enumerate(axes):
        if images is not None:
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.plot(vectors[i].reshape(-1), lw=0.8)
            ax.tick_params(labelsize=6)
    axes[0].set_ylabel(label, fontsize=9)


def plot_reconstructions_and_samples(vae, x, num_samples=None):
    """Inputs (top row), their reconstructions E[x|z=μ(x)] (middle) and prior samples E[x|z].

    Non-image data are drawn as line plots of each vector.
    """
    n = len(x)
    num_samples = num_samples or n
    rows = [
        ("input", x),
        ("reconstruction", vae.reconstruct(x)),
        ("sample", vae.sample(num_samples)),
    ]
    figure, axes = plt.subplots(3, max(n, num_samples), figsize=(1.1 * max(n, num_samples), 3.6),
                                squeeze=False)
    for row, (label, values) in enumerate(rows):
        values = values.detach().float().cpu()
        _show_row(axes[row, : len(values)], as_images(values, vae.data_shape), values.numpy(), label)
        for ax in axes[row, len(values):]:
            ax.axis("off")
    figure.suptitle("Inputs, reconstructions and samples from the prior", fontsize=10)
    figure.tight_layout()
    return figure


def plot_marginal_diagnostics(result):
    """Histograms of per-point log p̂(x), Pareto k̂ (with its threshold) and ESS / K."""
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    log_px = result.log_px.cpu().numpy()
    khat = result.khat.cpu().numpy()
    ess = result.ess.cpu().numpy() / result.num_samples
    axes[0].hist(log_px, bins=30, color="C0")
    axes[0].set_xlabel("log p̂(x) [nats]")
    axes[1].hist(khat[np.isfinite(khat)], bins=30, color="C1")
    axes[1].axvline(result.khat_threshold, color="k", ls="--", label=f"threshold {result.khat_threshold:.2f}")
    axes[1].set_xlabel("Pareto k̂")
    axes[1].legend(fontsize=8)
    axes[2].hist(ess, bins=30, color="C2")
    axes[2].set_xlabel("ESS / K")
    for ax in axes:
        ax.set_ylabel("data points")
    figure.suptitle(f"Importance-sampling diagnostics, K = {result.num_samples}", fontsize=10)
    figure.tight_layout()
    return figure


def plot_estimate_vs_samples(num_samples, means, stderrs, elbo=None):
    """Mean log p̂(x) over the data against K (log axis), with ±2 standard errors."""
    figure, ax = plt.subplots(figsize=(4.5, 3.2))
    means, stderrs = np.asarray(means), np.asarray(stderrs)
    ax.errorbar(num_samples, means, yerr=2 * stderrs, marker="o", capsize=3, label="log p̂(x)")
    if elbo is not None:
        ax.axhline(elbo, color="C3", ls=":", label="ELBO")
    ax.set_xscale("log")
    ax.set_xlabel("importance samples K")
    ax.set_ylabel("mean log p̂(x) [nats]")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


__all__ = [
    "as_images",
    "plot_estimate_vs_samples",
    "plot_marginal_diagnostics",
    "plot_reconstructions_and_samples",
    "save_figure",
]
