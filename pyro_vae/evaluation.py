"""``pyro_vae.evaluate``: estimate log p(x) on a run's test split; write ``eval.json``.

Only the test split is read (and the training split's statistics stored with the run, for
the independent-pixel baseline), so a run can be evaluated after its training files have
moved. The estimator is the one ``eval.estimator`` names (:mod:`pyro_vae.estimators`).
"""

import inspect
import math
import sys
import time
import warnings

import torch

from . import distributed
from .data import bits_per_dim
from .errors import ConfigError, EstimatorWarning, RunError
from .estimators import ESTIMATORS, build_estimator
from .figures import write_diagnostics_figure
from .registry import split_spec
from .rundir import RunDir
from .runs import load_run
from .validation import check_int


def independent_bernoulli_baseline(stats, test):
    """Mean log-likelihood of ``test`` under independent per-pixel Bernoullis fitted on the
    training split, given its statistics ``stats`` (``{"sum": Σ_i x_i, "count": N}``).

    p_j = (Σ_i x_ij + 1)/(N + 2) (Laplace smoothing), log p(x) = Σ_j x_j log p_j + (1 − x_j) log(1 − p_j).
    For grey-level training data (dynamic binarisation) Σ_i x_ij is the expected count of ones.
    """
    p = (stats["sum"].to(test.device) + 1) / (int(stats["count"]) + 2)
    log_px = (test * p.log() + (1 - test) * (-p).log1p()).flatten(1).sum(1)
    return log_px.mean().item()


PROBE_SIZES = (100, 1000)
"""The sizes (samples, steps: the estimator's ``cost_size``) of the two timed probes that
estimate an evaluation's duration."""
REPORT_SECONDS = 30.0
"""An evaluation estimated to take longer than this is announced on stderr before it starts."""
MAX_SECONDS = 7 * 24 * 3600.0
"""An evaluation estimated to take longer than this (a week) is refused unless forced."""


def estimated_seconds(estimator, model, guide, x, batch_size, world_size=1):
    """Wall-clock seconds an evaluation of ``x`` will take, from timed probes on its first batch.

    For an estimator whose cost is linear in a size (``cost_size``, ``resized``: the samples
    of importance sampling, the steps of AIS), after one untimed warm-up call it runs on the
    first batch with sizes k₁ < k₂ (:data:`PROBE_SIZES`, or its own size when that is
    smaller); the cost of a batch is taken as t(K) = t(k₁) + (K − k₁)·s with the slope
    s = (t(k₂) − t(k₁)) / (k₂ − k₁). Any other estimator is timed once on the first batch.
    The time is scaled to this process's share of the points; the RNG state is restored.
    """
    first = x[:batch_size]
    devices = [x.device] if x.device.type == "cuda" else []
    size = getattr(estimator, "cost_size", None)

    def timed(probe):
        start = time.perf_counter()
        probe.estimate(model, guide, first)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - start

    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimatorWarning)
        if size is None:
            per_batch = timed(estimator)
        else:
            low, high = (min(k, size) for k in PROBE_SIZES)
            timed(estimator.resized(low))  # warm-up: first-call costs (tracing, allocations)
            t_low = timed(estimator.resized(low))
            t_high = timed(estimator.resized(high)) if high > low else t_low
            slope = (t_high - t_low) / (high - low) if high > low else 0.0
            per_batch = t_high + max(slope, 0.0) * (size - high)
    return per_batch * len(x) / (len(first) * world_size)


def _name(spec):
    return split_spec(spec, "estimator")[0]


def _takes_num_samples(spec):
    return "num_samples" in inspect.signature(ESTIMATORS.get(_name(spec))).parameters


def _duration(seconds):
    """``seconds`` in words: "40 s", "12 min", "3.5 h", "2.1e+03 days"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.3g} days"


def _report(message):
    print(f"pyro-vae: {message}", file=sys.stderr)


def evaluate(run_dir, num_samples=None, batch_size=None, progress=True, model=None, estimator=None,
             force=False, report=_report, options=None):
    """Estimate log p(x) for every test point of the run in ``run_dir``; write ``eval.json``,
    ``eval_points.pt`` and ``figures/diagnostics.png``.

    ``estimator`` (a name or spec of :data:`~pyro_vae.estimators.ESTIMATORS`),
    ``num_samples`` and ``batch_size`` override the run's ``eval`` config; ``options`` (a
    dict) are added to the estimator's spec. Before the work
    starts its duration is estimated from a timed probe (:func:`estimated_seconds`):
    ``report`` (a callable taking a message; default: stderr) is told the work, the
    checkpoint used and, when the estimate exceeds :data:`REPORT_SECONDS`, the estimate;
    beyond :data:`MAX_SECONDS` the evaluation is refused with a
    :class:`~pyro_vae.errors.ConfigError` unless ``force``. Returns the summary written: the
    estimator's summary (e.g. :meth:`MarginalLikelihood.summary`), with ``bits_per_dim``
    (:func:`~pyro_vae.data.bits_per_dim`: ``None`` for grey levels under a density), ``elbo_mean`` and
    ``inference_gap_mean`` where the estimator reports an ELBO, the estimator's name, the
    split, the checkpoint's file and epoch, the estimated and the measured seconds and, for a
    Bernoulli likelihood, the independent-pixel baseline and, on a data set with known
    generative factors (``sprites``), the disentanglement metrics
    (:func:`~pyro_vae.disentanglement.score_run`) under ``disentanglement``. A run trained with a custom
    ``model`` needs it again.
    """
    rundir = RunDir(run_dir).require()
    eval_config = rundir.config["eval"]
    spec = eval_config["estimator"] if estimator is None else estimator
    if options:
        name, own = split_spec(spec, "estimator")
        spec = {"name": name, **own, **options}
    num_samples_given = num_samples is not None
    num_samples = eval_config["num_samples"] if num_samples is None else num_samples
    batch_size = check_int(eval_config["batch_size"] if batch_size is None else batch_size, "batch_size")
    estimate = build_estimator(spec, num_samples)
    if num_samples_given and not _takes_num_samples(spec):
        raise ConfigError(f"The estimator {_name(spec)!r} takes no num_samples; set its own options in "
                          "eval.estimator instead (see docs/guide/evaluation.md).")
    run, state = load_run(rundir.path, model=model, splits=("test",))
    if len(run.test) == 0:
        raise RunError(f"The test split of the run in '{rundir.path}' is empty (its data test size is 0); "
                       "there is nothing to evaluate.")
    vae = run.vae.eval()
    ctx = distributed.setup()
    expected = estimated_seconds(estimate, vae.model, vae.guide, run.test, batch_size, ctx.world_size)
    what = f"{len(run.test)} test points with {getattr(estimate, 'description', _name(spec))}"
    if expected > MAX_SECONDS and not force:
        raise ConfigError(f"This evaluation would take about {_duration(expected)} ({what}, estimated from a "
                          "timed probe); make it smaller (--num-samples, or the estimator's steps), or pass "
                          "--force (force=True) to run it anyway.")
    if ctx.is_main:
        duration = f": about {_duration(expected)} (estimated from a timed probe)" if (
            expected > REPORT_SECONDS) else ""
        report(f"evaluating {what} with the checkpoint '{state['path']}' (epoch {state['epoch']}){duration}.")
    start = time.perf_counter()
    result = distributed.sharded_estimate(
        estimate, vae.model, vae.guide, run.test, batch_size=batch_size,
        seed=run.config["seed"], ctx=ctx, progress=progress and ctx.is_main,
    )
    seconds = time.perf_counter() - start
    summary = result.summary()
    if hasattr(result, "elbo"):
        summary.update(elbo_mean=result.elbo.mean().item(),
                       inference_gap_mean=(result.log_px - result.elbo).mean().item())
    summary["bits_per_dim"] = bits_per_dim(summary["log_px_mean"], rundir.data_info)
    summary.update(estimator=spec, split="test", epoch=state["epoch"], checkpoint=state["path"],
                   estimated_seconds=expected,
                   seconds=seconds)
    stats = rundir.read_train_stats()
    if model is None and stats is not None and run.config["model"]["likelihood"] in ("bernoulli",
                                                                                    {"name": "bernoulli"}):
        summary["baseline_log_px_mean"] = independent_bernoulli_baseline(stats, run.test)
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    if ctx.is_main and getattr(run.splits, "test_factors", None) is not None:
        from .disentanglement import score_run  # sklearn: imported only where it is needed

        summary["disentanglement"] = score_run(run, "test")  # a data set with known factors
    if ctx.is_main:  # only rank 0 writes
        rundir.write_eval(summary, result.per_point())
        write_diagnostics_figure(result, rundir.figures)
    return summary
