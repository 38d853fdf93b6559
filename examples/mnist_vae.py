"""Pyro's MNIST VAE trained with pyro-vae and, for comparison, with a plain-Pyro reference.

    python examples/mnist_vae.py --out /tmp/mnist-short    # short (default): 1 epoch, 1000 test images
    python examples/mnist_vae.py --full --out runs/mnist   # the run in docs/results-mnist.md

Both models are the MLP VAE of Pyro's examples/vae/vae.py (784-400-50 encoder, 50-400-784
decoder, softplus hidden units, Bernoulli likelihood), trained with Trace_ELBO (one
particle) and Adam (lr 1e-3) on batches of 256 for the same number of epochs, on the same
50000 training images (the library's split of MNIST's training set), dynamically binarised
(a fresh Bernoulli draw per batch):

* library: ``pyro_vae.train`` with ``examples/configs/mnist.yaml``;
* reference: written the way Pyro's example is, with its own Encoder/Decoder modules,
  ``pyro.infer.SVI``, ``Trace_ELBO`` and ``pyro.optim.Adam`` (validation checks off, as in
  the library's training loop).

Both are evaluated the same way on one fixed binarisation of the MNIST test images (the
library's): the test ELBO per image in nats, as the mean over K draws z ~ q(z|x) of
log p(x, z) - log q(z|x) (``pyro_vae.log_likelihood(...).elbo``), with the importance-weighted
bound of the same K draws (``.log_px``) and a one-particle ``Trace_ELBO`` loss as a
cross-check. Time per epoch counts the optimisation steps only (no validation, no
checkpoints); the two sides' epochs alternate (the library's through its exact resume) so
that load from other processes hits both, with one torch thread by default. The library
run is kept in ``<out>/library`` (reusable with ``pyro_vae.load_run``, e.g. by
benchmarks/mnist_marginal.py); the numbers go to ``<out>/comparison.json``.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.infer import SVI, Trace_ELBO

import pyro_vae
from pyro_vae.config import load_yaml
from pyro_vae.marginal import ImportanceSamplingWarning

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "examples" / "configs" / "mnist.yaml"


# ---- the reference: Pyro's example VAE, plain Pyro ------------------------------------


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x.reshape(-1, 784)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))  # loc and scale of q(z|x)


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, 784)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))  # pixel probabilities


class ReferenceVAE(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], self.z_dim)
            z_scale = x.new_ones(x.shape[0], self.z_dim)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img).to_event(1), obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


class Reference:
    """SVI on grey-level ``train_x`` with a fresh binarisation per batch, one epoch per call.

    It keeps its own torch RNG state between calls, so that the library's epochs run in
    between do not change its random numbers (and vice versa: the library restores its own).
    """

    def __init__(self, train_x, batch_size, lr, seed):
        pyro.clear_param_store()
        torch.manual_seed(seed)
        self.vae = ReferenceVAE().to(train_x.device)
        self.svi = SVI(self.vae.model, self.vae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
        self.train_x, self.batch_size = train_x, batch_size
        self.rng = torch.get_rng_state()

    def epoch(self):
        """One pass over the data; returns (mean loss per image, wall seconds, CPU seconds)."""
        torch.set_rng_state(self.rng)
        wall, cpu = time.perf_counter(), time.process_time()
        total = 0.0
        with pyro.validation_enabled(False):
            for index in torch.randperm(len(self.train_x)).to(self.train_x.device).split(self.batch_size):
                total += self.svi.step(torch.bernoulli(self.train_x[index]))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.rng = torch.get_rng_state()
        return total / len(self.train_x), wall, cpu


# ---- evaluation, the same for both ----------------------------------------------------


@torch.no_grad()
def test_elbo(model, guide, x, num_samples):
    """Per-image test ELBO and IWAE bound (K draws), and the one-particle Trace_ELBO, in nats."""
    with warnings.catch_warnings():  # k-hat is about log p(x) estimates; these are bounds
        warnings.simplefilter("ignore", ImportanceSamplingWarning)
        result = pyro_vae.log_likelihood(model, guide, x, num_samples=num_samples)
    loss = sum(Trace_ELBO().loss(model, guide, xb) for xb in x.split(1000))
    return {
        "test_elbo": result.elbo.mean().item(),
        "test_iwae_bound": result.log_px.mean().item(),
        "test_trace_elbo_1": -loss / len(x),
    }


BUDGETS = {  # epochs, test images (None: all), draws K per test image
    "short": {"epochs": 1, "test_images": 1000, "num_samples": 10},
    "full": {"epochs": 10, "test_images": None, "num_samples": 100},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--short", dest="budget", action="store_const", const="short",
                        help="the default: 1 epoch, 1000 test images, K = 10")
    budget.add_argument("--full", dest="budget", action="store_const", const="full",
                        help="10 epochs, all test images, K = 100 (docs/results-mnist.md)")
    parser.add_argument("--epochs", type=int, help="override the budget's epochs")
    parser.add_argument("--out", default=str(REPO / "runs" / "mnist-example"))
    parser.add_argument("--root", default=str(REPO / ".." / "shared" / "data"),
                        help="MNIST in torchvision's layout (<root>/MNIST/raw/)")
    parser.add_argument("--num-samples", type=int, help="override the budget's draws K per test image")
    parser.add_argument("--test-images", type=int, help="override the budget's number of test images")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of examples/configs/mnist.yaml (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine, 2 threads collapse under load)")
    args = parser.parse_args(argv)
    for key, value in BUDGETS[args.budget or "short"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = Path(args.out)

    # The epochs of the two sides alternate (the library's through exact --resume), so that
    # load from other processes on a shared machine hits both alike.
    torch.set_num_threads(args.threads)
    config = load_yaml(PRESET)
    overrides = [f"data.root={Path(args.root).resolve()}", f"seed={args.seed}", *args.overrides]
    library_dir = out / "library"
    if (library_dir / "config.yaml").exists():
        sys.exit(f"error: '{library_dir}' already holds a run; choose another --out.")
    reference = None
    ref_wall, ref_cpu = [], []
    for epoch in range(1, args.epochs + 1):
        try:
            run = pyro_vae.train(config if epoch == 1 else None, library_dir, resume=epoch > 1,
                                 overrides=[*overrides, f"train.epochs={epoch}"], progress=False)
        except pyro_vae.PyroVAEError as error:
            sys.exit(f"error: {error}")
        if reference is None:
            reference = Reference(run.splits.train, batch_size=256, lr=1e-3, seed=args.seed)
        loss, wall, cpu = reference.epoch()
        ref_wall.append(wall)
        ref_cpu.append(cpu)
        record = json.loads((library_dir / "metrics.jsonl").read_text().splitlines()[-1])
        print(f"epoch {epoch}: train loss library {record['train_loss']:.2f} ({record['seconds']:.1f} s), "
              f"reference {loss:.2f} ({wall:.1f} s)", flush=True)
    metrics = [json.loads(line) for line in (library_dir / "metrics.jsonl").read_text().splitlines()]
    torch.save(reference.vae.state_dict(), out / "reference.pt")

    test = run.test[: args.test_images]
    vae = run.vae.eval()
    results = {
        "library": test_elbo(vae.model, vae.guide, test, args.num_samples),
        "reference": test_elbo(reference.vae.model, reference.vae.guide, test, args.num_samples),
    }
    results["library"]["seconds_per_epoch"] = [m["seconds"] for m in metrics]
    results["reference"].update(seconds_per_epoch=ref_wall, cpu_seconds_per_epoch=ref_cpu)
    results["setup"] = {
        "epochs": args.epochs, "test_images": len(test), "num_samples": args.num_samples,
        "train_images": len(run.splits.train), "device": str(run.device),
        "torch_threads": torch.get_num_threads(), "interleaved": True,
        "pyro": pyro.__version__, "torch": torch.__version__,
    }
    (out / "comparison.json").write_text(json.dumps(results, indent=2))

    print(f"\n{args.epochs} epochs, {len(test)} test images, K = {args.num_samples} (nats per image)")
    print(f"{'':10} {'test ELBO':>10} {'IWAE-K':>10} {'Trace_ELBO':>11} {'s/epoch':>8} {'min s/ep':>9}")
    for name in ("library", "reference"):
        r = results[name]
        per_epoch = sum(r["seconds_per_epoch"]) / len(r["seconds_per_epoch"])
        print(f"{name:10} {r['test_elbo']:10.2f} {r['test_iwae_bound']:10.2f} "
              f"{r['test_trace_elbo_1']:11.2f} {per_epoch:8.1f} {min(r['seconds_per_epoch']):9.1f}")
    print(f"written: {out / 'comparison.json'}")
    return results


if __name__ == "__main__":
    main()
