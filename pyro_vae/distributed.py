"""Multi-process training with PyTorch's own engine (``torch.distributed`` + DDP).

Launch the same command once per process with ``torchrun``; each process reads its rank
from the environment that torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``)::

    torchrun --nproc_per_node=4 -m pyro_vae.cli train --config run.yaml --out runs/ddp

Backend ``nccl`` on GPUs (process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``), ``gloo`` on the
CPU. Every process builds the same data and VAE from the same seed; each epoch's shuffled
order is cut into *global* batches of ``train.batch_size × world_size`` points and each
rank takes its share, so N processes compute what one process computes with the global
batch (effective batch size ``batch_size × N``; keep the learning rate of that batch
size). The negative ELBO is wrapped as a module (:class:`ELBOLoss`) so that
``DistributedDataParallel`` all-reduces the gradients; it scales each rank's loss by N,
so DDP's mean of the per-rank gradients is the gradient of the global batch's summed
loss, exactly as in one process. Only rank 0 writes the config, metrics, checkpoints and
figures; ``--resume`` works as in one process. Evaluation (``pyro-vae evaluate``, also
under torchrun) shares the test points out over ranks with :func:`sharded_estimate`.
"""

import math
import os
import warnings
from dataclasses import dataclass

import pyro
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from .errors import ConfigError, EstimatorWarning
from .validation import check_int


@dataclass(frozen=True)
class Distributed:
    """This process's place in the process group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def shard(self, index):
        """This rank's share of a global batch of indices (all of it in one process)."""
        return index.tensor_split(self.world_size)[self.rank] if self.enabled else index

    def sum(self, tensor):
        """The sum of ``tensor`` over ranks (``tensor`` itself in one process)."""
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor


def setup():
    """Join the process group the environment describes (torchrun), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(rank, world_size, local_rank)


class ELBOLoss(nn.Module):
    """The objective's loss of ``vae.model``/``vae.guide`` on a batch, as a module for DDP.

    Multiplied by ``world_size`` so that DDP's gradient average over ranks equals the
    gradient of the loss summed over the global batch.
    """

    def __init__(self, vae, objective, world_size):
        super().__init__()
        if getattr(objective, "differentiable_loss", None) is None:
            raise ConfigError(
                f"Distributed training needs an objective with a differentiable_loss method (as all "
                f"of the library's: elbo, elbo-analytic, iwae); {type(objective).__name__} has none."
            )
        self.vae, self.objective, self.world_size = vae, objective, world_size

    def forward(self, x):
        return self.objective.differentiable_loss(self.vae.model, self.vae.guide, x) * self.world_size


def sharded_estimate(estimator, model, guide, x, batch_size, seed=0, ctx=None, progress=False):
    """``estimator`` (see :mod:`pyro_vae.estimators`) on ``x`` in batches, shared out over ranks.

    Batch b (``batch_size`` points) is estimated by rank ``b mod world_size`` with the random
    state seeded from (``seed``, b), and the per-point results are gathered on every rank,
    so they are the same whatever the number of processes (one included). Per-batch
    warnings of the :class:`~pyro_vae.errors.EstimatorWarning` family are held back; the
    estimator's ``warn`` speaks once for the whole result.
    """
    ctx = ctx or Distributed()
    batch_size = check_int(batch_size, "batch_size")
    num_batches = math.ceil(len(x) / batch_size)
    devices = [x.device] if x.device.type == "cuda" else []
    parts = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimatorWarning)  # one warning for all, below
        batches = range(ctx.rank, num_batches, ctx.world_size)
        for b in tqdm(batches, disable=not progress, unit="batch", desc="evaluate"):
            with torch.random.fork_rng(devices=devices):
                pyro.set_rng_seed(seed * 1_000_003 + b)
                result = estimator.estimate(model, guide, x[b * batch_size:(b + 1) * batch_size])
                parts[b] = result.per_point()
    if ctx.enabled:
        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, parts)
        parts = {b: part for shard in gathered for b, part in shard.items()}
    result = estimator.combine({name: torch.cat([parts[b][name] for b in range(num_batches)])
                                for name in parts[0]})
    estimator.warn(result)
    return result
