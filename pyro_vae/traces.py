r"""Traces of a model replayed on its guide, and their log-densities per data point.

The estimators that score a model against its guide (:mod:`pyro_vae.marginal`,
:mod:`pyro_vae.diagnostics`, :mod:`pyro_vae.arviz_export`) share these conventions:

* **Traces.** The guide is traced and the model replayed on it, both under
  ``poutine.block``. A guide that is a :class:`~pyro.poutine.guide.GuideMessenger` (an
  effect-based guide such as ``AutoNormalMessenger``) runs the model itself; its
  ``get_traces()`` gives both traces, as in Pyro's ``Trace_ELBO``. Optionally everything
  runs under a vectorised particle plate :data:`PARTICLE_PLATE` of ``num_particles`` draws
  at dim ``-(max_plate_nesting + 1)``, left of every plate of the model.
* **Data points.** The batch is the plate named :data:`DATA_PLATE` (``"data"``), found
  by name at whatever dim it sits. A site outside it counts for every point.
* **Densities** are unscaled and unmasked, ``site["fn"].log_prob(site["value"])``, so
  ``poutine.scale`` (a KL weight :math:`\beta`) and ``poutine.mask`` do not enter; masks
  inside the distribution (``fn.mask(...)``) do.
* **Per point** a log-density is summed over its event dims and every batch dim except the
  data plate's and the particle plate's: shape ``(batch,)``, or ``(num_particles, batch)``
  under particles.
* **Latent sites** are sampled (not observed) in the guide *and* the model. Observed model
  sites (``obs=...``, ``pyro.factor``) make up :math:`\log p(x \mid z)`. Model-only latents
  (drawn from their prior) and guide-only ones (auxiliary) are neither: their
  :math:`p/q` ratio is 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.guide import GuideMessenger
from pyro.poutine.util import site_is_subsample

from .errors import PyroVAEError

__all__ = [
    "DATA_PLATE",
    "PARTICLE_PLATE",
    "data_frame",
    "latent_sites",
    "log_densities",
    "max_plate_nesting",
    "per_point",
    "per_point_log_prob",
    "sample_sites",
    "trace_model_and_guide",
]

DATA_PLATE = "data"
PARTICLE_PLATE = "_pyro_vae_particles"


def trace_model_and_guide(
    model: Callable,
    guide: Callable | None,
    *args: Any,
    num_particles: int | None = None,
    max_plate_nesting: int = 0,
) -> tuple[Any, Any]:
    """``(model_trace, guide_trace)`` of ``guide(*args)`` and ``model(*args)`` replayed on it.

    Without a guide the model runs alone (latents from their prior) and ``guide_trace`` is
    ``None``. With ``num_particles`` both run under :data:`PARTICLE_PLATE` at dim
    ``-(max_plate_nesting + 1)``. Nothing escapes to outer handlers (``poutine.block``).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(poutine.block())
        if num_particles is not None:
            stack.enter_context(pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)))
        if guide is None:
            return poutine.trace(model).get_trace(*args), None
        messenger = poutine.unwrap(guide)
        if isinstance(messenger, GuideMessenger):
            guide(*args)
            return messenger.get_traces()
        guide_trace = poutine.trace(guide).get_trace(*args)
        return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args), guide_trace


def sample_sites(trace: Any) -> dict[str, dict]:
    """The sample sites of ``trace`` (subsample sites of plates left out), in trace order."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }


def _frame(site: dict, name: str) -> Any:
    return next((f for f in site["cond_indep_stack"] if f.name == name and f.vectorized), None)


def data_frame(site: dict) -> Any:
    """The site's :data:`DATA_PLATE` frame (``.dim``, ``.size``), or ``None`` outside it."""
    return _frame(site, DATA_PLATE)


def max_plate_nesting(*traces: Any) -> int:
    """How many batch dims the vectorised plates of the traces' sample sites take (``None``: skipped)."""
    dims = [f.dim for trace in traces if trace is not None for site in sample_sites(trace).values()
            for f in site["cond_indep_stack"] if f.vectorized]
    return -min(dims) if dims else 0


def latent_sites(model_trace: Any, guide_trace: Any) -> dict[str, tuple[dict, dict]]:
    """``{name: (model_site, guide_site)}`` for the latent sites, in the guide's order."""
    if guide_trace is None:
        return {}
    model_sites = sample_sites(model_trace)
    return {
        name: (model_sites[name], site)
        for name, site in sample_sites(guide_trace).items()
        if not site["is_observed"] and name in model_sites and not model_sites[name]["is_observed"]
    }


def per_point(tensor: torch.Tensor, site: dict, batch: int, num_particles: int | None = None) -> torch.Tensor:
    """A tensor shaped like the site's value, ``batch_shape + event_shape`` (the value, its
    distribution's mean), as ``(batch, -1)`` or ``(num_particles, batch, -1)``: the particle and data dims
    moved to the front (sites outside a plate expanded along it), the rest flattened."""
    fn = site["fn"]
    tensor = tensor.expand(fn.batch_shape + fn.event_shape)
    return _points(tensor, len(fn.batch_shape), site, batch, num_particles)


def _points(tensor: torch.Tensor, nbatch: int, site: dict, batch: int, num_particles: int | None):
    """``tensor`` (``nbatch`` batch dims first) with the particle and data dims leading."""
    frames = [_frame(site, PARTICLE_PLATE)] if num_particles is not None else []
    frames.append(data_frame(site))
    kept = [nbatch + f.dim for f in frames if f is not None]
    tensor = tensor.movedim(kept, list(range(len(kept))))
    for position, frame in reversed(list(enumerate(frames))):
        if frame is None:
            tensor = tensor.unsqueeze(position)
    expected = (num_particles, batch) if num_particles is not None else (batch,)
    lead = tuple(tensor.shape[: len(expected)])
    if any(got not in (1, want) for got, want in zip(lead, expected)):
        raise PyroVAEError(
            f"site {site['name']!r}: per-point shape {lead} does not fit {expected} "
            f"({'samples x ' if num_particles is not None else ''}data points); the "
            f"{DATA_PLATE!r} plate must have size x.shape[0] and no subsampling"
        )
    return tensor.expand(*expected, *tensor.shape[len(expected):]).reshape(*expected, -1)


def per_point_log_prob(
    site: dict,
    batch: int,
    num_particles: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``site["fn"].log_prob(site["value"])`` summed to ``(batch,)`` or ``(num_particles, batch)``.

    The sum is taken in ``dtype`` on ``device`` (default: the log-density's own).
    """
    lp = site["fn"].log_prob(site["value"])
    particle = _frame(site, PARTICLE_PLATE) if num_particles is not None else None
    if particle is not None and lp.dim() > -particle.dim:
        raise PyroVAEError(
            f"site {site['name']!r} has log_prob shape {tuple(lp.shape)} with more batch "
            f"dimensions than its plates account for (max_plate_nesting={-particle.dim - 1}); "
            "declare the extra dimensions as event dimensions with .to_event(...)"
        )
    ndim = max([lp.dim()] + [-f.dim for f in site["cond_indep_stack"] if f.vectorized])
    lp = lp.reshape((1,) * (ndim - lp.dim()) + tuple(lp.shape)).to(device=device, dtype=dtype)
    return _points(lp, ndim, site, batch, num_particles).sum(-1)


def log_densities(
    model_trace: Any,
    guide_trace: Any,
    batch: int,
    num_particles: int | None = None,
    **to: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    r"""Per-point log-densities of a traced pair: ``(observed, latent)``.

    ``observed`` maps each observed model site to :math:`\log p(x \mid \cdot)` (model
    order), ``latent`` each latent site to :math:`(\log p(z \mid \cdot), \log q(z \mid \cdot))`
    at the guide's draw (guide order); each tensor as :func:`per_point_log_prob` gives it
    (``to``: its ``dtype`` and ``device``).
    """
    observed = {
        name: per_point_log_prob(site, batch, num_particles, **to)
        for name, site in sample_sites(model_trace).items()
        if site["is_observed"]
    }
    latent = {
        name: tuple(per_point_log_prob(site, batch, num_particles, **to) for site in pair)
        for name, pair in latent_sites(model_trace, guide_trace).items()
    }
    return observed, latent
