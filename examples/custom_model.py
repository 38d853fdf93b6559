"""A hand-written two-layer Pyro model/guide trained with pyro-vae's loop and estimator.

    python examples/custom_model.py            # short (default): 5 epochs on the embedded digits, K = 500
    python examples/custom_model.py --full     # 50 epochs, K = 5000

Any ``nn.Module`` whose ``model(x)`` and ``guide(x)`` are Pyro programs with a
``pyro.plate("data")`` over the batch can be passed to ``pyro_vae.train(model=...)``: it
gets the same data handling, objective, β schedule (through its ``beta`` attribute),
checkpoints, exact resume and per-site diagnostics (KL and active units per latent site).
``pyro_vae.log_likelihood`` then estimates log p(x) with all latent sites in the proposal.
"""

import argparse

import pyro
import pyro.distributions as dist
import torch.nn as nn
from pyro import poutine

import pyro_vae


def mlp(inputs, outputs, hidden=64):
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, outputs))


class TwoLayerVAE(nn.Module):
    """p(z2) p(z1|z2) p(x|z1) with q(z1|x) q(z2|z1), written out by hand (64 pixels)."""

    def __init__(self, pixels=64, z1=8, z2=4):
        super().__init__()
        self.z1, self.z2, self.beta = z1, z2, 1.0
        self.encode1, self.encode2 = mlp(pixels, 2 * z1), mlp(z1, 2 * z2)
        self.decode2, self.decode1 = mlp(z2, 2 * z1), mlp(z1, pixels)

    @staticmethod
    def normal(params):
        loc, log_scale = params.chunk(2, dim=-1)
        return dist.Normal(loc, log_scale.clamp(-10, 10).exp()).to_event(1)

    def model(self, x):
        pyro.module("two_layer", self)
        x = x.flatten(1)
        with pyro.plate("data", len(x), device=x.device):
            with poutine.scale(scale=self.beta):  # β > 0 on the latent sites, as in the guide
                z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.z2), 1.0).to_event(1))
                z1 = pyro.sample("z1", self.normal(self.decode2(z2)))
            pyro.sample("x", dist.Bernoulli(logits=self.decode1(z1)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("two_layer", self)
        x = x.flatten(1)
        with pyro.plate("data", len(x), device=x.device), poutine.scale(scale=self.beta):
            z1 = pyro.sample("z1", self.normal(self.encode1(x)))
            pyro.sample("z2", self.normal(self.encode2(z1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="50 epochs and K = 5000 (default: 5 and 500)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--num-samples", type=int, help="importance samples K")
    parser.add_argument("--out", default="runs/custom-model")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (50 if args.full else 5)
    args.num_samples = args.num_samples or (5000 if args.full else 500)

    pyro.clear_param_store()
    config = {"train": {"epochs": args.epochs}, "objective": {"name": "elbo"}}
    run = pyro_vae.train(config, args.out, model=TwoLayerVAE(), progress=False)
    with open(f"{args.out}/metrics.jsonl") as metrics:
        print("last epoch:", metrics.read().splitlines()[-1])
    result = pyro_vae.log_likelihood(run.vae.model, run.vae.guide, run.test,
                                     num_samples=args.num_samples)
    mean, stderr = result.mean()
    print(f"test log p(x) = {mean:.2f} ± {stderr:.2f} nats (K = {args.num_samples}), "
          f"ELBO = {result.elbo.mean():.2f}, k-hat above threshold: {result.khat_frac_bad:.0%}")
    return result


if __name__ == "__main__":
    main()
