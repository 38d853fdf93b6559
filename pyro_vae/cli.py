"""The ``pyro-vae`` command: ``train``, ``evaluate``, ``list``, ``plot`` and ``sample``.

Bad input (unknown names, invalid values, missing files) prints one paragraph on
stderr and exits with status 2; nothing is half-written. Each command imports what it
needs when it runs, so ``pyro-vae --help`` answers without loading torch.
"""

import argparse
import json
import os
import sys
import time
import warnings

from .errors import PyroVAEError, TrainingDiverged


def _parser():
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a VAE (the embedded digits default with no config)")
    train.add_argument("--config", help="YAML config file; omitted keys take the defaults")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set model.latent_dim=16 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<date-time>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("evaluate", help="estimate log p(x) on the test split -> eval.json")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--estimator", help="estimator name (default: the run's eval.estimator, "
                          "importance); see pyro-vae list")
    evaluate.add_argument("--num-samples", type=int, help="samples K per data point")
    evaluate.add_argument("--batch-size", type=int, help="data points per batch")
    evaluate.add_argument("--force", action="store_true",
                          help="run even when the estimated time exceeds a week")
    evaluate.add_argument("--no-progress", action="store_true")

    commands.add_parser("list", help="list the registered datasets, priors, likelihoods, ...")

    plot = commands.add_parser("plot", help="write the figures of a run into RUN_DIR/figures")
    plot.add_argument("run_dir")
    plot.add_argument("--out-dir", help="folder for the PNGs (default: RUN_DIR/figures)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")

    sample = commands.add_parser("sample", help="write an image grid of samples from a run's model")
    sample.add_argument("run_dir")
    sample.add_argument("-n", "--num-samples", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--out", help="PNG file (default: RUN_DIR/figures/samples-N.png)")
    sample.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of the mean E[x|z]")
    sample.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    return parser


def _is_main_process():
    """False in the processes of a torchrun launch other than rank 0 (they print nothing)."""
    return os.environ.get("RANK", "0") == "0"


def _report(message):
    """A progress message of a command, on stderr (stdout keeps the command's output)."""
    print(f"pyro-vae: {message}", file=sys.stderr)


def _train(args):
    from .config import load_yaml
    from .training import train

    user = load_yaml(args.config) if args.config else {}
    if args.resume and not args.out:
        raise PyroVAEError("--resume needs --out RUN_DIR (the run to continue).")
    out = args.out = args.out or time.strftime("runs/%Y%m%d-%H%M%S")
    run = train(user, out, overrides=args.overrides, resume=args.resume, progress=not args.no_progress)
    if _is_main_process():
        print(f"Run directory: {out} (trained {run.config['train']['epochs']} epochs)")


def _evaluate(args):
    from .evaluation import evaluate

    summary = evaluate(args.run_dir, args.num_samples, args.batch_size, progress=not args.no_progress,
                       estimator=args.estimator, force=args.force)
    if _is_main_process():
        print(json.dumps(summary, indent=2))


def _list(_args):
    from .data import DATASETS
    from .estimators import ESTIMATORS
    from .likelihoods import LIKELIHOODS
    from .networks import NETWORKS
    from .objectives import OBJECTIVES
    from .priors import PRIORS
    from .schedules import BETA_SCHEDULES

    for registry in (DATASETS, PRIORS, LIKELIHOODS, NETWORKS, OBJECTIVES, BETA_SCHEDULES, ESTIMATORS):
        print(f"{registry.kind}s: {', '.join(registry.names())}")


def _plot(args):
    from .figures import plot_run

    for path in plot_run(args.run_dir, args.out_dir, seed=args.seed, report=_report).values():
        print(path)


def _sample(args):
    from .figures import sample_grid
    from .validation import check_int

    check_int(args.num_samples, "-n (the number of samples)")
    print(sample_grid(args.run_dir, args.num_samples, args.out, mean=not args.draw, seed=args.seed,
                      report=_report))


INTERRUPTED = {
    "evaluate": "eval.json was not written (an earlier one is unchanged).",
    "plot": "the figures listed so far are complete; the others were not written.",
    "sample": "nothing was written.",
    "list": "nothing was written.",
}
"""What an interrupted command leaves behind, said on Ctrl-C (``train``: :func:`_interrupted_training`)."""


def _interrupted_training(args):
    """What Ctrl-C during ``train`` leaves: the newest checkpoint, or none."""
    from .rundir import RunDir

    if not getattr(args, "out", None):
        return "nothing was written."
    newest = RunDir(args.out).checkpoints.paths()
    if not newest:
        return (f"no epoch was completed, so '{args.out}' holds no checkpoint; "
                "--resume would start the run from the beginning.")
    return (f"the newest checkpoint is '{newest[0]}'; continue with "
            f"pyro-vae train --out {args.out} --resume.")


def _one_line_warning(command):
    """``warnings.showwarning`` for the command line: one line, no source path or code."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"pyro-vae {command}: warning: {message}", file=sys.stderr)

    return show


def main(argv=None):
    """Run the ``pyro-vae`` command line; returns the exit status (0, 2 for bad input,
    3 for a training run that diverged, 130 on Ctrl-C)."""
    args = _parser().parse_args(argv)
    command = args.command
    handlers = {"train": _train, "evaluate": _evaluate, "list": _list, "plot": _plot, "sample": _sample}
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(command)
        try:
            handlers[command](args)
        except TrainingDiverged as error:
            print(f"pyro-vae {command}: training diverged: {error}", file=sys.stderr)
            return 3
        except PyroVAEError as error:
            print(f"pyro-vae {command}: error: {error}", file=sys.stderr)
            return 2
        except OSError as error:  # the file system refused: a path the user gave, in words
            where = f" ('{error.filename}')" if error.filename else ""
            print(f"pyro-vae {command}: error: {error.strerror or error}{where}.", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            left = _interrupted_training(args) if command == "train" else INTERRUPTED[command]
            print(f"pyro-vae {command}: interrupted; {left}", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
