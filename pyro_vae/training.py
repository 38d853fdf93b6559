"""``pyro_vae.train``: resolve a config (or continue a run), build the run, train it."""

import os

from . import config as configuration
from . import distributed
from .errors import RunError
from .estimators import ESTIMATORS
from .figures import write_training_figure
from .rundir import RunDir
from .runs import Run
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
    root = config["data"].get("root") if isinstance(config["data"], dict) else None
    if isinstance(root, str):  # the run must find its data from any working directory
        config["data"]["root"] = os.path.abspath(os.path.expanduser(root))
    configuration.check(config)  # plain values, then the estimator: bad input fails before any write
    ESTIMATORS.build(config["eval"]["estimator"], num_samples=config["eval"]["num_samples"])
    ctx = distributed.setup()
    run = Run.build(config, model, ctx.local_rank if ctx.enabled else None)
    return Trainer(run, rundir, progress, ctx, on_end=[write_training_figure]).fit(resume)
