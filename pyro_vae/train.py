"""The training loop: Pyro ELBO gradients, a PyTorch optimiser, device-resident batches.

Each step is what ``SVI.step`` does: the objective's surrogate ELBO is back-propagated
into the VAE's parameters (:func:`~pyro_vae.objectives.step_loss`: ``differentiable_loss``
then ``backward``, or ``loss_and_grads`` for objectives without the former; the gradients
are those of ``loss_and_grads``), then one ``torch.optim`` step (Adam over
``vae.parameters()``, fused where the device has a fused kernel, with optional per-epoch
learning-rate decay and gradient-norm clipping). Using one PyTorch optimiser rather than
``pyro.optim`` keeps the optimiser and scheduler state in ordinary ``state_dict()``
mappings that checkpoint safely.

The hot loop does not wait for the device: the losses are summed on the device and read
back once per epoch (on an accelerator the finiteness check runs every
``SYNC_EVERY`` steps, on the CPU, where reading a value costs nothing, every step, before
the optimiser step), and the progress bar shows the loss at most twice a second.

The data set lives on the device as one tensor and is batched by index with a
permutation drawn from a generator seeded by (seed, epoch) (data too large for the device
are streamed through a pinned DataLoader in the same order; under torchrun each process
takes its share of every global batch, see :mod:`pyro_vae.distributed`); with dynamic
binarisation each batch gets a fresh Bernoulli draw on the device. The data are checked
against the likelihood once, up front, and the loop runs with Pyro validation off. A run directory holds
``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` and ``figures/``.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import config as configuration
from . import distributed
from .checkpoints import CheckpointDir, CheckpointError
from .data import batches, fits_on_device, load_dataset, make_loader
from .diagnostics import elbo_terms, latent_summary
from .distributed import Distributed, ELBOLoss
from .errors import ConfigError, PyroVAEError
from .model import VAE
from .objectives import OBJECTIVES, check_compatible, step_loss
from .plots import plot_reconstructions_and_samples, save_figure
from .schedules import BETA_SCHEDULES

EVAL_SEED = 12345
"""Seed of the fixed binarisation (or dequantisation) of the data used for evaluation."""
SINGLE_PROCESS = Distributed()
VALIDATION_CHUNK = 8192
"""Training data are checked against the likelihood's support this many points at a time."""
SYNC_EVERY = 50
"""On an accelerator, the training losses are checked for NaN/inf every this many steps."""
POSTFIX_SECONDS = 0.5
MIXED_PRECISION = {"bf16": torch.bfloat16}
"""``train.mixed_precision`` -> the dtype of the networks under ``torch.autocast``."""


class TrainingDiverged(PyroVAEError):
    """The loss became NaN or infinite."""


def resolve_device(name):
    """``"auto"`` -> CUDA when available, else CPU; explicit names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device '{name}'; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device '{name}' was requested but CUDA is not available here.")
    return device


@dataclass
class Run:
    """What a run is built from: its config, data (on the device) and VAE."""

    config: dict
    device: torch.device
    splits: object
    vae: VAE
    val: torch.Tensor
    test: torch.Tensor
    streaming: bool = False

    @classmethod
    def build(cls, config, model=None, local_rank=None):
        """Data, VAE and fixed evaluation views from a resolved config.

        ``model`` replaces the VAE that ``config["model"]`` describes: any ``nn.Module``
        with Pyro methods ``model(x)`` and ``guide(x)`` (see :func:`train`).
        """
        configuration.check(config)
        device = resolve_device(config["device"])
        if local_rank is not None and device.type == "cuda":  # one GPU per process (torchrun)
            device = torch.device("cuda", local_rank)
        pyro.set_rng_seed(config["seed"])
        splits = load_dataset(config["data"])
        streaming = not fits_on_device(splits, device)
        if streaming:  # the training split stays in host memory and is streamed in batches
            splits = dataclasses.replace(splits, val=splits.val.to(device), test=splits.test.to(device))
        else:
            splits = splits.to(device)
        vae = model if model is not None else VAE(data_shape=splits.data_shape, **config["model"])
        vae = vae.to(device)
        val, test = (splits.eval_split(name, EVAL_SEED) for name in ("val", "test"))
        likelihood = getattr(vae, "likelihood", None)
        if likelihood is not None:
            for chunk in splits.train.split(VALIDATION_CHUNK):  # the data as training will see them
                likelihood.validate(splits.fixed_transform(chunk, EVAL_SEED))
            for part in (val, test):
                likelihood.validate(part)
        return cls(config, device, splits, vae, val, test, streaming)

    def train_batches(self, batch_size, generator, ctx=SINGLE_PROCESS):
        """One epoch of training batches on the device, in the order of :func:`~pyro_vae.data.batches`:
        indexed from the device-resident tensor, or streamed through a DataLoader (pinned
        memory, non-blocking copies) when the data did not fit on the device. With several
        processes, this rank's share of each global batch of ``batch_size × world_size``."""
        train = self.splits.train
        if ctx.enabled:
            order = batches(len(train), batch_size * ctx.world_size, generator, train.device)
            source = (train[ctx.shard(index)].to(self.device, non_blocking=True) for index in order)
        elif self.streaming:
            source = make_loader(train, batch_size, generator, self.device)
        else:
            source = (train[index] for index in batches(len(train), batch_size, generator, self.device))
        for x in source:
            yield self.splits.transform_batch(x)


def load_run(run_dir, map_location=None, model=None):
    """Rebuild a finished or interrupted run from its directory (newest good checkpoint).

    A run trained with a custom ``model`` needs the same (freshly built) module again.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        what = "does not exist" if not run_dir.exists() else "is not a pyro-vae run (no config.yaml)"
        raise PyroVAEError(f"Run directory '{run_dir}' {what}.")
    config = configuration.load_yaml(config_path)
    config.pop("data_info", None)
    run = Run.build(configuration.resolve(config), model)
    state = CheckpointDir(run_dir / "checkpoints").load_latest(map_location or run.device)
    if state is None:
        raise PyroVAEError(f"Run directory '{run_dir}' has no loadable checkpoint.")
    load_model_state(run.vae, state, run_dir)
    return run, state


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
    and ends with the same parameters as an uninterrupted run. Returns the :class:`Run`.
    """
    out_dir = Path(out_dir)
    saved = out_dir / "config.yaml"
    if resume:
        if not saved.is_file():
            raise PyroVAEError(f"Cannot resume: '{out_dir}' holds no run (no config.yaml).")
        base = configuration.load_yaml(saved)
        base.pop("data_info", None)
        base = configuration.resolve(base)
    else:
        if saved.exists():
            raise PyroVAEError(
                f"'{out_dir}' already holds a run; pass --resume to continue it or choose another --out."
            )
        base = configuration.DEFAULTS
    config = configuration.resolve(config, overrides, base=base)
    root = config["data"].get("root") if isinstance(config["data"], dict) else None
    if isinstance(root, str):  # the run must find its data from any working directory
        config["data"]["root"] = os.path.abspath(os.path.expanduser(root))
    ctx = distributed.setup()
    run = Run.build(config, model, ctx.local_rank if ctx.enabled else None)
    return Trainer(run, out_dir, progress, ctx).fit(resume)


def load_model_state(vae, state, run_dir):
    """``vae.load_state_dict(state["model"])``, with a clear error when they do not fit."""
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"The checkpoint in '{run_dir}' does not fit the model its config.yaml "
                              f"describes (was config.yaml edited?): {first}") from None


def _sync_every(device):
    """Steps between NaN/inf checks of the loss (each reads a value back from the device)."""
    return 1 if device.type == "cpu" else SYNC_EVERY


def make_adam(params, lr, eps=1e-8):
    """``torch.optim.Adam`` with the fused kernel where the device has one (CPU and CUDA in
    current PyTorch: one pass over all parameters, about 3x faster than the default
    per-parameter loop on the CPU), else the default implementation. The fused update
    agrees with the default one to float rounding, not bitwise; a checkpoint keeps the
    choice it was made with (``load_state_dict`` restores the ``fused`` flag), so a
    resumed run continues exactly.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device/dtype
        return torch.optim.Adam(params, lr=lr, eps=eps)


@contextlib.contextmanager
def temporary_attributes(module, settings):
    """Within the block, ``module``'s attributes named in ``settings`` take those values."""
    saved = {name: getattr(module, name) for name in settings}
    for name, value in settings.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def step_settings(vae, objective, mixed_precision):
    """The VAE attributes the training step runs with (see :class:`~pyro_vae.VAE`).

    * ``register_params=False`` where the objective has a ``differentiable_loss`` (all of
      the library's; a user's objective with only ``loss_and_grads`` needs the param sites):
      the loop optimises ``vae.parameters()`` itself, so the model need not register them
      in Pyro's param store on every call;
    * ``network_autocast=torch.bfloat16`` with ``train.mixed_precision: bf16``.
    """
    settings = {}
    if hasattr(vae, "register_params") and getattr(objective, "differentiable_loss", None) is not None:
        settings["register_params"] = False
    if mixed_precision is not None:
        if not hasattr(vae, "network_autocast"):
            raise ConfigError(
                "train.mixed_precision needs a model with a 'network_autocast' attribute (as "
                f"pyro_vae.VAE) that runs its networks under torch.autocast; {type(vae).__name__} has none."
            )
        settings["network_autocast"] = MIXED_PRECISION[mixed_precision]
    return settings


def make_lr_scheduler(optimizer, optim):
    """The per-epoch learning-rate schedule of the ``optim`` config section: the rate is
    multiplied by ``lr_decay`` after every epoch, or after each epoch listed in
    ``lr_milestones`` (a staircase, e.g. Burda et al.'s 3^i-epoch stages)."""
    if optim["lr_milestones"] is None:
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, optim["lr_decay"])
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, optim["lr_milestones"], optim["lr_decay"])


class Trainer:
    """Runs the epochs of one :class:`Run`, writing metrics, checkpoints and figures."""

    def __init__(self, run, out_dir, progress=True, ctx=None):
        self.run = run
        self.ctx = ctx or Distributed()
        self.ddp = None  # the DistributedDataParallel loss module, with several processes
        self.out_dir = Path(out_dir)
        self.progress = progress
        config = run.config
        self.objective = OBJECTIVES.build(config["objective"])
        check_compatible(config["objective"], run.vae)
        self.schedule = BETA_SCHEDULES.build(config["beta_schedule"])
        self.step_settings = step_settings(run.vae, self.objective, config["train"]["mixed_precision"])
        run.vae.beta = self.schedule(0.0)  # a β that does not fit the model fails before any write
        self.optimizer = make_adam(run.vae.parameters(), lr=config["optim"]["lr"], eps=config["optim"]["eps"])
        self.scheduler = make_lr_scheduler(self.optimizer, config["optim"])
        self.checkpoints = CheckpointDir(self.out_dir / "checkpoints")
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.epoch = 0

    def state(self):
        return {
            "epoch": self.epoch,
            "model": self.run.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def restore(self, state):
        self.epoch = state["epoch"]
        load_model_state(self.run.vae, state, self.out_dir)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def _start(self, resume):
        main = self.ctx.is_main
        try:
            if main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError, PermissionError) as error:
            raise PyroVAEError(f"Cannot use '{self.out_dir}' as the run directory: "
                               f"{error.strerror or error}.") from None
        if resume:
            state = self.checkpoints.load_latest()
            if state is None and self.checkpoints.paths():
                raise CheckpointError(f"Cannot resume '{self.out_dir}': none of its checkpoints loads.")
            if state is not None:
                self.restore(state)
                self._apply_optim_overrides(configuration.load_yaml(self.out_dir / "config.yaml")["optim"])
            if main:
                self._truncate_metrics()
        elif main:
            self.metrics_path.write_text("")
        if not main:  # only rank 0 writes
            return
        resolved = dict(self.run.config, data_info=self.run.splits.info)
        tmp = self.out_dir / "config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
        tmp.replace(self.out_dir / "config.yaml")  # the run exists once its config is complete

    def _apply_optim_overrides(self, saved):
        """Optimiser settings changed on resume (``--set optim.lr=...``) apply from now on;
        unchanged ones keep the checkpoint's state (e.g. the decayed learning rate)."""
        new = self.run.config["optim"]
        for group in self.optimizer.param_groups:
            for key in ("lr", "eps"):
                if new[key] != saved.get(key):
                    group[key] = new[key]
        if new["lr"] != saved.get("lr"):
            self.scheduler.base_lrs = [new["lr"]] * len(self.optimizer.param_groups)
        if new["lr_decay"] != saved.get("lr_decay"):
            self.scheduler.gamma = new["lr_decay"]
        milestones = saved.get("lr_milestones")
        if new["lr_milestones"] != milestones:
            if (new["lr_milestones"] is None) != (milestones is None):
                raise ConfigError("optim.lr_milestones cannot be switched on or off when a run is resumed: "
                                  "the checkpoint holds the state of the other kind of schedule.")
            self.scheduler.milestones = collections.Counter(new["lr_milestones"])

    def _truncate_metrics(self):
        """Drop metric lines of epochs after the checkpoint we resume from (and a torn last line)."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["epoch"] <= self.epoch:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def fit(self, resume=False):
        fresh = not self.out_dir.exists()
        self._start(resume)
        try:
            return self._fit()
        except TrainingDiverged:
            if fresh and not self.checkpoints.paths():  # nothing worth keeping: leave no run behind
                shutil.rmtree(self.out_dir, ignore_errors=True)
            raise

    def _fit(self):
        config = self.run.config
        epochs, batch_size = config["train"]["epochs"], config["train"]["batch_size"]
        num_train = len(self.run.splits.train)
        num_batches = math.ceil(num_train / (batch_size * self.ctx.world_size))
        if self.ctx.enabled:
            device_ids = [self.run.device.index] if self.run.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(
                ELBOLoss(self.run.vae, self.objective, self.ctx.world_size), device_ids=device_ids)
        bar = tqdm(
            total=(epochs - self.epoch) * num_batches, disable=not (self.progress and self.ctx.is_main),
            unit="batch",
            desc="train", dynamic_ncols=True,
        )
        try:
            with bar, pyro.validation_enabled(False):
                while self.epoch < epochs:
                    self._epoch(num_batches, batch_size, bar)
        finally:
            self.ddp = None  # release DDP's reducer while the process group is still alive
        self._figures()
        return self.run

    def _epoch(self, num_batches, batch_size, bar):
        run, vae, config = self.run, self.run.vae, self.run.config
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(config["seed"] * 1_000_003 + self.epoch)
        if self.ctx.enabled:  # each rank its own noise, reproducible per epoch (and so on resume)
            pyro.set_rng_seed((config["seed"] * 1_000_003 + self.epoch) * 1009 + self.ctx.rank)
        clip = config["optim"]["clip_norm"]
        sync_every = _sync_every(run.device)
        # float64 as the former Python-float sum (bit-identical); MPS has no float64
        total = torch.zeros((), dtype=torch.float32 if run.device.type == "mps" else torch.float64,
                            device=run.device)
        pending = []  # losses not yet checked for NaN/inf
        show_postfix = not bar.disable
        next_postfix = time.monotonic()
        for step, x in enumerate(run.train_batches(batch_size, generator, self.ctx)):
            vae.beta = self.schedule(self.epoch + step / num_batches)
            loss = self._step(x)
            pending.append(loss)
            if len(pending) >= sync_every or step == num_batches - 1:
                self._check_finite(pending, step, x)
                pending.clear()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            total += loss
            bar.update()
            if show_postfix and time.monotonic() >= next_postfix:
                bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss.item() / len(x):.2f}", refresh=False)
                next_postfix = time.monotonic() + POSTFIX_SECONDS
        self.scheduler.step()
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            "train_loss": self.ctx.sum(total).item() / len(run.splits.train),
            "beta": vae.beta,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        if not self.ctx.is_main:  # only rank 0 validates and writes
            return
        last = self.epoch == config["train"]["epochs"]
        if len(run.val) and (self.epoch % config["train"]["validate_every"] == 0 or last):
            record.update(latent_summary(vae, run.val, config["eval"]["batch_size"]))
            bar.set_postfix(epoch=self.epoch, val_elbo=f"{record['val_elbo']:.2f}")
        # Metrics first: a kill between the two leaves a line that resume drops, never a gap.
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.checkpoints.save(self.state(), self.epoch)

    def _step(self, x):
        """Back-propagate the loss of batch ``x``; return it, detached. With several processes
        through DDP, which averages the (world-size scaled) gradients over ranks."""
        vae = self.run.vae
        with temporary_attributes(vae, self.step_settings):
            if self.ddp is None:
                return step_loss(self.objective, vae.model, vae.guide, x)
            loss = self.ddp(x)
            loss.backward()
        return loss.detach() / self.ctx.world_size

    def _check_finite(self, losses, step, x):
        """Raise :class:`TrainingDiverged` if a loss of the steps ending at ``step`` is NaN/inf."""
        if len(losses) == 1:
            if math.isfinite(losses[0].item()):
                return
            self._diverged(step, x)
        finite = torch.isfinite(torch.stack([loss.to(torch.float64) for loss in losses]))
        if bool(finite.all()):
            return
        self._diverged(step - len(losses) + 1 + int((~finite).nonzero()[0, 0]), x)

    def _bad_terms(self, x):
        """Which ELBO terms are NaN/inf on the batch ``x``, in words."""
        vae = self.run.vae
        if not all(bool(torch.isfinite(p).all()) for p in vae.parameters()):
            return "the parameters themselves (an optimiser step diverged)"
        terms = elbo_terms(vae, x)
        bad = [f"the KL term of latent site '{site}'" for site, value in terms["kl"].items()
               if not bool(torch.isfinite(value).all())]
        if not bool(torch.isfinite(terms["recon"]).all()):
            bad.insert(0, "the reconstruction term log p(x|z)")
        return ", ".join(bad) or "none on recomputing this batch (an extreme draw of z)"

    def _diverged(self, step, x):
        kept = self.checkpoints.paths()
        raise TrainingDiverged(
            f"The loss became NaN or infinite at epoch {self.epoch + 1}, step {step + 1}; "
            f"non-finite on the current batch: {self._bad_terms(x)}. "
            + (f"The last good checkpoint '{kept[0]}' is kept. " if kept else "")
            + "Try a lower optim.lr, set optim.clip_norm (e.g. 10), or check the data's scale "
            "against the likelihood."
        )

    def _figures(self):
        vae = self.run.vae
        drawable = hasattr(vae, "reconstruct") and hasattr(vae, "sample") and len(self.run.test)
        if not (self.ctx.is_main and drawable):
            return
        figure = plot_reconstructions_and_samples(vae, self.run.test[:8])
        save_figure(figure, self.out_dir / "figures" / "reconstructions.png")
