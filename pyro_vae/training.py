"""``pyro_vae.train``: resolve a config (or continue a run), build the run, train it."""

import contextlib
import shutil

from . import atomic, distributed
from . import config as configuration
from .data import absolute_paths
from .errors import ConfigError, RunError, TrainingDiverged
from .estimators import build_estimator
from .figures import write_training_figure
from .rundir import RunDir
from .runlock import RunLock
from .runs import Run
from .tracking import open_tracking
from .trainer import Trainer


def train(config=None, out_dir="runs/default", overrides=(), resume=False, progress=True, model=None):
    """Train the VAE described by ``config`` (a mapping merged over the defaults, then the
    ``"key=value"`` strings in ``overrides``).

    ``model`` trains your own module instead of ``config["model"]``'s VAE, with the same
    data, objective, optimiser, checkpoints and metrics: an ``nn.Module`` whose methods
    ``model(x)`` and ``guide(x)`` are Pyro programs with a ``pyro.plate("data")`` over the
    batch. The β schedule sets its ``beta`` attribute before each step; figures are drawn
    if it has ``reconstruct``/``sample`` methods and data are checked if it has a
    ``likelihood`` with ``validate``.

    With ``resume=True`` the run in ``out_dir`` continues from its newest good
    checkpoint (the config saved there is used, updated by ``config`` and ``overrides``)
    and ends with the same parameters as an uninterrupted run. At the end the main
    process writes ``figures/reconstructions.png``. Returns the :class:`~pyro_vae.runs.Run`.

    The main process holds the run directory's :class:`~pyro_vae.runlock.RunLock` from its
    first write to the end: a second writer is refused with a message naming this process.
    A new run that fails before its first checkpoint leaves no directory behind; a resume
    that diverges (:class:`~pyro_vae.errors.TrainingDiverged`) leaves ``config.yaml`` as it
    was.
    """
    rundir = RunDir(out_dir)
    if resume:
        if not rundir.holds_run():
            raise RunError(f"Cannot resume: '{rundir.path}' holds no run (no config.yaml).")
        base = rundir.config
    else:
        if rundir.config_path.exists():
            raise RunError(
                f"'{rundir.path}' already holds a run; pass --resume to continue it or choose another --out."
            )
        base = configuration.DEFAULTS
    config = configuration.resolve(config, overrides, base=base)
    config["data"] = absolute_paths(config["data"])  # the run must find its data from any working directory
    configuration.check(config)  # plain values, then the estimator: bad input fails before any write
    build_estimator(config["eval"]["estimator"], config["eval"]["num_samples"])
    if resume:
        _check_same_model(base["model"], config["model"])
    ctx = distributed.setup()
    fresh = ctx.is_main and not rundir.path.exists()
    try:
        with contextlib.ExitStack() as held:
            if ctx.is_main:  # one writer per run directory, from the first write to the end
                rundir.create()
                held.enter_context(RunLock(rundir.path))
                if not resume and rundir.holds_run():  # another process finished one meanwhile
                    raise RunError(f"'{rundir.path}' already holds a run; pass --resume to continue it.")
            return _fit(config, model, rundir, resume, progress, ctx)
    except Exception:
        if fresh and not rundir.checkpoints.paths():  # nothing worth keeping: leave no run behind
            shutil.rmtree(rundir.path, ignore_errors=True)
        raise


def _fit(config, model, rundir, resume, progress, ctx):
    """Build the run and train it; a resume that diverges leaves ``config.yaml`` as it was."""
    run = Run.build(config, model, ctx.local_rank if ctx.enabled else None)
    saved = rundir.config_path.read_text(encoding="utf-8") if resume and ctx.is_main else None
    try:
        with open_tracking(config, rundir, enabled=ctx.is_main) as tracking:
            trainer = Trainer(run, rundir, progress, ctx, on_end=[write_training_figure],
                              on_epoch=[tracking.log_epoch])
            return trainer.fit(resume)
    except TrainingDiverged:
        if saved is not None:
            atomic.write_text(rundir.config_path, saved)
        raise


def _check_same_model(stored, new):
    """A resumed run keeps its model: its checkpoints hold parameters of that shape."""
    changed = [f"model.{key}: {stored.get(key)!r} -> {new.get(key)!r}"
               for key in sorted(set(stored) | set(new)) if stored.get(key) != new.get(key)]
    if changed:
        raise ConfigError(f"--resume cannot change the model ({'; '.join(changed)}): the run's checkpoints "
                          "hold a model of the stored shape. Start a new run with another --out instead.")
