"""How well ``pyro-vae evaluate`` predicts its own duration: the timed-probe estimate
(``estimated_seconds`` in ``eval.json``) against the measured time (``seconds``).

    python benchmarks/eval_cost.py RUN_DIR --num-samples 100,1000,5000 [--threads 1]

Each K is one full evaluation of the run's test split; the table gives both times and
their ratio (within a factor of two is the target).
"""

import argparse
import warnings

import torch

import pyro_vae
from pyro_vae.errors import EstimatorWarning


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--num-samples", default="100,1000,5000")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'K':>7} {'points':>7} {'estimated s':>12} {'measured s':>11} {'ratio':>6}")
    rows = []
    for k in (int(v) for v in args.num_samples.split(",")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EstimatorWarning)
            summary = pyro_vae.evaluate(args.run_dir, num_samples=k, progress=False, report=lambda _: None)
        ratio = summary["estimated_seconds"] / summary["seconds"]
        rows.append((k, summary["num_points"], summary["estimated_seconds"], summary["seconds"], ratio))
        print(f"{k:>7} {rows[-1][1]:>7} {rows[-1][2]:>12.1f} {rows[-1][3]:>11.1f} {ratio:>6.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
