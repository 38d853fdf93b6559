"""One- and two-layer VAEs/IWAEs on MNIST at equal budget, the hierarchy options, Burda's Table 1.

    python benchmarks/hierarchy_mnist.py --variants vae-1l vae-2l --epochs 20 --out /work/runs/h/main
    python benchmarks/hierarchy_mnist.py --variants vae-2l-plain vae-2l-bn --epochs 10 --batch-size 100 \\
        --schedule constant --test-points 1000 --num-samples 1000 --out /work/runs/h/ablation

Every variant trains with the library's own :class:`~pyro_vae.trainer.Trainer` from a config
(``make_config``) and is evaluated on the first ``--test-points`` test images (the library's
fixed binarisation) by importance sampling with the guide as proposal and K =
``--num-samples`` (:func:`pyro_vae.log_likelihood`, the estimator ``pyro-vae evaluate``
uses; the command itself scores all 10,000 test images, which this CPU budget cannot).
Each run directory ``<out>/<variant>/`` keeps the library's files plus ``result.json`` and
``eval_points.pt`` (per-image log p̂(x), for paired differences); ``<out>/results.json`` and
``<out>/results.md`` collect them.

Models (Burda, Grosse & Salakhutdinov 2015; tanh units, Bernoulli likelihood, N(0, I) top
prior): one layer 784-200-200-50 / 50-200-200-784; two layers 784-200-200-100 then
100-100-100-50 bottom-up, and the reverse for generation. Variant names are
``{vae,iwae}-{1l,2l}[-kK][-option...]``: ``vae`` the ELBO (one particle unless ``-kK``),
``iwae`` the importance-weighted bound with K = 5 (or ``-kK``); options of a two-layer
model: ``plain`` (the latent networks without batch normalisation), ``bn`` (the library's
default: batch normalisation in the latent networks), ``randhead`` (the latent networks'
heads randomly initialised instead of the library's default ``zero_init_head``; with
``plain``, the latent networks as before either option came), ``narrow`` (z1 of 50
units, as wide as the one-layer model's z, instead of the paper's 100), ``unitvar``
(``conditional_variance: unit``: p(z1|z2) = N(μ1(z2), I), only its mean learned), ``boundvar``
(``conditional_variance: bounded``: the variance learned within (0.05, 1)), ``fb`` (free
bits, λ = ``--fb`` nats per dimension, 0.1 by default, or per layer with ``--fb-per
layer``; with ``--fb-decay T`` λ decays linearly to 0 over the first T epochs), ``warm``
(per-layer KL warm-up, β from 0 to 1 over the first 20 % of the epochs for z1 and 40 % for
z2), ``td`` (the top-down / ladder guide), ``res`` (the top-down guide
with residual normals, ``inference: residual``), ``skip`` (skip connections: the decoder
sees z1 and z2). ``an`` (any model) trains ``vae`` with the KL in closed form where it has
one (``elbo-analytic``). ``latemix`` (any model): ``--late-mixture E K`` makes the top
layer's prior ``{name: mixture, num_components: K, start_epoch: E}``: N(0, I) for E epochs,
then a mixture of K Gaussians started at the encoder's means of K random training images,
trained with the rest of the model.
Without ``plain`` the latent networks have the library's batch normalisation (``bn``), without
``randhead`` its zero heads; without ``unitvar`` or ``boundvar`` p(z1|z2) keeps a learned
variance (the default before ``unit``), and without ``td``/``res`` the guide is bottom-up, so
every variant runs as it did when its numbers were measured.

Schedules (``--schedule``): ``burda`` compresses the paper's (8 stages, stage i at learning
rate 1e-3·10^(−i/7) for 3^i epochs, 3280 epochs in all) to ``--epochs``: every stage keeps
its learning rate, stage lengths are proportional to 3^i with at least one epoch each
(see :func:`compressed_milestones`); ``constant`` keeps 1e-3. Adam with ε = 1e-4, batches
of ``--batch-size`` (20, the paper's), all 60,000 training images (no validation split).
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pyro
import pyro.util
import torch

from pyro_vae import config as configuration
from pyro_vae.diagnostics import latent_summary
from pyro_vae.marginal import log_likelihood
from pyro_vae.networks import eval_mode
from pyro_vae.rundir import RunDir
from pyro_vae.runs import Run
from pyro_vae.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PAPER_STAGES = 8
BASE_LR = 1e-3
STAGE_DECAY = 10 ** (-1 / 7)
# Table 1 of the paper: (test NLL, active units) after 3280 epochs, all 10,000 test images
PAPER = {
    ("elbo", 1, 1): (86.76, "19"), ("elbo", 1, 5): (86.47, "20"), ("elbo", 1, 50): (86.35, "20"),
    ("iwae", 1, 5): (85.54, "22"), ("iwae", 1, 50): (84.78, "25"),
    ("elbo", 2, 1): (85.33, "16+5"), ("elbo", 2, 5): (85.01, "17+5"), ("elbo", 2, 50): (84.78, "17+5"),
    ("iwae", 2, 5): (83.89, "21+5"), ("iwae", 2, 50): (82.90, "26+7"),
}
CURVE = "curve.jsonl"
OPTIONS = ("plain", "bn", "randhead", "narrow", "unitvar", "boundvar", "fb", "warm", "td", "res", "skip",
           "an", "latemix")


def compressed_milestones(epochs, stages=PAPER_STAGES):
    """Epochs after which the learning rate drops by 10^(−1/7): the paper's stage lengths 3^i,
    scaled to ``epochs`` in all, each stage at least one epoch (the first stages, a fraction
    of an epoch when scaled, get one epoch each; the rest share what is left ∝ 3^i)."""
    if epochs < stages:
        raise SystemExit(f"--schedule burda needs at least {stages} epochs (one per stage), got {epochs}.")
    lengths = [3**i for i in range(stages)]
    floor = [False] * stages
    while True:
        free = epochs - sum(floor)
        weight = sum(length for length, fixed in zip(lengths, floor) if not fixed)
        scaled = [1 if fixed else length * free / weight for length, fixed in zip(lengths, floor)]
        small = [i for i, (value, fixed) in enumerate(zip(scaled, floor)) if value < 1 and not fixed]
        if not small:
            break
        for i in small:
            floor[i] = True
    # round the free stages so that the total stays ``epochs`` (largest remainders first)
    whole = [int(value) for value in scaled]
    order = sorted(range(stages), key=lambda i: scaled[i] - whole[i], reverse=True)
    for i in order[: epochs - sum(whole)]:
        whole[i] += 1
    ends, total = [], 0
    for length in whole[:-1]:
        total += length
        ends.append(total)
    return ends


def parse_variant(name):
    """``"iwae-2l-k5-fb"`` -> (objective, layers, K, options)."""
    parts = name.split("-")
    objective = {"vae": "elbo", "iwae": "iwae"}[parts[0]]
    layers = int(parts[1][0])
    k = 5 if objective == "iwae" else 1
    options = []
    for part in parts[2:]:
        if part.startswith("k") and part[1:].isdigit():
            k = int(part[1:])
        elif part in OPTIONS:
            options.append(part)
        else:
            raise SystemExit(f"unknown option {part!r} in variant {name!r}; options: {', '.join(OPTIONS)}")
    if "an" in options and objective != "elbo":
        raise SystemExit(f"option 'an' (elbo-analytic) is for vae variants, not {name!r}")
    return objective, layers, k, options


def model_section(layers, options, late_mixture=(10, 100)):
    tanh_mlp = {"name": "mlp", "hidden": [200, 200], "activation": "tanh"}
    model = {"encoder": tanh_mlp, "decoder": tanh_mlp, "latent_dim": 50}
    if layers == 2:
        latent = {"name": "mlp", "hidden": [100, 100], "activation": "tanh"}
        if "plain" in options:
            latent["batch_norm"] = False
        if "randhead" in options:
            latent["zero_init_head"] = False
        model.update(latent_dim=[50 if "narrow" in options else 100, 50], latent_network=latent,
                     skip_connections="skip" in options,
                     conditional_variance="unit" if "unitvar" in options
                     else "bounded" if "boundvar" in options else "learned",
                     inference="top-down" if "td" in options else "residual" if "res" in options
                     else "bottom-up")
    if "latemix" in options:
        epoch, components = late_mixture
        model["prior"] = {"name": "mixture", "num_components": components, "start_epoch": epoch}
    return model


def make_config(name, args):
    objective, layers, k, options = parse_variant(name)
    user = {
        "seed": args.seed,
        "data": {"name": "mnist", "root": os.path.abspath(args.data_root), "binarize": "dynamic",
                 "val_size": 0},
        "model": model_section(layers, options, args.late_mixture),
        "objective": {"name": "elbo-analytic" if "an" in options else objective, "num_particles": k},
        "optim": {"lr": BASE_LR, "eps": 1e-4, "lr_decay": 1.0, "lr_milestones": None},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "validate_every": args.epochs},
        "eval": {"num_samples": args.num_samples, "batch_size": args.eval_batch_size},
    }
    if args.schedule == "burda":
        user["optim"].update(lr_decay=STAGE_DECAY, lr_milestones=compressed_milestones(args.epochs))
    if "fb" in options:
        free_bits = args.fb if args.fb_decay is None else {
            "name": "linear", "start": args.fb, "beta": 0.0, "warmup_epochs": args.fb_decay}
        user["objective"].update(free_bits=free_bits, free_bits_per=args.fb_per)
    if "warm" in options:
        user["beta_schedule"] = {"name": "linear", "beta": 1.0, "start": 0.0,
                                 "warmup_epochs": [0.2 * args.epochs, 0.4 * args.epochs]}
    return configuration.resolve(user), (objective, layers, k, options)


def read_curve(out_dir):
    """The learning-curve records of a run directory (``[]`` before the first)."""
    path = out_dir / CURVE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def curve_hook(out_dir, args):
    """An ``on_epoch`` hook: at the epochs of ``--curve-epochs``, test log p̂(x) (K =
    ``--curve-samples``) on the first ``--curve-points`` test images, one line per epoch in
    ``curve.jsonl``. The RNG state is restored afterwards, so the training run is the one
    it would be without the curve (and resume stays exact)."""
    path = out_dir / CURVE
    done = {point["epoch"] for point in read_curve(out_dir)}

    def hook(record, run):
        if record["epoch"] not in args.curve_epochs or record["epoch"] in done:
            return
        state = pyro.util.get_rng_state()
        pyro.set_rng_seed(args.seed)
        with eval_mode(run.vae):
            result = log_likelihood(run.vae.model, run.vae.guide, run.test[: args.curve_points],
                                    num_samples=args.curve_samples, batch_size=args.eval_batch_size)
        pyro.util.set_rng_state(state)
        mean, stderr = result.mean()
        line = {"epoch": record["epoch"], "test_log_px": mean, "stderr": stderr,
                "test_elbo": result.elbo.mean().item(), "train_loss": record["train_loss"]}
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"  {out_dir.name} epoch {record['epoch']}: log p(x) {mean:.2f} ± {stderr:.2f}", flush=True)

    return hook


def train_and_evaluate(name, args):
    config, (objective, layers, k, options) = make_config(name, args)
    out_dir = args.out / name
    rundir = RunDir(out_dir)
    resume = rundir.holds_run()
    run = Run.build(config)
    start = time.perf_counter()
    Trainer(run, rundir, progress=False, on_epoch=[curve_hook(out_dir, args)]).fit(resume)
    train_wall = time.perf_counter() - start
    vae, x = run.vae.eval(), run.test[: args.test_points]
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    result = log_likelihood(vae.model, vae.guide, x, num_samples=args.num_samples,
                            batch_size=args.eval_batch_size)
    eval_seconds = time.perf_counter() - start
    torch.save({key: getattr(result, key).cpu() for key in ("log_px", "stderr", "ess", "khat", "elbo")},
               out_dir / "eval_points.pt")
    summary = latent_summary(vae, x)
    mean, stderr = result.mean()
    metrics = rundir.read_metrics()
    paper = PAPER.get((objective, layers, k))
    row = {
        "variant": name, "objective": objective, "layers": layers, "k": k, "options": options,
        "epochs": args.epochs, "batch_size": args.batch_size, "schedule": args.schedule,
        "lr_milestones": config["optim"]["lr_milestones"],
        "train_seconds": sum(m["seconds"] for m in metrics), "train_wall_this_session": train_wall,
        "train_loss": [round(m["train_loss"], 3) for m in metrics],
        "test_log_px": mean, "test_log_px_stderr": stderr, "test_elbo": result.elbo.mean().item(),
        "test_kl": summary["val_kl"], "active_units": summary["active_units"],
        "khat_frac_bad": result.khat_frac_bad, "num_samples": args.num_samples, "num_points": len(x),
        "eval_seconds": eval_seconds,
        "curve_points": args.curve_points, "curve_samples": args.curve_samples,
        "curve": read_curve(out_dir),
        "paper_log_px": None if paper is None else -paper[0],
        "paper_active_units": None if paper is None else paper[1],
    }
    (out_dir / "result.json").write_text(json.dumps(row, indent=2))
    return row


def markdown(rows):
    lines = ["| variant | epochs | train s | test log p̂(x) | test ELBO | KL per layer | active units "
             "| k̂ > thr | paper log p(x) (active) |", "|---|---:|---:|---:|---:|---|---|---:|---|"]
    for r in rows:
        kl = ", ".join(f"{s} {v:.1f}" for s, v in sorted(r["test_kl"].items()))
        units = "+".join(str(r["active_units"][s]) for s in sorted(r["active_units"]))
        paper = "—" if r["paper_log_px"] is None else f"{r['paper_log_px']:.2f} ({r['paper_active_units']})"
        lines.append(f"| {r['variant']} | {r['epochs']} | {r['train_seconds']:.0f} | "
                     f"{r['test_log_px']:.2f} ± {r['test_log_px_stderr']:.2f} | {r['test_elbo']:.2f} | {kl} "
                     f"| {units} | {100 * r['khat_frac_bad']:.0f} % | {paper} |")
    curves = [r for r in rows if r["curve"]]
    if curves:
        epochs = sorted({point["epoch"] for r in curves for point in r["curve"]})
        at = {(r["variant"], p["epoch"]): p for r in curves for p in r["curve"]}
        first = curves[0]
        lines += ["", f"Learning curve: test log p̂(x), K = {first['curve_samples']} on the first "
                  f"{first['curve_points']} test images",
                  "", "| epoch | " + " | ".join(r["variant"] for r in curves) + " |",
                  "|---:|" + "---:|" * len(curves)]
        for epoch in epochs:
            cells = [f"{at[r['variant'], epoch]['test_log_px']:.2f}" if (r["variant"], epoch) in at else "—"
                     for r in curves]
            lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--schedule", choices=("burda", "constant"), default="burda")
    parser.add_argument("--fb", type=float, default=0.1, help="free bits λ (nats per group) of 'fb'")
    parser.add_argument("--fb-per", choices=("dimension", "layer"), default="dimension",
                        help="the groups of free bits: one latent dimension, or one layer")
    parser.add_argument("--fb-decay", type=float, default=None,
                        help="epochs over which the free bits of 'fb' decay linearly to 0 (default: none)")
    parser.add_argument("--late-mixture", type=int, nargs=2, default=(10, 100), metavar=("EPOCH", "K"),
                        help="option 'latemix': after EPOCH, p(z) becomes a mixture of K Gaussians")
    parser.add_argument("--test-points", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--eval-batch-size", type=int, default=20)
    parser.add_argument("--curve-epochs", type=int, nargs="*", default=[],
                        help="epochs after which to estimate test log p(x) for a learning curve")
    parser.add_argument("--curve-points", type=int, default=500)
    parser.add_argument("--curve-samples", type=int, default=1000)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); "
          f"{args.epochs} epochs, batch {args.batch_size}, schedule {args.schedule}, "
          f"log p(x) with K={args.num_samples} on {args.test_points} test images", flush=True)
    rows = []
    for name in args.variants:
        row = train_and_evaluate(name, args)
        rows.append(row)
        print(f"{name}: log p(x) {row['test_log_px']:.2f} ± {row['test_log_px_stderr']:.2f}, ELBO "
              f"{row['test_elbo']:.2f}, KL {row['test_kl']}, active {row['active_units']}, train "
              f"{row['train_seconds']:.0f} s, eval {row['eval_seconds']:.0f} s, losses {row['train_loss']}",
              flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2))
        (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
