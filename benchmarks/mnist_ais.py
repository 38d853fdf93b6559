"""log p(x) of a trained run by every estimator, the inference-gap decomposition and the BDMC gap.

    python benchmarks/mnist_ais.py --run-dir RUN --points 1000 --out results.json       # gaps
    python benchmarks/mnist_ais.py --run-dir RUN --bdmc-points 100 --bdmc-steps 10 100 1000 --no-gaps

The model is a trained pyro-vae run (``pyro_vae.load_run``; e.g. one trained with
examples/configs/mnist.yaml). The data are the first ``--points`` test images in the run's
fixed binarisation. The ``gaps`` estimator (:mod:`pyro_vae.estimators`) runs on each batch:
importance sampling with the guide (K = ``--is-samples``), importance sampling with the
proposal refined per point, and AIS; from them the approximation and amortisation gaps.
BDMC simulates ``--bdmc-points`` images from the model and brackets their log p(x) for each
step count. Everything is printed and, with ``--out``, written as JSON, with the figures
beside it (``OUT.png``: the estimators per point and the gaps; ``OUT_bdmc.png``); one torch
thread. The numbers in docs/results-marginal.md come from it.
"""

import argparse
import json
import time
from pathlib import Path

import torch

import pyro_vae
from pyro_vae.ais import bdmc
from pyro_vae.estimators import build_estimator
from pyro_vae.plots import plot_bdmc, plot_estimator_comparison, save_figure
from pyro_vae.psis import khat_threshold


def gaps(vae, x, args):
    estimator = build_estimator(
        {"name": "gaps", "ais": {"num_steps": args.ais_steps, "num_chains": args.chains},
         "refined": {"refine_steps": args.refine_steps}}, args.is_samples)
    start = time.perf_counter()
    parts = []
    for i in range(0, len(x), args.batch_size):
        parts.append(estimator.estimate(vae.model, vae.guide, x[i : i + args.batch_size]).per_point())
        done = min(i + args.batch_size, len(x))
        print(f"  gaps: {done}/{len(x)} points, {time.perf_counter() - start:.0f} s", flush=True)
    result = estimator.combine({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    if args.out:
        save_figure(plot_estimator_comparison(result), Path(args.out).with_suffix(".png"))
    seconds = time.perf_counter() - start
    summary = result.summary()
    threshold = khat_threshold(args.is_samples)
    rows = [("IS (guide)", result.log_px_is, result.khat_is), ("IS (refined)", result.log_px_refined_is,
                                                                 result.khat_refined_is),
            (f"AIS ({args.ais_steps} steps)", result.log_px, None), ("ELBO[q]", result.elbo, None),
            ("ELBO[q*]", result.elbo_refined, None)]
    print(f"\n{len(x)} test images; k-hat threshold {threshold:.2f}")
    print(f"{'estimator':<20} {'mean':>9} {'- AIS':>7} {'k>thr':>6}")
    for name, values, khat in rows:
        bad = f"{float((khat > threshold).double().mean()):.1%}" if khat is not None else ""
        difference = float((values - result.log_px).mean())
        print(f"{name:<20} {float(values.mean()):9.2f} {difference:7.2f} {bad:>6}")
    print(f"approximation gap {summary['approximation_gap_mean']:.2f}, amortisation gap "
          f"{summary['amortisation_gap_mean']:.2f} nats; {seconds / len(x):.2f} s per image")
    return {**summary, "seconds": seconds, "seconds_per_image": seconds / len(x),
            "log_px_is_minus_ais": float((result.log_px_is - result.log_px).mean()),
            "log_px_refined_is_minus_ais": float((result.log_px_refined_is - result.log_px).mean()),
            "elbo_mean": float(result.elbo.mean())}


def bdmc_table(vae, x, args):
    start = time.perf_counter()
    result = bdmc(vae.model, vae.guide, x, num_steps=args.bdmc_steps, num_chains=args.chains,
                  batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - start
    print(f"\nBDMC on {len(x)} images simulated from the model ({seconds:.0f} s)")
    print(f"{'steps':>6} {'lower':>9} {'upper':>9} {'gap':>6}")
    rows = result.summary()
    if args.out:
        save_figure(plot_bdmc(rows, len(x)), Path(args.out).with_name(Path(args.out).stem + "_bdmc.png"))
    for row in rows:
        print(f"{row['num_steps']:>6} {row['lower_mean']:9.2f} {row['upper_mean']:9.2f} "
              f"{row['gap_mean']:6.2f}")
    return {"rows": rows, "seconds": seconds, "num_points": len(x)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--is-samples", type=int, default=5000)
    parser.add_argument("--ais-steps", type=int, default=500)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--refine-steps", type=int, default=200)
    parser.add_argument("--bdmc-points", type=int, default=0)
    parser.add_argument("--bdmc-steps", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--no-gaps", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON file for the numbers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run, state = pyro_vae.load_run(args.run_dir, splits=("test",))
    vae = run.vae.eval()
    print(f"run {args.run_dir}, epoch {state['epoch']}; {torch.get_num_threads()} torch thread(s)")
    out = {"run_dir": str(args.run_dir), "epoch": state["epoch"], "settings": vars(args)}
    if not args.no_gaps:
        out["gaps"] = gaps(vae, run.test[: args.points], args)
    if args.bdmc_points:
        out["bdmc"] = bdmc_table(vae, run.test[: args.bdmc_points], args)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
