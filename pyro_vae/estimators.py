r"""Estimators of :math:`\log p(x)` per data point, chosen by name (``eval.estimator``).

``pyro-vae evaluate`` builds the estimator its config names from :data:`ESTIMATORS`
(``ESTIMATORS.build(spec, context, num_samples=...)``, the ``eval`` section's
``num_samples`` supplied to every estimator), cuts the test split into batches, shares
them out over processes (:func:`pyro_vae.distributed.sharded_estimate`) and writes what
the results report. An estimator is an object with

* ``estimate(model, guide, x) -> result``: one batch of data points, with the current RNG;
* ``combine(per_point) -> result``: the result whose per-point tensors are ``per_point``
  (the batches concatenated, or ``eval_points.pt`` read back);
* ``warn(result)``: warnings about the whole data set's estimate (per-batch warnings of
  the :class:`~pyro_vae.errors.EstimatorWarning` family are held back until then).

A result has per-point tensors ``log_px`` and ``stderr`` of shape ``(N,)``,
``per_point() -> {name: (N,) tensor}`` (what is saved) and ``summary() -> dict`` of JSON
values with at least ``log_px_mean``, ``log_px_stderr`` and ``num_points``; it may add
``elbo`` (then ``pyro-vae evaluate`` reports the ELBO and the inference gap) and ``khat``,
``ess`` and ``num_samples`` (then it draws the importance-sampling diagnostics).
:class:`~pyro_vae.marginal.MarginalLikelihood` is such a result. A new estimator is one
class registered here (``@ESTIMATORS.register("name")``), in this module or the user's own.
"""

from .marginal import MarginalLikelihood, log_likelihood, naive_log_likelihood, warn_if_unreliable
from .registry import Registry
from .validation import check_int

ESTIMATORS = Registry("estimator")


@ESTIMATORS.register("importance")
class ImportanceSampling:
    """Importance sampling with the guide q(z|x) as proposal, K = ``num_samples``
    (:func:`~pyro_vae.log_likelihood`), with Pareto k̂ per point."""

    def __init__(self, num_samples=1000):
        self.num_samples = check_int(num_samples, "num_samples")

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
