"""Evaluate a trained run: importance-sampled log p(x) on the test split, diagnostics, eval.json."""

import json
import math
import os

import torch

from . import distributed
from .distributed import sharded_log_likelihood
from .errors import PyroVAEError
from .plots import plot_marginal_diagnostics, save_figure
from .train import load_run


def independent_bernoulli_baseline(train, test):
    """Mean log-likelihood of ``test`` under independent per-pixel Bernoullis fitted on ``train``.

    p_j = (Σ_i x_ij + 1)/(N + 2) (Laplace smoothing), log p(x) = Σ_j x_j log p_j + (1 − x_j) log(1 − p_j).
    For grey-level ``train`` (dynamic binarisation) Σ_i x_ij is the expected count of ones.
    """
    p = (train.sum(0) + 1) / (len(train) + 2)
    log_px = (test * p.log() + (1 - test) * (-p).log1p()).flatten(1).sum(1)
    return log_px.mean().item()


def evaluate(run_dir, num_samples=None, batch_size=None, progress=True, model=None):
    """Estimate log p(x) for every test point of the run in ``run_dir``; write ``eval.json``.

    Returns the summary dict that is written (see :meth:`MarginalLikelihood.summary`),
    with ``elbo_mean``, ``inference_gap_mean`` and the epoch of the checkpoint used.
    """
    run, state = load_run(run_dir, model=model)
    if len(run.test) == 0:
        raise PyroVAEError(f"The test split of the run in '{run_dir}' is empty (its data test size is 0); "
                           "there is nothing to evaluate.")
    eval_config = run.config["eval"]
    num_samples = eval_config["num_samples"] if num_samples is None else num_samples
    vae = run.vae
    vae.eval()
    ctx = distributed.setup()
    result = sharded_log_likelihood(
        vae.model, vae.guide, run.test, num_samples=num_samples,
        batch_size=eval_config["batch_size"] if batch_size is None else batch_size,
        seed=run.config["seed"], ctx=ctx, progress=progress and ctx.is_main,
    )
    summary = result.summary()
    summary.update(
        elbo_mean=result.elbo.mean().item(),
        inference_gap_mean=result.inference_gap.mean().item(),
        split="test",
        epoch=state["epoch"],
    )
    if model is None and run.config["model"]["likelihood"] in ("bernoulli", {"name": "bernoulli"}):
        summary["baseline_log_px_mean"] = independent_bernoulli_baseline(run.splits.train, run.test)
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    if not ctx.is_main:  # only rank 0 writes
        return summary
    path = os.path.join(run_dir, "eval.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(summary, handle, indent=2)
    os.replace(path + ".tmp", path)
    torch.save({"log_px": result.log_px.cpu(), "stderr": result.stderr.cpu(), "ess": result.ess.cpu(),
                "khat": result.khat.cpu(), "elbo": result.elbo.cpu()},
               os.path.join(run_dir, "eval_points.pt"))
    save_figure(plot_marginal_diagnostics(result), os.path.join(run_dir, "figures", "diagnostics.png"))
    return summary
