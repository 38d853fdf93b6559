"""Importance-sampled log p(x) on MNIST: the bound, the naive baseline, memory and time.

    python benchmarks/mnist_marginal.py --run-dir runs/mnist-example/library   # docs/results-mnist.md
    python benchmarks/mnist_marginal.py --run-dir runs/mnist --train-epochs 10  # trains the run first

The model is a trained pyro-vae MNIST run (``pyro_vae.load_run``); if ``--run-dir`` holds
no run, one is trained there with examples/configs/mnist.yaml. The data are the first
``--points`` test images (1000; ``--all`` for 10000) in the run's fixed binarisation.
Every (estimator, K) runs in a fresh subprocess with its own seed, for K = 500 and 5000:
``pyro_vae.log_likelihood`` (importance sampling with the guide, "IS") and
``pyro_vae.naive_log_likelihood`` (sampling from the prior).

(a) bound: log p̂(x) >= ELBO on every point up to Monte Carlo error. Checked against the
    ELBO of the same K = 5000 draws (Jensen: exact, up to rounding) and against the ELBO
    of the independent K = 500 run: a point fails if log p̂(x) < ELBO - 3 stderr(log p̂(x))
    (the ELBO's own Monte Carlo error, about sd(w)/sqrt(500), is not in the tolerance).
(b) naive vs IS: data-set means at equal K.
(c) memory: peak RSS (``VmHWM``; ``ru_maxrss`` would include the parent's) of two more
    IS subprocesses run with a fixed glibc mmap threshold, and its growth over the peak
    before the estimate (model and data loaded); K = 5000 should need no more than 500.
(d) time: wall and CPU seconds per 1000 test images (one torch thread by default: the
    machine the numbers in docs/results-mnist.md come from has 2 cores shared with others).
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.config import load_yaml
from pyro_vae.marginal import ImportanceSamplingWarning

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "examples" / "configs" / "mnist.yaml"
SAMPLE_SIZES = (500, 5000)
ESTIMATORS = ("IS", "naive")


def max_rss_mb():
    """Peak resident memory of this process image, MB.

    Linux's ``ru_maxrss`` carries the parent's peak over fork + exec, so a subprocess started
    by a big parent reports the parent's RSS; ``VmHWM`` in /proc/self/status is per image.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def worker(args):
    """One estimate in this (fresh) process; writes tensors and measurements to --out-file."""
    torch.set_num_threads(args.threads)
    saved = torch.load(args.model_file)
    vae = pyro_vae.VAE(data_shape=saved["data_shape"], **saved["model_config"])
    vae.load_state_dict(saved["state_dict"])
    vae.eval()
    x = saved["x"]
    del saved
    pyro.set_rng_seed(args.seed)
    rss_before = max_rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportanceSamplingWarning)  # k-hat is reported instead
        if args.worker == "IS":
            result = pyro_vae.log_likelihood(vae.model, vae.guide, x, num_samples=args.num_samples)
        else:
            result = pyro_vae.naive_log_likelihood(vae.model, x, num_samples=args.num_samples)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    summary = result.summary()
    torch.save({
        "log_px": result.log_px, "stderr": result.stderr, "elbo": result.elbo,
        "mean": result.mean(), "khat_frac_bad": result.khat_frac_bad, "khat_median": summary["khat_median"],
        "ess_mean": summary["ess_mean"], "seconds": wall, "cpu_seconds": cpu,
        "rss_before_mb": rss_before, "rss_peak_mb": max_rss_mb(),
    }, args.out_file)


def load_or_train(run_dir, root, epochs):
    if not (Path(run_dir) / "config.yaml").is_file():
        print(f"No run in {run_dir}: training one ({epochs} epochs of examples/configs/mnist.yaml).")
        overrides = [f"data.root={Path(root).resolve()}", f"train.epochs={epochs}"]
        pyro_vae.train(load_yaml(PRESET), run_dir, overrides=overrides)
    return pyro_vae.load_run(run_dir)


def estimate(estimator, k, model_file, tmp, threads, seed, env=None):
    """Run one estimate in a fresh subprocess; returns what the worker saved."""
    out_file = Path(tmp) / f"result-{seed}.pt"
    subprocess.run([sys.executable, __file__, "--worker", estimator, "--num-samples", str(k),
                    "--model-file", str(model_file), "--out-file", str(out_file),
                    "--threads", str(threads), "--seed", str(seed)], check=True, env=env)
    return torch.load(out_file)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "mnist-example" / "library"))
    parser.add_argument("--root", default=str(REPO / ".." / "shared" / "data"),
                        help="MNIST in torchvision's layout (<root>/MNIST/raw/), if a run is trained")
    parser.add_argument("--train-epochs", type=int, default=10, help="epochs, if a run is trained")
    parser.add_argument("--points", type=int, default=1000, help="first N test images")
    parser.add_argument("--all", action="store_true", help="all 10000 test images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per estimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--worker", choices=ESTIMATORS, help=argparse.SUPPRESS)
    parser.add_argument("--num-samples", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-file", help=argparse.SUPPRESS)
    parser.add_argument("--out-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    try:
        run, state = load_or_train(args.run_dir, args.root, args.train_epochs)
    except pyro_vae.PyroVAEError as error:
        sys.exit(f"error: {error}")
    x = run.test if args.all else run.test[: args.points]
    n = len(x)
    print(f"run {args.run_dir} (epoch {state['epoch']}), {n} test images, {args.threads} thread(s)")
    # glibc's dynamic mmap threshold makes peak RSS vary by ~60 MB between identical runs;
    # a fixed threshold makes it reproducible but slows the estimate (~30%), so the memory
    # runs are separate from the timed ones.
    memory_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    runs, memory = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "model.pt"
        torch.save({"data_shape": run.vae.data_shape, "model_config": run.config["model"],
                    "state_dict": run.vae.state_dict(), "x": x.cpu().clone()}, model_file)
        seed = args.seed * 100
        for estimator in ESTIMATORS:
            for k in SAMPLE_SIZES:
                seed += 1
                runs[estimator, k] = estimate(estimator, k, model_file, tmp, args.threads, seed)
                print(f"  {estimator} K={k}: {runs[estimator, k]['seconds']:.0f} s", flush=True)
        for k in SAMPLE_SIZES:
            seed += 1
            memory[k] = estimate("IS", k, model_file, tmp, args.threads, seed, memory_env)
            print(f"  IS K={k} (memory): {memory[k]['seconds']:.0f} s", flush=True)

    print(f"\n{'estimator':9} {'K':>5} {'mean log p(x)':>14} {'± se':>6} {'mean ELBO*':>11} "
          f"{'k>thr':>6} {'k median':>8} {'mean ESS':>9} {'s/1000 img':>11} {'CPU s/1000':>11}")
    for (estimator, k), r in runs.items():
        mean, se = r["mean"]
        wall, cpu = r["seconds"] * 1000 / n, r["cpu_seconds"] * 1000 / n
        print(f"{estimator:9} {k:5d} {mean:14.2f} {se:6.2f} {r['elbo'].mean().item():11.2f} "
              f"{r['khat_frac_bad']:6.1%} {r['khat_median']:8.2f} {r['ess_mean']:9.1f} "
              f"{wall:11.1f} {cpu:11.1f}")
    print("* the mean over the K draws of log p(x,z) - log q(z|x) (IS), of log p(x|z), z ~ p(z) (naive)")

    big, small = runs["IS", 5000], runs["IS", 500]
    jensen = int((big["log_px"] < big["elbo"] - 1e-9).sum())
    gap = big["log_px"] - small["elbo"]
    fails = int((gap < -3 * big["stderr"]).sum())
    naive_gap = {k: runs["IS", k]["mean"][0] - runs["naive", k]["mean"][0] for k in SAMPLE_SIZES}
    growth = {k: memory[k]["rss_peak_mb"] - memory[k]["rss_before_mb"] for k in SAMPLE_SIZES}
    checks = {
        "a_same_draws_log_px_below_elbo": jensen,
        "a_independent_elbo_fails_3se": fails,
        "a_min_gap_nats": gap.min().item(),
        "a_median_gap_nats": gap.median().item(),
        "a_max_stderr_log_px": big["stderr"].max().item(),
        "b_is_minus_naive_mean": naive_gap,
        "c_is_rss_growth_mb": growth,
        "c_is_peak_rss_mb": {k: memory[k]["rss_peak_mb"] for k in SAMPLE_SIZES},
        "d_is_seconds_per_1000_at_5000": big["seconds"] * 1000 / n,
        "d_is_cpu_seconds_per_1000_at_5000": big["cpu_seconds"] * 1000 / n,
    }
    print(f"\n(a) log p(x) (K=5000) < ELBO of the same draws: {jensen} of {n} points; "
          f"< independent ELBO (K=500) - 3 se: {fails} of {n} "
          f"(gap log p(x) - ELBO: min {checks['a_min_gap_nats']:.2f}, "
          f"median {checks['a_median_gap_nats']:.2f} nats; max se {checks['a_max_stderr_log_px']:.3f})")
    print("(b) IS - naive, mean log p(x): " + ", ".join(f"K={k}: {v:.1f} nats" for k, v in naive_gap.items()))
    print("(c) IS peak RSS (growth during the estimate): "
          + ", ".join(f"K={k}: {memory[k]['rss_peak_mb']:.0f} MB (+{growth[k]:.0f})" for k in SAMPLE_SIZES))
    print(f"(d) IS at K=5000: {checks['d_is_seconds_per_1000_at_5000']:.0f} s wall, "
          f"{checks['d_is_cpu_seconds_per_1000_at_5000']:.0f} s CPU per 1000 test images")
    if args.json:
        rows = {f"{e}-{k}": {key: v for key, v in r.items() if not torch.is_tensor(v)}
                for (e, k), r in runs.items()}
        Path(args.json).write_text(json.dumps({"points": n, "threads": args.threads, "rows": rows,
                                               "checks": checks}, indent=2, default=str))
    return 0 if jensen == 0 and fails == 0 and all(math.isfinite(v) for v in naive_gap.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
