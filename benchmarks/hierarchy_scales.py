"""The scales inside a trained two-layer residual model: how much of z1 comes from the prior.

    python benchmarks/hierarchy_scales.py /work/runs/eq200/vae-2l-narrow-res-an-fb \\
        /work/runs/eq200/vae-2l-narrow-res-an --points 500

With the residual guide, q(z1 | z2, x) = N(μ1(z2) + σ1(z2) μ̂1(x), σ1(z2)² σ̂1(x)²) against the
model's p(z1 | z2) = N(μ1(z2), σ1(z2)²), and KL(q ‖ p) does not depend on σ1. For the first
``--points`` test images of each run (eval mode, one draw of z2 from q(z2|x) per image), this
prints, per dimension of z1 and sorted, every fifth value of: the prior's scale σ1 (averaged
over images), the spread over images of the prior's mean μ1(z2) (what z2 contributes) and of
the guide's shift μ̂1(x) (what x contributes directly), and the guide's relative scale σ̂1.
"""

import argparse
from pathlib import Path

import pyro
import torch

from pyro_vae.runs import load_run


def every_fifth(values):
    """The sorted values, every fifth (the smallest first), rounded for printing."""
    return [round(v, 2) for v in values.sort().values[::5].tolist()]


@torch.no_grad()
def scales(run_dir, points, seed):
    run, _ = load_run(run_dir, splits=("test",))
    vae, x = run.vae.eval(), run.test[:points]
    if vae.inference != "residual" or len(vae.latent_dims) != 2:
        raise SystemExit(f"{run_dir}: needs a two-layer model with the residual guide, got "
                         f"{len(vae.latent_dims)} layer(s) with the {vae.inference} guide.")
    pyro.set_rng_seed(seed)
    (shift, log_scale2), (loc2, logvar2) = vae.encode_layers(x)
    z2 = loc2 + torch.exp(0.5 * logvar2) * torch.randn_like(loc2)
    prior_loc, prior_logvar = vae.conditional_params(0, z2)
    return {
        "prior scale σ1": torch.exp(0.5 * prior_logvar).mean(0),
        "spread of the prior mean μ1(z2)": prior_loc.std(0),
        "spread of the guide shift μ̂1(x)": shift.std(0),
        "guide relative scale σ̂1": torch.exp(0.5 * log_scale2).mean(0),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for run_dir in args.runs:
        print(f"{run_dir.name} (per dimension of z1, sorted, every fifth):")
        for name, values in scales(run_dir, args.points, args.seed).items():
            print(f"  {name}: {every_fifth(values)}")


if __name__ == "__main__":
    main()
