r"""Posterior draws of a VAE's latents as ArviZ data, with their importance weights.

:func:`to_inference_data` draws ``num_samples`` values of every latent site from the guide
:math:`q(z \mid x_n)` for each data point (all draws at once, under a particle plate) and
replays the model on them, which gives per draw

* the log importance weight :math:`\log w_{nk} = \log p(x_n, z_{nk}) - \log q(z_{nk} \mid x_n)`
  (``sample_stats.log_weight``), with the densities unscaled by β, as in
  :func:`pyro_vae.log_likelihood` (its :math:`\log\hat p(x_n)` is
  :math:`\operatorname{logsumexp}_k \log w_{nk} - \log K`);
* :math:`\log q(z_{nk} \mid x_n)` (``sample_stats.log_q``);
* :math:`\log p(x_n \mid z_{nk})` (``log_likelihood.x``).

The draws are from the **proposal** q, not from the exact posterior p(z | x): reweight
them with ``exp(log_weight)`` (normalised per point, or Pareto-smoothed: ``arviz.psislw``
on ``log_weight.stack(__sample__=("chain", "draw"))``) for posterior
expectations. Groups and dimensions (one chain):

==================  ============================================  ===============================
group               variable                                      dims
==================  ============================================  ===============================
``posterior``       each latent site (``z`` or ``z1`` … ``zL``)   chain, draw, point, ``<site>_dim``
``sample_stats``    ``log_weight``, ``log_q``                     chain, draw, point
``log_likelihood``  ``x``                                         chain, draw, point
``constant_data``   ``eval_<name>``: an evaluation's per-point    point
                    values (optional, ``estimates``)
==================  ============================================  ===============================

The ``point`` coordinate holds ``point_index`` (default ``0 … N−1``). ArviZ 0.x returns an
``arviz.InferenceData``; ArviZ ≥ 1 (where InferenceData became ``xarray.DataTree``) a
``DataTree`` with the same groups. Both have ``to_netcdf``; :func:`save_inference_data`
writes either (with the h5netcdf or netCDF4 engine, whichever is installed).
"""

import math
from pathlib import Path

import numpy as np
import pyro
import torch

from .atomic import atomic_write
from .errors import DataError
from .traces import latent_sites, log_densities, max_plate_nesting, per_point, trace_model_and_guide
from .validation import check_int

__all__ = [
    "arviz_major_version",
    "load_inference_data",
    "log_px_from",
    "save_inference_data",
    "to_inference_data",
]

_ELEMENT_BUDGET = 2**22  # data elements x draws per model call (as pyro_vae.marginal)


def _arviz():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ 0.x warns about its 1.0 refactor on import
        import arviz
    return arviz


def arviz_major_version():
    """The installed ArviZ's major version (0 for the InferenceData API, 1+ for DataTree)."""
    try:
        return int(str(_arviz().__version__).split(".")[0])
    except ValueError:
        return 0


def _from_dict(groups, coords, dims):
    """``arviz.from_dict`` across versions: keyword groups in 0.x, a dict of groups in 1.x."""
    arviz = _arviz()
    if arviz_major_version() >= 1:
        return arviz.from_dict(groups, coords=coords, dims=dims)
    return arviz.from_dict(**groups, coords=coords, dims=dims)


@torch.no_grad()
def _draws(vae, x, num, nesting):
    """One chunk: latent draws ``{site: (num, B, d)}``, log w, log q and log p(x|z), each ``(num, B)``."""
    batch = x.shape[0]
    traces = trace_model_and_guide(vae.model, vae.guide, x, num_particles=num, max_plate_nesting=nesting)
    observed, latent = log_densities(*traces, batch, num, dtype=torch.float64)
    log_lik = sum(observed.values())
    log_joint = log_lik + sum(lp for lp, _ in latent.values())
    log_q = sum(lq for _, lq in latent.values())
    latents = {name: per_point(q["value"], q, batch, num) for name, (_, q) in latent_sites(*traces).items()}
    return latents, log_joint - log_q, log_q, log_lik


def to_inference_data(vae, x, num_samples=100, point_index=None, batch_size=None, seed=None, estimates=None):
    """``num_samples`` draws of every latent site from q(z | x_n) for each point of ``x``, with
    importance weights, as ArviZ data (see the module docstring for groups and dims).

    Args:
        vae: a :class:`~pyro_vae.VAE` (its sites ``"z"`` or ``"z1"`` … ``"zL"``).
        x: ``(N, *data_shape)`` data points (on the VAE's device).
        num_samples: draws per point (the ``draw`` dimension; one chain).
        point_index: labels of the ``point`` coordinate (default ``0 … N−1``), e.g. the
            points' indices in their split.
        batch_size: points per model call (default: about 4M data elements × draws per call).
        seed: seed for the draws (``None``: the current RNG state).
        estimates: per-point values of an evaluation (``{name: (N,) tensor}``, e.g. an
            estimator result's ``per_point()``: AIS ``log_px``, ``stderr``, ``accept``, ...),
            added as ``constant_data.eval_<name>`` with dims ``point``.
    """
    if not torch.is_tensor(x) or x.dim() < 1 or len(x) == 0:
        raise DataError("x must be a non-empty tensor of data points, shaped (N, *data_shape).")
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size", allow_none=True)
    n = len(x)
    point_index = np.arange(n) if point_index is None else np.asarray(point_index)
    if point_index.shape != (n,):
        raise DataError(f"point_index must have one entry per data point ({n}), got {point_index.shape}.")
    if batch_size is None:
        batch_size = max(1, _ELEMENT_BUDGET // (num_samples * max(1, x[0].numel())))
    was_training = vae.training
    vae.eval()
    parts = []
    try:
        with torch.no_grad():
            nesting = max_plate_nesting(*trace_model_and_guide(vae.model, vae.guide, x[:1]))
        if seed is not None:
            pyro.set_rng_seed(seed)
        for xb in x.split(batch_size):
            parts.append(_draws(vae, xb, num_samples, nesting))
    finally:
        vae.train(was_training)

    def stack(values):  # (num, B, ...) chunks -> (1, num, N, ...) numpy
        return torch.cat(values, dim=1).unsqueeze(0).cpu().numpy()

    sites = [s for s in vae.sites if s in parts[0][0]]
    posterior = {s: stack([p[0][s].float() for p in parts]) for s in sites}
    sample_stats = {"log_weight": stack([p[1] for p in parts]), "log_q": stack([p[2] for p in parts])}
    log_likelihood = {"x": stack([p[3] for p in parts])}
    coords = {"point": point_index}
    dims = {s: ["point", f"{s}_dim"] for s in sites}
    dims.update(log_weight=["point"], log_q=["point"], x=["point"])
    for s in sites:
        coords[f"{s}_dim"] = np.arange(posterior[s].shape[-1])
    groups = {"posterior": posterior, "sample_stats": sample_stats, "log_likelihood": log_likelihood}
    if estimates:
        if any(tuple(v.shape) != (n,) for v in estimates.values()):
            raise DataError(f"estimates must hold one value per data point ({n}) for each name.")
        groups["constant_data"] = {f"eval_{k}": v.double().cpu().numpy() for k, v in estimates.items()}
        dims.update({f"eval_{k}": ["point"] for k in estimates})
    idata = _from_dict(groups, coords, dims)
    idata.posterior.attrs.update(
        draws_from="the guide q(z|x); importance weights in sample_stats.log_weight",
        inference_library="pyro",
        pyro_version=pyro.__version__,
        num_samples=num_samples,
    )
    return idata


def log_px_from(idata):
    """Per point :math:`\\log\\hat p(x_n) = \\operatorname{logsumexp}_k \\log w_{nk} - \\log K`
    from the weights of :func:`to_inference_data` (as :func:`pyro_vae.log_likelihood`)."""
    lw = np.asarray(idata.sample_stats["log_weight"].values, dtype=np.float64)  # (chain, draw, point)
    lw = lw.reshape(-1, lw.shape[-1])
    top = lw.max(0)
    return top + np.log(np.exp(lw - top).sum(0)) - math.log(lw.shape[0])


def save_inference_data(idata, path):
    """Write ``idata`` (InferenceData or DataTree) to a NetCDF file, creating folders; returns the path.

    The file is written with :func:`pyro_vae.atomic.atomic_write` (next to ``path``, then
    moved into place), so an existing file (even one still open for reading) is replaced whole.
    """
    with atomic_write(path) as tmp:
        if arviz_major_version() >= 1:
            idata.to_netcdf(tmp, engine=_netcdf_engine())
        else:
            idata.to_netcdf(str(tmp))
    return Path(path)


def load_inference_data(path):
    """Read a NetCDF file written by :func:`save_inference_data` into memory: an
    ``arviz.InferenceData`` (ArviZ 0.x, ``arviz.from_netcdf``) or an ``xarray.DataTree`` (ArviZ ≥ 1)."""
    if arviz_major_version() >= 1:
        import xarray

        if hasattr(xarray, "load_datatree"):
            return xarray.load_datatree(path)
        with xarray.open_datatree(path) as tree:
            return tree.load()
    with _arviz().rc_context({"data.load": "eager"}):
        return _arviz().from_netcdf(str(path))


def _netcdf_engine():
    import importlib.util

    for engine, module in (("h5netcdf", "h5netcdf"), ("netcdf4", "netCDF4")):
        if importlib.util.find_spec(module) is not None:
            return engine
    return None
