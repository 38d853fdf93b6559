"""Matplotlib figures of a VAE and of a run's records: pure functions (module, tensors,
records -> ``matplotlib.figure.Figure``). They build figures without pyplot, so nothing
opens a window, no global figure state is kept and the user's backend is never changed; a
notebook shows the returned figure as usual. :mod:`pyro_vae.figures` writes the figures
of a run directory.

Figures of a model (``vae``, data ``x`` of shape ``(N, *data_shape)``):

* :func:`plot_reconstructions`: inputs with their reconstructions E[x | z = μ(x)] below;
* :func:`plot_samples`: a grid of samples from the prior, E[x|z] or x ~ p(x|z);
* :func:`plot_traversals`: one row per dimension of the **top** latent layer, sorted by its
  KL (most informative first), moving z_d across the prior from the posterior mean of
  one input and decoding along the path of means;
* :func:`plot_latent_space`: posterior means of the top layer in 2-D (PCA above two
  dimensions), coloured by label;
* :func:`plot_kl_per_dimension`: average KL(q ‖ p) per latent dimension, one panel per layer;
* :func:`plot_reconstructions_and_samples`: inputs, reconstructions and samples in three rows;
* :func:`plot_interpolation`: decoded linear and spherical paths between two inputs.

Figures of a run's records: :func:`plot_training_curves` (the records of ``metrics.jsonl``)
and :func:`plot_marginal_diagnostics` / :func:`plot_estimate_vs_samples` (importance sampling).

Data of image shape (``(H, W)``, ``(1|3, H, W)`` or a flat square vector of at least 8×8,
see :func:`as_images`) are drawn as images; other data as line plots of each vector.
"""

import math

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .atomic import atomic_write
from .diagnostics import ACTIVE_UNIT_THRESHOLD, dimension_scores, posterior_means

DPI = 120
MAX_FIGURE_INCHES = 16.0
"""Image grids are scaled down to at most this width and height (at :data:`DPI`)."""


def save_figure(figure, path):
    """Save ``figure`` as a PNG file (atomically, creating folders); returns the path."""
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def figure_to_rgb(figure):
    """The pixels of ``figure`` as an ``(H, W, 3)`` uint8 array (drawn with Agg; the backend untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _subplots(nrows=1, ncols=1, figsize=None, **options):
    """``(figure, axes)`` as ``pyplot.subplots`` gives them, without pyplot."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, **options)


def as_images(x, data_shape):
    """``(n, *data_shape)`` -> ``(n, H, W)`` or ``(n, H, W, 3)`` numpy images, or ``None``.

    Image-like shapes are ``(H, W)``, ``(1|3, H, W)`` and flat vectors of a square length
    of at least 64 (8×8); anything else (e.g. ``(10,)``) gives ``None``.
    """
    x = x.detach().float().cpu()
    if len(data_shape) == 1 and data_shape[0] >= 64 and math.isqrt(data_shape[0]) ** 2 == data_shape[0]:
        side = math.isqrt(data_shape[0])
        return x.reshape(-1, side, side).numpy()
    if len(data_shape) == 2:
        return x.numpy()
    if len(data_shape) == 3 and data_shape[0] == 1:
        return x[:, 0].numpy()
    if len(data_shape) == 3 and data_shape[0] == 3:
        return x.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    return None


# --------------------------------------------------------------------------------------
# Helpers: image grids, decoding, latent statistics


def _value_range(images):
    """(0, 1) for data in the unit interval, else the data's own range."""
    lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
    if lo >= 0 and hi <= 1:
        return 0.0, 1.0
    return lo, hi if hi > lo else lo + 1


SEPARATOR = (0.82, 0.82, 0.86)
"""Colour of the lines between the images of a grid (empty cells are white)."""


def _to_rgb(images, vmin, vmax):
    """Grey ``(n, H, W)`` images scaled from ``[vmin, vmax]`` (or RGB ``(n, H, W, 3)``) as RGB in [0, 1];
    NaN images (padding) stay NaN."""
    if images.ndim == 4:
        return np.clip(images, 0, 1)
    grey = np.clip((images - vmin) / (vmax - vmin), 0, 1)
    return np.repeat(grey[..., None], 3, axis=-1)


def _montage(images, nrows, ncols, scale=1, pad=1):
    """Tile ``(n, H, W, 3)`` RGB images into one RGB array, each image enlarged ``scale`` times
    (nearest neighbour) and separated by ``pad`` pixels; cells without an image (or with a
    NaN image) are white."""
    n, h, w = images.shape[:3]
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    out = np.empty((nrows * (h + pad) - pad, ncols * (w + pad) - pad, 3), dtype=np.float32)
    out[:] = SEPARATOR
    for i in range(nrows * ncols):
        r, c = divmod(i, ncols)
        top, left = r * (h + pad), c * (w + pad)
        if i < n and not np.isnan(images[i]).all():
            out[top : top + h, left : left + w] = images[i]
        else:  # an empty cell: white, with the separators to its right and below
            out[top : top + h + pad, left : left + w + pad] = 1.0
    return out


def _grid_figure(images, nrows, ncols, cell_inches=None, extra=(0.0, 0.0)):
    """A figure with one axes showing ``images`` tiled in ``nrows`` × ``ncols``.

    Returns ``(figure, ax, (cell_height, cell_width, pad))``: the pitch of the cells and the
    width of the separators in the axes' data units (see :func:`_centres`).
    """
    h, w = images.shape[1:3]
    if cell_inches is None:
        cell_inches = float(np.clip(max(h, w) / 28, 0.55, 1.1))
    width, height = MAX_FIGURE_INCHES - extra[0], MAX_FIGURE_INCHES - extra[1]
    cell_inches = min(cell_inches, width / ncols, height / nrows)
    figure = Figure(figsize=(ncols * cell_inches + extra[0], nrows * cell_inches * h / w + extra[1]))
    ax = figure.add_axes((0, 0, 1, 1)) if extra == (0.0, 0.0) else figure.add_subplot()
    finite = images[np.isfinite(images)]
    vmin, vmax = _value_range(finite) if finite.size else (0.0, 1.0)
    scale = max(1, math.ceil(32 / max(h, w)))  # enlarge small images, for separators thinner than a pixel
    pad = max(1, scale // 2)
    ax.imshow(_montage(_to_rgb(images, vmin, vmax), nrows, ncols, scale, pad), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    return figure, ax, (h * scale + pad, w * scale + pad, pad)


def _centres(count, pitch, pad):
    """Data coordinates of the centres of ``count`` cells of a grid from :func:`_grid_figure`."""
    return [(i + 0.5) * pitch - 0.5 - pad / 2 for i in range(count)]


def _cpu(t):
    return t.detach().float().cpu()


def _is_standard_normal(vae):
    from .priors import StandardNormal

    return isinstance(vae.prior, StandardNormal)


# --------------------------------------------------------------------------------------
# Figures of a model


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
    figure, axes = _subplots(3, max(n, num_samples), figsize=(1.1 * max(n, num_samples), 3.6),
                                squeeze=False)
    for row, (label, values) in enumerate(rows):
        values = values.detach().float().cpu()
        _show_row(axes[row, : len(values)], as_images(values, vae.data_shape), values.numpy(), label)
        for ax in axes[row, len(values):]:
            ax.axis("off")
    figure.suptitle("Inputs, reconstructions and samples from the prior", fontsize=10)
    figure.tight_layout()
    return figure


def plot_interpolation(vae, x0, x1, steps=9):
    """The decoded linear (top row) and spherical (bottom row) interpolations from ``x0`` to
    ``x1`` in the top layer's latent space (:func:`pyro_vae.interpolation.interpolate`), with
    the two inputs at the ends."""
    from .interpolation import METHODS, interpolate

    rows = [(method, _cpu(interpolate(vae, x0, x1, steps, method)[1])) for method in METHODS]
    ends = _cpu(torch.stack([x0, x1]))
    ncols = steps + 2
    figure, axes = _subplots(len(rows), ncols, figsize=(0.9 * ncols, 1.1 * len(rows) + 0.5), squeeze=False)
    for row, (method, decoded) in enumerate(rows):
        values = torch.cat([ends[:1], decoded, ends[1:]])
        _show_row(axes[row], as_images(values, vae.data_shape), values.numpy(), method)
    for ax, label in ((axes[0, 0], "x₀"), (axes[0, -1], "x₁")):
        ax.set_title(label, fontsize=9)
    figure.suptitle("Interpolation in the latent space: E[x | z(t)], t = 0 … 1, inputs at the ends",
                    fontsize=10)
    figure.tight_layout()
    return figure


def _vector_grid(n, ncols, width=2.2, height=1.5):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    figure, axes = _subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.5),
                                squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return figure, axes.flat[:n]


def plot_reconstructions(vae, x, ncols=8):
    """Inputs with their reconstructions E[x | z_1 = μ_1(x)] (rows alternate input / reconstruction).

    Non-image data: one panel per point with the input and its reconstruction as lines.
    """
    x = x[: max(1, len(x))]
    recon = _cpu(vae.reconstruct(x))
    x = _cpu(x)
    n = len(x)
    ncols = min(ncols, n)
    inputs, outputs = as_images(x, vae.data_shape), as_images(recon, vae.data_shape)
    if inputs is None:
        figure, axes = _vector_grid(n, min(ncols, 4), width=2.8)
        for i, ax in enumerate(axes):
            ax.plot(x[i].reshape(-1).numpy(), color="0.3", lw=1.2, label="input")
            ax.plot(recon[i].reshape(-1).numpy(), color="C1", lw=1.2, ls="--", label="reconstruction")
            ax.tick_params(labelsize=7)
            ax.set_title(f"point {i}", fontsize=8)
        axes[0].legend(fontsize=7, loc="best")
        figure.suptitle("Inputs and reconstructions E[x | z = μ(x)]", fontsize=10)
        figure.tight_layout()
        return figure
    blocks = math.ceil(n / ncols)
    pairs = []
    for b in range(blocks):
        row_in, row_out = inputs[b * ncols : (b + 1) * ncols], outputs[b * ncols : (b + 1) * ncols]
        fill = np.full((ncols - len(row_in),) + inputs.shape[1:], np.nan, dtype=np.float32)
        pairs += [np.concatenate([row_in, fill]), np.concatenate([row_out, fill])]
    figure, ax, cell = _grid_figure(np.concatenate(pairs), 2 * blocks, ncols, extra=(1.0, 0.5))
    ax.set_yticks(_centres(2 * blocks, cell[0], cell[2]))
    ax.set_yticklabels(["input", "recon."] * blocks, fontsize=8)
    ax.tick_params(length=0)
    ax.set_title("Inputs and reconstructions E[x | z = μ(x)]", fontsize=10)
    return figure


def plot_samples(vae, num_samples=64, ncols=None, mean=True):
    """A grid of ``num_samples`` draws from the model: E[x|z] (``mean=True``) or x ~ p(x|z).

    Non-image data: the first vectors as lines and all of them as a heat map (rows = samples).
    """
    samples = _cpu(vae.sample(num_samples, mean=mean))
    what = "E[x | z]" if mean else "x ~ p(x | z)"
    images = as_images(samples, vae.data_shape)
    if images is None:
        flat = samples.reshape(num_samples, -1).numpy()
        figure, (left, right) = _subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
        shown = min(num_samples, 20)
        for i in range(shown):
            left.plot(flat[i], lw=0.9, alpha=0.8)
        left.set_xlabel("feature")
        left.set_ylabel("value")
        left.set_title(f"{shown} of {num_samples} samples", fontsize=9)
        mesh = right.imshow(flat, aspect="auto", interpolation="nearest", cmap="viridis")
        right.set_xlabel("feature")
        right.set_ylabel("sample")
        right.set_title(f"all {num_samples} samples", fontsize=9)
        figure.colorbar(mesh, ax=right)
        figure.suptitle(f"Samples {what}, z ~ p(z)", fontsize=10)
        figure.tight_layout()
        return figure
    ncols = ncols or math.ceil(math.sqrt(num_samples))
    nrows = math.ceil(num_samples / ncols)
    figure, ax, _ = _grid_figure(images, nrows, ncols, extra=(0.0, 0.4))
    ax.set_title(f"{num_samples} samples {what}, z ~ p(z)", fontsize=10)
    return figure


def traversal_values(vae, x, steps=9, span=3.0):
    """The values each top-layer dimension takes in a traversal: ``(d, steps)`` tensor.

    ``[−span, span]`` under a standard normal prior; otherwise the aggregate posterior's
    mean ± ``span`` standard deviations per dimension (estimated on ``x``).
    """
    d = vae.latent_dims[-1]
    grid = torch.linspace(-span, span, steps)
    if _is_standard_normal(vae):
        return grid.expand(d, steps).clone()
    with torch.no_grad():
        loc, logvar = zip(*(vae.encode(xb) for xb in x.split(1024)))
    loc, var = _cpu(torch.cat(loc)), _cpu(torch.cat(logvar)).exp()
    centre = loc.mean(0)
    scale = (loc.var(0, unbiased=False) + var.mean(0)).sqrt()
    return centre[:, None] + scale[:, None] * grid[None, :]


def plot_traversals(vae, x, index=0, steps=9, span=3.0, max_dims=None, scores=None):
    """Latent traversals of the top layer: one row per dimension, sorted by KL (largest first).

    Starting from the posterior mean μ(x[index]) of the top layer, dimension d is set to each
    of :func:`traversal_values` and decoded along the path of means
    (``vae.decode_top(z, sample_layers=False)``); the other dimensions keep their
    posterior-mean values. ``x`` (validation data) also
    ranks the dimensions (``scores``: precomputed ``(values, label)`` of
    :func:`dimension_scores` for the top layer). ``max_dims`` limits the rows.
    """
    top = vae.sites[-1]
    values, label = scores if scores is not None else dimension_scores(vae, x)[top]
    order = np.argsort(-np.asarray(values), kind="stable")[: max_dims or len(values)]
    grid = traversal_values(vae, x, steps, span)
    device = x.device
    with torch.no_grad():
        base = vae.encode(x[index : index + 1])[0][0]
        z = base.repeat(len(order), steps, 1)
        for row, dim in enumerate(order):
            z[row, :, dim] = grid[dim].to(device)
        decoded = _cpu(vae.decode_top(z.reshape(len(order) * steps, -1), sample_layers=False))
    short = "KL" if label.startswith("KL") else "var"
    row_labels = [f"{top}[{d}]  {short} {values[d]:.2f}" for d in order]
    images = as_images(decoded, vae.data_shape)
    layer = "top-layer " if len(vae.sites) > 1 else ""
    title = f"Traversals of the {layer}latent dimensions (sorted by {label.split(' [')[0]})"
    if images is None:
        cmap = matplotlib.colormaps["viridis"]
        flat = decoded.reshape(len(order), steps, -1).numpy()
        figure, axes = _vector_grid(len(order), 4, width=2.8, height=1.8)
        for row, ax in enumerate(axes):
            for s in range(steps):
                ax.plot(flat[row, s], color=cmap(s / max(steps - 1, 1)), lw=1.0)
            ax.set_title(row_labels[row], fontsize=8)
            ax.tick_params(labelsize=7)
        colours = ScalarMappable(cmap=cmap, norm=Normalize(-span, span))
        figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        unit = "z_d" if _is_standard_normal(vae) else "z_d (s.d. of the aggregate posterior)"
        figure.colorbar(colours, ax=list(axes), label=unit, shrink=0.8)
        return figure
    figure, ax, (ch, cw, pad) = _grid_figure(images, len(order), steps, extra=(1.6, 0.7))
    ax.set_yticks(_centres(len(order), ch, pad))
    ax.set_yticklabels(row_labels, fontsize=8)
    ax.set_xticks(_centres(steps, cw, pad))
    if _is_standard_normal(vae):
        ax.set_xticklabels([f"{v:+.1f}" for v in grid[0].tolist()], fontsize=7)
        ax.set_xlabel("z_d", fontsize=9)
    else:
        ax.set_xticklabels([f"{v:+.1f}" for v in np.linspace(-span, span, steps)], fontsize=7)
        ax.set_xlabel("z_d in standard deviations of the aggregate posterior", fontsize=9)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=10)
    return figure


def _pca(codes):
    centred = codes - codes.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    explained = s**2 / max((s**2).sum(), 1e-300)
    return centred @ vt[:2].T, explained[:2]


def plot_latent_space(vae, x, labels=None, class_names=None, max_points=2000, split=None):
    """Posterior means of the top layer for (up to ``max_points`` of) ``x``, coloured by ``labels``.

    Two dimensions are shown as they are; more are projected on their first two principal
    components (PCA); one dimension is shown against the label (or as a histogram).
    ``split`` names where the points come from (e.g. ``"validation + test"``), in the title.
    """
    x = x[:max_points]
    codes = _cpu(posterior_means(vae, x)[vae.sites[-1]]).double().numpy()
    if labels is not None:
        labels = labels[: len(x)]
        labels = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels).astype(np.int64)
    d = codes.shape[1]
    figure, ax = _subplots(figsize=(5.8, 4.8))
    site = vae.sites[-1]
    if d == 1:
        if labels is None:
            ax.hist(codes[:, 0], bins=40, color="C0")
            ax.set_ylabel("data points")
        else:
            jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(codes))
            ax.scatter(codes[:, 0], labels + jitter, s=6, alpha=0.6, c=labels, cmap="tab10")
            ax.set_ylabel("label")
        ax.set_xlabel(f"E_q[{site}]")
    else:
        if d == 2:
            xy, names = codes, (f"E_q[{site}][0]", f"E_q[{site}][1]")
        else:
            xy, explained = _pca(codes)
            names = tuple(f"PC{i + 1} of E_q[{site}] ({100 * e:.0f}% of variance)"
                          for i, e in enumerate(explained))
        if labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, color="C0")
        else:
            classes = np.unique(labels)
            if len(classes) <= 10:
                for k in classes:
                    name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)
                    colour = matplotlib.colormaps["tab10"](int(k) % 10)
                    ax.scatter(*xy[labels == k].T, s=6, alpha=0.7, color=colour, label=name)
                ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5),
                          title="label", title_fontsize=8)
            else:
                points = ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7, c=labels, cmap="viridis")
                figure.colorbar(points, ax=ax, label="label")
        ax.set_xlabel(names[0], fontsize=9)
        ax.set_ylabel(names[1], fontsize=9)
    layer = "top-layer " if len(vae.sites) > 1 else ""
    source = f"{len(codes)} {split} points" if split else f"{len(codes)} points"
    ax.set_title(f"Posterior means of the {layer}latents ({source})", fontsize=10)
    figure.tight_layout()
    return figure


def plot_kl_per_dimension(vae, x, scores=None):
    """Bar chart of the KL per latent dimension (one panel per layer, bottom layer first).

    Layers without a per-dimension KL (non-factorised priors) show the variance of the
    posterior means, with the usual activity threshold 0.01. ``scores``: precomputed
    :func:`dimension_scores`.
    """
    scores = scores if scores is not None else dimension_scores(vae, x)
    sites = list(vae.sites)
    widths = [max(2.0, 0.35 * len(scores[s][0]) + 1.2) for s in sites]
    figure, axes = _subplots(1, len(sites), figsize=(sum(widths), 3.2), squeeze=False,
                                gridspec_kw={"width_ratios": widths})
    for ax, site in zip(axes[0], sites):
        values, label = scores[site]
        is_kl = label.startswith("KL")
        ax.bar(np.arange(len(values)), values, color="C0" if is_kl else "C2")
        if not is_kl:
            ax.axhline(ACTIVE_UNIT_THRESHOLD, color="k", ls="--", lw=0.8,
                       label=f"active > {ACTIVE_UNIT_THRESHOLD}")
            ax.legend(fontsize=7)
        ax.set_xticks(np.arange(len(values)))
        ax.tick_params(labelsize=7)
        ax.set_xlabel(f"dimension of {site}", fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        active = int((values > ACTIVE_UNIT_THRESHOLD).sum())
        total = f"total {np.sum(values):.2f} nats" if is_kl else f"{active} active"
        ax.set_title(f"{site}: {total}", fontsize=9)
    figure.suptitle("KL per latent dimension (validation data, β = 1)", fontsize=10)
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------------------
# Figures of a run


def _series(records, key):
    """(epochs, values) of a scalar metric, skipping records without it."""
    points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return tuple(map(np.asarray, zip(*points))) if points else (np.array([]), np.array([]))


def _dict_series(records, key):
    """{name: (epochs, values)} of a metric stored as a dict (e.g. per latent site) or a list (per layer)."""
    out = {}
    for r in records:
        value = r.get(key)
        if isinstance(value, (list, tuple)):
            value = {f"layer {i + 1}": v for i, v in enumerate(value)}
        if isinstance(value, dict):
            for name, v in value.items():
                if isinstance(v, (int, float)):
                    out.setdefault(name, ([], []))
                    out[name][0].append(r["epoch"])
                    out[name][1].append(v)
    return out


def _lines(records, key, name):
    """``[(name, epochs, values)]`` of a metric: one line for a number, one per entry for a dict
    (e.g. per latent site) or a list (per layer); ``[]`` if it was never recorded."""
    epochs, values = _series(records, key)
    lines = [(name, epochs, values)] if len(epochs) else []
    return lines + [(k, *map(np.asarray, s)) for k, s in _dict_series(records, key).items()]


def latent_terms_title(records):
    """The title of the panel of ``val_kl``: "KL" for one latent site, whose term
    E_q[log q(z|x) − log p(z)] is a KL divergence (≥ 0); per-site terms of a hierarchy,
    E_q[log q(z_l|·) − log p(z_l|·)], can be negative (only their sum is the KL of the joint),
    so they are named for what they are."""
    sites = set()
    for record in records:
        if isinstance(record.get("val_kl"), dict):
            sites.update(record["val_kl"])
    if len(sites) <= 1:
        return "validation KL(q(z|x) ‖ p(z)) [nats / point]"
    return "validation latent terms E_q[log q − log p] [nats / point]"


def plot_training_curves(records):
    """ELBO, reconstruction, KL (or per-site latent terms), active units and β against the epoch.

    ``records``: the per-epoch records of ``metrics.jsonl``
    (:meth:`~pyro_vae.rundir.RunDir.read_metrics`). Panels whose metrics were not recorded
    (``val_recon``, ``val_kl``, ``active_units``) are left out. Each panel says whether it
    shows training or validation values; the ELBO panel's range holds every epoch.
    """
    records = list(records)
    panels = []
    epochs, loss = _series(records, "train_loss")
    val_epochs, val_elbo = _series(records, "val_elbo")
    panels.append(("ELBO [nats / point]", [("training: − loss (β-weighted)", epochs, -loss),
                                           ("validation ELBO", val_epochs, val_elbo)]))
    for key, title, name in (("val_recon", "validation E_q[log p(x|z)] [nats / point]", "validation"),
                             ("val_kl", latent_terms_title(records), "validation"),
                             ("active_units", "active units (validation)", "validation")):
        lines = _lines(records, key, name)
        if key == "val_kl" and len(lines) > 1:  # per-site terms of a hierarchy, and their sum
            epochs_kl, totals = _series([{"epoch": r["epoch"], "total": sum(r["val_kl"].values())}
                                         for r in records if isinstance(r.get("val_kl"), dict)], "total")
            lines.append(("sum = KL of the joint", epochs_kl, totals))
        if lines:
            panels.append((title, lines))
    beta = _lines(records, "beta", "β")
    panels.append(("β", beta or [("β", np.array([]), np.array([]))]))
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    figure, grid = _subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows + 0.3), squeeze=False)
    for ax in grid.flat[len(panels):]:
        figure.delaxes(ax)
    axes = grid.flat[: len(panels)]
    for ax, (title, lines) in zip(axes, panels):
        for i, (name, ex, ey) in enumerate(lines):
            if len(ex):
                ax.plot(ex, ey, color=f"C{i}", lw=1.4, marker="o" if len(ex) < 15 else None, ms=3, label=name)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_title(title, fontsize=9)
        if title.startswith(("validation KL", "active")):
            ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=8)
        if len(lines) > 1:
            ax.legend(fontsize=7, loc="lower right")
    elbos = np.concatenate([val_elbo, -loss])
    elbos = elbos[np.isfinite(elbos)]
    if len(elbos) > 1:  # every epoch inside the range (the first ones are often far below)
        lo, hi = float(elbos.min()), float(elbos.max())
        margin = 0.05 * (hi - lo) + 1e-6
        axes[0].set_ylim(lo - margin, hi + margin)
    if beta:
        top = max(float(np.max(v)) for _, _, v in beta)
        axes[-1].set_ylim(0, 1.15 * top if top > 0 else 1)
    figure.suptitle("Training curves", fontsize=10)
    figure.tight_layout()
    return figure


def plot_marginal_diagnostics(result):
    """Histograms of per-point log p̂(x), Pareto k̂ (with its threshold) and ESS / K."""
    figure, axes = _subplots(1, 3, figsize=(11, 3.2))
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
    return _histogram_row(figure, axes, f"Importance-sampling diagnostics, K = {result.num_samples}")


def _histogram_row(figure, axes, title):
    """Label a row of per-point histograms (y: data points) and title the figure."""
    for ax in axes:
        ax.set_ylabel("data points")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_estimate_vs_samples(num_samples, means, stderrs, elbo=None):
    """Mean log p̂(x) over the data against K (log axis), with ±2 standard errors."""
    figure, ax = _subplots(figsize=(4.5, 3.2))
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



def plot_ais_diagnostics(result):
    """Histograms of per-point AIS log p̂(x), mean HMC acceptance and ESS / C of the chains."""
    figure, axes = _subplots(1, 3, figsize=(11, 3.2))
    axes[0].hist(result.log_px.cpu().numpy(), bins=30, color="C0")
    axes[0].set_xlabel("log p̂(x) [nats]")
    axes[1].hist(result.accept.cpu().numpy(), bins=30, color="C1")
    axes[1].set_xlabel("mean HMC acceptance")
    axes[2].hist(result.ess.cpu().numpy() / result.num_chains, bins=30, color="C2")
    axes[2].set_xlabel("ESS / C of the chains' weights")
    title = f"AIS diagnostics, {result.num_chains} chains x {result.num_steps} steps"
    return _histogram_row(figure, axes, title)


def plot_estimator_comparison(result):
    """Per point, importance sampling (guide and refined proposal) minus AIS against IS's k̂,
    and the inference gap split into approximation and amortisation gaps."""
    figure, axes = _subplots(1, 2, figsize=(10, 3.6))
    ais = result.log_px.cpu().numpy()
    axes[0].scatter(result.khat_is.cpu().numpy(), result.log_px_is.cpu().numpy() - ais, s=6,
                    label="IS (guide)")
    axes[0].scatter(result.khat_refined_is.cpu().numpy(), result.log_px_refined_is.cpu().numpy() - ais, s=6,
                    label="IS (refined proposal)")
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[0].axvline(0.7, color="k", ls="--", lw=0.8)
    axes[0].set_xlabel("Pareto k̂ of the importance weights")
    axes[0].set_ylabel("log p̂(x) − AIS [nats]")
    axes[0].legend(fontsize=8)
    gaps = [result.approximation_gap.cpu().numpy(), result.amortisation_gap.cpu().numpy()]
    axes[1].hist(gaps, bins=30, label=[f"approximation (mean {gaps[0].mean():.2f})",
                                       f"amortisation (mean {gaps[1].mean():.2f})"], color=["C3", "C4"])
    axes[1].set_xlabel("gap [nats]")
    axes[1].set_ylabel("data points")
    axes[1].legend(fontsize=8)
    figure.suptitle("log p(x) − ELBO[q] = approximation + amortisation gap; "
                    f"IS with K = {result.num_samples}", fontsize=10)
    figure.tight_layout()
    return figure


def plot_bdmc(rows, num_points):
    """BDMC: mean lower (forward AIS) and upper (reverse AIS) bounds and their gap against the
    number of annealing steps (log axis); ``rows`` as :meth:`~pyro_vae.ais.BDMCResult.summary`."""
    figure, axes = _subplots(1, 2, figsize=(9, 3.2))
    steps = np.asarray([row["num_steps"] for row in rows])
    lower = np.asarray([row["lower_mean"] for row in rows])
    upper = np.asarray([row["upper_mean"] for row in rows])
    axes[0].plot(steps, lower, marker="o", label="lower (forward AIS)")
    axes[0].plot(steps, upper, marker="o", label="upper (reverse AIS)")
    axes[0].set_ylabel("mean bound [nats]")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, upper - lower, marker="o", color="C3")
    axes[1].axhline(1.0, color="k", ls=":", lw=0.8)
    axes[1].set_ylabel("BDMC gap [nats]")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("annealing steps")
    figure.suptitle(f"BDMC on {num_points} points simulated from the model", fontsize=10)
    figure.tight_layout()
    return figure

__all__ = [
    "as_images",
    "plot_ais_diagnostics",
    "plot_bdmc",
    "plot_estimator_comparison",
    "figure_to_rgb",
    "latent_terms_title",
    "plot_estimate_vs_samples",
    "plot_interpolation",
    "plot_kl_per_dimension",
    "plot_latent_space",
    "plot_marginal_diagnostics",
    "plot_reconstructions",
    "plot_reconstructions_and_samples",
    "plot_samples",
    "plot_training_curves",
    "plot_traversals",
    "save_figure",
    "traversal_values",
]
