"""Latent codes of a data set: the mean and log-variance of q for every latent layer.

For a data point x and layer l, the code is the guide's q(z_l | ·) evaluated along the
path of means: each layer that q conditions on (the one below for the ``bottom-up`` guide,
the one above and x for ``top-down`` and ``residual``) is set to its own mean rather than drawn, so the
codes are a deterministic function of x. For one layer that is simply
(μ(x), log σ²(x)) of q(z|x). This is the counterpart of scvi-tools'
``get_latent_representation`` and what ``pyro-vae encode`` writes.

:func:`encode` works on any guide whose latent sites have a mean and a variance;
:func:`encode_run` encodes a split of a run's data (or of another data set of the same
shape) with its labels and generative factors; :func:`save_codes` writes them as ``.npz``.
"""

from pathlib import Path

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .atomic import atomic_write
from .data import load_dataset
from .errors import DataError
from .networks import eval_mode
from .registry import BuildContext
from .rundir import RunDir
from .runs import EVAL_SEED, load_model

SPLIT_NAMES = ("train", "val", "test")


class _AtMean(Messenger):
    """Sets every unobserved sample site to its distribution's mean (the path of means)."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and not site_is_subsample(msg):
            msg["value"] = msg["fn"].mean
            msg["done"] = True


@torch.no_grad()
def encode(vae, x, batch_size=1024):
    """``{"<site>_mean": (N, d), "<site>_logvar": (N, d)}`` float32 numpy arrays for each
    latent site of ``vae.guide`` (``z``, or ``z1`` … ``zL``), along the path of means."""
    parts = {}
    with eval_mode(vae):  # batch normalisation with its running statistics
        for xb in x.split(batch_size):
            trace = poutine.trace(_AtMean()(vae.guide)).get_trace(xb)
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                    continue
                fn = site["fn"]
                parts.setdefault(f"{name}_mean", []).append(fn.mean)
                parts.setdefault(f"{name}_logvar", []).append(fn.variance.log())
    return {key: torch.cat(values).float().cpu().numpy() for key, values in parts.items()}


def encode_run(run_dir, split="test", data=None, batch_size=1024, map_location=None):
    """The codes of :func:`encode` for ``split`` of the run's data set (or of the data set spec
    ``data``, which must have the run's data shape), with ``labels`` and ``factors`` (and
    ``factor_names``, ``class_names``) where the data set has them.

    The data are those the run is evaluated on: binarised (or dequantised) once with the
    run's fixed evaluation seed where training draws a fresh transform per batch.
    """
    if split not in SPLIT_NAMES:
        raise DataError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}.")
    rundir = RunDir(run_dir).require()
    vae, _ = load_model(rundir.path, map_location)
    device = next(vae.parameters()).device
    spec = rundir.config["data"] if data is None else data
    splits = load_dataset(spec, BuildContext(device=device, splits=(split,)))
    if tuple(splits.data_shape) != rundir.data_shape:
        raise DataError(f"The data have shape {tuple(splits.data_shape)} per point, but the run in "
                        f"'{rundir.path}' was trained on {rundir.data_shape}.")
    x = splits.eval_split(split, EVAL_SEED).to(device)
    if not len(x):
        raise DataError(f"Split '{split}' of the data set is empty; choose another with --split.")
    codes = encode(vae, x, batch_size)
    for kind in ("labels", "factors"):
        values = getattr(splits, f"{split}_{kind}")
        if values is not None:
            codes[kind] = values.cpu().numpy()
    for key in ("factor_names", "class_names"):
        if splits.info.get(key):
            codes[key] = np.asarray(splits.info[key], dtype=str)
    return codes


def save_codes(codes, path):
    """Write ``codes`` (a mapping of arrays) to ``path`` as an uncompressed ``.npz``; returns the
    path (``.npz`` is added when missing, as ``numpy.savez`` does)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **codes)
    return path
