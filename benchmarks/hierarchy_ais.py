"""AIS against importance sampling for runs of benchmarks/hierarchy_mnist.py, on the same test images.

    python benchmarks/hierarchy_ais.py /work/runs/h/eq200/vae-1l-an /work/runs/h/eq200/vae-2l-res-an-fb \\
        --points 200 --out /work/runs/h/eq200/ais.json

Importance sampling with the guide as proposal underestimates log p(x) when the guide is a
poor proposal (k̂ above the threshold), and the two-layer models' guides are the poorer
ones (their log p̂(x) − ELBO gap is the larger), so comparing one layer with two by
importance sampling alone can favour one layer. This scores the first ``--points`` test
images of each run (the library's fixed binarisation, as in ``hierarchy_mnist.py``) with
AIS (:func:`pyro_vae.ais.ais`, its defaults unless ``--steps``/``--chains``: 500 sigmoidal
steps from the guide, 8 chains) and prints, per run, AIS beside the importance-sampled
values that ``hierarchy_mnist.py`` stored for the same images (``eval_points.pt``), and
the paired AIS differences of every run to the first. One torch thread.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.ais import ais
from pyro_vae.marginal import mean_and_stderr
from pyro_vae.runs import load_run


def paired(values):
    """Mean and standard error over images of per-image values (a paired difference)."""
    return values.mean().item(), (values.std() / len(values) ** 0.5).item()


def score(run_dir, args):
    run, _ = load_run(run_dir, splits=("test",))
    vae, x = run.vae.eval(), run.test[: args.points]  # eval: batch norm with its running statistics
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    result = ais(vae.model, vae.guide, x, num_steps=args.steps, num_chains=args.chains)
    seconds = time.perf_counter() - start
    stored = torch.load(Path(run_dir) / "eval_points.pt")["log_px"][: args.points].double()
    return result, stored, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of hierarchy_mnist.py")
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}; AIS {args.steps} steps, "
          f"{args.chains} chains, first {args.points} test images", flush=True)
    rows, reference = [], None
    for run_dir in args.runs:
        result, stored, seconds = score(run_dir, args)
        ais_mean, ais_se = mean_and_stderr(result.log_px, result.stderr)
        is_mean = stored.mean().item()
        gain_mean, gain_se = paired(result.log_px - stored)
        row = {"run": str(run_dir), "ais": ais_mean, "ais_stderr": ais_se, "is": is_mean,
               "ais_minus_is": gain_mean, "ais_minus_is_stderr": gain_se,
               "accept": result.accept.mean().item(), "seconds": seconds}
        if reference is None:
            reference = result.log_px
        else:
            row["ais_minus_first"], row["ais_minus_first_stderr"] = paired(result.log_px - reference)
        rows.append(row)
        versus = (f", − first run {row['ais_minus_first']:+.2f} ± {row['ais_minus_first_stderr']:.2f}"
                  if "ais_minus_first" in row else "")
        print(f"{run_dir.name}: AIS {ais_mean:.2f} ± {ais_se:.2f}, IS {is_mean:.2f} (AIS − IS "
              f"{gain_mean:+.2f} ± {gain_se:.2f}){versus}; acceptance {row['accept']:.2f}, {seconds:.0f} s",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
