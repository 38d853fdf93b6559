"""The figures of a run directory: what ``pyro-vae plot``, ``pyro-vae sample``, the end of
training and ``pyro-vae evaluate`` write into ``RUN_DIR/figures``.

The drawing is done by the pure functions of :mod:`pyro_vae.plots`; this module loads what
they draw from (model, data, records, saved results) and saves the PNG files.
"""

from pathlib import Path

import torch

from .diagnostics import dimension_scores
from .errors import DataError, PyroVAEError, RunError
from .estimators import build_estimator
from .plots import (
    plot_ais_diagnostics,
    plot_estimator_comparison,
    plot_interpolation,
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

TRAINING_FIGURE = "reconstructions_and_samples"
"""The figure the end of training writes (``<name>.png``); :func:`plot_run` redraws it under the same name."""
FIGURES = ("reconstructions", TRAINING_FIGURE, "samples", "traversals", "latent_space", "kl_per_dimension",
           "training_curves", "diagnostics")
"""The figures :func:`plot_run` writes, as ``<name>.png``: one name per layout, so that ``pyro-vae
plot`` never replaces a training-time figure with a different one."""


def load_eval_result(run_dir):
    """The per-point results ``pyro-vae evaluate`` saved, as its estimator's result
    (e.g. a :class:`~pyro_vae.marginal.MarginalLikelihood`), or ``None`` before an evaluation."""
    saved = RunDir(run_dir).read_eval()
    if saved is None:
        return None
    summary, per_point = saved
    try:
        estimator = build_estimator(summary.get("estimator", "importance"), summary.get("num_samples"))
        return estimator.combine(per_point)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        if isinstance(error, PyroVAEError):
            raise
        raise RunError(f"The evaluation results in '{run_dir}' (eval.json, eval_points.pt) are not what "
                       f"pyro-vae evaluate writes ({type(error).__name__}: {error}); run pyro-vae evaluate "
                       "again to replace them.") from None


def _view(run):
    """The evaluation data of a run (validation split, else test, else train) and its labels."""
    for split in ("val", "test"):
        x = getattr(run, split)
        if len(x):
            return x, getattr(run.splits, f"{split}_labels")
    return run.splits.train[:2000], run.splits.train_labels


def _all_held_out(run):
    """``(split name, data, labels)`` of the validation and test data (labels None unless both
    splits have them), or the first 2000 training points when both are empty, for scatter plots."""
    x = torch.cat([run.val, run.test])
    if not len(x):
        return "training (first 2000)", run.splits.train[:2000], run.splits.train_labels
    labels = [run.splits.val_labels, run.splits.test_labels]
    name = "validation + test" if len(run.val) and len(run.test) else "validation" if len(run.val) else "test"
    return name, x, None if any(y is None for y in labels) else torch.cat(labels)


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
    result = load_eval_result(rundir.path)  # damaged results fail before any figure is written
    run, state = load_run(rundir.path)
    _using(state, report)
    vae = run.vae.eval()
    x, labels = _view(run)
    written = {}
    with torch.random.fork_rng(devices=_rng_devices(run.device)), torch.no_grad():
        torch.manual_seed(seed)
        scores = dimension_scores(vae, x)
        held_out_name, *held_out = _all_held_out(run)
        figures = {
            "reconstructions": lambda: plot_reconstructions(vae, x[:num_examples]),
            TRAINING_FIGURE: lambda: _training_figure(vae, run),
            "samples": lambda: plot_samples(vae, num_samples),
            "traversals": lambda: plot_traversals(vae, x, scores=scores[vae.sites[-1]]),
            "latent_space": lambda: plot_latent_space(vae, *held_out, run.splits.info.get("class_names"),
                                                      split=held_out_name),
            "kl_per_dimension": lambda: plot_kl_per_dimension(vae, x, scores),
        }
        for name, make in figures.items():
            written[name] = save_figure(make(), out_dir / f"{name}.png")
    records = rundir.read_metrics()
    if records:
        figure = plot_training_curves(records)
        written["training_curves"] = save_figure(figure, out_dir / "training_curves.png")
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
    path = png_path(out) if out else RunDir(run_dir).figures / f"samples-{num_samples}.png"
    return save_figure(figure, path)


def png_path(path):
    """``path`` with the ``.png`` suffix added when it has none (the file written is always a PNG)."""
    path = Path(path)
    return path if path.suffix.lower() == ".png" else path.with_name(path.name + ".png")


def interpolation_figure(run_dir, start=0, end=1, split="test", steps=9, out=None, report=None):
    """Write the linear and spherical interpolations between points ``start`` and ``end`` of
    ``split`` (the run's evaluation view of it) as a PNG (default
    ``run_dir/figures/interpolation-<start>-<end>.png``); returns the path."""
    from .validation import check_int

    rundir = RunDir(run_dir).require()
    run, state = load_run(rundir.path, splits=(split,))
    _using(state, report)
    x = getattr(run, split) if split in ("val", "test") else run.splits.train
    for name, index in (("--from", start), ("--to", end)):
        check_int(index, f"{name} (an index into split '{split}')", minimum=0, maximum=max(len(x) - 1, 0))
    if not len(x):
        raise DataError(f"Split '{split}' of the run's data set is empty.")
    figure = plot_interpolation(run.vae.eval(), x[start], x[end], steps)
    return save_figure(figure, png_path(out) if out else rundir.figures / f"interpolation-{start}-{end}.png")


def _training_figure(vae, run):
    """Test inputs (the first 8), their reconstructions and prior samples."""
    return plot_reconstructions_and_samples(vae, run.test[:8])


def write_training_figure(run, rundir):
    """The end-of-training figure ``figures/reconstructions_and_samples.png`` (:data:`TRAINING_FIGURE`):
    test inputs, their reconstructions and prior samples (for models with ``reconstruct`` and
    ``sample``)."""
    vae = run.vae
    if hasattr(vae, "reconstruct") and hasattr(vae, "sample") and len(run.test):
        save_figure(_training_figure(vae, run), rundir.figures / f"{TRAINING_FIGURE}.png")


def write_diagnostics_figure(result, folder):
    """``folder/diagnostics.png`` of an evaluation result: the importance-sampling diagnostics
    (a result with ``khat``), the AIS ones (``accept``) or the comparison of estimators and the
    gap decomposition (``khat_is``: the ``gaps`` estimator); returns the path, or ``None`` for
    another result."""
    figures = (("khat_is", plot_estimator_comparison), ("khat", plot_marginal_diagnostics),
               ("accept", plot_ais_diagnostics))
    for attribute, plot in figures:
        if hasattr(result, attribute):
            return save_figure(plot(result), Path(folder) / "diagnostics.png")
    return None
