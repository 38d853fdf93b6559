r"""Estimators of :math:`\log p(x)` per data point, chosen by name (``eval.estimator``).

``pyro-vae evaluate`` builds the estimator its config names (:func:`build_estimator`: the
``eval`` section's ``num_samples`` goes to the estimators that take one), cuts the test
split into batches, shares them out over processes
(:func:`pyro_vae.distributed.sharded_estimate`) and writes what the results report.

========================  ===============================================================
``importance``            importance sampling with the guide as proposal (the default)
``prior``                 the naive estimator, sampling the prior (a baseline)
``ais``                   annealed importance sampling with HMC (:mod:`pyro_vae.ais`)
``refined-is``            importance sampling with a proposal refined per point
                          (:mod:`pyro_vae.refined`), with both ELBOs
``gaps``                  AIS for log p(x), refinement for the gap decomposition
========================  ===============================================================

An estimator is an object with

* ``estimate(model, guide, x) -> result``: one batch of data points, with the current RNG;
* ``combine(per_point) -> result``: the result whose per-point tensors are ``per_point``
  (the batches concatenated, or ``eval_points.pt`` read back);
* ``warn(result)``: warnings about the whole data set's estimate (per-batch warnings of
  the :class:`~pyro_vae.errors.EstimatorWarning` family are held back until then);
* optionally ``cost_size`` and ``resized(size)``: a number the cost is linear in (samples,
  steps) and a copy with another one, for the timed probes of
  :func:`~pyro_vae.evaluation.estimated_seconds` (without them one batch is timed whole);
* optionally ``description``: the work in words, for the line ``pyro-vae evaluate`` prints.

A result has per-point tensors ``log_px`` and ``stderr`` of shape ``(N,)``,
``per_point() -> {name: (N,) tensor}`` (what is saved) and ``summary() -> dict`` of JSON
values with at least ``log_px_mean``, ``log_px_stderr`` and ``num_points``; it may add
``elbo`` (then ``pyro-vae evaluate`` reports the ELBO and the inference gap) and ``khat``,
``ess`` and ``num_samples`` (then it draws the importance-sampling diagnostics).
:class:`~pyro_vae.marginal.MarginalLikelihood` is such a result. A new estimator is one
class registered here (``@ESTIMATORS.register("name")``), in this module or the user's own.
"""

import warnings
from dataclasses import dataclass

import torch

from .ais import SET_BY_CALLER, AISResult, ais, ais_options
from .errors import ImportanceSamplingWarning
from .marginal import (
    MarginalLikelihood,
    log_likelihood,
    mean_and_stderr,
    naive_log_likelihood,
    warn_if_unreliable,
)
from .psis import khat_threshold
from .refined import RefinedLikelihood, refined_log_likelihood
from .registry import Registry, check_options
from .validation import check_int

ESTIMATORS = Registry("estimator")


def build_estimator(spec, num_samples=None):
    """The estimator ``spec`` names, with ``num_samples`` for those that take one."""
    return ESTIMATORS.build(spec, offered={} if num_samples is None else {"num_samples": num_samples})


@ESTIMATORS.register("importance")
class ImportanceSampling:
    """Importance sampling with the guide q(z|x) as proposal, K = ``num_samples``
    (:func:`~pyro_vae.log_likelihood`), with Pareto k̂ per point."""

    def __init__(self, num_samples=1000):
        self.num_samples = check_int(num_samples, "num_samples")

    @property
    def cost_size(self):
        return self.num_samples

    def resized(self, size):
        return type(self)(size)

    @property
    def description(self):
        return f"{self.num_samples} samples"

    def estimate(self, model, guide, x):
        """The :class:`~pyro_vae.marginal.MarginalLikelihood` of the batch ``x``."""
        return log_likelihood(model, guide, x, num_samples=self.num_samples, batch_size=len(x))

    def combine(self, per_point):
        """The result whose per-point tensors are ``per_point``."""
        return MarginalLikelihood.from_per_point(per_point, self.num_samples)

    def warn(self, result):
        """:class:`~pyro_vae.errors.ImportanceSamplingWarning` for the points k̂ does not endorse."""
        warn_if_unreliable(result)


@ESTIMATORS.register("prior")
class PriorSampling(ImportanceSampling):
    """The naive estimator: K = ``num_samples`` draws from the prior p(z)
    (:func:`~pyro_vae.naive_log_likelihood`); a baseline whose variance grows
    exponentially with the data's dimension."""

    def estimate(self, model, guide, x):
        """The prior-sampling estimate of the batch ``x`` (the guide is not used)."""
        return naive_log_likelihood(model, x, num_samples=self.num_samples, batch_size=len(x))


@ESTIMATORS.register("ais")
class AnnealedImportanceSampling:
    """Annealed importance sampling with HMC transitions (:func:`~pyro_vae.ais.ais`); the
    options are that function's (``num_steps``, ``num_chains``, ``leapfrog_steps``,
    ``step_size``, ``target_accept``, ``schedule``, ``start``, ``pilot_chains``)."""

    def __init__(self, **options):
        self.options = ais_options(options, "estimator 'ais'")

    @property
    def cost_size(self):
        return self.options["num_steps"]

    def resized(self, size):
        return type(self)(**{**self.options, "num_steps": size})

    @property
    def description(self):
        return f"AIS ({self.options['num_chains']} chains x {self.options['num_steps']} steps)"

    def estimate(self, model, guide, x):
        """The :class:`~pyro_vae.ais.AISResult` of the batch ``x``."""
        return ais(model, guide, x, batch_size=len(x), **self.options)

    def combine(self, per_point):
        return AISResult(**{k: per_point[k] for k in AISResult.PER_POINT},
                         num_chains=self.options["num_chains"], num_steps=self.options["num_steps"])

    def warn(self, result):
        """Nothing: AIS has no tail diagnostic; BDMC (:func:`~pyro_vae.ais.bdmc`) measures its error."""


@ESTIMATORS.register("refined-is")
class RefinedImportanceSampling(ImportanceSampling):
    """Importance sampling with a proposal refined per point
    (:func:`~pyro_vae.refined.refined_log_likelihood`; options ``refine_steps``,
    ``refine_particles``, ``lr``, ``mixture``, ``elbo_samples``)."""

    def __init__(self, num_samples=1000, **options):
        super().__init__(num_samples)
        check_options(refined_log_likelihood, options, "estimator 'refined-is'",
                      reserved=(*SET_BY_CALLER, "num_samples"))
        self.options = options

    def resized(self, size):
        return type(self)(size, **self.options)

    @property
    def description(self):
        return f"refined importance sampling ({self.num_samples} samples)"

    def estimate(self, model, guide, x):
        return refined_log_likelihood(model, guide, x, self.num_samples, batch_size=len(x), **self.options)

    def combine(self, per_point):
        return RefinedLikelihood.from_per_point(per_point, self.num_samples)


@dataclass
class GapDecomposition:
    r"""Per point, every estimator on the same data: AIS :math:`\log\hat p(x)` (``log_px``,
    ``stderr``), importance sampling with the guide (``log_px_is``, ``khat_is``) and with the
    refined proposal (``log_px_refined_is``, ``khat_refined_is``), and the ELBOs of the guide
    :math:`\mathcal L[q]` (``elbo``) and of the refined proposal :math:`\mathcal L[q^*]`
    (``elbo_refined``), so that :math:`\log p - \mathcal L[q]` = approximation gap +
    amortisation gap (all ``(N,)``)."""

    log_px: torch.Tensor
    stderr: torch.Tensor
    elbo: torch.Tensor
    elbo_refined: torch.Tensor
    log_px_is: torch.Tensor
    khat_is: torch.Tensor
    log_px_refined_is: torch.Tensor
    khat_refined_is: torch.Tensor
    num_samples: int

    PER_POINT = ("log_px", "stderr", "elbo", "elbo_refined", "log_px_is", "khat_is", "log_px_refined_is",
                 "khat_refined_is")

    def per_point(self):
        return {name: getattr(self, name) for name in self.PER_POINT}

    @property
    def approximation_gap(self):
        r""":math:`\log\hat p(x) - \mathcal L[q^*]`."""
        return self.log_px - self.elbo_refined

    @property
    def amortisation_gap(self):
        r""":math:`\mathcal L[q^*] - \mathcal L[q]`."""
        return self.elbo_refined - self.elbo

    def summary(self):
        mean, se = mean_and_stderr(self.log_px, self.stderr)
        threshold = khat_threshold(self.num_samples)
        return {"log_px_mean": mean, "log_px_stderr": se, "num_points": int(self.log_px.shape[0]),
                "num_samples": self.num_samples,
                "elbo_refined_mean": float(self.elbo_refined.mean()),
                "log_px_is_mean": float(self.log_px_is.mean()),
                "khat_is_frac_bad": float((self.khat_is > threshold).double().mean()),
                "log_px_refined_is_mean": float(self.log_px_refined_is.mean()),
                "khat_refined_is_frac_bad": float((self.khat_refined_is > threshold).double().mean()),
                "approximation_gap_mean": float(self.approximation_gap.mean()),
                "amortisation_gap_mean": float(self.amortisation_gap.mean())}


@ESTIMATORS.register("gaps")
class InferenceGaps:
    """Every estimator on the same points and the inference-gap decomposition (Cremer et al.
    2018): AIS for log p(x) (option ``ais``: a mapping of :func:`~pyro_vae.ais.ais` options),
    importance sampling with ``num_samples``, and refinement for the ELBOs (option
    ``refined``: a mapping of :func:`~pyro_vae.refined.refined_log_likelihood` options)."""

    def __init__(self, num_samples=1000, ais=None, refined=None):
        self.ais = AnnealedImportanceSampling(**(ais or {}))
        self.importance = ImportanceSampling(num_samples)
        self.refined = RefinedImportanceSampling(num_samples, **(refined or {}))

    @property
    def cost_size(self):
        return self.ais.cost_size

    def resized(self, size):
        return type(self)(self.importance.num_samples, {**self.ais.options, "num_steps": size},
                          self.refined.options)

    @property
    def description(self):
        return f"{self.ais.description}, {self.importance.description} and {self.refined.description}"

    def estimate(self, model, guide, x):
        exact = self.ais.estimate(model, guide, x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImportanceSamplingWarning)
            plain = self.importance.estimate(model, guide, x)
            refined = self.refined.estimate(model, guide, x)
        return GapDecomposition(exact.log_px, exact.stderr, refined.elbo, refined.elbo_refined, plain.log_px,
                                plain.khat, refined.log_px, refined.khat, self.importance.num_samples)

    def combine(self, per_point):
        return GapDecomposition(**{k: per_point[k] for k in GapDecomposition.PER_POINT},
                                num_samples=self.importance.num_samples)

    def warn(self, result):
        """Nothing: the importance-sampling estimates are kept for comparison with AIS."""
