r"""The latent space of a model/guide pair, per data point, as one flat unconstrained tensor.

The samplers and optimisers that move latents around (:mod:`pyro_vae.ais`,
:mod:`pyro_vae.refined`) work on a tensor ``u`` of shape ``(R, B, D)``: ``R`` rows (chains or
samples) per data point, ``B`` data points (the ``"data"`` plate), ``D`` the per-point
latent dimension, every latent site mapped to :math:`\mathbb R` by
``torch.distributions.biject_to(site.support)`` and flattened. :class:`LatentSpace` maps
``u`` back to site values and scores it:

* :math:`\log p(x, z)` by replaying the model conditioned on the values (each site's density
  unscaled and unmasked, summed per point, as :mod:`pyro_vae.traces` defines it), split into
  the latent part :math:`\log p(z)` and the observed part :math:`\log p(x \mid z)`;
* :math:`\log q(z \mid x)` by replaying the guide conditioned on the values; when no guide
  site's distribution depends on another latent (a one-layer or mean-field guide), the guide
  runs once and its distributions are reused;
* :math:`\log |\det \partial z / \partial u|`, so that the density of ``u`` is the density
  of ``z`` times the Jacobian.

The rows run under :data:`~pyro_vae.traces.PARTICLE_PLATE`, so the model sees ``R`` copies
of the batch, as in :func:`~pyro_vae.log_likelihood`. Every latent must be continuous, per
data point (inside the ``"data"`` plate) and sampled in both the model and the guide.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.guide import GuideMessenger
from torch.distributions import biject_to

from .errors import PyroVAEError
from .traces import (
    PARTICLE_PLATE,
    _frame,
    data_frame,
    latent_sites,
    max_plate_nesting,
    per_point_log_prob,
    sample_sites,
    trace_model_and_guide,
)

__all__ = ["LatentSpace", "Scores", "diagonal_normal_log_prob"]


@dataclass
class _Site:
    name: str
    transform: Any
    lead: tuple[int, int]  # positions of the particle and data dims in the site's value
    shape: tuple[int, ...]  # unconstrained value shape for one row, with the particle dim of size 1
    size: int  # unconstrained elements per (row, point)


@dataclass
class Scores:
    r"""Per-(row, point) log-densities at a state ``u``, each ``(R, B)``, with their gradients
    in ``u`` (``(R, B, D)``, ``None`` where not asked for or identically zero).

    ``log_joint`` is :math:`\log p(x, z)`, ``log_prior`` its latent part :math:`\log p(z)`,
    ``log_guide`` :math:`\log q(z \mid x)` (``None`` when not asked for) and
    ``log_jacobian`` :math:`\log|\det \partial z/\partial u|`.
    """

    log_joint: torch.Tensor
    log_prior: torch.Tensor
    log_guide: torch.Tensor | None
    log_jacobian: torch.Tensor
    grad_joint: torch.Tensor | None = None
    grad_prior: torch.Tensor | None = None
    grad_guide: torch.Tensor | None = None
    grad_jacobian: torch.Tensor | None = None


def _check_guide(guide: Callable | None) -> None:
    if guide is not None and isinstance(poutine.unwrap(guide), GuideMessenger):
        raise PyroVAEError(
            "this estimator replays the guide at given latent values, which an effect-based "
            "guide (pyro.poutine.guide.GuideMessenger, e.g. AutoNormalMessenger) does not "
            "support; use an ordinary guide function or an AutoGuide such as AutoNormal"
        )


class LatentSpace:
    """The flat unconstrained latent space of ``model(x)`` and ``guide(x)`` for one batch ``x``.

    ``guide=None`` takes the latents from the model (drawn from the prior).
    """

    def __init__(self, model: Callable, guide: Callable | None, x: torch.Tensor):
        _check_guide(guide)
        self.model, self.guide, self.x = model, guide, x
        self.batch = x.shape[0]
        with torch.no_grad():
            model_trace, guide_trace = trace_model_and_guide(model, guide, x)
            self.nesting = max_plate_nesting(model_trace, guide_trace)
            model_trace, guide_trace = trace_model_and_guide(
                model, guide, x, num_particles=1, max_plate_nesting=self.nesting)
        self._check_sites(model_trace, guide_trace)
        source = guide_trace if guide is not None else model_trace
        self.sites = [self._site(site) for name, site in sample_sites(source).items() if name in self.names]
        self.dim = sum(s.size for s in self.sites)
        self._fixed_guide = self._fixed_guide_sites() if guide is not None else None
        self._gaussian = self._guide_gaussian()

    # ---- structure -------------------------------------------------------------------

    def _check_sites(self, model_trace: Any, guide_trace: Any) -> None:
        model_sites = sample_sites(model_trace)
        if guide_trace is None:
            latents = {n: (s, s) for n, s in model_sites.items() if not s["is_observed"]}
        else:
            latents = latent_sites(model_trace, guide_trace)
            guide_names = set(sample_sites(guide_trace))
            for name, site in model_sites.items():
                if not site["is_observed"] and name not in guide_names:
                    raise PyroVAEError(
                        f"latent site {name!r} is sampled in the model but not in the guide; "
                        "this estimator moves every latent, so the guide must sample it too")
            for name in sample_sites(guide_trace):
                if name not in latents:
                    raise PyroVAEError(
                        f"guide site {name!r} is not a latent site of the model (auxiliary guide "
                        "variables are not supported by this estimator)")
        if not latents:
            raise PyroVAEError("the model has no latent sites; log p(x) needs no estimator")
        for name, (msite, gsite) in latents.items():
            for site in (msite, gsite):
                if site["fn"].support.is_discrete:
                    raise PyroVAEError(
                        f"latent site {name!r} is discrete ({type(site['fn']).__name__}); this "
                        "estimator needs continuous latents (use importance sampling, "
                        "--estimator importance, for models with discrete latents)")
                if data_frame(site) is None:
                    raise PyroVAEError(
                        f"latent site {name!r} is outside the 'data' plate (a global latent); "
                        "this estimator needs every latent to belong to one data point")
        self.names = set(latents)

    def _site(self, site: dict) -> _Site:
        fn = site["fn"]
        transform = biject_to(fn.support)
        nbatch = len(fn.batch_shape)
        lead = (nbatch + _frame(site, PARTICLE_PLATE).dim, nbatch + data_frame(site).dim)
        unconstrained = transform.inv(site["value"])
        size = unconstrained.numel() // self.batch
        return _Site(site["name"], transform, lead, tuple(unconstrained.shape), size)

    def _fixed_guide_sites(self) -> dict[str, dict] | None:
        """The guide's sites (distributions kept) if none depends on another latent's value:
        checked by differentiating each site's log-density in the other sites' values."""
        if len(self.sites) > 1:
            with torch.enable_grad():
                drawn = self.values(self.draw_guide(1))
                values = {n: v.detach().requires_grad_(True) for n, v in drawn.items()}
                trace = self._trace(self.guide, values, rows=1)
                for name, site in sample_sites(trace).items():
                    others = [v for n, v in values.items() if n != name]
                    lp = site["fn"].log_prob(values[name]).sum()
                    grads = torch.autograd.grad(lp, others, allow_unused=True, retain_graph=True)
                    if any(g is not None for g in grads):
                        return None
        with torch.no_grad():
            trace = self._trace(self.guide, self.values(self.draw_guide(1)), rows=1)
        return {name: site for name, site in sample_sites(trace).items() if name in self.names}

    def guide_gaussian(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, std)``, each ``(B, D)``, of a guide whose sites are fixed Normals on the
        real line (so the guide is exactly this diagonal Gaussian on ``u``, and is scored in
        closed form); else ``None``."""
        return self._gaussian

    def guide_moments(self, draws: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)``, each ``(B, D)``, of the guide on ``u``: exact for a diagonal-Gaussian
        guide (:meth:`guide_gaussian`), else from ``draws`` independent draws (the prior's
        without a guide)."""
        if self._gaussian is not None:
            return self._gaussian
        u = self.draw_guide(draws)
        return u.mean(0), u.std(0).clamp(min=1e-4)

    def _guide_gaussian(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._fixed_guide is None:
            return None
        sites = self._fixed_guide.values()
        if not all(isinstance(_base(s["fn"]), torch.distributions.Normal) for s in sites):
            return None
        mean = self.flatten({s["name"]: s["fn"].mean.expand(s["fn"].shape()) for s in sites})
        std = self.flatten({s["name"]: s["fn"].stddev.expand(s["fn"].shape()) for s in sites})
        return mean[0], std[0]

    # ---- u <-> values ----------------------------------------------------------------

    def values(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Site values (constrained) of the state ``u`` of shape ``(R, B, D)``."""
        return {site.name: site.transform(part) for site, part in zip(self.sites, self._parts(u))}

    def _parts(self, u: torch.Tensor) -> list[torch.Tensor]:
        rows = u.shape[0]
        parts = []
        for site, flat in zip(self.sites, u.split([s.size for s in self.sites], dim=-1)):
            shape = list(site.shape)
            shape[site.lead[0]] = rows
            permuted = [shape[site.lead[0]], shape[site.lead[1]]] + [
                n for i, n in enumerate(shape) if i not in site.lead]
            parts.append(flat.reshape(permuted).movedim([0, 1], list(site.lead)))
        return parts

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The state ``u`` ``(R, B, D)`` of site values (the inverse of :meth:`values`)."""
        flats = []
        for site in self.sites:
            part = site.transform.inv(values[site.name])
            rows = part.shape[site.lead[0]]
            flats.append(part.movedim(list(site.lead), [0, 1]).reshape(rows, self.batch, -1))
        return torch.cat(flats, dim=-1)

    def _log_jacobian(self, u: torch.Tensor) -> torch.Tensor:
        total = u.new_zeros(u.shape[:2])
        for site, part in zip(self.sites, self._parts(u)):
            if _is_identity(site.transform):
                continue
            ladj = site.transform.log_abs_det_jacobian(part, site.transform(part))
            ladj = ladj.expand(part.shape[: ladj.dim()]) if ladj.dim() else ladj.expand(part.shape[:2])
            total = total + ladj.movedim(list(site.lead), [0, 1]).reshape(u.shape[0], self.batch, -1).sum(-1)
        return total

    # ---- draws -----------------------------------------------------------------------

    def draw_guide(self, rows: int) -> torch.Tensor:
        """``rows`` draws per point from the guide (the prior without one), as ``u``."""
        with torch.no_grad():
            model_trace, guide_trace = trace_model_and_guide(
                self.model, self.guide, self.x, num_particles=rows, max_plate_nesting=self.nesting)
        trace = guide_trace if guide_trace is not None else model_trace
        return self.flatten({n: s["value"] for n, s in sample_sites(trace).items() if n in self.names})

    def draw_prior(self, rows: int) -> torch.Tensor:
        """``rows`` draws per point from the prior p(z), as ``u``."""
        with torch.no_grad():
            model_trace, _ = trace_model_and_guide(
                self.model, None, self.x, num_particles=rows, max_plate_nesting=self.nesting)
        return self.flatten({n: s["value"] for n, s in sample_sites(model_trace).items() if n in self.names})

    def draw_joint(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(u, x)``: one exact draw per point from :math:`p(x, z)` (latents from the prior,
        data from :math:`p(x \mid z)`), ``u`` of shape ``(1, B, D)`` and ``x`` shaped like the
        batch. The model must have one observed site holding the whole batch."""
        with torch.no_grad(), poutine.block(), pyro.plate(PARTICLE_PLATE, 1, dim=-(self.nesting + 1)):
            trace = poutine.trace(poutine.uncondition(self.model)).get_trace(self.x)
        sites = sample_sites(trace)
        observed = [s for n, s in sites.items() if n not in self.names]
        if len(observed) != 1 or observed[0]["value"].numel() != self.x.numel():
            raise PyroVAEError(
                "simulating data needs a model with exactly one observed site holding the whole "
                f"batch; found {[s['name'] for s in observed]}")
        x = observed[0]["value"].reshape(self.x.shape).to(self.x.dtype)
        return self.flatten({n: s["value"] for n, s in sites.items() if n in self.names}), x

    # ---- scores ----------------------------------------------------------------------

    def _trace(self, fn: Callable, values: dict[str, torch.Tensor], rows: int):
        """``fn`` traced at ``values`` with distribution validation off: a value that the
        transform rounds onto the support's boundary (``exp(u) == 0``) scores ``-inf`` or
        NaN, which the samplers reject, instead of raising."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(pyro.validation_enabled(False))
            stack.enter_context(poutine.block())
            stack.enter_context(pyro.plate(PARTICLE_PLATE, rows, dim=-(self.nesting + 1)))
            return poutine.trace(poutine.condition(fn, data=values)).get_trace(self.x)

    def scores(self, u: torch.Tensor, guide: bool = False, grads: tuple[str, ...] = ()) -> Scores:
        """The log-densities at ``u``; ``guide`` adds :math:`\\log q(z \\mid x)`; ``grads`` names
        the ones whose gradients in ``u`` to add (of ``"joint"``, ``"prior"``, ``"guide"``,
        ``"jacobian"``; one backward pass each, none for a Jacobian that is constant)."""
        rows = u.shape[0]
        with torch.enable_grad() if grads else torch.no_grad():
            u = u.detach().requires_grad_(bool(grads))
            values = self.values(u)
            trace = self._trace(self.model, values, rows)
            joint = prior = u.new_zeros(rows, self.batch)
            for name, site in sample_sites(trace).items():
                lp = per_point_log_prob(site, self.batch, rows).to(u.dtype)
                joint = joint + lp
                if name in self.names:
                    prior = prior + lp
            gradients = {}
            if guide and self._gaussian is not None:  # closed form; the Jacobian is 1
                mean, std = self._gaussian
                log_guide = diagonal_normal_log_prob(u.detach(), mean, std)
                if "guide" in grads:
                    gradients["grad_guide"] = (mean - u.detach()) / std**2
            else:
                log_guide = self._log_guide(values, rows) if guide else None
            terms = {"joint": joint, "prior": prior, "guide": log_guide, "jacobian": self._log_jacobian(u)}
            for name in grads:
                value = terms[name]
                if value is not None and value.requires_grad:
                    gradients[f"grad_{name}"] = torch.autograd.grad(value.sum(), u, retain_graph=True)[0]
        detached = {f"log_{n}": (v.detach() if v is not None else None) for n, v in terms.items()}
        return Scores(**detached, **gradients)

    def _log_guide(self, values: dict[str, torch.Tensor], rows: int) -> torch.Tensor:
        if self._fixed_guide is not None:
            sites = [{**site, "value": values[name]} for name, site in self._fixed_guide.items()]
        else:
            trace = self._trace(self.guide, values, rows)
            sites = [s for n, s in sample_sites(trace).items() if n in self.names]
        total = 0.0
        for site in sites:
            total = total + per_point_log_prob(site, self.batch, rows).to(values[site["name"]].dtype)
        return total


def _is_identity(transform: Any) -> bool:
    while isinstance(transform, torch.distributions.transforms.IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, torch.distributions.transforms.ComposeTransform) and not transform.parts


def _base(fn: Any) -> Any:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def diagonal_normal_log_prob(u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """:math:`\\log \\mathcal N(u; \\mu, \\mathrm{diag}\\,\\sigma^2)` summed over the last dim."""
    w = (u - mean) / std
    return (-0.5 * w**2 - std.log()).sum(-1) - 0.5 * u.shape[-1] * math.log(2 * math.pi)
