"""β = 1 against β = 4 (and a β warm-up to 4) on the procedural sprites, by MIG, DCI and reconstruction.

    OMP_NUM_THREADS=1 python examples/sprites_beta.py --out runs/sprites-beta              # --short (default)
    OMP_NUM_THREADS=1 python examples/sprites_beta.py --full --out runs/sprites-beta-full

On a shared 2-core CPU (one torch thread) ``--short`` took 4 minutes and ``--full`` 26
minutes in all (docs/results-sprites.md).

Three VAEs of ``examples/configs/sprites-beta-vae.yaml`` (10 latent dimensions, MLP encoder
512-256 and decoder 256-512, Bernoulli likelihood, Trace_ELBO with one particle, Adam
lr 1e-3, batches of 128), trained with ``pyro_vae.train`` on the same seeded sample of
sprites, with the same seed and budget; only the β schedule differs:

* ``beta1``: β = 1 (a plain VAE);
* ``beta4``: β = 4 (Higgins et al. 2017);
* ``beta4-warmup``: β rising linearly from 0 to 4 over the first half of the epochs
  (``linear`` schedule). This is a KL warm-up, *not* the capacity annealing of Burgess et
  al. 2018 (|KL − C(t)| with a growing target C), which pyro-vae does not implement.

Budgets: ``--short`` 10000 training sprites, 10 epochs; ``--full`` 30000, 20 epochs
(``--epochs`` and ``--num-train`` override either). Validation 1000 and test 2000 sprites.

Each run is scored on the test split: the ELBO, its reconstruction term E_q[log p(x|z)]
and KL (nats per image, unscaled by β, one draw of z, ``pyro_vae.diagnostics.latent_summary``),
active units (Cov_x E_q[z] > 0.01), MIG with 40 bins per code (and with 20, the
disentanglement_lib default, which caps factors with 32 or 40 values below 1) and DCI
(``pyro_vae.disentanglement``), all on posterior means. ``pyro_vae.figures.plot_run`` writes the
figures (traversals, reconstructions, ...) into each ``<out>/<run>/figures``; the numbers go
to ``<out>/results.json`` and a Markdown table is printed.
"""

import argparse
import json
import time
from pathlib import Path

import torch

import pyro_vae
from pyro_vae.config import load_yaml
from pyro_vae.diagnostics import latent_summary
from pyro_vae.disentanglement import latent_codes, mig, score_run
from pyro_vae.figures import plot_run
from pyro_vae.rundir import RunDir

PRESET = Path(__file__).resolve().parent / "configs" / "sprites-beta-vae.yaml"
BUDGETS = {"short": {"num_train": 10000, "epochs": 10}, "full": {"num_train": 30000, "epochs": 20}}
NUM_BINS = 40


def schedules(epochs):
    return {
        "beta1": {"name": "constant", "beta": 1.0},
        "beta4": {"name": "constant", "beta": 4.0},
        "beta4-warmup": {"name": "linear", "beta": 4.0, "start": 0.0, "warmup_epochs": max(1, epochs // 2)},
    }


def score(run, run_dir):
    """Test-split numbers of a trained run."""
    summary = latent_summary(run.vae.eval(), run.test)
    scores = score_run(run, split="test", num_bins=NUM_BINS, metrics=("mig", "dci"), regressor="extra-trees")
    codes = latent_codes(run.vae, run.test)
    return {
        "test_elbo": summary["val_elbo"],
        "test_recon": summary["val_recon"],
        "test_kl": sum(summary["val_kl"].values()),
        "active_units": sum(summary["active_units"].values()),
        "mig": scores["mig"],
        "mig_20_bins": mig(codes, run.splits.test_factors.cpu(), num_bins=20)["mig"],
        "dci_disentanglement": scores["dci_disentanglement"],
        "dci_completeness": scores["dci_completeness"],
        "dci_informativeness": scores["dci_informativeness"],
        "per_factor": scores["per_factor"],
        "train_seconds": sum(m["seconds"] for m in RunDir(run_dir).read_metrics()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--short", dest="budget", action="store_const", const="short", help="default")
    budget.add_argument("--full", dest="budget", action="store_const", const="full")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--num-train", type=int)
    parser.add_argument("--runs", nargs="+", default=["beta1", "beta4", "beta4-warmup"])
    parser.add_argument("--out", default="runs/sprites-beta")
    args = parser.parse_args(argv)
    budget = {**BUDGETS[args.budget or "short"]}
    budget.update({k: v for k, v in (("epochs", args.epochs), ("num_train", args.num_train)) if v})

    config = load_yaml(PRESET)
    config["data"].update(num_train=budget["num_train"], num_val=1000, num_test=2000, seed=0)
    config["train"]["epochs"] = budget["epochs"]
    config["device"] = "cpu"
    out = Path(args.out)
    results = {"budget": budget, "torch_threads": torch.get_num_threads(), "runs": {}}
    for name in args.runs:
        start = time.perf_counter()
        run_dir = out / name
        run = pyro_vae.train({**config, "beta_schedule": schedules(budget["epochs"])[name]}, run_dir,
                             progress=False)
        row = score(run, run_dir)
        plot_run(run_dir)
        row["wall_seconds"] = time.perf_counter() - start
        results["runs"][name] = row
        print(f"{name}: {row['wall_seconds']:.0f} s", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))  # after each run

    print(f"\nbudget {budget}, test split of 2000 sprites, MIG with {NUM_BINS} bins (20 in brackets)\n")
    print("| run | ELBO | recon. | KL | active | MIG | D | C | I | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["runs"].items():
        print(f"| {name} | {r['test_elbo']:.1f} | {r['test_recon']:.1f} | {r['test_kl']:.1f} | "
              f"{r['active_units']} | {r['mig']:.3f} ({r['mig_20_bins']:.3f}) | "
              f"{r['dci_disentanglement']:.3f} | {r['dci_completeness']:.3f} | "
              f"{r['dci_informativeness']:.3f} | {r['train_seconds']:.0f} |")
    print("\nper factor (MIG / DCI accuracy / best code):")
    for name, r in results["runs"].items():
        print(f"  {name}: " + ", ".join(f"{f} {v['mig']:.2f}/{v['accuracy']:.2f}/z{v['best_code']}"
                                         for f, v in r["per_factor"].items()))
    return results


if __name__ == "__main__":
    main()
