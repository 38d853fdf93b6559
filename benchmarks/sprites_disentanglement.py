"""The β-VAE family on the procedural sprites: disentanglement metrics, log p(x) and step time.

    OMP_NUM_THREADS=1 python benchmarks/sprites_disentanglement.py --out /tmp/sprites-dis
    OMP_NUM_THREADS=1 python benchmarks/sprites_disentanglement.py --runs beta4 factor-vae --seeds 0 1

Every run trains the same VAE (10 latents, the ``conv-burgess`` encoder and decoder,
Bernoulli likelihood, Adam, batches of 64) with ``pyro_vae.train`` on the same seeded sample
of sprites (``pyro_vae.data.sprites``, dSprites' factor grid); only the objective and β
differ (:data:`RUNS`; weights from the ranges of Locatello et al. 2019's study). Each is
scored on the test split, on posterior means: MIG (20 bins), the FactorVAE score, DCI with
gradient-boosted trees on the first ``--gbt-points`` test points (the published regressor),
SAP, the reconstruction term E_q[log p(x|z)] (one draw) and the importance-sampled log p(x)
with ``--is-samples`` samples (``pyro_vae.log_likelihood``). A traversal figure per run goes
to ``<out>/<run>-seed<s>/traversals.png``.

``--collapse`` instead trains the plain ``conv`` network and Burgess et al.'s layout with
PyTorch's default and with He initialisation (3 epochs of 5,000 sprites, ``elbo``) and
prints the validation ELBO, KL and active units per epoch: the collapse and its cause.

``--speed`` instead times one training step (the trainer's ``step_loss`` and an Adam step)
of each objective against the plain ELBO at the same batch, interleaved, on the CPU clock
of the process (median of ``--repeats`` repeats of ``--steps`` steps).

Results go to ``<out>/results.json`` (after each run) and a Markdown table is printed.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.diagnostics import latent_summary
from pyro_vae.disentanglement import disentanglement_scores, latent_codes
from pyro_vae.networks import NETWORKS
from pyro_vae.objectives import OBJECTIVES, step_loss
from pyro_vae.registry import BuildContext

RUNS = {
    "beta1": ("elbo", 1.0),
    "beta4": ("elbo", 4.0),
    "beta8": ("elbo", 8.0),
    "capacity": ({"name": "capacity", "capacity": {"name": "linear", "start": 0.0, "beta": 25.0,
                                                   "warmup_epochs": None}}, 1000.0),
    "beta-tcvae": ({"name": "beta-tcvae", "estimator": "mss"}, 6.0),
    "factor-vae": ({"name": "factor-vae", "gamma": 30.0}, 1.0),
    "dip-vae-i": ({"name": "dip-vae-i", "lambda_od": 10.0}, 1.0),
    "dip-vae-ii": ({"name": "dip-vae-ii", "lambda_od": 10.0}, 1.0),
}
"""Run name -> (objective spec, β). ``capacity``'s C rises to 25 nats over the whole budget
(γ = β = 1000 as Burgess et al.)."""


def objective_spec(name, epochs):
    spec, beta = RUNS[name]
    if isinstance(spec, dict) and spec.get("name") == "capacity":
        spec = {**spec, "capacity": {**spec["capacity"], "warmup_epochs": epochs}}
    return spec, beta


def config(args, name, seed):
    spec, beta = objective_spec(name, args.epochs)
    return {
        "seed": seed, "device": "cpu",
        "data": {"name": "sprites", "num_train": args.num_train, "num_val": 500, "num_test": args.num_test,
                 "seed": 0},
        "model": {"latent_dim": 10, "encoder": "conv-burgess", "decoder": "conv-burgess"},
        "objective": spec,
        "beta_schedule": {"name": "constant", "beta": beta},
        "optim": {"lr": args.lr},
        "train": {"epochs": args.epochs, "batch_size": 64, "validate_every": args.epochs},
    }


def score(run, args):
    vae, x = run.vae.eval(), run.test
    factors = run.splits.test_factors.cpu().numpy()
    codes = latent_codes(vae, x)
    names = run.splits.info["factor_names"]
    fast = disentanglement_scores(codes, factors, names, metrics=("mig", "factor_vae", "sap"))
    head = slice(0, args.gbt_points)
    gbt = disentanglement_scores(codes[head], factors[head], names, metrics=("dci",), regressor="gbt")
    summary = latent_summary(vae, x)
    torch.manual_seed(0)
    estimate = pyro_vae.log_likelihood(vae.model, vae.guide, x, num_samples=args.is_samples)
    log_px, log_px_stderr = estimate.mean()
    return {
        "mig": fast["mig"], "factor_vae_score": fast["factor_vae_score"], "sap": fast["sap"],
        "dci_disentanglement": gbt["dci_disentanglement"], "dci_completeness": gbt["dci_completeness"],
        "dci_informativeness": gbt["dci_informativeness"],
        "recon": summary["val_recon"], "kl": sum(summary["val_kl"].values()),
        "active_units": sum(summary["active_units"].values()),
        "log_px": log_px, "log_px_stderr": log_px_stderr,
        "best_code": {f: v["best_code"] for f, v in fast["per_factor"].items()},
    }


def traversal_figure(run, path):
    from pyro_vae.plots import plot_traversals

    figure = plot_traversals(run.vae.eval(), run.val, steps=9)
    figure.savefig(path, dpi=60)


def train_all(args):
    out = Path(args.out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    results["settings"] = {k: v for k, v in vars(args).items() if k != "speed"}
    for seed in args.seeds:
        for name in args.runs:
            key = f"{name}-seed{seed}"
            if key in results["runs"]:
                continue
            start = time.perf_counter()
            run = pyro_vae.train(config(args, name, seed), out / key, progress=False)
            train_seconds = time.perf_counter() - start
            row = {"run": name, "seed": seed, "train_seconds": train_seconds, **score(run, args)}
            traversal_figure(run, out / key / "traversals.png")
            row["wall_seconds"] = time.perf_counter() - start
            results["runs"][key] = row
            results_path.write_text(json.dumps(results, indent=2))
            print(f"{key}: {row['wall_seconds']:.0f} s", flush=True)
    print_table(results)
    return results


def print_table(results):
    print("| run | seed | MIG | FactorVAE score | DCI D (GBT) | DCI C | DCI I | SAP | recon. | KL | active | "
          "log p(x) | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["runs"].values():
        print(f"| {r['run']} | {r['seed']} | {r['mig']:.3f} | {r['factor_vae_score']:.3f} | "
              f"{r['dci_disentanglement']:.3f} | {r['dci_completeness']:.3f} | "
              f"{r['dci_informativeness']:.3f} | "
              f"{r['sap']:.3f} | {r['recon']:.1f} | {r['kl']:.1f} | {r['active_units']} | "
              f"{r['log_px']:.1f} ± {r['log_px_stderr']:.1f} | {r['train_seconds']:.0f} |")


def speed(args):
    """CPU seconds per training step of each objective against ``elbo`` (ratio: paired per repeat)."""
    from pyro_vae import VAE
    from pyro_vae.data.sprites import sprites

    x = sprites(num_train=64 * args.steps, num_val=0, num_test=0).train
    context = BuildContext(num_train=737280, data_shape=(1, 64, 64), device=torch.device("cpu"))
    sides = {}
    for name in ["beta1", *[n for n in args.runs if n not in ("beta1", "beta4", "beta8")]]:
        torch.manual_seed(0)
        vae = VAE(data_shape=(1, 64, 64), latent_dim=10, encoder="conv-burgess", decoder="conv-burgess")
        spec, beta = objective_spec(name, 10)
        vae.beta, vae.register_params = beta, False
        sides[name] = (vae, OBJECTIVES.build(spec, context), torch.optim.Adam(vae.parameters(), lr=1e-4))
    times = {name: [] for name in sides}
    for repeat in range(args.repeats):
        for name in (list(sides) if repeat % 2 == 0 else list(sides)[::-1]):
            vae, objective, optimizer = sides[name]
            start = time.process_time()
            with pyro.validation_enabled(False):
                for xb in x.split(64):
                    step_loss(objective, vae.model, vae.guide, xb)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            times[name].append((time.process_time() - start) / args.steps)
    base = times["beta1"]
    rows = {name: {"seconds_per_step": statistics.median(t),
                   "ratio_to_elbo": statistics.median(a / b for a, b in zip(t, base))}
            for name, t in times.items()}
    print("| objective | CPU s per step (batch 64) | × ELBO |")
    print("|---|---|---|")
    for name, r in rows.items():
        label = "elbo" if name == "beta1" else name
        print(f"| {label} | {r['seconds_per_step']:.3f} | {r['ratio_to_elbo']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(rows, indent=2))
    return rows


COLLAPSE_VARIANTS = [("conv", False, 1e-3), ("conv", True, 1e-3), ("burgess", False, 1e-3),
                     ("burgess", True, 1e-3), ("burgess", False, 1e-4), ("burgess", True, 5e-4)]
"""(network, He initialisation, learning rate) of ``--collapse``."""


def collapse_vae(kind, he):
    from pyro_vae import VAE
    from pyro_vae.networks import ConvDecoder, ConvEncoder, he_init

    torch.manual_seed(0)
    if kind == "conv":
        encoder = NETWORKS.build("conv", in_shape=(1, 64, 64), out_shape=(2, 10))
        decoder = NETWORKS.build("conv", in_shape=(10,), out_shape=(1, 64, 64))
    else:
        encoder = ConvEncoder((1, 64, 64), (2, 10), [32] * 4, (256, 256))
        decoder = ConvDecoder((10,), (1, 64, 64), [32] * 4, (256, 256))
    if he:
        he_init(encoder)
        he_init(decoder)
    return VAE(data_shape=(1, 64, 64), latent_dim=10, encoder=encoder, decoder=decoder)


def collapse(args):
    """Validation ELBO, KL and active units per epoch of each of :data:`COLLAPSE_VARIANTS`."""
    from pyro_vae.rundir import RunDir

    rows = []
    for kind, he, lr in COLLAPSE_VARIANTS:
        out = Path(args.out) / f"collapse-{kind}-{'he' if he else 'default'}-{lr:g}"
        data = {"name": "sprites", "num_train": 5000, "num_val": 500, "num_test": 500}
        pyro_vae.train({"data": data, "model": {"latent_dim": 10}, "train": {"epochs": 3, "batch_size": 64},
                        "optim": {"lr": lr}}, out, progress=False, model=collapse_vae(kind, he))
        records = RunDir(out).read_metrics()
        row = {"net": kind, "init": "he" if he else "default", "lr": lr,
               "val_elbo": [r["val_elbo"] for r in records], "val_kl": [r["val_kl"]["z"] for r in records],
               "active_units": [r["active_units"]["z"] for r in records]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--gbt-points", type=int, default=500)
    parser.add_argument("--is-samples", type=int, default=50)
    parser.add_argument("--out", default="runs/sprites-disentanglement")
    parser.add_argument("--speed", action="store_true", help="time the training step instead")
    parser.add_argument("--collapse", action="store_true", help="the conv collapse experiment instead")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.collapse:
        return collapse(args)
    return speed(args) if args.speed else train_all(args)


if __name__ == "__main__":
    main()
