"""``pyro_vae.evaluate``: estimate log p(x) on a run's test split; write ``eval.json``.

Only the test split is read (and the training split's statistics stored with the run, for
the independent-pixel baseline), so a run can be evaluated after its training files have
moved. The estimator is the one ``eval.estimator`` names (:mod:`pyro_vae.estimators`).
"""

import math
import sys
import time
import warnings

import torch

from . import distributed
from .errors import ConfigError, EstimatorWarning, RunError
from .estimators import ESTIMATORS
from .figures import write_diagnostics_figure
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


PROBE_SAMPLES = (100, 1000)
"""Samples per point of the two timed probes that estimate an evaluation's duration."""
REPORT_SECONDS = 30.0
"""An evaluation estimated to take longer than this is announced on stderr before it starts."""
MAX_SECONDS = 7 * 24 * 3600.0
"""An evaluation estimated to take longer than this (a week) is refused unless forced."""


def estimated_seconds(spec, num_samples, model, guide, x, batch_size, world_size=1):
    """Wall-clock seconds an evaluation of ``x`` will take, from timed probes on its first batch.

    After one untimed warm-up call, the estimator ``spec`` runs on the first batch with
    k₁ < k₂ samples (:data:`PROBE_SAMPLES`, or ``num_samples`` itself when it is smaller);
    the cost of a batch is taken as linear in the samples, t(K) = t(k₁) + (K − k₁)·s with the
    slope s = (t(k₂) − t(k₁)) / (k₂ − k₁) (every registered estimator's cost is linear in
    ``num_samples`` past a fixed per-batch part), scaled to this process's share of the
    points. The RNG state is restored afterwards.
    """
    first = x[:batch_size]
    devices = [x.device] if x.device.type == "cuda" else []

    def timed(samples):
        probe = ESTIMATORS.build(spec, num_samples=samples)
        start = time.perf_counter()
        probe.estimate(model, guide, first)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - start

    low, high = (min(k, num_samples) for k in PROBE_SAMPLES)
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimatorWarning)
        timed(low)  # warm-up: first-call costs (tracing, allocations) are not the evaluation's
        t_low = timed(low)
        t_high = timed(high) if high > low else t_low
    slope = (t_high - t_low) / (high - low) if high > low else 0.0
    per_batch = t_high + max(slope, 0.0) * (num_samples - high)
    return per_batch * len(x) / (len(first) * world_size)


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
             force=False, report=_report):
    """Estimate log p(x) for every test point of the run in ``run_dir``; write ``eval.json``,
    ``eval_points.pt`` and ``figures/diagnostics.png``.

    ``estimator`` (a name or spec of :data:`~pyro_vae.estimators.ESTIMATORS`),
    ``num_samples`` and ``batch_size`` override the run's ``eval`` config. Before the work
    starts its duration is estimated from a timed probe (:func:`estimated_seconds`):
    ``report`` (a callable taking a message; default: stderr) is told the work, the
    checkpoint used and, when the estimate exceeds :data:`REPORT_SECONDS`, the estimate;
    beyond :data:`MAX_SECONDS` the evaluation is refused with a
    :class:`~pyro_vae.errors.ConfigError` unless ``force``. Returns the summary written: the
    estimator's summary (e.g. :meth:`MarginalLikelihood.summary`), with ``elbo_mean`` and
    ``inference_gap_mean`` where the estimator reports an ELBO, the estimator's name, the
    split, the checkpoint's file and epoch, the estimated and the measured seconds and, for a
    Bernoulli likelihood, the independent-pixel baseline. A run trained with a custom
    ``model`` needs it again.
    """
    rundir = RunDir(run_dir).require()
    eval_config = rundir.config["eval"]
    spec = eval_config["estimator"] if estimator is None else estimator
    num_samples = eval_config["num_samples"] if num_samples is None else num_samples
    batch_size = check_int(eval_config["batch_size"] if batch_size is None else batch_size, "batch_size")
    estimate = ESTIMATORS.build(spec, num_samples=num_samples)
    run, state = load_run(rundir.path, model=model, splits=("test",))
    if len(run.test) == 0:
        raise RunError(f"The test split of the run in '{rundir.path}' is empty (its data test size is 0); "
                       "there is nothing to evaluate.")
    vae = run.vae.eval()
    ctx = distributed.setup()
    expected = estimated_seconds(spec, num_samples, vae.model, vae.guide, run.test, batch_size,
                                 ctx.world_size)
    what = f"{len(run.test)} test points x {num_samples} samples"
    if expected > MAX_SECONDS and not force:
        raise ConfigError(f"This evaluation would take about {_duration(expected)} ({what}, estimated from a "
                          "timed probe); lower --num-samples, or pass --force (force=True) to run it anyway.")
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
    summary.update(estimator=spec, split="test", epoch=state["epoch"], checkpoint=state["path"],
                   estimated_seconds=expected,
                   seconds=seconds)
    stats = rundir.read_train_stats()
    if model is None and stats is not None and run.config["model"]["likelihood"] in ("bernoulli",
                                                                                    {"name": "bernoulli"}):
        summary["baseline_log_px_mean"] = independent_bernoulli_baseline(stats, run.test)
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    if ctx.is_main:  # only rank 0 writes
        rundir.write_eval(summary, result.per_point())
        write_diagnostics_figure(result, rundir.figures)
    return summary
