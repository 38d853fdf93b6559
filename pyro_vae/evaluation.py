"""``pyro_vae.evaluate``: estimate log p(x) on a run's test split; write ``eval.json``.

Only the test split is read (and the training split's statistics stored with the run, for
the independent-pixel baseline), so a run can be evaluated after its training files have
moved. The estimator is the one ``eval.estimator`` names (:mod:`pyro_vae.estimators`).
"""

import math

from . import distributed
from .errors import RunError
from .estimators import ESTIMATORS
from .figures import write_diagnostics_figure
from .rundir import RunDir
from .runs import load_run


def independent_bernoulli_baseline(stats, test):
    """Mean log-likelihood of ``test`` under independent per-pixel Bernoullis fitted on the
    training split, given its statistics ``stats`` (``{"sum": Σ_i x_i, "count": N}``).

    p_j = (Σ_i x_ij + 1)/(N + 2) (Laplace smoothing), log p(x) = Σ_j x_j log p_j + (1 − x_j) log(1 − p_j).
    For grey-level training data (dynamic binarisation) Σ_i x_ij is the expected count of ones.
    """
    p = (stats["sum"].to(test.device) + 1) / (int(stats["count"]) + 2)
    log_px = (test * p.log() + (1 - test) * (-p).log1p()).flatten(1).sum(1)
    return log_px.mean().item()


def evaluate(run_dir, num_samples=None, batch_size=None, progress=True, model=None, estimator=None):
    """Estimate log p(x) for every test point of the run in ``run_dir``; write ``eval.json``,
    ``eval_points.pt`` and ``figures/diagnostics.png``.

    ``estimator`` (a name or spec of :data:`~pyro_vae.estimators.ESTIMATORS`),
    ``num_samples`` and ``batch_size`` override the run's ``eval`` config. Returns the
    summary written: the estimator's summary (e.g. :meth:`MarginalLikelihood.summary`), with
    ``elbo_mean`` and ``inference_gap_mean`` where the estimator reports an ELBO, the
    estimator's name, the split, the checkpoint's epoch and, for a Bernoulli likelihood,
    the independent-pixel baseline. A run trained with a custom ``model`` needs it again.
    """
    rundir = RunDir(run_dir).require()
    eval_config = rundir.config["eval"]
    spec = eval_config["estimator"] if estimator is None else estimator
    num_samples = eval_config["num_samples"] if num_samples is None else num_samples
    estimate = ESTIMATORS.build(spec, num_samples=num_samples)
    run, state = load_run(rundir.path, model=model, splits=("test",))
    if len(run.test) == 0:
        raise RunError(f"The test split of the run in '{rundir.path}' is empty (its data test size is 0); "
                       "there is nothing to evaluate.")
    vae = run.vae.eval()
    ctx = distributed.setup()
    result = distributed.sharded_estimate(
        estimate, vae.model, vae.guide, run.test,
        batch_size=eval_config["batch_size"] if batch_size is None else batch_size,
        seed=run.config["seed"], ctx=ctx, progress=progress and ctx.is_main,
    )
    summary = result.summary()
    if hasattr(result, "elbo"):
        summary.update(elbo_mean=result.elbo.mean().item(),
                       inference_gap_mean=(result.log_px - result.elbo).mean().item())
    summary.update(estimator=spec, split="test", epoch=state["epoch"])
    stats = rundir.read_train_stats()
    if model is None and stats is not None and run.config["model"]["likelihood"] in ("bernoulli",
                                                                                    {"name": "bernoulli"}):
        summary["baseline_log_px_mean"] = independent_bernoulli_baseline(stats, run.test)
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    if ctx.is_main:  # only rank 0 writes
        rundir.write_eval(summary, result.per_point())
        write_diagnostics_figure(result, rundir.figures)
    return summary
