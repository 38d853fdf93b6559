"""Training objectives (Pyro ELBOs), chosen by name.

Objectives (``max_plate_nesting=1``: the data plate; particles are vectorised):

* ``elbo``: :class:`pyro.infer.Trace_ELBO`, Monte Carlo KL;
* ``elbo-analytic``: :class:`pyro.infer.TraceMeanField_ELBO`, closed-form
  KL(q ‖ p) where the prior allows it (Pyro falls back to Monte Carlo otherwise);
* ``iwae``: :class:`pyro.infer.RenyiELBO` with α = 0, the importance-weighted bound
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) with K = ``num_particles`` (default 5).

``elbo`` and ``elbo-analytic`` are the Pyro classes with a leaner hot path (subclasses
:class:`TraceELBO` and :class:`MeanFieldELBO`): while Pyro validation is disabled (as in
the trainer) their traces skip the log-densities the loss does not use (for the analytic KL,
log p(z) and log q(z|x)) and the copy made to drop subsample sites, and their
``differentiable_loss`` returns the loss without a host synchronisation (``.item()``).
Values and gradients are those of the Pyro classes, computed in the same order; with
validation enabled they *are* the Pyro code paths. ``iwae`` is :class:`IWAE`, Pyro's
``RenyiELBO`` with a ``differentiable_loss`` of the same surrogate. :func:`step_loss` is
what the trainer calls per batch. The three classes are defined in the private module
``pyro_vae._lean_elbo``, the only one that relies on Pyro internals.
"""

import warnings

import torch

from ._lean_elbo import IWAE, MeanFieldELBO, TraceELBO
from .errors import ConfigError
from .priors import analytic_kl_available
from .registry import Registry
from .validation import check_int

__all__ = [
    "IWAE",
    "OBJECTIVES",
    "MeanFieldELBO",
    "TraceELBO",
    "check_compatible",
    "elbo",
    "elbo_analytic",
    "iwae",
    "step_loss",
]

OBJECTIVES = Registry("objective")


def step_loss(objective, model, guide, *args, **kwargs):
    """Back-propagate ``objective``'s loss into the parameters; return the loss, detached.

    Uses ``differentiable_loss`` + ``backward`` where the objective has it (no host
    synchronisation with the lean ELBOs), else ``loss_and_grads`` (e.g. ``RenyiELBO``),
    whose float is returned as a CPU tensor. The gradients are those of ``loss_and_grads``.
    """
    differentiable_loss = getattr(objective, "differentiable_loss", None)
    if differentiable_loss is None:
        return torch.tensor(objective.loss_and_grads(model, guide, *args, **kwargs), dtype=torch.float64)
    loss = differentiable_loss(model, guide, *args, **kwargs)
    if torch.is_tensor(loss) and loss.requires_grad:
        loss.backward()
        return loss.detach()
    return torch.as_tensor(loss)


def _particles(num_particles):
    num_particles = check_int(num_particles, "num_particles")
    return dict(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,
    )


@OBJECTIVES.register("elbo")
def elbo(num_particles=1):
    """The ELBO with a Monte Carlo KL term (``Trace_ELBO``)."""
    return TraceELBO(**_particles(num_particles))


@OBJECTIVES.register("elbo-analytic")
def elbo_analytic(num_particles=1):
    """The ELBO with the KL term in closed form where possible (``TraceMeanField_ELBO``)."""
    return MeanFieldELBO(**_particles(num_particles))


@OBJECTIVES.register("iwae")
def iwae(num_particles=5):
    """The importance-weighted bound with K = ``num_particles`` (``RenyiELBO(alpha=0)``)."""
    return IWAE(**_particles(num_particles))


def check_compatible(spec, vae):
    """Reject ``elbo-analytic`` where its closed-form KL would be wrong; warn where it has none.

    ``TraceMeanField_ELBO`` computes KL(q(z_l|·) ‖ p(z_l|·)) site by site, which is the
    ELBO's latent term only when the guide samples the layers in the model's order
    (top-down). A bottom-up guide draws z_{l+1} after z_l and from it, so the analytic
    per-site KL would be biased. Priors without a closed-form KL (mixtures, VampPrior,
    flows, Student-t) make Pyro fall back to the Monte Carlo term log q(z|x) − log p(z),
    which is correct but noisier; the warning says so.
    """
    name = spec if isinstance(spec, str) else spec.get("name")
    if name != "elbo-analytic":
        return
    if len(getattr(vae, "latent_dims", ())) > 1 and vae.inference != "top-down":
        raise ConfigError(
            "elbo-analytic needs the guide to sample latent layers in the model's order: use "
            "model.inference: top-down with a hierarchy, or the objective 'elbo' or 'iwae'."
        )
    if hasattr(vae, "prior") and not analytic_kl_available(vae.prior):
        warnings.warn(
            f"elbo-analytic: the prior {type(vae.prior).__name__} has no closed-form KL to the "
            "Gaussian guide, so the KL of the top layer falls back to a Monte Carlo estimate "
            "(log q(z|x) − log p(z) at the sampled z), as with the objective 'elbo'.",
            stacklevel=2,
        )
