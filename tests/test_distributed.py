"""Two CPU processes (gloo) train like one process with the same global batch, and
evaluate to the same per-point estimates."""

import os
import socket

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
import torch.nn as nn

from pyro_vae import load_run, train
from pyro_vae.distributed import setup, sharded_estimate
from pyro_vae.estimators import ImportanceSampling

WORLD_SIZE, LOCAL_BATCH = 2, 16


def config(batch_size, objective="elbo"):
    # Adam with a large ε is sensitive to the gradient's scale, not just its direction.
    return {"data": {"name": "digits", "binarize": "static"}, "objective": objective,
            "optim": {"eps": 10.0, "lr": 0.01}, "train": {"epochs": 2, "batch_size": batch_size}}


class DeltaGuideVAE(nn.Module):
    """A VAE whose guide is a point mass at the encoder's output: training draws no noise,
    so runs that see the same global batches must end with the same parameters."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.encoder, self.decoder = nn.Linear(64, 3), nn.Linear(3, 64)
        for parameter in self.parameters():
            nn.init.normal_(parameter, std=0.1, generator=generator)

    def model(self, x):
        pyro.module("delta", self)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x.flatten(1))

    def guide(self, x):
        pyro.module("delta", self)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Delta(self.encoder(x.flatten(1)), event_dim=1))


def _worker(rank, port, out, results, objective):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run = train(config(LOCAL_BATCH, objective), out, model=DeltaGuideVAE(), progress=False)
    torch.save(run.vae.state_dict(), os.path.join(results, f"rank{rank}.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("objective", ["elbo", {"name": "iwae", "num_particles": 3}])
def test_two_gloo_processes_match_one_process_with_the_global_batch(tmp_path, objective):
    mp.spawn(_worker, args=(free_port(), str(tmp_path / "ddp"), str(tmp_path), objective), nprocs=WORLD_SIZE)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    single = train(config(LOCAL_BATCH * WORLD_SIZE, objective), tmp_path / "single", model=DeltaGuideVAE(),
                   progress=False).vae.state_dict()
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name])
        assert torch.allclose(ranks[0][name], value, rtol=1e-4, atol=1e-5), name
    assert not torch.allclose(single["decoder.weight"], DeltaGuideVAE().decoder.weight)  # it trained
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written once, by rank 0


def _evaluate_worker(rank, port, run_dir, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = setup()
    run, _ = load_run(run_dir)
    result = sharded_estimate(ImportanceSampling(num_samples=30), run.vae.model, run.vae.guide, run.test,
                              batch_size=50, seed=7, ctx=ctx)
    torch.save(result.log_px, os.path.join(results, f"log_px{rank}.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_distributed_evaluation_matches_one_process(tmp_path):
    run_dir = tmp_path / "run"
    train({"train": {"epochs": 1}}, run_dir, progress=False)
    mp.spawn(_evaluate_worker, args=(free_port(), str(run_dir), str(tmp_path)), nprocs=WORLD_SIZE)
    run, _ = load_run(run_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: float sums must be reduced the same way to agree bitwise
    try:
        single = sharded_estimate(ImportanceSampling(num_samples=30), run.vae.model, run.vae.guide, run.test,
                                  batch_size=50, seed=7)
    finally:
        torch.set_num_threads(threads)
    for rank in range(WORLD_SIZE):
        gathered = torch.load(tmp_path / f"log_px{rank}.pt", weights_only=True)
        assert gathered.shape == (360,) and torch.equal(gathered, single.log_px)


def _resume_worker(rank, port, out, epochs, resume):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    overrides = [f"train.epochs={epochs}", "model.encoder.hidden=[16]", "model.decoder.hidden=[16]"]
    train(None, out, overrides=overrides, resume=resume, progress=False)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_distributed_resume_ends_like_an_uninterrupted_distributed_run(tmp_path):
    for out, epochs, resume in [("full", 2, False), ("cut", 1, False), ("cut", 2, True)]:
        mp.spawn(_resume_worker, args=(free_port(), str(tmp_path / out), epochs, resume), nprocs=WORLD_SIZE)
    full, cut = (torch.load(tmp_path / name / "checkpoints" / "epoch-0002.pt", weights_only=True)["model"]
                 for name in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)
