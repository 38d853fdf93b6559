"""Table 1 of Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders", with pyro-vae.

    python examples/burda_table1.py --out runs/burda-short      # short (default): 4 epochs, 1000 test images
    python examples/burda_table1.py --full --device cuda --out runs/burda  # the paper's 3280 epochs
    python examples/burda_table1.py --models vae-1l-k1 vae-2l-k1 iwae-2l-k5 --out runs/hier

Models (``--models``; default all twelve), named ``{vae,iwae}-{1,2}l-k{1,5,50}``:

* ``vae-*-kK``: the ELBO with K samples, ``objective: {name: elbo, num_particles: K}``;
* ``iwae-*-kK``: the importance-weighted bound, ``objective: {name: iwae, num_particles: K}``
  (with K = 1 both are the ordinary VAE, as in the paper's table);
* ``1l``: one stochastic layer, 784-200-200-50 recognition and 50-200-200-784 generation;
* ``2l``: two stochastic layers, 784-200-200-100 then 100-100-100-50 for recognition
  (bottom-up, ``model.inference: bottom-up``) and the reverse for generation; the
  preset ``examples/configs/mnist-iwae-2layer.yaml`` holds the same model.

All hidden units are tanh, the likelihood Bernoulli, the prior N(0, I). MNIST is binarised
dynamically (a fresh draw per batch); the test set is binarised once (the library's fixed
draw). The paper trains on all 60000 training images, so ``--val-size`` defaults to 0.

Schedule (the paper's): batches of 20, Adam with beta1 = 0.9, beta2 = 0.999, eps = 1e-4,
and for i = 0 … 7, 3**i epochs at learning rate 1e-3 * 10**(-i/7): 3280 epochs in all.
In the library's config that is ``optim: {lr: 1e-3, eps: 1e-4, lr_decay: 10**(-1/7),
lr_milestones: [1, 4, 13, 40, 121, 364, 1093]}`` (the rate is multiplied by ``lr_decay``
after each milestone epoch). The short mode (default) keeps stages i = 0, 1 (1 + 3 = 4
epochs), ``--stages N`` the first N, ``--full`` all eight. An interrupted run continues
exactly when the script is run again with the same arguments (the library's resume).

Evaluation: log p(x) by importance sampling with K = ``--num-samples`` (5000, as in the
paper) on the first ``--test-points`` test images (all 10000 with ``--full``), with its
standard error; the mean K-sample ELBO; active units per layer (Cov_x E_q[z] > 0.01) on
the same images. Each model's run directory ``<out>/<model>/`` holds the library's files
plus ``result.json`` and ``eval_points.pt`` (the per-image estimates); ``<out>/table1.json``
and ``<out>/table1.md`` collect the results next to the paper's numbers.
"""

import argparse
import json
import os
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import config as configuration
from pyro_vae.diagnostics import latent_summary
from pyro_vae.marginal import log_likelihood
from pyro_vae.rundir import RunDir
from pyro_vae.runs import Run
from pyro_vae.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]

# Table 1 of the paper (MNIST): test NLL in nats and active units after 3280 epochs.
PAPER = {
    "vae-1l-k1": (86.76, "19"), "vae-1l-k5": (86.47, "20"), "vae-1l-k50": (86.35, "20"),
    "iwae-1l-k1": (86.76, "19"), "iwae-1l-k5": (85.54, "22"), "iwae-1l-k50": (84.78, "25"),
    "vae-2l-k1": (85.33, "16+5"), "vae-2l-k5": (85.01, "17+5"), "vae-2l-k50": (84.78, "17+5"),
    "iwae-2l-k1": (85.33, "16+5"), "iwae-2l-k5": (83.89, "21+5"), "iwae-2l-k50": (82.90, "26+7"),
}
MODELS = list(PAPER)

BASE_LR = 1e-3
STAGE_DECAY = 10 ** (-1 / 7)  # the learning rate of stage i is BASE_LR * STAGE_DECAY**i
ADAM_EPS = 1e-4  # Adam's betas are PyTorch's defaults, (0.9, 0.999), as in the paper
PAPER_STAGES = 8


def architecture(layers):
    """The model section of the config: the paper's one- or two-layer architecture."""
    tanh_mlp = {"name": "mlp", "hidden": [200, 200], "activation": "tanh"}
    model = {"prior": "standard-normal", "likelihood": "bernoulli", "encoder": tanh_mlp, "decoder": tanh_mlp}
    if layers == 1:
        return {**model, "latent_dim": 50}
    return {
        **model,
        "latent_dim": [100, 50],
        "latent_network": {"name": "mlp", "hidden": [100, 100], "activation": "tanh"},
        "inference": "bottom-up",
    }


def parse_model(name):
    """``"iwae-2l-k5"`` -> (objective, layers, K)."""
    kind, layers, k = name.split("-")
    return {"vae": "elbo", "iwae": "iwae"}[kind], int(layers[0]), int(k[1:])


def stage_epochs(stages):
    """Epochs at the end of each stage i = 0 … stages − 1 (stage i lasts 3**i epochs)."""
    ends, total = [], 0
    for i in range(stages):
        total += 3**i
        ends.append(total)
    return ends


def make_config(name, args, stages):
    objective, layers, k = parse_model(name)
    ends = stage_epochs(stages)
    return configuration.resolve({
        "seed": args.seed,
        "device": args.device,
        "data": {
            "name": "mnist", "root": os.path.abspath(args.data_root), "binarize": "dynamic",
            "val_size": args.val_size,
        },
        "model": architecture(layers),
        "objective": {"name": objective, "num_particles": k},
        "optim": {"lr": BASE_LR, "eps": ADAM_EPS, "lr_decay": STAGE_DECAY if stages > 1 else 1.0,
                  "lr_milestones": ends[:-1] or None},
        "train": {"epochs": ends[-1], "batch_size": args.batch_size, "validate_every": ends[-1]},
        "eval": {"num_samples": args.num_samples, "batch_size": args.eval_batch_size},
    })


def train_model(config, out_dir, progress):
    """Train (or continue) the run in ``out_dir``; returns the run and the training seconds.

    A finished run is not trained again (its checkpoint is loaded); the evaluation options
    may change between calls, the rest of the config may not.
    """
    rundir = RunDir(out_dir)
    resume = rundir.holds_run()
    if resume:
        saved = rundir.config
        differ = sorted(key for key in config if key != "eval" and saved[key] != config[key])
        if differ:
            raise SystemExit(f"{out_dir} holds a run with another {', '.join(differ)}; choose another --out.")
    run = Run.build(config)
    start = time.perf_counter()
    Trainer(run, rundir, progress).fit(resume)
    return run, time.perf_counter() - start


def evaluate_model(run, num_points, num_samples, batch_size, out_dir):
    """log p̂(x) (mean, stderr), the K-sample ELBO and active units on the first test images.

    The per-image estimates go to ``<out_dir>/eval_points.pt`` (for paired comparisons).
    """
    vae, x = run.vae, run.test[:num_points]
    vae.eval()
    pyro.set_rng_seed(run.config["seed"])
    start = time.perf_counter()
    result = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples, batch_size=batch_size)
    seconds = time.perf_counter() - start
    torch.save({key: getattr(result, key).cpu() for key in ("log_px", "stderr", "ess", "khat", "elbo")},
               out_dir / "eval_points.pt")
    summary = latent_summary(vae, x, batch_size=1000)
    mean, stderr = result.mean()
    return {
        "test_log_px": mean,
        "test_log_px_stderr": stderr,
        "test_elbo": result.elbo.mean().item(),
        "test_elbo_one_sample": summary["val_elbo"],
        "test_kl": summary["val_kl"],
        "active_units": summary["active_units"],
        "khat_frac_bad": result.khat_frac_bad,
        "num_samples": num_samples,
        "num_points": result.num_points,
        "eval_seconds": seconds,
    }


def training_seconds(out_dir):
    """Seconds of the optimisation epochs, summed over metrics.jsonl (all sessions of the run)."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line)["seconds"] for line in lines if line.strip())


def markdown(rows):
    lines = [
        "| model | objective | layers | K | epochs | train s | test log p̂(x) | ± | test ELBO | active units "
        "| paper log p(x) | paper active |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper_nll, paper_active = PAPER[row["model"]]
        units = row["active_units"]
        active = "+".join(str(units[site]) for site in sorted(units))  # layer 1 first, as in the paper
        lines.append(
            f"| {row['model']} | {row['objective']} | {row['layers']} | {row['k']} | {row['epochs']} "
            f"| {row['train_seconds']:.0f} | {row['test_log_px']:.2f} | {row['test_log_px_stderr']:.2f} "
            f"| {row['test_elbo']:.2f} | {active} | −{paper_nll:.2f} | {paper_active} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--short", action="store_true",
                      help="the default, a CPU check: stages i = 0, 1 (4 epochs), 1000 test images")
    mode.add_argument("--full", action="store_true",
                      help="the paper: 8 stages (3280 epochs), all 10000 test images")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS, metavar="MODEL",
                        help=f"subset of {', '.join(MODELS)}")
    parser.add_argument("--stages", type=int,
                        help="learning-rate stages i = 0..N-1 (default: 2 with --short, else 8)")
    parser.add_argument("--test-points", type=int,
                        help="test images evaluated (default: 1000 with --short, else 10000)")
    parser.add_argument("--num-samples", type=int, default=5000, help="K of the log p(x) estimate (5000)")
    parser.add_argument("--eval-batch-size", type=int, default=100, help="test images per log p(x) call")
    parser.add_argument("--batch-size", type=int, default=20, help="training batch (the paper: 20)")
    parser.add_argument("--val-size", type=int, default=0,
                        help="training images held out for validation (the paper: 0)")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding MNIST/raw/ (default: ../shared/data from the repository root)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/burda-table1"))
    parser.add_argument("--progress", action="store_true", help="show the training progress bar")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = args.stages or (PAPER_STAGES if args.full else 2)
    test_points = args.test_points or (10000 if args.full else 1000)
    epochs = stage_epochs(stages)[-1]
    print(f"{len(args.models)} models, {stages} stages = {epochs} epochs, batch {args.batch_size}, "
          f"log p(x) with K={args.num_samples} on {test_points} test images")

    rows = []
    for name in args.models:
        objective, layers, k = parse_model(name)
        out_dir = args.out / name
        config = make_config(name, args, stages)
        run, seconds = train_model(config, out_dir, args.progress)
        row = {"model": name, "objective": objective, "layers": layers, "k": k, "epochs": epochs,
               "batch_size": args.batch_size, "train_seconds": training_seconds(out_dir),
               "wall_seconds_this_session": seconds}
        row.update(evaluate_model(run, test_points, args.num_samples, args.eval_batch_size, out_dir))
        (out_dir / "result.json").write_text(json.dumps(row, indent=2))
        rows.append(row)
        print(f"{name}: log p(x) = {row['test_log_px']:.2f} ± {row['test_log_px_stderr']:.2f} "
              f"(paper {-PAPER[name][0]:.2f} after 3280 epochs), ELBO {row['test_elbo']:.2f}, "
              f"active {row['active_units']}, train {row['train_seconds']:.0f} s, "
              f"eval {row['eval_seconds']:.0f} s", flush=True)
    options = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    table = {"args": options, "stages": stages, "epochs": epochs, "rows": rows}
    (args.out / "table1.json").write_text(json.dumps(table, indent=2))
    (args.out / "table1.md").write_text(markdown(rows))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
