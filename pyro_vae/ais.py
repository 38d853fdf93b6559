r"""Annealed importance sampling (AIS) of :math:`\log p(x)` per data point, and BDMC bounds.

AIS (Neal 2001) moves each of ``C`` chains through intermediate densities on the
unconstrained latent space (:class:`~pyro_vae.latent_space.LatentSpace`),

.. math::

    f_t(z) = q_0(z)^{1 - \beta_t}\, p(x, z)^{\beta_t}, \qquad 0 = \beta_0 < \dots < \beta_T = 1,

from the guide :math:`q_0 = q(z \mid x)` (or the prior :math:`p(z)`) to the joint, with one
Hamiltonian Monte Carlo transition leaving :math:`f_t` invariant at each step, and weights

.. math::

    \log w = \sum_{t=1}^{T} (\beta_t - \beta_{t-1})
        \big[\log p(x, z_{t-1}) - \log q_0(z_{t-1})\big],
    \qquad \mathbb E[w] = p(x),

so :math:`\log \hat p(x) = \log \frac1C \sum_c w_c` is a stochastic lower bound
(Grosse, Ghahramani & Adams 2015; Wu, Burda, Salakhutdinov & Grosse 2017).

Step sizes are adapted per data point towards ``target_accept`` by ``pilot_chains`` extra
chains that run beside the others and do not enter the estimate; the chains that do use the
pilots' step size of the step before, which depends on none of their own draws, so the
estimate stays exactly unbiased for :math:`p(x)`. The schedule is sigmoidal by default
(:func:`annealing_schedule`). Memory does not grow with the number of steps.

**BDMC** (Grosse et al. 2015): on data simulated from the model, :math:`(x, z^*) \sim p(x, z)`,
forward AIS gives a stochastic lower bound of :math:`\log p(x)`, and AIS run in reverse,
from the exact posterior draw :math:`z^*` back to :math:`q_0`, estimates :math:`1/p(x)`
unbiasedly, so :math:`-\log \frac1C \sum_c w^{\mathrm{rev}}_c` is a stochastic upper bound;
the gap between them bounds the error of forward AIS with that many steps on such data.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from .errors import PyroVAEError
from .latent_space import LatentSpace, Scores
from .marginal import _accumulation_device, _check_x, _StreamingWeights, mean_and_stderr
from .registry import check_options
from .validation import check_choice, check_int, check_number

__all__ = ["AISResult", "BDMCResult", "SCHEDULES", "ais", "ais_options", "annealing_schedule", "bdmc",
           "check_settings"]

SCHEDULES = ("sigmoid", "linear")
"""The names :func:`annealing_schedule` accepts."""

_ROWS_PER_CALL = 4096
"""Default (chains + pilots) x data points per model call."""


def annealing_schedule(name: str, num_steps: int, sharpness: float = 4.0) -> torch.Tensor:
    r"""Inverse temperatures :math:`\beta_0 = 0 < \dots < \beta_T = 1`, shape ``(T + 1,)``, float64.

    ``"sigmoid"`` (Grosse et al. 2015): :math:`\tilde\beta_t = \sigma(\delta (2t/T - 1))`
    rescaled to [0, 1], with :math:`\delta` = ``sharpness``: small steps at both ends, where
    the densities change fastest. ``"linear"``: :math:`\beta_t = t / T`.
    """
    check_choice(name, "schedule", SCHEDULES)
    num_steps = check_int(num_steps, "num_steps")
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if name == "linear":
        return t
    s = torch.sigmoid(sharpness * (2.0 * t - 1.0))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class AISResult:
    r"""Per-point AIS estimate of :math:`\log p(x)`; every tensor ``(N,)``, float64, on the CPU.

    Attributes:
        log_px: :math:`\log \frac1C \sum_c w_c`.
        stderr: delta-method standard error across the chains,
            :math:`\sqrt{(C/\mathrm{ESS} - 1)/(C - 1)}` (NaN for one chain).
        ess: effective sample size of the chains' weights, in [1, C].
        accept: mean HMC acceptance probability over the chains and steps.
        log_weight_mean: :math:`\frac1C \sum_c \log w_c`, the average chain's lower bound.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    accept: torch.Tensor
    log_weight_mean: torch.Tensor
    num_chains: int
    num_steps: int

    PER_POINT = ("log_px", "stderr", "ess", "accept", "log_weight_mean")

    @property
    def num_points(self) -> int:
        return int(self.log_px.shape[0])

    def per_point(self) -> dict[str, torch.Tensor]:
        """The per-point tensors by name (:data:`PER_POINT`)."""
        return {name: getattr(self, name) for name in self.PER_POINT}

    def mean(self) -> tuple[float, float]:
        """Data-set mean of ``log_px`` and its standard error (:func:`~pyro_vae.marginal.mean_and_stderr`)."""
        return mean_and_stderr(self.log_px, self.stderr)

    def summary(self) -> dict[str, Any]:
        mean, se = self.mean()
        return {
            "log_px_mean": mean,
            "log_px_stderr": se,
            "ess_mean": float(self.ess.mean()) if self.num_points else math.nan,
            "accept_mean": float(self.accept.mean()) if self.num_points else math.nan,
            "num_chains": self.num_chains,
            "num_steps": self.num_steps,
            "num_points": self.num_points,
        }


@dataclass
class BDMCResult:
    r"""BDMC bounds on simulated data; tensors ``(S, N)`` for ``S`` step counts, ``N`` points.

    Attributes:
        num_steps: the step counts, one per row.
        lower: forward AIS :math:`\log \hat p(x)` (a stochastic lower bound).
        upper: reverse AIS :math:`-\log \frac1C \sum_c w^{\mathrm{rev}}_c` (a stochastic upper bound).
        x: the simulated data, ``(N, ...)``.
    """

    num_steps: list[int]
    lower: torch.Tensor
    upper: torch.Tensor
    x: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """``upper - lower`` per step count and point."""
        return self.upper - self.lower

    def summary(self) -> list[dict[str, float]]:
        """One row per step count: the mean bounds and gap."""
        return [{"num_steps": s, "lower_mean": float(lo.mean()), "upper_mean": float(up.mean()),
                 "gap_mean": float((up - lo).mean())}
                for s, lo, up in zip(self.num_steps, self.lower, self.upper)]


# --------------------------------------------------------------------------------------
# One annealing run
# --------------------------------------------------------------------------------------


@dataclass
class _Settings:
    num_chains: int
    leapfrog_steps: int
    step_size: float
    target_accept: float
    schedule: str
    start: str
    pilot_chains: int
    adapt_rate: float = 0.05


def _log_start(s: Scores, start: str) -> torch.Tensor:
    return s.log_prior if start == "prior" else s.log_guide


def _log_target(s: Scores, beta: float, start: str) -> torch.Tensor:
    return (1.0 - beta) * _log_start(s, start) + beta * s.log_joint + s.log_jacobian


def _grad_target(s: Scores, beta: float, start: str) -> torch.Tensor:
    g = (1.0 - beta) * (s.grad_prior if start == "prior" else s.grad_guide) + beta * s.grad_joint
    return g if s.grad_jacobian is None else g + s.grad_jacobian


def _select(mask: torch.Tensor, new: Scores, old: Scores) -> Scores:
    """Field-wise ``where(mask, new, old)`` (``mask`` ``(R, B)``)."""
    out = {}
    for f in fields(Scores):
        a, b = getattr(new, f.name), getattr(old, f.name)
        if a is None:
            out[f.name] = None
        else:
            m = mask if a.dim() == 2 else mask[..., None]
            out[f.name] = torch.where(m, a, b)
    return Scores(**out)


def _scores(space: LatentSpace, u: torch.Tensor, start: str) -> Scores:
    """The scores and the gradients :func:`_grad_target` needs (zeros where a density does
    not depend on ``u``)."""
    start_grad = "prior" if start == "prior" else "guide"
    s = space.scores(u, guide=start == "guide", grads=("joint", start_grad, "jacobian"))
    for name in ("grad_joint", f"grad_{start_grad}"):
        if getattr(s, name) is None:
            setattr(s, name, torch.zeros_like(u))
    return s


def _hmc(space, u, s, beta, step, settings):
    """One HMC transition targeting f_beta, leapfrog steps ``step`` (``(1, B, D)``, the step
    size times the scale): ``(u, scores, acceptance probability (R, B))``."""
    momentum = torch.randn_like(u)
    h0 = -_log_target(s, beta, settings.start) + 0.5 * (momentum**2).sum(-1)
    p = momentum + 0.5 * step * _grad_target(s, beta, settings.start)
    v = u
    for i in range(settings.leapfrog_steps):
        v = v + step * p
        new = _scores(space, v, settings.start)
        last = i == settings.leapfrog_steps - 1
        p = p + (0.5 * step if last else step) * _grad_target(new, beta, settings.start)
    h1 = -_log_target(new, beta, settings.start) + 0.5 * (p**2).sum(-1)
    log_accept = torch.nan_to_num((h0 - h1).clamp(max=0.0), nan=-math.inf)
    accepted = torch.rand_like(log_accept).log() < log_accept
    return torch.where(accepted[..., None], v, u), _select(accepted, new, s), log_accept.exp()


def _anneal(space, u, betas, settings, num_pilots, scale, step_sizes=None, on_step=None):
    r"""Run the chains ``u`` ``(R, B, D)`` through ``betas``; the last ``num_pilots`` rows adapt
    the step size (unless ``step_sizes``, one ``(B,)`` tensor per transition, is given).
    HMC runs in the coordinates ``u / scale`` (``scale`` ``(B, D)``: a diagonal mass matrix).

    Returns ``(log_w (R - num_pilots, B) float64, mean acceptance (B,), step sizes used)``.
    """
    s = _scores(space, u, settings.start)
    start_density = _log_start(s, settings.start)
    if not bool(torch.isfinite(s.log_joint).all() and torch.isfinite(start_density).all()):
        raise PyroVAEError("log p(x, z) or log q(z | x) is not finite at the starting draws; check "
                           "the model and guide for NaN parameters or zero scales")
    chains = u.shape[0] - num_pilots
    acc = _accumulation_device(u.device)  # float64 sums: not on MPS
    log_w = torch.zeros(chains, space.batch, dtype=torch.float64, device=acc)
    eps = torch.full((space.batch,), settings.step_size, dtype=u.dtype, device=u.device)
    accept_sum = torch.zeros(space.batch, dtype=torch.float64, device=acc)
    used = []
    num_steps = len(betas) - 1
    for t in range(1, num_steps + 1):
        increment = (s.log_joint - _log_start(s, settings.start))[:chains].to(acc, torch.float64)
        log_w += float(betas[t] - betas[t - 1]) * increment
        if t < num_steps:
            if step_sizes is not None:
                eps = step_sizes[t - 1]
            used.append(eps)
            u, s, accept = _hmc(space, u, s, float(betas[t]), (eps[:, None] * scale)[None], settings)
            accept_sum += accept[:chains].to(acc, torch.float64).mean(0)
            if step_sizes is None:
                up = accept[chains:].mean(0) > settings.target_accept
                eps = eps * torch.where(up, 1.0 + settings.adapt_rate, 1.0 - settings.adapt_rate)
        if on_step is not None:
            on_step()
    return log_w, accept_sum / max(num_steps - 1, 1), used


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


SET_BY_CALLER = ("model", "guide", "x", "batch_size", "progress")
"""The arguments of :func:`ais` that are not its options."""


def ais_options(options: dict, what: str = "ais") -> dict:
    """The options of :func:`ais`: its defaults updated with ``options``, checked (a
    :class:`~pyro_vae.errors.ConfigError` names an unknown option or a bad value)."""
    check_options(ais, options, what, reserved=SET_BY_CALLER)
    params = inspect.signature(ais).parameters
    merged = {n: p.default for n, p in params.items() if n not in SET_BY_CALLER} | options
    check_settings(**merged)
    return merged


def check_settings(num_steps, num_chains, leapfrog_steps, step_size, target_accept, schedule, start,
                   pilot_chains, guide=True):
    """Check the options of :func:`ais` (a :class:`~pyro_vae.errors.ConfigError` for a bad one)."""
    check_choice(schedule, "schedule", SCHEDULES)
    check_int(num_steps, "num_steps")
    check_int(num_chains, "num_chains")
    check_int(leapfrog_steps, "leapfrog_steps")
    check_int(pilot_chains, "pilot_chains")
    check_number(step_size, "step_size", greater_than=0.0)
    check_number(target_accept, "target_accept", greater_than=0.0, less_than=1.0)
    check_choice(start, "start", ("guide", "prior"))
    if start == "guide" and guide is None:
        raise PyroVAEError("AIS from the guide needs a guide; pass start='prior' to start from p(z)")
    return _Settings(num_chains, leapfrog_steps, float(step_size), float(target_accept), schedule, start,
                     pilot_chains)


def _batches(x, rows, batch_size):
    batch_size = check_int(batch_size, "batch_size", allow_none=True) or max(1, _ROWS_PER_CALL // rows)
    return [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]


def _bar(total, desc, progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step")


def _finalize(log_w: torch.Tensor) -> dict[str, torch.Tensor]:
    """log p, stderr, ESS and mean log weight of chain weights ``(C, B)``."""
    stats = _StreamingWeights(log_w.shape[1], log_w.shape[0], log_w.device)
    stats.update(log_w.transpose(0, 1))
    out = stats.finalize()
    return {"log_px": out["log_px"], "stderr": out["stderr"], "ess": out["ess"],
            "log_weight_mean": out["elbo"]}


def ais(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    num_steps: int = 500,
    num_chains: int = 8,
    leapfrog_steps: int = 5,
    step_size: float = 0.5,
    target_accept: float = 0.65,
    schedule: str = "sigmoid",
    start: str = "guide",
    pilot_chains: int = 2,
    batch_size: int | None = None,
    progress: bool = False,
) -> AISResult:
    r"""AIS estimate of :math:`\log p(x_n)` for every data point (see the module docstring).

    Args:
        model, guide: as for :func:`~pyro_vae.log_likelihood` (a ``"data"`` plate,
            continuous latents inside it, sampled in both).
        x: data points along dim 0.
        num_steps: :math:`T`, annealing steps (:math:`T - 1` HMC transitions).
        num_chains: :math:`C`, independent chains per point in the estimate.
        leapfrog_steps: leapfrog steps per HMC transition.
        step_size: initial leapfrog step size in units of the guide's standard deviation
            (:meth:`~pyro_vae.latent_space.LatentSpace.guide_moments`, a diagonal mass
            matrix), adapted per point.
        target_accept: the acceptance probability the pilots' step size is adapted to.
        schedule: ``"sigmoid"`` or ``"linear"`` (:func:`annealing_schedule`).
        start: ``"guide"`` (anneal from :math:`q(z \mid x)`) or ``"prior"``.
        pilot_chains: chains per point that adapt the step size (left out of the estimate).
        batch_size: data points per model call (default: about 4096 rows of chains x points).
        progress: a tqdm bar over the steps.

    Densities ignore ``poutine.scale`` and ``poutine.mask``, as in :func:`~pyro_vae.log_likelihood`.
    """
    settings = check_settings(num_steps, num_chains, leapfrog_steps, step_size, target_accept, schedule,
                              start, pilot_chains, guide)
    x = _check_x(x)
    betas = annealing_schedule(schedule, num_steps)
    rows = num_chains + pilot_chains
    batches = _batches(x, rows, batch_size)
    bar = _bar(len(batches) * num_steps, "AIS", progress)
    parts = []
    try:
        for xb in batches:
            space = LatentSpace(model, guide if start == "guide" else None, xb)
            scale = space.guide_moments(64)[1]
            log_w, accept, _ = _anneal(space, space.draw_guide(rows), betas, settings, pilot_chains, scale,
                                       on_step=bar.update if bar is not None else None)
            parts.append({**_finalize(log_w), "accept": accept})
    finally:
        if bar is not None:
            bar.close()
    out = {k: torch.cat([p[k].cpu() for p in parts]) for k in AISResult.PER_POINT}
    return AISResult(**out, num_chains=num_chains, num_steps=num_steps)


def bdmc(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    num_steps: int | Sequence[int] = (10, 100, 1000),
    batch_size: int | None = None,
    progress: bool = False,
    **options: Any,
) -> BDMCResult:
    r"""BDMC lower and upper bounds of :math:`\log p(x)` on data simulated from the model.

    ``x`` gives only the shape (and device) of the simulated data: one exact draw
    :math:`(x_n, z_n^*) \sim p(x, z)` per row. For each entry of ``num_steps`` forward AIS
    from :math:`q_0` gives the lower bound and reverse AIS from :math:`z^*`, with the forward
    run's step sizes reversed, the upper bound. ``options`` are those of :func:`ais`
    (``num_chains``, ``leapfrog_steps``, ...).
    """
    steps = [num_steps] if isinstance(num_steps, int) else list(num_steps)
    if not steps:
        raise PyroVAEError("num_steps must name at least one step count")
    for s in steps:
        check_int(s, "num_steps")
    settings = check_settings(**{**ais_options(options, "bdmc"), "num_steps": steps[0]}, guide=guide)
    num_chains, start = settings.num_chains, settings.start
    x = _check_x(x)
    rows = num_chains + settings.pilot_chains
    batches = _batches(x, rows, batch_size)
    bar = _bar(2 * len(batches) * sum(steps), "BDMC", progress)
    on_step = bar.update if bar is not None else None
    lower, upper, simulated = [], [], []
    try:
        for xb in batches:
            u_star, x_sim = LatentSpace(model, guide, xb).draw_joint()
            space = LatentSpace(model, guide if start == "guide" else None, x_sim)
            simulated.append(x_sim.cpu())
            scale = space.guide_moments(64)[1]
            lo_b, up_b = [], []
            for s in steps:
                betas = annealing_schedule(settings.schedule, s)
                start_draws = space.draw_guide(rows)
                log_w, _, used = _anneal(space, start_draws, betas, settings, settings.pilot_chains, scale,
                                         on_step=on_step)
                lo_b.append(_finalize(log_w)["log_px"].cpu())
                reverse, _, _ = _anneal(space, u_star.expand(num_chains, -1, -1).clone(), betas.flip(0),
                                        settings, 0, scale, step_sizes=used[::-1], on_step=on_step)
                up_b.append(-_finalize(reverse)["log_px"].cpu())
            lower.append(torch.stack(lo_b))
            upper.append(torch.stack(up_b))
    finally:
        if bar is not None:
            bar.close()
    return BDMCResult(steps, torch.cat(lower, dim=1), torch.cat(upper, dim=1), torch.cat(simulated))
