"""Seconds per training step (and per 60,000-image epoch) of Burda et al.'s models on this CPU.

    python benchmarks/hierarchy_step_time.py            # one torch thread, as docs/results-hierarchy.md

One and two stochastic layers (the architectures of ``benchmarks/hierarchy_mnist.py``, the
library's default latent networks), objectives ``elbo`` (K = 1) and ``iwae`` (K = 5, 50),
batches of 20 and 100, on random binary 784-pixel data: the library's step (``step_loss`` +
fused Adam, Pyro validation off, as the trainer) timed over ``--steps`` steps after 5 warm-up
steps. The epoch time is the step time × 60,000 / batch size (no validation, no data
loading), used to plan the MNIST budget.
"""

import argparse
import time

import pyro
import torch

from pyro_vae import VAE
from pyro_vae.objectives import OBJECTIVES, step_loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tanh = {"name": "mlp", "hidden": [200, 200], "activation": "tanh"}
    data = (torch.rand(2000, 784) < 0.15).float()
    for layers in (1, 2):
        for objective, k in (("elbo", 1), ("iwae", 5), ("iwae", 50)):
            for batch_size in (20, 100):
                if k == 50 and batch_size == 100:
                    continue
                pyro.clear_param_store()
                vae = VAE(784, 50 if layers == 1 else [100, 50], encoder=tanh, decoder=tanh)
                vae.register_params = False
                loss = OBJECTIVES.build({"name": objective, "num_particles": k})
                optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
                with pyro.validation_enabled(False):
                    for step in range(args.steps + 5):
                        if step == 5:
                            start = time.perf_counter()
                        first = (step * batch_size) % (len(data) - batch_size)
                        step_loss(loss, vae.model, vae.guide, data[first:first + batch_size])
                        optimizer.step()
                        optimizer.zero_grad()
                seconds = (time.perf_counter() - start) / args.steps
                print(f"layers={layers} {objective} K={k} batch={batch_size}: {seconds * 1e3:.1f} ms/step, "
                      f"epoch of 60k {seconds * 60000 / batch_size:.0f} s", flush=True)


if __name__ == "__main__":
    main()
