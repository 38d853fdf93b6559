"""A run: its config, data and model, built for training or loaded from a run directory.

* :meth:`Run.build` (training): seeds the RNG, loads every split onto the device (or keeps
  the training split in host memory when it does not fit), builds the VAE and checks the
  data against its likelihood once.
* :func:`load_model`: the trained model alone, from ``config.yaml`` (the model section and
  the stored data shape) and the newest good checkpoint; no data are read and the global
  RNG is left as it was (``pyro-vae sample``).
* :func:`load_run`: the model and the data splits a command needs (``pyro-vae evaluate``
  reads the test split only), with the fixed evaluation views of val and test.
"""

import dataclasses
from dataclasses import dataclass

import pyro
import torch

from . import config as configuration
from .data import batches, fits_on_device, load_dataset, make_loader
from .devices import resolve_device
from .errors import CheckpointError, ConfigError, DataError
from .model import VAE
from .registry import SPLITS, BuildContext
from .rundir import RunDir

EVAL_SEED = 12345
"""Seed of the fixed binarisation (or dequantisation) of the data used for evaluation."""
VALIDATION_CHUNK = 8192
"""Training data are checked against the likelihood's support this many points at a time."""


@dataclass
class Run:
    """What a run is built from: its config, data (on the device) and VAE.

    ``val`` and ``test`` are the fixed evaluation views of those splits
    (:meth:`~pyro_vae.data.Splits.eval_split`); ``streaming`` says that the training
    split stays in host memory and is streamed to the device in batches.
    """

    config: dict
    device: torch.device
    splits: object
    vae: torch.nn.Module
    val: torch.Tensor
    test: torch.Tensor
    streaming: bool = False

    @classmethod
    def build(cls, config, model=None, local_rank=None):
        """Data, VAE and fixed evaluation views from a resolved config, for training.

        ``model`` replaces the VAE that ``config["model"]`` describes: any ``nn.Module``
        with Pyro methods ``model(x)`` and ``guide(x)`` (see :func:`pyro_vae.train`).
        """
        configuration.check(config)
        device = resolve_device(config["device"])
        if local_rank is not None and device.type == "cuda":  # one GPU per process (torchrun)
            device = torch.device("cuda", local_rank)
        pyro.set_rng_seed(config["seed"])
        splits = load_dataset(config["data"], BuildContext(device=device))
        streaming = not fits_on_device(splits, device)
        if streaming:  # the training split stays in host memory and is streamed in batches
            splits = dataclasses.replace(splits, val=splits.val.to(device), test=splits.test.to(device))
        else:
            splits = splits.to(device)
        vae = build_model(config, splits.data_shape, device, model)
        val, test = (splits.eval_split(name, EVAL_SEED) for name in ("val", "test"))
        likelihood = getattr(vae, "likelihood", None)
        if likelihood is not None:
            for chunk in splits.train.split(VALIDATION_CHUNK):  # the data as training will see them
                likelihood.validate(splits.fixed_transform(chunk, EVAL_SEED))
        _validate(vae, val, test)
        return cls(config, device, splits, vae, val, test, streaming)

    @property
    def context(self):
        """The :class:`~pyro_vae.registry.BuildContext` of this run's parts (objective, schedule)."""
        return BuildContext(num_train=len(self.splits.train), data_shape=tuple(self.splits.data_shape),
                            device=self.device)

    def train_batches(self, batch_size, generator, ctx=None):
        """One epoch of training batches on the device, in the order of :func:`~pyro_vae.data.batches`:
        indexed from the device-resident tensor, or streamed through a DataLoader (pinned
        memory, non-blocking copies) when the data did not fit on the device. With several
        processes (``ctx``, a :class:`~pyro_vae.distributed.Distributed`), this rank's share
        of each global batch of ``batch_size × world_size``."""
        train = self.splits.train
        if ctx is not None and ctx.enabled:
            order = batches(len(train), batch_size * ctx.world_size, generator, train.device)
            source = (train[ctx.shard(index)].to(self.device, non_blocking=True) for index in order)
        elif self.streaming:
            source = make_loader(train, batch_size, generator, self.device)
        else:
            source = (train[index] for index in batches(len(train), batch_size, generator, self.device))
        for x in source:
            yield self.splits.transform_batch(x)


def _validate(vae, *parts):
    """Check data against the model's likelihood, where the model has one."""
    likelihood = getattr(vae, "likelihood", None)
    if likelihood is not None:
        for part in parts:
            likelihood.validate(part)


def build_model(config, data_shape, device, model=None):
    """The VAE of ``config["model"]`` for data of ``data_shape`` (or the user's ``model``) on
    ``device``; a model too large for the memory is a :class:`~pyro_vae.errors.ConfigError`."""
    try:
        vae = model if model is not None else VAE(data_shape=data_shape, **config["model"])
        return vae.to(device)
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        detail = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ConfigError(f"The model does not fit in the memory of {device} ({detail}); choose smaller "
                          f"sizes in the model section (latent_dim {config['model']['latent_dim']!r}, the "
                          "networks' hidden widths).") from None


def _out_of_memory(error):
    """Whether ``error`` is an allocator's refusal (CPU or CUDA) rather than a bug."""
    text = str(error).lower()
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text or (
        "out of memory" in text)


def load_model_state(vae, state, run_dir):
    """``vae.load_state_dict(state["model"])``, with a clear error when they do not fit."""
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()] or [str(error)]
        shown = "; ".join(lines[:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
        raise CheckpointError(f"The checkpoint of epoch {state['epoch']} in '{run_dir}' does not fit the "
                              "model that the run's config.yaml (or the module passed as model=) describes: "
                              f"{shown}") from None


def _device(rundir, map_location):
    return torch.device(map_location) if map_location is not None else resolve_device(rundir.config["device"])


def load_model(run_dir, map_location=None, model=None):
    """The trained model of the run in ``run_dir`` and its checkpoint: ``(vae, state)``.

    Built from the stored config and data shape, without reading any data and without
    touching the global RNG; the parameters are those of the newest checkpoint that loads
    (damaged newer ones are skipped with a line on stderr; ``state["path"]`` names the file).
    ``map_location`` (e.g. ``"cpu"``) is the device to load onto (default: the run's
    ``device`` setting). A run trained with a custom ``model`` needs the same (freshly
    built) module again.
    """
    rundir = RunDir(run_dir).require()
    config = configuration.check(rundir.config)
    device = _device(rundir, map_location)
    with torch.random.fork_rng(devices=[]):  # initial weights, overwritten by the checkpoint
        try:
            vae = build_model(config, rundir.data_shape, device, model)
        except ConfigError as error:
            raise ConfigError(f"The run's config file '{rundir.config_path}' does not describe a valid "
                              f"model: {error}") from None
    state = rundir.checkpoints.load_latest(device)
    if state is None:
        raise CheckpointError(f"Run directory '{rundir.path}' has no checkpoint (no epoch was completed).")
    load_model_state(vae, state, rundir.path)
    return vae, {**state, "path": str(rundir.checkpoints.loaded_path)}


def load_run(run_dir, map_location=None, model=None, splits=SPLITS):
    """The run in ``run_dir`` with its data: ``(Run, state)`` (see :func:`load_model`).

    Only the data ``splits`` are needed (datasets that can skip the others' files do, e.g.
    ``splits=("test",)`` reads MNIST's test files alone; the others are left empty). The
    global RNG is not touched and the training split is not re-checked; val and test are
    checked against the likelihood. The training split stays in host memory.
    """
    rundir = RunDir(run_dir).require()
    vae, state = load_model(rundir.path, map_location, model)
    device = next(vae.parameters()).device
    config = rundir.config
    data = load_dataset(config["data"], BuildContext(device=device, splits=tuple(splits)))
    if tuple(data.data_shape) != rundir.data_shape:
        raise DataError(f"The data of the run in '{rundir.path}' now have shape "
                        f"{tuple(data.data_shape)}, but the run was trained on {rundir.data_shape} "
                        "(was the data file replaced?).")
    data = dataclasses.replace(data, val=data.val.to(device), test=data.test.to(device))
    val, test = (data.eval_split(name, EVAL_SEED) for name in ("val", "test"))
    _validate(vae, val, test)
    return Run(config, device, data, vae, val, test, streaming=data.train.device != device), state
