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

Divergence stops training with :class:`~pyro_vae.errors.TrainingDiverged` before the
diverged epoch is checkpointed (so the newest checkpoint on disk is the last good one). It
is checked on the losses read back for the finiteness check, with no other read from the
device, in step order:

* a loss that is NaN or infinite;
* a loss that explodes (``train.divergence_factor`` = f, ``null`` turns this rule off): with
  ℓ_t = loss_t / (points in batch t) the loss per data point of step t and m the median of
  the last :data:`HISTORY_WINDOW` per-point losses that passed this check before it
  (:class:`LossHistory`), step t diverged when ``ℓ_t > m + f·max(|m|, 1)``. The rule applies
  from the second checked step of a fresh run (an exploding learning rate blows up at the
  first optimiser step: at the default f = 100 the loss must grow about 100-fold, where a
  fresh model's loss falls and a β warm-up adds at most the KL); on resume the history is
  seeded with the last completed epoch's ``train_loss`` from the metrics, so the rule
  applies from the first resumed step. The history spans epochs.

The message gives the loss per point against the median, the reconstruction and β·KL
terms recomputed on the batch (:func:`~pyro_vae.diagnostics.elbo_terms`), and the likely
cause: β (``beta_schedule``) when β·KL makes up most of the loss and β > :data:`EXTREME_BETA`,
else the learning rate (non-finite parameters, or an exploded reconstruction or KL term).

The data set lives on the device as one tensor and is batched by index with a
permutation drawn from a generator seeded by (seed, epoch) (data too large for the device
are streamed through a pinned DataLoader in the same order; under torchrun each process
takes its share of every global batch, see :mod:`pyro_vae.distributed`); with dynamic
binarisation each batch gets a fresh Bernoulli draw on the device. The data are checked
against the likelihood once, up front (:meth:`~pyro_vae.runs.Run.build`), and the loop runs
with Pyro validation off. The trainer writes the run directory's config, metrics,
checkpoints and training-split statistics through :class:`~pyro_vae.rundir.RunDir`; it
draws no figures (callers pass end-of-run hooks, as :func:`pyro_vae.train` does).
"""

import collections
import contextlib
import math
import statistics
import sys
import time

import pyro
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoints import PATTERN as CHECKPOINT_NAME
from .diagnostics import elbo_terms, latent_summary
from .distributed import Distributed, ELBOLoss
from .errors import CheckpointError, ConfigError, TrainingDiverged
from .objectives import OBJECTIVES, check_beta_schedule, check_compatible, step_loss
from .runs import load_model_state
from .schedules import BETA_SCHEDULES

SYNC_EVERY = 50
"""On an accelerator, the training losses are checked for NaN/inf every this many steps."""
HISTORY_WINDOW = 50
"""The divergence rule compares a step's loss per point with the median of this many before it."""
EXTREME_BETA = 1e6
"""A β above this that makes β·KL most of a diverged loss is named as the likely cause."""
POSTFIX_SECONDS = 0.5
MIXED_PRECISION = {"bf16": torch.bfloat16}
"""``train.mixed_precision`` -> the dtype of the networks under ``torch.autocast``."""


def log_interval(epochs):
    """Epochs between two progress lines: every epoch up to 30 epochs, then about 30 lines."""
    return max(1, round(epochs / 30))


def epoch_line(record, epochs, best=False):
    """The progress line of a metrics record, e.g. ``epoch  3/40  loss 41.27  val ELBO -40.93 *
    (recon -33.10, latent 7.83)  β 1  0.6 s``; ``*`` marks a new best validation ELBO. ``loss``
    is the training loss per point (β-weighted), the validation terms are unweighted."""
    width = len(str(epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{epochs}", f"loss {record['train_loss']:.2f}"]
    if record.get("val_elbo") is not None:
        latent = sum(record.get("val_kl", {}).values())
        parts.append(f"val ELBO {record['val_elbo']:.2f}{' *' if best else '  '} "
                     f"(recon {record['val_recon']:.2f}, latent {latent:.2f})")
    betas = record["beta"] if isinstance(record["beta"], (list, tuple)) else [record["beta"]]
    parts.append("β " + "/".join(f"{b:.3g}" for b in betas))
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)


def _sync_every(device):
    """Steps between NaN/inf checks of the loss (each reads a value back from the device)."""
    return 1 if device.type == "cpu" else SYNC_EVERY


class LossHistory:
    """The explosion rule: ``exploded(value)`` is true when the per-point loss ``value`` exceeds
    ``limit()``, ``m + factor·max(|m|, 1)`` with m the median of the last ``window`` values
    recorded (never with no history, or with ``factor=None``); otherwise ``value`` is recorded."""

    def __init__(self, factor, window=HISTORY_WINDOW):
        self.factor = factor
        self.values = collections.deque(maxlen=window)

    def median(self):
        return statistics.median(self.values)

    def limit(self):
        """The largest per-point loss the next step may have, or ``inf`` (no rule yet)."""
        if self.factor is None or not self.values:
            return math.inf
        median = self.median()
        return median + self.factor * max(abs(median), 1.0)

    def exploded(self, value):
        if value > self.limit():
            return True
        self.values.append(value)
        return False


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


def check_prior_start(prior, num_train):
    """A prior that starts at the data needs a distinct training point per component."""
    if getattr(prior, "start_epoch", 0) and prior.num_components > num_train:
        raise ConfigError(
            f"The mixture prior starts at the encoder's means of {prior.num_components} training "
            f"points (start_epoch {prior.start_epoch}), but the training split has {num_train}; "
            "use fewer components or more data.")


def make_lr_scheduler(optimizer, optim):
    """The per-epoch learning-rate schedule of the ``optim`` config section: the rate is
    multiplied by ``lr_decay`` after every epoch, or after each epoch listed in
    ``lr_milestones`` (a staircase, e.g. Burda et al.'s 3^i-epoch stages)."""
    if optim["lr_milestones"] is None:
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, optim["lr_decay"])
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, optim["lr_milestones"], optim["lr_decay"])


class Trainer:
    """Runs the epochs of one :class:`~pyro_vae.runs.Run` into a :class:`~pyro_vae.rundir.RunDir`.

    The objective and the β schedule are built with the run's
    :class:`~pyro_vae.registry.BuildContext` (training-set size, data shape, device).
    ``on_end``: callables ``hook(run, rundir)`` run on the main process after the last
    epoch (figures, exports); ``on_epoch``: callables ``hook(record, run)`` run on the main
    process after each epoch's record is written (experiment tracking,
    :mod:`pyro_vae.tracking`). With ``progress``, a bar counts the batches and one line per
    epoch (every :func:`log_interval` epochs for long runs, and the last) stays on stderr.
    """

    def __init__(self, run, rundir, progress=True, ctx=None, on_end=(), on_epoch=()):
        self.run = run
        self.ctx = ctx or Distributed()
        self.ddp = None  # the DistributedDataParallel loss module, with several processes
        self.rundir = rundir
        self.progress = progress
        self.on_end = tuple(on_end)
        self.on_epoch = tuple(on_epoch)
        self.best = None  # (val_elbo, epoch) of the best validated epoch so far
        config = run.config
        self.objective = OBJECTIVES.build(config["objective"], run.context)
        self.objective_at_epoch = getattr(self.objective, "at_epoch", None)  # a loss that follows progress
        check_compatible(config["objective"], run.vae)
        check_prior_start(getattr(run.vae, "prior", None), len(run.splits.train))
        self.schedule = BETA_SCHEDULES.build(config["beta_schedule"], run.context)
        check_beta_schedule(config["objective"], self.schedule, config["train"]["epochs"])
        self.step_settings = step_settings(run.vae, self.objective, config["train"]["mixed_precision"])
        run.vae.beta = self.schedule(0.0)  # a β that does not fit the model fails before any write
        self.optimizer = make_adam(run.vae.parameters(), lr=config["optim"]["lr"], eps=config["optim"]["eps"])
        self.scheduler = make_lr_scheduler(self.optimizer, config["optim"])
        self.checkpoints = rundir.checkpoints
        self.epoch = 0
        self.history = LossHistory(config["train"]["divergence_factor"])

    def state(self):
        """Everything a checkpoint holds: epoch, model, optimiser, scheduler and RNG states, and the
        objective's own state where it keeps one (``state_dict()``, e.g. FactorVAE's discriminator)."""
        objective = getattr(self.objective, "state_dict", None)
        return {
            **({"objective": objective()} if objective is not None else {}),
            "epoch": self.epoch,
            "model": self.run.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def restore(self, state):
        """Continue from a checkpoint's :meth:`state`."""
        self.epoch = state["epoch"]
        load_model_state(self.run.vae, state, self.rundir.path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "objective" in state and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def _start(self, resume):
        main = self.ctx.is_main
        if main:
            self.rundir.create()
        if resume:
            saved_optim = self.rundir.config["optim"]  # the stored config, read once (by train)
            try:
                state = self.checkpoints.load_latest()
            except CheckpointError as error:
                raise CheckpointError(f"Cannot resume '{self.rundir.path}': {error}") from None
            if state is not None:
                self.restore(state)
                self._apply_optim_overrides(saved_optim)
                self._seed_history()
                best = self.checkpoints.best()  # the progress lines mark only a new best with *
                if best is not None and best["epoch"] <= self.epoch:
                    self.best = (best["score"], best["epoch"])
            if main:
                self.rundir.truncate_metrics(self.epoch)
        elif main:
            self.rundir.start_metrics()
            self.rundir.write_train_stats(train_stats(self.run.splits.train))
        if main:  # only rank 0 writes; the run exists once its config is complete
            self.rundir.write_config(self.run.config, self.run.splits.info)

    def _seed_history(self):
        """Start the divergence rule's history with the resumed epoch's ``train_loss``, so that it
        applies from the first resumed step."""
        for record in self.rundir.read_metrics():
            loss = record.get("train_loss")
            if record["epoch"] == self.epoch and isinstance(loss, (int, float)) and math.isfinite(loss):
                self.history.values.append(float(loss))

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

    def fit(self, resume=False):
        """Train to ``train.epochs`` (continuing from the newest checkpoint with ``resume``),
        run the end-of-run hooks and return the run."""
        self._start(resume)
        self._fit()
        if self.ctx.is_main:
            for hook in self.on_end:
                hook(self.run, self.rundir)
        return self.run

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

    def _start_prior_at_the_data(self):
        """After its ``start_epoch``, a prior that starts at the data (the ``mixture`` prior)
        takes the encoder's means of as many random training points as it has components; the
        draw depends only on the seed and the epoch, so every rank (and a resumed run) makes
        the same one. Before the checkpoint of the epoch, so resume sees the started prior."""
        run = self.run
        prior = getattr(run.vae, "prior", None)  # a user's model need not have one
        if getattr(prior, "start_epoch", 0) != self.epoch or prior.started:
            return
        train = run.splits.train
        generator = torch.Generator().manual_seed(run.config["seed"] * 1_000_003 + self.epoch)
        index = torch.randperm(len(train), generator=generator)[: prior.num_components]
        x = run.splits.fixed_transform(train[index.to(train.device)], self.epoch)
        prior.start_at(run.vae.encode(x)[0])

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
            progress = self.epoch + step / num_batches
            vae.beta = self.schedule(progress)
            if self.objective_at_epoch is not None:
                self.objective_at_epoch(progress)
            loss = self._step(x)
            pending.append((loss, len(x)))
            if len(pending) >= sync_every or step == num_batches - 1:
                self._check_losses(pending, step, x)
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
        self._start_prior_at_the_data()
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
        self.rundir.append_metrics(record)
        self.checkpoints.save(self.state(), self.epoch, score=record.get("val_elbo"))
        for hook in self.on_epoch:
            hook(record, run)
        self._report_epoch(record, bar)

    def _report_epoch(self, record, bar):
        """One line per epoch (every :func:`log_interval` epochs, and the last) above the bar."""
        val = record.get("val_elbo")
        improved = val is not None and (self.best is None or val > self.best[0])
        if improved:
            self.best = (val, self.epoch)
        epochs = self.run.config["train"]["epochs"]
        if self.progress and (self.epoch % log_interval(epochs) == 0 or self.epoch == epochs):
            tqdm.write(epoch_line(record, epochs, improved), file=sys.stderr)

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

    def _check_losses(self, pending, step, x):
        """Raise :class:`TrainingDiverged` at the first of the steps ending at ``step`` whose loss
        is NaN/inf or exploded (``pending``: their (loss, batch size)); one read from the device."""
        losses = [loss for loss, _ in pending]
        values = [losses[0].item()] if len(losses) == 1 else torch.stack(losses).tolist()
        first = step - len(pending) + 1
        for index, (value, (_, size)) in enumerate(zip(values, pending)):
            if not math.isfinite(value):
                self._diverged(first + index, x)
            if self.history.exploded(value / size):
                self._exploded(first + index, value / size, x)

    def _terms(self, x):
        """Per-point means on ``x``: (−log p(x|z), {site: KL}, Σ β·KL, largest β); ``None`` when
        the parameters are not finite."""
        vae = self.run.vae
        if not all(bool(torch.isfinite(p).all()) for p in vae.parameters()):
            return None
        terms = elbo_terms(vae, x)
        kl = {site: value.double().mean().item() for site, value in terms["kl"].items()}
        betas = vae.beta if isinstance(vae.beta, (tuple, list)) else (vae.beta,) * len(kl)
        if len(betas) != len(kl):
            betas = (max(betas),) * len(kl)
        beta_kl = sum(b * k for b, k in zip(betas, kl.values()))
        return -terms["recon"].double().mean().item(), kl, beta_kl, max(betas, default=1.0)

    def _likely_cause(self, terms, data_hint=""):
        """The likely cause of a divergence and what to change, in words (``data_hint`` is added
        to the learning-rate advice)."""
        lr = self.optimizer.param_groups[0]["lr"]
        if terms is None:
            why = "the parameters themselves are no longer finite (an optimiser step overshot)"
        else:
            recon, kl, beta_kl, beta = terms
            if beta > EXTREME_BETA and math.isfinite(recon) and beta_kl >= abs(recon):
                return (f"β (beta_schedule: β = {beta:.3g}, far from 1): β·KL is {beta_kl:.3g} of the "
                        f"{recon + beta_kl:.3g} nats per point. Lower beta_schedule.beta (β of 0.1 to 10 "
                        "is usual)")
            if math.isfinite(recon) and beta_kl > abs(recon):
                why = f"the KL term exploded ({sum(kl.values()):.3g} nats per point at β = {beta:.3g})"
            else:
                why = f"the reconstruction term exploded (−log p(x|z) = {recon:.3g} nats per point)"
        return (f"the learning rate (optim.lr = {lr:.3g}): {why}. Try a lower optim.lr "
                f"(e.g. {lr / 100:.3g}) or set optim.clip_norm (e.g. 10){data_hint}")

    def _kept(self):
        """Which checkpoint is kept, in words: the newest of the completed epochs (the diverged
        epoch is never saved)."""
        for path in self.checkpoints.paths():
            match = CHECKPOINT_NAME.search(path.name)
            if match and int(match.group(1)) <= self.epoch:
                return (f"The last good checkpoint, '{path}' (epoch {int(match.group(1))}, written "
                        "before the divergence), is kept.")
        return "No checkpoint was written before the divergence."

    def _diverged(self, step, x):
        terms = self._terms(x)
        raise TrainingDiverged(
            f"The loss became NaN or infinite at epoch {self.epoch + 1}, step {step + 1}; "
            f"non-finite on the current batch: {self._bad_terms(terms, len(x))}. "
            f"Likely cause: {self._likely_cause(terms, ', or check the data against the likelihood')}. "
            f"{self._kept()}"
        )

    @staticmethod
    def _bad_terms(terms, size):
        """Which ELBO terms of :meth:`_terms` are NaN/inf (or overflow the loss), in words."""
        if terms is None:
            return "the parameters themselves (an optimiser step diverged)"
        recon, kl, beta_kl, _ = terms
        bad = [f"the KL term of latent site '{site}'" for site, value in kl.items()
               if not math.isfinite(value)]
        if not math.isfinite(recon):
            bad.insert(0, "the reconstruction term log p(x|z)")
        if not bad and abs(recon + beta_kl) * size > torch.finfo(torch.get_default_dtype()).max:
            bad = [f"β·KL ({beta_kl:.3g} nats per point, beyond {torch.get_default_dtype()} over the batch)"]
        return ", ".join(bad) or "none on recomputing this batch (an extreme draw of z)"

    def _exploded(self, step, value, x):
        history, terms = self.history, self._terms(x)
        batch = "" if terms is None else (
            f" On the current batch, per point: −log p(x|z) {terms[0]:.3g}, β·KL {terms[2]:.3g} nats.")
        raise TrainingDiverged(
            f"The loss exploded at epoch {self.epoch + 1}, step {step + 1}: {value:.3g} nats per data "
            f"point against a median of {history.median():.3g} over the last {len(history.values)} "
            f"checked step{'s' if len(history.values) > 1 else ''} (limit median + "
            f"train.divergence_factor·max(|median|, 1) = {history.limit():.3g}).{batch} "
            f"Likely cause: {self._likely_cause(terms)}. {self._kept()} "
            "(train.divergence_factor: null turns this check off.)"
        )


def train_stats(train):
    """Per-feature sums of the training split and its size (the independent-pixel baseline
    of :func:`pyro_vae.evaluate` needs no training data then)."""
    return {"sum": train.sum(0).cpu(), "count": torch.tensor(len(train))}
