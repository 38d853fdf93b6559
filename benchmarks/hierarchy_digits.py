"""The hierarchy options on the embedded digits (8x8, no download): one short run per variant.

    python benchmarks/hierarchy_digits.py --out /work/runs/h/digits            # all variants
    python benchmarks/hierarchy_digits.py --variants ladder-plain ladder --out DIR

Every variant is the library's default digits run (``pyro-vae train`` with no config: MLPs
of 128 ReLU units, Adam 3e-3, batches of 64, ``elbo``) for ``--epochs`` epochs, with the
latent layers and options of :data:`VARIANTS`; the test split (360 digits) is scored by
importance sampling with K = ``--num-samples`` (:func:`pyro_vae.log_likelihood`) and the
per-layer KL and active units come from :func:`pyro_vae.diagnostics.latent_summary` on the
same digits (with, for comparison, the former count: the variance over x of the guide's
mean at one *drawn* parent). ``<out>/results.md`` collects the table.
"""

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import log_likelihood, train
from pyro_vae.diagnostics import ACTIVE_UNIT_THRESHOLD, elbo_terms, latent_summary

PLAIN = {"latent_network": {"batch_norm": False, "zero_init_head": False},
         "conditional_variance": "learned"}  # the model's options as before any of them came
FREE_BITS = {"objective": {"name": "elbo", "free_bits": 0.1}}
WARM_UP = {"beta_schedule": {"name": "linear", "warmup_epochs": [5, 10]}}


def hierarchy(inference, plain=False, **model):
    """A 16 + 8 hierarchy's ``model`` section: the library's defaults unless ``plain``."""
    return {"model": {"latent_dim": [16, 8], "inference": inference, **(PLAIN if plain else {}), **model}}


VARIANTS = {
    "flat": {"model": {"latent_dim": 16}},
    "bottom-up-plain": hierarchy("bottom-up", plain=True),
    "bottom-up": hierarchy("bottom-up"),
    "ladder-plain": hierarchy("top-down", plain=True),
    "ladder": hierarchy("top-down"),
    "ladder-fb": {**hierarchy("top-down"), **FREE_BITS},
    "ladder-warm": {**hierarchy("top-down"), **WARM_UP},
    "residual": {"model": {"latent_dim": [16, 8]}},  # the library's defaults for a hierarchy
    "residual-randhead": hierarchy("residual", latent_network={"zero_init_head": False}),
    "residual-learnedvar": hierarchy("residual", conditional_variance="learned"),
    "residual-plain": hierarchy("residual", plain=True),
    "residual-fb": {**hierarchy("residual"), **FREE_BITS},
    "ladder-skip": hierarchy("top-down", skip_connections=True),
    "ladder-plain-fb": {**hierarchy("top-down", plain=True), **FREE_BITS},
    "ladder-plain-warm": {**hierarchy("top-down", plain=True), **WARM_UP},
}


def run_variant(name, args):
    config = {**VARIANTS[name], "train": {"epochs": args.epochs}, "seed": args.seed}
    start = time.perf_counter()
    run = train(config, args.out / name, progress=False)
    seconds = time.perf_counter() - start
    vae = run.vae.eval()
    pyro.set_rng_seed(args.seed)
    result = log_likelihood(vae.model, vae.guide, run.test, num_samples=args.num_samples)
    summary = latent_summary(vae, run.test)
    with torch.no_grad():  # the former count: the guide's mean at one drawn parent
        one_draw = {site: int((m.var(0) > ACTIVE_UNIT_THRESHOLD).sum())
                    for site, m in elbo_terms(vae, run.test)["means"].items()}
    mean, stderr = result.mean()
    return {"variant": name, "epochs": args.epochs, "seconds": seconds, "test_log_px": mean,
            "test_log_px_stderr": stderr, "test_elbo": result.elbo.mean().item(), "kl": summary["val_kl"],
            "active_units": summary["active_units"], "active_units_one_draw": one_draw}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = ["| variant | test log p̂(x) | test ELBO | KL per layer | active units | (one draw) | train s |",
             "|---|---:|---:|---|---|---|---:|"]
    rows = []
    for name in args.variants:
        row = run_variant(name, args)
        rows.append(row)
        kl = ", ".join(f"{site} {value:.2f}" for site, value in sorted(row["kl"].items()))
        units, old = ("+".join(str(counts[site]) for site in sorted(counts))
                      for counts in (row["active_units"], row["active_units_one_draw"]))
        lines.append(f"| {name} | {row['test_log_px']:.2f} ± {row['test_log_px_stderr']:.2f} | "
                     f"{row['test_elbo']:.2f} | {kl} | {units} | {old} | {row['seconds']:.0f} |")
        print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
