"""The run directory: the one owner of its layout and of every file in it.

::

    RUN_DIR/
      config.yaml       the resolved config, with ``data_info`` (the data's shape and preprocessing)
      metrics.jsonl     one JSON record per epoch
      checkpoints/      epoch-NNNN.pt: the newest two and the best (best.json), see
                        :class:`~pyro_vae.checkpoints.CheckpointDir`
      .lock             held by the process that trains the run (:mod:`pyro_vae.runlock`)
      train_stats.pt    per-feature mean of the training split (the independent-pixel baseline)
      eval.json         the summary of ``pyro-vae evaluate``
      eval_points.pt    its per-point results
      figures/          PNG files
      tensorboard/      TensorBoard event files (``tracking.tensorboard``)
      mlruns/           the run's MLflow store, mlflow.db and artifacts/ (``tracking.mlflow``)

Every file is written through :func:`pyro_vae.atomic.atomic_write` (metrics lines are
appended; a torn last line is dropped on resume). ``config.yaml`` is read once per
:class:`RunDir` object.
"""

import functools
import json
from pathlib import Path

import yaml

from . import atomic
from . import config as configuration
from .checkpoints import CheckpointDir
from .errors import ConfigError, RunError


class RunDir:
    """A run directory at ``path`` (which need not exist yet)."""

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    TRAIN_STATS = "train_stats.pt"
    EVAL = "eval.json"
    EVAL_POINTS = "eval_points.pt"

    def __init__(self, path):
        self.path = Path(path)
        self.checkpoints = CheckpointDir(self.path / "checkpoints")

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    @property
    def config_path(self):
        """``RUN_DIR/config.yaml``."""
        return self.path / self.CONFIG

    @property
    def metrics_path(self):
        """``RUN_DIR/metrics.jsonl``."""
        return self.path / self.METRICS

    @property
    def figures(self):
        """The folder of the run's figures."""
        return self.path / "figures"

    @property
    def tensorboard(self):
        """The folder of the TensorBoard event files (``tracking.tensorboard``)."""
        return self.path / "tensorboard"

    @property
    def mlruns(self):
        """The folder of the run's own MLflow store (``mlflow.db`` and ``artifacts/``; ``tracking.mlflow``
        without ``mlflow_uri``)."""
        return self.path / "mlruns"

    def holds_run(self):
        """Whether a run's ``config.yaml`` is there (a run exists once its config is complete)."""
        return self.config_path.is_file()

    def require(self):
        """``self``, or :class:`~pyro_vae.errors.RunError` if no run is there."""
        if not self.holds_run():
            what = "does not exist" if not self.path.exists() else "is not a pyro-vae run (no config.yaml)"
            raise RunError(f"Run directory '{self.path}' {what}.")
        return self

    def create(self):
        """Make the folder (and its parents), with a clear error where that is impossible."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file in the way, no permission, /proc, a name too long, ...
            raise RunError(f"Cannot use '{self.path}' as the run directory: "
                           f"{error.strerror or error}.") from None

    # ----------------------------------------------------------------------------------
    # config.yaml

    @functools.cached_property
    def _stored_config(self):
        stored = configuration.load_yaml(self.require().config_path)
        return stored, stored.pop("data_info", None) or {}

    @property
    def config(self):
        """The run's config, resolved over the defaults (a fresh copy on every access)."""
        try:
            return configuration.resolve(self._stored_config[0], base=configuration.stored_run_defaults())
        except ConfigError as error:
            raise ConfigError(f"The run's config file '{self.config_path}' is invalid: {error}") from None

    @property
    def data_info(self):
        """The data's record stored with the config (shape, preprocessing, sizes)."""
        return dict(self._stored_config[1])

    @property
    def data_shape(self):
        """The shape of one data point, from ``data_info``."""
        shape = self.data_info.get("data_shape")
        if not shape:
            raise RunError(f"The config.yaml of '{self.path}' does not record the data's shape "
                           "(data_info).")
        return tuple(int(s) for s in shape)

    def write_config(self, config, data_info):
        """Write the resolved ``config`` with ``data_info``; the cache is refreshed."""
        text = yaml.safe_dump(dict(config, data_info=data_info), sort_keys=False)
        atomic.write_text(self.config_path, text)
        self.__dict__.pop("_stored_config", None)

    # ----------------------------------------------------------------------------------
    # metrics.jsonl

    def start_metrics(self):
        """An empty ``metrics.jsonl`` (a new run)."""
        atomic.write_text(self.metrics_path, "")

    def append_metrics(self, record):
        """Append one epoch's record."""
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self):
        """The readable records of ``metrics.jsonl`` (a torn or foreign line is skipped); ``[]`` if none."""
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                records.append(record)
        return records

    def truncate_metrics(self, epoch):
        """Keep the records of epochs up to ``epoch`` (those of a checkpoint being resumed)."""
        if self.metrics_path.exists():
            kept = [r for r in self.read_metrics() if r["epoch"] <= epoch]
            atomic.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ----------------------------------------------------------------------------------
    # training-split statistics and evaluation results

    def write_train_stats(self, stats):
        """Statistics of the training split (a mapping of tensors), for evaluation without it."""
        atomic.save_torch(stats, self.path / self.TRAIN_STATS)

    def read_train_stats(self):
        """The mapping :meth:`write_train_stats` wrote, or ``None``."""
        return _load_tensors(self.path / self.TRAIN_STATS)

    def write_eval(self, summary, per_point):
        """``eval.json`` (``summary``, JSON values) and ``eval_points.pt`` (``per_point`` tensors)."""
        atomic.save_torch({k: v.cpu() for k, v in per_point.items()}, self.path / self.EVAL_POINTS)
        atomic.write_json(self.path / self.EVAL, summary)

    def read_eval(self):
        """``(summary, per_point)`` as :meth:`write_eval` wrote them, or ``None`` before an evaluation."""
        points = _load_tensors(self.path / self.EVAL_POINTS)
        summary_path = self.path / self.EVAL
        if points is None or not summary_path.is_file():
            return None
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise RunError(f"'{summary_path}' is not valid JSON ({error}); run pyro-vae evaluate again "
                           "to replace it.") from None
        if not isinstance(points, dict) or not isinstance(summary, dict):
            raise RunError(f"'{self.path / self.EVAL_POINTS}' or '{summary_path}' does not hold what "
                           "pyro-vae evaluate writes; run pyro-vae evaluate again to replace them.")
        return summary, points


def _load_tensors(path):
    """The tensors saved with ``torch.save`` at ``path`` (read with ``weights_only=True``), or ``None``
    if there is no file; a damaged or crafted file is a :class:`~pyro_vae.errors.RunError`."""
    import pickle
    import zipfile

    import torch

    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as error:
        kind = "holds objects other than tensors" if isinstance(error, pickle.UnpicklingError) else (
            f"is damaged ({type(error).__name__})")
        raise RunError(f"'{path}' {kind}, so it was not loaded (no code in it ran). Delete it, or write "
                       "it again (pyro-vae evaluate writes eval_points.pt).") from None
