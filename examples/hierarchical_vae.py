"""Grow a VAE into a hierarchy: one, then two latent layers, through the same train/evaluate/plot calls.

    python examples/hierarchical_vae.py                  # short (default): embedded digits, no download
    python examples/hierarchical_vae.py --full --root ../shared/data   # MNIST, 784-200-200-100-50

The only change between the runs is ``model.latent_dim`` (``16`` against ``[16, 8]``, or on
MNIST ``50`` against ``[100, 50]``, the two architectures of Burda et al. 2015) and, for the
ladder variant, ``model.inference: top-down``. Everything else is the library's standard
path: ``pyro_vae.train`` (per-layer KL and active units in ``metrics.jsonl``),
``pyro_vae.evaluate`` (importance-sampled log p(x) with all latent sites in the proposal,
``eval.json``) and ``pyro_vae.figures.plot_run`` (figures, with a KL bar per layer). Each
run's directory is ``<out>/<name>/``; the comparison is printed and written to
``<out>/hierarchy.json``.

Runs (``--runs``): ``one-layer``; ``two-layer`` (the library's defaults for a hierarchy: the
residual top-down guide, latent networks with batch normalisation and zero-initialised
heads, p(z1|z2) with unit variance; objective ``elbo``); ``ladder`` (the precision-weighted
top-down guide, the closed-form KL of ``elbo-analytic``).
"""

import argparse
import json
from pathlib import Path

import pyro_vae
from pyro_vae.figures import plot_run
from pyro_vae.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]

BUDGETS = {
    "short": {  # the library's defaults for the digits, with 16 (then 16 + 8) latent units
        "data": {"name": "digits", "binarize": "dynamic"},
        "latent": (16, [16, 8]),
        "network": {"name": "mlp", "hidden": [128], "activation": "relu"},
        "lr": 3e-3,
        "train": {"epochs": 40, "batch_size": 64},
        "num_samples": 1000,
    },
    "full": {  # Burda et al.'s networks, a shorter schedule
        "data": {"name": "mnist", "binarize": "dynamic"},
        "latent": (50, [100, 50]),
        "network": {"name": "mlp", "hidden": [200, 200], "activation": "tanh"},
        "lr": 1e-3,
        "train": {"epochs": 50, "batch_size": 100},
        "num_samples": 5000,
    },
}


def configs(budget):
    """name -> config of the three runs; they differ in ``latent_dim``, ``inference`` and the objective."""
    one, two = budget["latent"]
    net = budget["network"]
    base = {
        "data": budget["data"],
        "model": {"encoder": net, "decoder": net, "latent_dim": one},
        "optim": {"lr": budget["lr"]},
        "train": budget["train"],
        "eval": {"num_samples": budget["num_samples"]},
    }
    return {
        "one-layer": base,
        "two-layer": {**base, "model": {**base["model"], "latent_dim": two}},
        "ladder": {**base, "model": {**base["model"], "latent_dim": two, "inference": "top-down"},
                   "objective": {"name": "elbo-analytic"}},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--short", dest="budget", action="store_const", const="short",
                        help="the default: embedded digits, 40 epochs, K = 1000")
    budget.add_argument("--full", dest="budget", action="store_const", const="full",
                        help="MNIST (--root), 50 epochs, K = 5000")
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data"),
                        help="MNIST in torchvision's layout, for --full")
    parser.add_argument("--runs", nargs="+", default=["one-layer", "two-layer", "ladder"],
                        choices=["one-layer", "two-layer", "ladder"])
    parser.add_argument("--epochs", type=int, help="override the budget's epochs")
    parser.add_argument("--num-samples", type=int, help="override the budget's K of the log p(x) estimate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every run (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/hierarchy"))
    parser.add_argument("--progress", action="store_true", help="show the progress bars")
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget or "short"]
    if budget["data"]["name"] == "mnist":
        budget["data"] = {**budget["data"], "root": str(Path(args.root).resolve())}
    if args.epochs:
        budget["train"] = {**budget["train"], "epochs": args.epochs}
    if args.num_samples:
        budget["num_samples"] = args.num_samples

    rows = {}
    for name in args.runs:
        run_dir = args.out / name
        try:
            pyro_vae.train(configs(budget)[name], run_dir, overrides=args.overrides, progress=args.progress)
            summary = pyro_vae.evaluate(run_dir, progress=args.progress)
        except pyro_vae.PyroVAEError as error:
            raise SystemExit(f"error: {error}") from None
        plot_run(run_dir)
        last = RunDir(run_dir).read_metrics()[-1]
        rows[name] = {
            "latent_dim": configs(budget)[name]["model"]["latent_dim"],
            "log_px": summary["log_px_mean"],
            "log_px_stderr": summary["log_px_stderr"],
            "elbo": summary["elbo_mean"],
            "khat_frac_bad": summary["khat_frac_bad"],
            "kl_per_layer": last["val_kl"],
            "active_units": last["active_units"],
        }
        print(f"{name}: log p(x) {summary['log_px_mean']:.2f} ± {summary['log_px_stderr']:.2f}, "
              f"ELBO {summary['elbo_mean']:.2f}, KL per layer {last['val_kl']}, "
              f"active units {last['active_units']}", flush=True)
    (args.out / "hierarchy.json").write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
