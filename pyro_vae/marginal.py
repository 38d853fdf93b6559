r"""Importance-sampled marginal likelihood :math:`\log p(x)` for any Pyro model/guide pair.

For a data point :math:`x` and a proposal :math:`q(z \mid x)` (the guide),

.. math::

    \log \hat p(x) = \operatorname{logsumexp}_{k=1}^{K} w_k - \log K, \qquad
    w_k = \log p(x, z_k) - \log q(z_k \mid x), \quad z_k \sim q(z \mid x),

the importance-weighted bound of Burda et al. (2016), a consistent estimator of
:math:`\log p(x)` that is a lower bound in expectation for every :math:`K`.

Conventions (those of :mod:`pyro_vae.traces`; the estimator is generic over models written as
``model(x)`` / ``guide(x)``):

* The batch dimension is the ``pyro.plate("data", ...)``; each data point gets its own
  estimate. For every sample site the log-density is summed over all batch dims except the
  particle dim and the ``"data"`` plate's dim (and over the event dims).
* Densities are **unscaled and unmasked**: ``site["fn"].log_prob(site["value"])``, so
  ``poutine.scale`` (e.g. a KL weight :math:`\beta`) and ``poutine.mask`` (e.g.
  :math:`\beta = 0`) do not change the estimate. Masks written into the distribution
  itself (``fn.mask(...)``) are part of the density and are respected.
* A latent site enters the weight only if it is sampled in the guide *and* the model.
  Model-only latents are drawn from their prior, so their :math:`p/q` ratio is 1;
  guide-only (auxiliary) latents are treated as part of an extended target whose
  conditional equals the proposal, which keeps the estimator unbiased for :math:`p(x)`.
  Observed sites (``obs=...``, ``pyro.factor``) of the model make up :math:`\log p(x \mid z)`.
* Latents outside the ``"data"`` plate (global latents) are treated as part of every
  point's proposal: their :math:`\log p - \log q` is added to every point's weight. Each
  point's estimate is then a valid estimate of that point's own marginal
  :math:`p(x_n) = \int p(x_n \mid z_g, z_n)\, p(z_g) p(z_n) \,dz`, but the per-point values
  do not add up to :math:`\log p(x_{1:N})` (which couples the points through :math:`z_g`).

Memory does not grow with :math:`K`: samples are drawn in chunks under an outer particle
plate (the idea of Pyro's ``vectorize_particles``) and reduced by a streaming logsumexp in
float64; only the :math:`M + 1 = \lceil\min(K/5, 3\sqrt K)\rceil + 1` largest log weights per
point are kept for the Pareto :math:`\hat k` diagnostic (PSIS, Vehtari et al. 2024;
:mod:`pyro_vae.psis`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pyro_vae.errors import DataError, ImportanceSamplingWarning, PyroVAEError
from pyro_vae.psis import MIN_TAIL, kept_top, khat_from_top, khat_threshold, tail_length
from pyro_vae.traces import (
    DATA_PLATE,
    data_frame,
    latent_sites,
    log_densities,
    max_plate_nesting,
    sample_sites,
    trace_model_and_guide,
)
from pyro_vae.validation import check_int

__all__ = [
    "ImportanceSamplingWarning",
    "MarginalLikelihood",
    "log_likelihood",
    "mean_and_stderr",
    "naive_log_likelihood",
]

STDERR_KHAT = 0.5
"""Above this Pareto k̂ the weights have infinite variance and ``stderr`` understates the error
(the estimate itself stays usable up to ``khat_threshold``); see :func:`warn_if_unreliable`."""

# Per model call, at most this many float elements of data x particles (about 16 MB of
# float32 for a tensor the size of the data); the (particle, point) pairs are clamped below.
_ELEMENT_BUDGET = 2**22
_MIN_PAIRS, _MAX_PAIRS = 256, 2**16


# --------------------------------------------------------------------------------------
# Result object
# --------------------------------------------------------------------------------------


@dataclass
class MarginalLikelihood:
    r"""Per-point importance-sampling estimate of :math:`\log p(x)` and its diagnostics.

    All tensors have shape ``(N,)``, dtype float64, on the CPU.

    Attributes:
        log_px: :math:`\log \hat p(x) = \log \frac1K \sum_k e^{w_k}`.
        stderr: delta-method standard error of ``log_px``,
            :math:`\sqrt{\widehat{\mathrm{Var}}(e^{w})/K} / \overline{e^{w}}
            = \sqrt{(K/\mathrm{ESS} - 1)/(K - 1)}` (unbiased variance; NaN for ``K = 1``).
            It is only trustworthy where ``khat`` is below ``khat_threshold``.
        ess: effective sample size of the normalised weights,
            :math:`(\sum_k e^{w_k})^2 / \sum_k e^{2 w_k} \in [1, K]`.
        khat: Pareto :math:`\hat k` of the weights (PSIS). ``inf`` when ``K`` is too small
            for a tail fit (``K <= 20``); ``-inf`` when the largest weights tie (weights that
            are numerically constant at the top, e.g. an exact proposal); NaN when every
            weight is zero.
        elbo: :math:`\frac1K \sum_k w_k`, a Monte Carlo estimate of the ELBO
            (for :func:`naive_log_likelihood`, :math:`\mathbb E_{p(z)} \log p(x \mid z)`).
        num_samples: :math:`K`.
        khat_threshold: :math:`\min(1 - 1/\log_{10} K, 0.7)`.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    elbo: torch.Tensor
    num_samples: int
    khat_threshold: float

    PER_POINT = ("log_px", "stderr", "ess", "khat", "elbo")
    """The per-point fields, as :meth:`per_point` returns them."""

    @property
    def num_points(self) -> int:
        return int(self.log_px.shape[0])

    def per_point(self) -> dict[str, torch.Tensor]:
        """The per-point tensors by name (:data:`PER_POINT`), as ``pyro-vae evaluate`` saves them."""
        return {name: getattr(self, name) for name in self.PER_POINT}

    @classmethod
    def from_per_point(cls, per_point: dict[str, torch.Tensor], num_samples: int) -> MarginalLikelihood:
        """The result whose :meth:`per_point` is ``per_point`` (e.g. batches concatenated)."""
        fields = {name: per_point[name] for name in cls.PER_POINT}
        return cls(**fields, num_samples=num_samples, khat_threshold=khat_threshold(num_samples))

    @property
    def inference_gap(self) -> torch.Tensor:
        r"""``log_px - elbo``: an estimate of :math:`\mathrm{KL}(q(z \mid x) \,\|\, p(z \mid x))`.

        Up to Monte Carlo error; biased low for small ``K`` since ``log_px`` is.
        """
        return self.log_px - self.elbo

    @property
    def bad_khat(self) -> torch.Tensor:
        """Boolean mask of the points whose ``khat`` exceeds ``khat_threshold``."""
        return self.khat > self.khat_threshold

    @property
    def khat_frac_bad(self) -> float:
        return float(self.bad_khat.double().mean()) if self.num_points else 0.0

    def mean(self) -> tuple[float, float]:
        """Data-set mean of ``log_px`` and its standard error (:func:`mean_and_stderr`)."""
        return mean_and_stderr(self.log_px, self.stderr)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (plain Python ``float``/``int`` values).

        ``khat_mean`` is over the finite ``khat`` values (NaN if none is finite),
        ``khat_median`` over the non-NaN ones; ``khat_frac_bad`` is the fraction of points
        with ``khat > khat_threshold``.
        """
        mean, se = self.mean()
        k = self.khat.double()
        finite = k[torch.isfinite(k)]
        not_nan = k[~torch.isnan(k)]
        return {
            "log_px_mean": mean,
            "log_px_stderr": se,
            "khat_mean": float(finite.mean()) if finite.numel() else math.nan,
            "khat_median": _median(not_nan),
            "khat_frac_bad": self.khat_frac_bad,
            "khat_frac_over_half": float((k > STDERR_KHAT).double().mean()) if self.num_points else 0.0,
            "ess_mean": float(self.ess.double().mean()) if self.num_points else math.nan,
            "num_samples": int(self.num_samples),
            "num_points": self.num_points,
        }


def mean_and_stderr(log_px: torch.Tensor, stderr: torch.Tensor) -> tuple[float, float]:
    r"""Data-set mean of per-point estimates ``log_px`` and its standard error.

    .. math::

        \bar\ell = \frac1N \sum_n \log\hat p(x_n), \qquad
        \mathrm{se}(\bar\ell) = \sqrt{\frac{s^2}{N} + \frac{1}{N}\cdot\frac1N\sum_n
        \mathrm{se}_n^2},

    with :math:`s^2` the sample variance (ddof 1) of ``log_px`` over the points (the
    spread of the data, taken as 0 for ``N = 1``) and :math:`\mathrm{se}_n` the per-point
    Monte Carlo standard errors ``stderr``. The first term is the sampling error of the data
    set, the second the Monte Carlo error of the estimates; since :math:`s^2` already contains
    the Monte Carlo variance, the sum is conservative. For large ``K`` the second term is
    negligible.
    """
    n = int(log_px.shape[0])
    if n == 0:
        return math.nan, math.nan
    lp = log_px.double()
    data_var = float(lp.var(unbiased=True)) if n > 1 else 0.0
    mc_var = float((stderr.double() ** 2).mean())
    return float(lp.mean()), math.sqrt(data_var / n + mc_var / n)


def _median(values: torch.Tensor) -> float:
    if values.numel() == 0:
        return math.nan
    with np.errstate(invalid="ignore"):
        return float(np.median(values.cpu().numpy()))


# --------------------------------------------------------------------------------------
# Streaming reduction over samples
# --------------------------------------------------------------------------------------


class _StreamingWeights:
    r"""Running per-point statistics of log weights, fed in chunks of shape ``(B, S)``.

    Keeps, per point, the running max :math:`m`, :math:`s_1 = \sum_k e^{w_k - m}`,
    :math:`s_2 = \sum_k e^{2(w_k - m)}` (rescaled when :math:`m` grows), :math:`\sum_k w_k`
    and the :math:`M+1` largest :math:`w_k` (a streaming top-k merge), all in float64, so
    memory is :math:`O(B\sqrt K)` whatever the number of chunks.
    """

    def __init__(self, batch: int, num_samples: int, device: torch.device):
        self.num_samples = num_samples
        self.kept = kept_top(num_samples)
        kw = {"dtype": torch.float64, "device": device}
        self.max = torch.full((batch,), -math.inf, **kw)
        self.s1 = torch.zeros(batch, **kw)
        self.s2 = torch.zeros(batch, **kw)
        self.sum_w = torch.zeros(batch, **kw)
        self.top = torch.empty((batch, 0), **kw)
        self.count = 0

    def update(self, lw: torch.Tensor) -> None:
        lw = lw.to(dtype=torch.float64, device=self.max.device)
        new_max = torch.maximum(self.max, lw.max(dim=1).values)
        ref = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        old = torch.exp(self.max - ref)  # 0 while nothing (finite) has been seen
        shifted = lw - ref[:, None]
        self.s1 = self.s1 * old + torch.exp(shifted).sum(dim=1)
        self.s2 = self.s2 * old**2 + torch.exp(2.0 * shifted).sum(dim=1)
        self.max = new_max
        self.sum_w = self.sum_w + lw.sum(dim=1)
        self.count += lw.shape[1]
        merged = torch.cat([self.top, lw], dim=1)
        self.top = merged.topk(min(self.kept, merged.shape[1]), dim=1, sorted=True).values

    def finalize(self) -> dict[str, torch.Tensor]:
        k = self.count
        log_s1, log_s2 = torch.log(self.s1), torch.log(self.s2)
        log_px = self.max + log_s1 - math.log(k)
        ess = torch.exp(2.0 * log_s1 - log_s2)
        if k > 1:
            rel_var = (k * torch.exp(log_s2 - 2.0 * log_s1) - 1.0).clamp(min=0.0)
            stderr = torch.sqrt(rel_var / (k - 1))
        else:
            stderr = torch.full_like(log_px, math.nan)
        khat = khat_from_top(self.top.cpu().numpy(), k)
        return {
            "log_px": log_px,
            "stderr": stderr,
            "ess": ess,
            "khat": torch.as_tensor(khat, dtype=torch.float64),
            "elbo": self.sum_w / k,
        }


# --------------------------------------------------------------------------------------
# Traces -> per-point log weights
# --------------------------------------------------------------------------------------


def _inspect(model: Callable, guide: Callable | None, x: torch.Tensor) -> int:
    """Trace once without particles: return max_plate_nesting and check the plate layout."""
    model_trace, guide_trace = trace_model_and_guide(model, guide, x)
    if not any(data_frame(s) is not None for s in sample_sites(model_trace).values()):
        raise PyroVAEError(
            f"the model has no sample site inside a pyro.plate named {DATA_PLATE!r}; "
            "log_likelihood needs the batch dimension of x declared as "
            f"`with pyro.plate({DATA_PLATE!r}, x.shape[0]): ...`"
        )
    for name, (msite, gsite) in latent_sites(model_trace, guide_trace).items():
        if (data_frame(msite) is None) != (data_frame(gsite) is None):
            where = "model" if data_frame(msite) is not None else "guide"
            raise PyroVAEError(
                f"latent site {name!r} is inside the {DATA_PLATE!r} plate only in the {where}; "
                "declare it inside the plate in both model and guide so that its density "
                "can be attributed to individual data points"
            )
    return max_plate_nesting(model_trace, guide_trace)


def _accumulation_device(device: torch.device) -> torch.device:
    """Where float64 sums live: the data's device, except MPS (no float64 there)."""
    return torch.device("cpu") if device.type == "mps" else device


def _log_weights(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    num: int,
    nesting: int,
    pending: list | None = None,
) -> torch.Tensor:
    r"""Log weights :math:`w_{nk}` of shape ``(N_batch, num)`` for one chunk of ``num`` draws.

    NaN or :math:`+\infty` weights raise :class:`PyroVAEError` here, which reads a flag from
    the device; with ``pending`` (a list) the flags are appended to it instead, as a device
    tensor, for :func:`_check_pending` to read once for many chunks.
    """
    batch = x.shape[0]
    acc_device = _accumulation_device(x.device)
    traces = trace_model_and_guide(model, guide, x, num_particles=num, max_plate_nesting=nesting)
    observed, latent = log_densities(*traces, batch, num, dtype=torch.float64, device=acc_device)
    terms = [(name, lp - lq) for name, (lp, lq) in latent.items()] + list(observed.items())
    total = sum((t for _, t in terms), torch.zeros(num, batch, dtype=torch.float64, device=acc_device))
    if pending is not None:
        flags = torch.stack([_any_bad(total), *(_any_bad(t) for _, t in terms)])
        pending.append(([n for n, _ in terms], flags))
    elif bool(_any_bad(total)):
        _raise_bad([n for n, t in terms if bool(_any_bad(t))] or [n for n, _ in terms])
    return total.transpose(0, 1)


def _any_bad(w: torch.Tensor) -> torch.Tensor:
    return (torch.isnan(w) | (w == math.inf)).any()


def _raise_bad(culprits: list[str]) -> None:
    raise PyroVAEError(
        "importance weights are NaN or +inf (log p(x, z) - log q(z | x) from sites "
        f"{culprits}); check the model and guide for NaN parameters or zero scales"
    )


def _check_pending(pending: list) -> None:
    """Raise as :func:`_log_weights` would for the first chunk in ``pending`` with bad weights
    (one read from the device for all of them)."""
    if not pending:
        return
    flags = torch.stack([f for _, f in pending]).tolist()
    for (names, _), (total_bad, *term_bad) in zip(pending, flags):
        if total_bad:
            _raise_bad([n for n, bad in zip(names, term_bad) if bad] or names)
    pending.clear()


def _defer_checks(device: torch.device) -> bool:
    """Whether the NaN checks of the chunk loop wait for the end of a batch of points: on
    accelerators, so that the host can queue the next chunk while the device computes (a read
    per chunk would make it wait); on the CPU reading the flag costs nothing."""
    return device.type != "cpu"


# --------------------------------------------------------------------------------------
# Public estimators
# --------------------------------------------------------------------------------------


def _check_x(x: Any) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise DataError(
            f"x must be a torch.Tensor with the data points along dim 0, got {type(x).__name__}"
        )
    if x.dim() == 0:
        raise DataError("x must have a leading data dimension (got a 0-d tensor)")
    if x.shape[0] == 0 or x.numel() == 0:
        raise DataError(f"x is empty (shape {tuple(x.shape)}); need at least one data point")
    if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1)
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise DataError(
            f"x contains NaN or infinite values in {int(bad.sum())} of {x.shape[0]} data "
            f"points (first rows: {rows}); log p(x) is undefined for them"
        )
    return x


def _sizes(
    x: torch.Tensor, num_samples: int, chunk_size: int | None, batch_size: int | None
) -> tuple[int, int]:
    """Default (batch, chunk): at most ~_ELEMENT_BUDGET data elements x particles per call."""
    n = x.shape[0]
    per_point = max(1, x[0].numel())
    pairs = min(max(_ELEMENT_BUDGET // per_point, _MIN_PAIRS), _MAX_PAIRS)
    if batch_size is None:
        if chunk_size is None:
            batch_size = max(1, pairs // min(num_samples, 32))
        else:
            batch_size = max(1, pairs // chunk_size)
    if chunk_size is None:
        chunk_size = max(1, pairs // min(batch_size, n))
    return min(batch_size, n), min(chunk_size, num_samples)


def _estimate(
    model: Callable,
    guide: Callable | None,
    x: Any,
    num_samples: int,
    chunk_size: int | None,
    batch_size: int | None,
    progress: bool,
) -> MarginalLikelihood:
    if not callable(model) or (guide is not None and not callable(guide)):
        raise PyroVAEError("model and guide must be callables taking the data batch x")
    num_samples = check_int(num_samples, "num_samples")
    chunk_size = check_int(chunk_size, "chunk_size", allow_none=True)
    batch_size = check_int(batch_size, "batch_size", allow_none=True)
    x = _check_x(x)
    batch_size, chunk_size = _sizes(x, num_samples, chunk_size, batch_size)
    acc_device = _accumulation_device(x.device)
    n = x.shape[0]
    starts = list(range(0, n, batch_size))
    chunks = [min(chunk_size, num_samples - s) for s in range(0, num_samples, chunk_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts) * len(chunks), desc="log p(x)", unit="chunk")
    results: list[dict[str, torch.Tensor]] = []
    try:
        with torch.no_grad():
            nesting = _inspect(model, guide, x[:batch_size])
            for start in starts:
                xb = x[start : start + batch_size]
                stats = _StreamingWeights(xb.shape[0], num_samples, acc_device)
                pending = [] if _defer_checks(acc_device) else None
                for num in chunks:
                    stats.update(_log_weights(model, guide, xb, num, nesting, pending))
                    if bar is not None:
                        bar.update(1)
                if pending is not None:
                    _check_pending(pending)
                results.append({k: v.cpu() for k, v in stats.finalize().items()})
    finally:
        if bar is not None:
            bar.close()
    out = {k: torch.cat([r[k] for r in results]) for k in results[0]}
    result = MarginalLikelihood(
        num_samples=num_samples, khat_threshold=khat_threshold(num_samples), **out
    )
    warn_if_unreliable(result)
    return result


def warn_if_unreliable(result: MarginalLikelihood) -> None:
    """Warn (:class:`ImportanceSamplingWarning`) about points whose estimate cannot be trusted.

    The rule, measured on linear-Gaussian models with known log p(x) by
    ``benchmarks/khat_calibration.py``: with k̂ ≤ :data:`STDERR_KHAT` (0.5) the standard
    error is calibrated; with 0.5 < k̂ ≤ ``khat_threshold`` the estimate is nearly unbiased
    but its standard error is too small (one warning); above the threshold the estimate
    itself is unreliable (another warning).
    """
    n_zero = int((result.log_px == -math.inf).sum())
    if n_zero:
        warnings.warn(
            f"all {result.num_samples} importance weights are zero (p(x, z) = 0 for every "
            f"sample) for {n_zero} of {result.num_points} data points: their log_px is -inf",
            ImportanceSamplingWarning,
            stacklevel=4,
        )
    n_bad = int(result.bad_khat.sum())
    n_soft = int(((result.khat > STDERR_KHAT) & ~result.bad_khat).sum())
    if n_soft:
        warnings.warn(
            f"Pareto k-hat is between {STDERR_KHAT} and {result.khat_threshold:.2f} for {n_soft} of "
            f"{result.num_points} data points: their log p(x) is usable, but the importance weights have "
            "infinite variance, so their stderr understates the error (2 standard errors covered the truth "
            "for 68-90 % of such points instead of 95 % in benchmarks/khat_calibration.py).",
            ImportanceSamplingWarning,
            stacklevel=4,
        )
    if n_bad == 0:
        return
    k = result.num_samples
    if tail_length(k) < MIN_TAIL:
        msg = (
            f"Pareto k-hat cannot be estimated from num_samples={k} (the PSIS tail fit needs "
            f"num_samples >= 21), so the reliability of log p(x) is unknown for all "
            f"{result.num_points} points."
        )
    else:
        worst = float(result.khat[result.bad_khat].max())
        msg = (
            f"Pareto k-hat exceeds the threshold {result.khat_threshold:.2f} for {n_bad} of "
            f"{result.num_points} data points (max {worst:.2f}): the importance weights are "
            "heavy-tailed, so log p(x) for these points is unreliable (likely "
            "underestimated, with a stderr that is too small). Use more samples or a better "
            "guide (proposal)."
        )
    warnings.warn(msg, ImportanceSamplingWarning, stacklevel=4)


def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 5000,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> MarginalLikelihood:
    r"""Importance-sampled :math:`\log p(x_n)` for every data point, using the guide as proposal.

    .. math::

        \log \hat p(x_n) = \log \frac1K \sum_{k=1}^K
        \exp\big(\log p(x_n, z_{nk}) - \log q(z_{nk} \mid x_n)\big),
        \quad z_{nk} \sim q(z \mid x_n).

    Args:
        model: ``model(x)`` with a ``pyro.plate("data", x.shape[0])`` over the data points,
            any number of latent sites (hierarchies included) and observed sites.
        guide: ``guide(x)`` sampling the latents (same site names, same ``"data"`` plate).
        x: tensor of data points along dim 0 (the estimate is computed on its device).
        num_samples: :math:`K`, importance samples per data point.
        chunk_size: samples per model call. Default: chosen with ``batch_size`` so that
            chunk x batch x ``x[0].numel()`` stays near 2**22 elements, with chunk x batch
            clamped to [256, 65536] (pairs of sample and data point per model call).
        batch_size: data points per model call (default: see ``chunk_size``). Memory is
            O(batch x (chunk + sqrt(K))) whatever ``num_samples``.
        progress: show a tqdm progress bar over chunks.

    Returns:
        :class:`MarginalLikelihood`. Densities ignore ``poutine.scale`` and ``poutine.mask``
        (the estimate is of the unannealed model); latents outside the ``"data"`` plate are
        treated as part of each point's proposal (see the module docstring). Warns with
        :class:`ImportanceSamplingWarning` when some :math:`\hat k` exceeds
        :math:`\min(1 - 1/\log_{10} K, 0.7)`.

    Raises:
        PyroVAEError: ``num_samples``/``chunk_size``/``batch_size`` not positive integers, a
            model without a ``"data"`` plate, or NaN weights. :class:`DataError` (a subclass)
            when ``x`` is not a tensor, is empty or holds NaN/inf.
    """
    if guide is None:
        raise PyroVAEError("log_likelihood needs a guide; use naive_log_likelihood for the prior")
    return _estimate(model, guide, x, num_samples, chunk_size, batch_size, progress)


def naive_log_likelihood(
    model: Callable,
    x: torch.Tensor,
    num_samples: int = 5000,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> MarginalLikelihood:
    r"""Prior-sampling estimate :math:`\log \frac1K \sum_k p(x_n \mid z_k)`, :math:`z_k \sim p(z)`.

    The model runs under the particle plate with every latent drawn from its prior; the
    weights are the observed sites' :math:`\log p(x_n \mid z_k)` and ``elbo`` is
    :math:`\frac1K\sum_k \log p(x_n \mid z_k)`. Unbiased for :math:`p(x)` but with a variance
    that grows exponentially with the dimension of the data, so it is a baseline only.
    Same arguments, chunking and result type as :func:`log_likelihood`.
    """
    return _estimate(model, None, x, num_samples, chunk_size, batch_size, progress)
