"""Training objectives (Pyro ELBOs), chosen by name.

Objectives (``max_plate_nesting=1``: the data plate; particles are vectorised):

* ``elbo``: :class:`pyro.infer.Trace_ELBO`, Monte Carlo KL;
* ``elbo-analytic``: :class:`pyro.infer.TraceMeanField_ELBO`, closed-form
  KL(q ‖ p) where the prior allows it (Pyro falls back to Monte Carlo otherwise);
* ``iwae``: :class:`pyro.infer.RenyiELBO` with α = 0, the importance-weighted bound
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) with K = ``num_particles`` (default 5);
* ``capacity``, ``beta-tcvae``, ``dip-vae-i``, ``dip-vae-ii``, ``factor-vae``: the
  disentangling objectives of :mod:`pyro_vae.disentangling_objectives`.

``elbo`` and ``elbo-analytic`` take ``free_bits`` (λ ≥ 0 nats, default 0: off) and
``free_bits_per`` (``dimension``, the default, or ``layer``): the KL term of each latent
dimension (or layer), averaged over the batch, enters the loss as max(λ, KL̄), Kingma et
al. (2016); see :class:`FreeBitsELBO`. ``free_bits`` may also be a schedule spec
(:func:`~pyro_vae.schedules.scalar_schedule`), e.g. ``{name: linear, start: 0.5, beta: 0,
warmup_epochs: 100}`` for λ decaying from 0.5 to 0 over 100 epochs, so that training ends on
the ELBO itself. It is a training objective, not a bound to report: evaluation uses the
unmodified densities. An objective whose loss follows training progress has a method
``at_epoch(t)``; the trainer calls it before each step with t in epochs (fractional), as it
sets β.

What β (the ``beta_schedule``, applied as ``poutine.scale(β)`` on the latent sites of model
and guide) means per objective: for ``elbo`` and ``elbo-analytic`` the loss is
−E[log p(x|z)] + β·KL, linear in β. For ``iwae`` β tempers the latent part of every
importance weight, log w_k = log p(x|z_k) + β·(log p(z_k) − log q(z_k|x)), and the loss
−log (1/K) Σ_k w_k is **not** linear in β: β ≠ 1 is not "IWAE plus β·KL", and with K = 1
it reduces to the β-ELBO. :func:`check_beta_schedule` warns when ``iwae`` is trained with
a β other than 1. The disentangling objectives document their own weights.

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

from . import disentangling_objectives
from ._lean_elbo import IWAE, FreeBitsELBO, MeanFieldELBO, TraceELBO
from .priors import analytic_kl_available
from .registry import Registry
from .schedules import scalar_schedule
from .validation import check_choice, check_int, check_number

__all__ = [
    "FREE_BITS_GROUPS",
    "IWAE",
    "FreeBitsELBO",
    "OBJECTIVES",
    "MeanFieldELBO",
    "TraceELBO",
    "check_beta_schedule",
    "check_compatible",
    "elbo",
    "elbo_analytic",
    "iwae",
    "step_loss",
]

OBJECTIVES = Registry("objective")
FREE_BITS_GROUPS = ("dimension", "layer")


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


def _free_bits(free_bits, free_bits_per, analytic, num_particles):
    """A :class:`FreeBitsELBO` for λ = ``free_bits`` > 0 or a schedule of λ, else None."""
    check_choice(free_bits_per, "objective option 'free_bits_per'", FREE_BITS_GROUPS)
    if isinstance(free_bits, (str, dict)):
        free_bits = scalar_schedule(free_bits, "objective option 'free_bits' (nats per group)")
    else:
        free_bits = check_number(free_bits, "objective option 'free_bits' (nats per group)", minimum=0)
        if free_bits == 0:
            return None
    return FreeBitsELBO(free_bits, free_bits_per, analytic, **_particles(num_particles))


@OBJECTIVES.register("elbo")
def elbo(num_particles=1, free_bits=0.0, free_bits_per="dimension"):
    """The ELBO with a Monte Carlo KL term (``Trace_ELBO``); with free bits λ > 0 a :class:`FreeBitsELBO`."""
    return (_free_bits(free_bits, free_bits_per, False, num_particles)
            or TraceELBO(**_particles(num_particles)))


@OBJECTIVES.register("elbo-analytic")
def elbo_analytic(num_particles=1, free_bits=0.0, free_bits_per="dimension"):
    """The ELBO with the KL term in closed form where possible (``TraceMeanField_ELBO``); with
    free bits λ > 0 a :class:`FreeBitsELBO` with closed-form KL terms."""
    return (_free_bits(free_bits, free_bits_per, True, num_particles)
            or MeanFieldELBO(**_particles(num_particles)))


@OBJECTIVES.register("iwae")
def iwae(num_particles=5):
    """The importance-weighted bound with K = ``num_particles`` (``RenyiELBO(alpha=0)``)."""
    return IWAE(**_particles(num_particles))


for _name, _factory in disentangling_objectives.FACTORIES.items():
    OBJECTIVES.register(_name, _factory)


def check_beta_schedule(spec, schedule, epochs):
    """Warn when the objective ``iwae`` is trained with β ≠ 1 at some point of ``schedule``
    (checked at the start of every epoch up to ``epochs`` and at the end): there β tempers the
    latent part of each importance weight and the loss is not linear in β."""
    name = spec if isinstance(spec, str) else spec.get("name")
    if name != "iwae":
        return
    values = [schedule(float(t)) for t in range(int(epochs) + 1)]
    betas = [b for value in values for b in (value if isinstance(value, (list, tuple)) else [value])]
    if any(b != 1 for b in betas):
        warnings.warn(
            f"objective 'iwae' with a β schedule (β from {min(betas):g} to {max(betas):g}): β tempers "
            "the latent part of each importance weight, log w = log p(x|z) + β·(log p(z) − log q(z|x)), "
            "so the loss is not the IWAE bound plus β·KL and is not linear in β; only β = 1 trains "
            "the IWAE bound.",
            stacklevel=2,
        )


def check_compatible(spec, vae):
    """Warn where ``elbo-analytic`` has no closed-form KL for the top layer.

    ``TraceMeanField_ELBO`` computes KL(q(z_l|·) ‖ p(z_l|·)) site by site, which is the
    ELBO's latent term only when p(z_l|·) depends on nothing the guide draws after z_l. The
    library's bottom-up guide draws z_l (l < L) before z_{l+1}, so those sites carry no
    closed-form KL to the model's (see :class:`pyro_vae.VAE`) and Pyro uses the Monte Carlo
    term for them: the loss is the ELBO with either guide. Priors without a closed-form KL
    (mixtures, VampPrior, flows, Student-t) make Pyro fall back to the Monte Carlo term
    log q(z|x) − log p(z) for the top layer too, which is correct but noisier; the warning
    says so.
    """
    name = spec if isinstance(spec, str) else spec.get("name")
    if name != "elbo-analytic":
        return
    if hasattr(vae, "prior") and not analytic_kl_available(vae.prior):
        start = getattr(vae.prior, "start_epoch", 0)
        when = f" once it starts after epoch {start} (N(0, I) until then, in closed form)" if start else ""
        warnings.warn(
            f"elbo-analytic: the prior {type(vae.prior).__name__} has no closed-form KL to the "
            f"Gaussian guide{when}, so the KL of the top layer falls back to a Monte Carlo "
            "estimate (log q(z|x) − log p(z) at the sampled z), as with the objective 'elbo'.",
            stacklevel=2,
        )
