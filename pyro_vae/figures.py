"""The figures of a run directory: what ``pyro-vae plot``, ``pyro-vae sample``, the end of
training and ``pyro-vae evaluate`` write into ``RUN_DIR/figures``.

The drawing is done by the pure functions of :mod:`pyro_vae.plots`; this module loads what
they draw from (model, data, records, saved results) and saves the PNG files.
"""

from pathlib import Path

import torch

from .diagnostics import dimension_scores
from .estimators import ESTIMATORS
from .plots import (
    plot_kl_per_dimension,
    plot_latent_space,
    plot_marginal_diagnostics,
    plot_reconstructions,
    plot_reconstructions_and_samples,
    plot_samples,
    plot_training_curves,
    plot_traversals,
    save_figure,
)
from .rundir import RunDir
from .runs import load_model, load_run

FIGURES = ("reconstructions", "samples", "traversals", "latent_space", "kl_per_dimension",
           "training_curves", "diagnostics")
"""The figures :func:`plot_run` writes, as ``<name>.png``."""


def load_eval_result(run_dir):
    """The per-point results ``pyro-vae evaluate`` saved, as its estimator's result
    (e.g. a :class:`~pyro_vae.marginal.MarginalLikelihood`), or ``None`` before an evaluation."""
    saved = RunDir(run_dir).read_eval()
    if saved is None:
        return None
    summary, per_point = saved
    estimator = ESTIMATORS.build(summary.get("estimator", "importance"), num_samples=summary["num_samples"])
    return estimator.combine(per_point)


def _view(run):
    """The evaluation data of a run (validation split, else test, else train) and its labels."""
    for split in ("val", "test"):
        x = getattr(run, split)
        if len(x):
            return x, getattr(run.splits, f"{split}_labels")
    return run.splits.train[:2000], run.splits.train_labels


def _all_held_out(run):
    """Validation and test data with their labels (None unless both splits have them), for scatter plots."""
    x = torch.cat([run.val, run.test])
    if not len(x):
        return run.splits.train[:2000], run.splits.train_labels
    labels = [run.splits.val_labels, run.splits.test_labels]
    return x, None if any(y is None for y in labels) else torch.cat(labels)


def _rng_devices(device):
    """The CUDA devices whose RNG state ``fork_rng`` must save and restore."""
    return [device.index or 0] if device.type == "cuda" else []


def _using(state, report):
    if report is not None:
        report(f"using the checkpoint '{state['path']}' (epoch {state['epoch']}).")


def plot_run(run_dir, out_dir=None, num_examples=16, num_samples=64, seed=0, report=None):
    """Write every figure of the run in ``run_dir`` into ``out_dir`` (default ``run_dir/figures``).

    Uses the newest checkpoint and the validation split (the fixed binarised view). The
    importance-sampling diagnostics need ``pyro-vae evaluate`` first and are skipped
    otherwise. Random draws use ``seed`` without touching the global RNG state. ``report``
    (a callable taking a message, or ``None``) is told which checkpoint is used. Returns
    ``{name: path}`` of the files written (see :data:`FIGURES`).
    """
    rundir = RunDir(run_dir).require()
    out_dir = Path(out_dir) if out_dir is not None else rundir.figures
    run, state = load_run(rundir.path)
    _using(state, report)
    vae = run.vae.eval()
    x, labels = _view(run)
    written = {}
    with torch.random.fork_rng(devices=_rng_devices(run.device)), torch.no_grad():
        torch.manual_seed(seed)
        scores = dimension_scores(vae, x)
        held_out = _all_held_out(run)
        figures = {
            "reconstructions": lambda: plot_reconstructions(vae, x[:num_examples]),
            "samples": lambda: plot_samples(vae, num_samples),
            "traversals": lambda: plot_traversals(vae, x, scores=scores[vae.sites[-1]]),
            "latent_space": lambda: plot_latent_space(vae, *held_out, run.splits.info.get("class_names")),
            "kl_per_dimension": lambda: plot_kl_per_dimension(vae, x, scores),
        }
        for name, make in figures.items():
            written[name] = save_figure(make(), out_dir / f"{name}.png")
    records = rundir.read_metrics()
    if records:
        figure = plot_training_curves(records)
        written["training_curves"] = save_figure(figure, out_dir / "training_curves.png")
    result = load_eval_result(rundir.path)
    diagnostics = None if result is None else write_diagnostics_figure(result, out_dir)
    if diagnostics is not None:
        written["diagnostics"] = diagnostics
    return written


def sample_grid(run_dir, num_samples=64, out=None, mean=True, seed=0, report=None):
    """Write a grid of ``num_samples`` samples of the run's model (default
    ``run_dir/figures/samples-<num_samples>.png``); returns the path. Reads no data;
    ``report`` as in :func:`plot_run`."""
    vae, state = load_model(run_dir)
    _using(state, report)
    device = next(vae.parameters()).device
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        figure = plot_samples(vae.eval(), num_samples, mean=mean)
    return save_figure(figure, out or RunDir(run_dir).figures / f"samples-{num_samples}.png")


def write_training_figure(run, rundir):
    """The end-of-training figure ``figures/reconstructions.png``: test inputs, their
    reconstructions and prior samples (for models with ``reconstruct`` and ``sample``)."""
    vae = run.vae
    if hasattr(vae, "reconstruct") and hasattr(vae, "sample") and len(run.test):
        figure = plot_reconstructions_and_samples(vae, run.test[:8])
        save_figure(figure, rundir.figures / "reconstructions.png")


def write_diagnostics_figure(result, folder):
    """``folder/diagnostics.png`` of an evaluation result with importance-sampling diagnostics
    (``khat``, ``ess``); returns the path, or ``None`` for a result without them."""
    if not hasattr(result, "khat"):
        return None
    return save_figure(plot_marginal_diagnostics(result), Path(folder) / "diagnostics.png")
