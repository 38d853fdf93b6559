"""How far importance sampling's own standard error can be trusted, by Pareto k̂.

    python benchmarks/khat_calibration.py            # about a minute on one core

Linear-Gaussian models (closed-form log p(x)) with mean-field Gaussian guides at the
posterior mean, their standard deviations the KL-optimal ones times a factor from 0.5
(too narrow: heavy-tailed weights) to 1.5 (too wide), K = 5000 samples per point. For every
point: k̂, the error e = log p̂(x) − log p(x) and z = e / stderr. Per guide, then per k̂
bin (k̂ of a single point is noisy, so the bins mix guides), the tables give the share of
points whose truth lies within 2 reported standard errors (95 % if the stderr were right),
the median |z| and the mean error. This is the measurement behind the rule in
docs/guide/evaluation.md.
"""

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_ais import Correlated  # noqa: E402

from pyro_vae.errors import ImportanceSamplingWarning  # noqa: E402
from pyro_vae.marginal import log_likelihood  # noqa: E402

BINS = (-float("inf"), 0.5, 0.6, 0.7, 0.8, float("inf"))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--stretch", type=float, nargs="+", default=[0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.5, 2.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    khats, errors, zs = [], [], []
    print(f"{'sd factor':>9} {'median k-hat':>12} {'within 2 se':>11} {'mean error':>10} {'sd error':>8} "
          f"{'median se':>9}")
    for i, stretch in enumerate(args.stretch):
        model = Correlated(d=10, D=12, scale=0.3, seed=i)
        model.stretch = stretch
        x = model.sample(args.points, seed=i)
        torch.manual_seed(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImportanceSamplingWarning)
            result = log_likelihood(model.model, model.guide, x, num_samples=args.num_samples)
        error = result.log_px - model.marginal.log_prob(x)
        covered = float(((error / result.stderr).abs() < 2).double().mean())
        print(f"{stretch:>9} {float(result.khat.median()):>12.2f} {covered:>11.1%} "
              f"{float(error.mean()):>10.3f} "
              f"{float(error.std()):>8.3f} {float(result.stderr.median()):>9.3f}")
        khats.append(result.khat)
        errors.append(error)
        zs.append(error / result.stderr)
    khat, error, z = torch.cat(khats), torch.cat(errors), torch.cat(zs)
    print(f"\n{len(khat)} points, K = {args.num_samples}")
    print(f"{'k-hat':>11} {'points':>6} {'within 2 se':>11} {'median |z|':>10} {'mean error':>10}")
    for low, high in zip(BINS[:-1], BINS[1:]):
        inside = (khat > low) & (khat <= high)
        if not inside.any():
            continue
        label = f"{low:.1f}-{high:.1f}".replace("-inf-", "< ").replace("-inf", "")
        if high == float("inf"):
            label = f"> {low:.1f}"
        covered = float((z[inside].abs() < 2).double().mean())
        print(f"{label:>11} {int(inside.sum()):>6} {covered:>11.1%} {float(z[inside].abs().median()):>10.2f} "
              f"{float(error[inside].mean()):>10.3f}")


if __name__ == "__main__":
    main()
