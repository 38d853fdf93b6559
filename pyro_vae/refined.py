r"""Locally refined proposals and the inference-gap decomposition (Cremer, Li & Duvenaud 2018).

For each data point separately, a diagonal Gaussian :math:`q^*(u) = \mathcal N(\mu, \mathrm{diag}\,\sigma^2)`
on the unconstrained latent space (:class:`~pyro_vae.latent_space.LatentSpace`) is fitted
by maximising that point's ELBO

.. math::

    \mathcal L[q^*] = \mathbb E_{q^*}\big[\log p(x, z(u)) + \log|\det \partial z/\partial u|\big]
        + \textstyle\sum_d \log \sigma_d + \tfrac D2 \log(2\pi e)

with reparameterised gradients and Adam, started at the amortised guide :math:`q(z \mid x)`
(exactly, when the guide is a diagonal Gaussian on the real line; at the moments of its draws
otherwise). All points are optimised at once, each with its own parameters; Adam is
element-wise, so the points do not interact. :math:`\log p(x)` is then estimated by importance
sampling with :math:`q^*` (optionally the defensive mixture
:math:`(1 - \alpha) q^* + \alpha q`, sampled in fixed proportions and weighted with the
mixture's density, which keeps the estimate unbiased), with Pareto :math:`\hat k`, ESS and
the standard error of :func:`~pyro_vae.log_likelihood`.

The **inference gap** :math:`\log p(x) - \mathcal L[q]` splits into the *approximation gap*
:math:`\log p(x) - \mathcal L[q^*]` (what the guide's family cannot do) and the *amortisation
gap* :math:`\mathcal L[q^*] - \mathcal L[q]` (what the encoder does not do for this point).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import PyroVAEError
from .latent_space import LatentSpace, diagonal_normal_log_prob
from .marginal import MarginalLikelihood, _check_x, _StreamingWeights, warn_if_unreliable
from .psis import khat_threshold
from .validation import check_int, check_number

__all__ = ["RefinedLikelihood", "refine", "refined_log_likelihood"]

_ROWS_PER_CALL = 4096


@dataclass
class RefinedLikelihood(MarginalLikelihood):
    r"""A :class:`~pyro_vae.marginal.MarginalLikelihood` of importance sampling with the
    refined proposal, with the two ELBOs of the gap decomposition (all ``(N,)``).

    ``elbo`` is :math:`\mathcal L[q]` of the amortised guide and ``elbo_refined``
    :math:`\mathcal L[q^*]`; ``khat``, ``ess`` and ``stderr`` are those of the refined
    proposal's weights.
    """

    elbo_refined: torch.Tensor = None

    PER_POINT = (*MarginalLikelihood.PER_POINT, "elbo_refined")

    @classmethod
    def from_per_point(cls, per_point, num_samples):
        return cls(**{name: per_point[name] for name in cls.PER_POINT}, num_samples=num_samples,
                   khat_threshold=khat_threshold(num_samples))

    @property
    def approximation_gap(self) -> torch.Tensor:
        r""":math:`\log \hat p(x) - \mathcal L[q^*]`."""
        return self.log_px - self.elbo_refined

    @property
    def amortisation_gap(self) -> torch.Tensor:
        r""":math:`\mathcal L[q^*] - \mathcal L[q]`."""
        return self.elbo_refined - self.elbo

    def summary(self):
        out = super().summary()
        out.update(elbo_refined_mean=float(self.elbo_refined.mean()),
                   approximation_gap_mean=float(self.approximation_gap.mean()),
                   amortisation_gap_mean=float(self.amortisation_gap.mean()))
        return out


def refine(space: LatentSpace, num_steps: int = 200, num_particles: int = 8, lr: float = 0.05,
           init_draws: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(mu, sigma)``, each ``(B, D)``: the per-point diagonal Gaussian on ``u`` after
    ``num_steps`` Adam steps on the ELBO with ``num_particles`` reparameterised draws, the
    learning rate falling from ``lr`` to ``lr / 100`` on a cosine (so the last steps average
    the gradient noise out).

    The gradients come from the scores: with :math:`u = \mu + \sigma\epsilon` and
    :math:`g = \nabla_u[\log p(x, z) + \log|J|]`,
    :math:`\nabla_\mu \mathcal L = \mathbb E[g]` and
    :math:`\nabla_{\log\sigma} \mathcal L = \mathbb E[g\,\epsilon\,\sigma] + 1`.
    """
    mu, sigma = space.guide_moments(init_draws)
    mu, log_sigma = mu.detach().clone(), sigma.log().detach().clone()
    optimiser = torch.optim.Adam([mu.requires_grad_(), log_sigma.requires_grad_()], lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(num_steps, 1), eta_min=lr / 100)
    for _ in range(num_steps):
        eps = torch.randn(num_particles, *mu.shape, dtype=mu.dtype, device=mu.device)
        sigma = log_sigma.detach().exp()
        s = space.scores(mu.detach() + sigma * eps, grads=("joint", "jacobian"))
        if s.grad_joint is None:
            break
        g = s.grad_joint if s.grad_jacobian is None else s.grad_joint + s.grad_jacobian
        g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        mu.grad = -g.mean(0)
        log_sigma.grad = -((g * eps).mean(0) * sigma + 1.0)
        optimiser.step()
        decay.step()
    return mu.detach(), log_sigma.detach().exp()


def refined_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 1000,
    refine_steps: int = 200,
    refine_particles: int = 8,
    lr: float = 0.05,
    mixture: float = 0.0,
    elbo_samples: int = 100,
    batch_size: int | None = None,
    progress: bool = False,
) -> RefinedLikelihood:
    r"""Importance-sampled :math:`\log p(x_n)` with a proposal refined for each point.

    Args:
        model, guide: as for :func:`~pyro_vae.log_likelihood` (continuous latents inside the
            ``"data"`` plate, sampled in both).
        num_samples: :math:`K`, importance samples per point.
        refine_steps, refine_particles, lr: Adam steps, reparameterised draws per step and
            learning rate of :func:`refine`.
        mixture: :math:`\alpha`, the share of draws from the amortised guide (a defensive
            mixture, :math:`0 \le \alpha < 1`; 0: the refined proposal alone).
        elbo_samples: draws for each of the two ELBOs :math:`\mathcal L[q]`, :math:`\mathcal L[q^*]`.
        batch_size: points per model call (default: about 4096 rows of draws x points).
        progress: a tqdm bar over the batches.
    """
    num_samples = check_int(num_samples, "num_samples")
    refine_steps = check_int(refine_steps, "refine_steps", minimum=0)
    refine_particles = check_int(refine_particles, "refine_particles")
    elbo_samples = check_int(elbo_samples, "elbo_samples")
    check_number(lr, "lr", greater_than=0.0)
    check_number(mixture, "mixture", minimum=0.0, less_than=1.0)
    if guide is None:
        raise PyroVAEError("refined importance sampling starts from the guide; it needs one")
    x = _check_x(x)
    chunk = min(num_samples, 256)
    batch_size = check_int(batch_size, "batch_size", allow_none=True) or max(1, _ROWS_PER_CALL // chunk)
    starts = range(0, x.shape[0], batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts), desc="refined IS", unit="batch")
    parts = []
    try:
        for i in starts:
            space = LatentSpace(model, guide, x[i : i + batch_size])
            mu, sigma = refine(space, refine_steps, refine_particles, lr)
            parts.append(_estimate_batch(space, mu, sigma, num_samples, chunk, mixture, elbo_samples))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    out = {k: torch.cat([p[k].cpu() for p in parts]) for k in RefinedLikelihood.PER_POINT}
    result = RefinedLikelihood(**out, num_samples=num_samples, khat_threshold=khat_threshold(num_samples))
    warn_if_unreliable(result)
    return result


def _estimate_batch(space, mu, sigma, num_samples, chunk, mixture, elbo_samples):
    stats = _StreamingWeights(space.batch, num_samples, mu.device)
    log_mix = (math.log(mixture) if mixture > 0 else -math.inf, math.log1p(-mixture))
    done = 0
    while done < num_samples:
        n = min(chunk, num_samples - done)
        from_guide = round(mixture * n)
        refined = mu + sigma * torch.randn(n - from_guide, *mu.shape, dtype=mu.dtype, device=mu.device)
        u = torch.cat([space.draw_guide(from_guide), refined]) if from_guide else refined
        s = space.scores(u, guide=mixture > 0)
        log_q = log_mix[1] + diagonal_normal_log_prob(u, mu, sigma)
        if mixture > 0:
            log_q = torch.logaddexp(log_q, log_mix[0] + s.log_guide + s.log_jacobian)
        stats.update((s.log_joint + s.log_jacobian - log_q).double().transpose(0, 1))
        done += n
    out = stats.finalize()
    u = space.draw_guide(elbo_samples)
    s = space.scores(u, guide=True)
    out["elbo"] = (s.log_joint - s.log_guide).double().mean(0)
    u = mu + sigma * torch.randn(elbo_samples, *mu.shape, dtype=mu.dtype, device=mu.device)
    s = space.scores(u)
    log_q = diagonal_normal_log_prob(u, mu, sigma)
    out["elbo_refined"] = (s.log_joint + s.log_jacobian - log_q).double().mean(0)
    return out
