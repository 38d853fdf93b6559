"""Experiment tracking: the per-epoch records of ``metrics.jsonl`` mirrored to TensorBoard
and/or MLflow, with images of reconstructions and samples every few epochs.

``metrics.jsonl`` stays the source of truth (resume, figures and ``pyro-vae plot`` read it);
the trackers are copies for the tools people already watch. Both are optional
dependencies (``pip install 'pyro-vae[tracking]'``) chosen in the config::

    tracking:
      tensorboard: true          # event files in RUN_DIR/tensorboard
      mlflow: true               # a run in mlflow_uri (default: RUN_DIR/mlruns/mlflow.db, SQLite)
      mlflow_uri: null
      mlflow_experiment: pyro-vae
      images_every: 5            # reconstructions and samples every 5 epochs and at the end; 0: none

Every number of a record is logged as a scalar at ``step = epoch``; a record's mappings
(per-site KL terms, active units) as ``<key>/<site>``. The images are those of
:func:`~pyro_vae.plots.plot_reconstructions_and_samples` on the first test points, drawn
with a seed of their own so that tracking never changes the training run's random
stream. Only the main process of a ``torchrun`` launch tracks.
"""

import contextlib

import torch

from .errors import ConfigError

IMAGE_POINTS = 8
"""Test points (and prior samples) in each tracked image."""


def flatten(record):
    """``{name: float}`` of a metrics record: numbers as they are, mappings as ``key/entry``."""
    scalars = {}
    for key, value in record.items():
        if key == "epoch":
            continue
        if isinstance(value, dict):
            scalars.update({f"{key}/{name}": float(v) for name, v in value.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif isinstance(value, (list, tuple)):
            scalars.update({f"{key}/{i + 1}": float(v) for i, v in enumerate(value)
                            if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[key] = float(value)
    return scalars


def _require(module, backend):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError(f"tracking.{backend}: true needs the {backend} package: "
                          "pip install 'pyro-vae[tracking]' (or set tracking.{backend}: false).") from None


class TensorBoardTracker:
    """Scalars and images in ``log_dir`` through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, log_dir):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values, step):
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def image(self, name, rgb, step):
        self.writer.add_image(name, rgb, step, dataformats="HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()


class MLflowTracker:
    """Scalars, the config (as parameters) and images in an MLflow run, through ``MlflowClient``
    (the user's active MLflow run, if any, is left alone)."""

    def __init__(self, uri, experiment, run_name, params, artifact_location=None):
        _require("mlflow", "mlflow")
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(
            experiment, artifact_location=artifact_location)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def scalars(self, values, step):
        for name, value in values.items():
            self.client.log_metric(self.run_id, name, value, step=step)

    def image(self, name, rgb, step):
        self.client.log_image(self.run_id, rgb, artifact_file=f"images/{name}_epoch{step:04d}.png")

    def close(self):
        self.client.set_terminated(self.run_id)


def _params(config, prefix=""):
    """The config as flat ``{"model.latent_dim": 8, ...}`` parameters."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracking:
    """The trackers a config asks for; :meth:`log_epoch` is the trainer's per-epoch hook."""

    def __init__(self, trackers, images_every, epochs):
        self.trackers = list(trackers)
        self.images_every = images_every
        self.epochs = epochs

    def log_epoch(self, record, run):
        if not self.trackers:
            return
        epoch = record["epoch"]
        values = flatten(record)
        for tracker in self.trackers:
            tracker.scalars(values, epoch)
        if self.images_every and (epoch % self.images_every == 0 or epoch == self.epochs):
            rgb = _images(run, epoch)
            if rgb is not None:
                for tracker in self.trackers:
                    tracker.image("reconstructions_and_samples", rgb, epoch)

    def close(self):
        for tracker in self.trackers:
            tracker.close()


def _images(run, seed):
    """RGB ``(H, W, 3)`` uint8 of inputs, reconstructions and samples, or ``None`` (no test data,
    or a model without ``reconstruct``/``sample``); the global RNG is restored afterwards."""
    from .plots import figure_to_rgb, plot_reconstructions_and_samples

    vae = run.vae
    if not (hasattr(vae, "reconstruct") and hasattr(vae, "sample") and len(run.test)):
        return None
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    was_training = vae.training
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            return figure_to_rgb(plot_reconstructions_and_samples(vae.eval(), run.test[:IMAGE_POINTS]))
        finally:
            vae.train(was_training)


@contextlib.contextmanager
def open_tracking(config, rundir, enabled=True):
    """The :class:`Tracking` of ``config["tracking"]`` for the run in ``rundir``, closed on exit
    (``enabled=False``, e.g. on the non-main processes, tracks nothing)."""
    settings = config["tracking"]
    trackers = []
    try:
        if enabled and settings["tensorboard"]:
            trackers.append(TensorBoardTracker(rundir.tensorboard))
        if enabled and settings["mlflow"]:
            uri, artifacts = settings["mlflow_uri"], None
            if uri is None:  # a store of the run's own: RUN_DIR/mlruns/mlflow.db and its artifacts
                rundir.mlruns.mkdir(parents=True, exist_ok=True)
                uri = f"sqlite:///{(rundir.mlruns / 'mlflow.db').resolve()}"
                artifacts = (rundir.mlruns / "artifacts").resolve().as_uri()
            name = settings["mlflow_experiment"]
            trackers.append(MLflowTracker(uri, name, rundir.path.name, _params(config), artifacts))
        tracking = Tracking(trackers, settings["images_every"], config["train"]["epochs"])
        yield tracking
    finally:
        for tracker in trackers:
            tracker.close()
