"""The ``pyro-vae`` command: ``train``, ``evaluate``, ``list``, ``plot``, ``sample``,
``encode``, ``interpolate``, ``export`` and ``disentangle``.

Bad input (unknown names, invalid values, missing files) prints one paragraph on
stderr and exits with status 2; nothing is half-written. Each command imports what it
needs when it runs, so ``pyro-vae --help`` answers without loading torch and
``pyro-vae --version`` without loading anything but this module.
"""

import argparse
import json
import os
import sys
import time
import warnings

from .errors import PyroVAEError, TrainingDiverged


def _version():
    from . import __version__

    return f"pyro-vae {__version__}"


class _VersionAction(argparse.Action):
    """``--version``: the package version, read when asked (no torch import)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def _parser():
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    parser.add_argument("--version", action=_VersionAction)
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
    evaluate.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="an option of the estimator, e.g. --estimator ais --option num_steps=1000 "
                          "(repeatable; VALUE is YAML)")
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

    encode = commands.add_parser("encode", help="latent codes (means, log-variances) of a data set -> .npz")
    encode.add_argument("run_dir")
    encode.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="split to encode (default test)")
    encode.add_argument("--data", metavar="SPEC",
                        help="another data set of the same shape, as a name or YAML mapping, e.g. "
                             "'{name: array, path: x.npy}' (default: the run's)")
    encode.add_argument("--out", required=True, help="output .npz file")

    interpolate = commands.add_parser("interpolate", help="decode the latent path between two inputs -> PNG")
    interpolate.add_argument("run_dir")
    interpolate.add_argument("--from", dest="start", type=int, default=0, metavar="I",
                             help="index of the first input in --split (default 0)")
    interpolate.add_argument("--to", dest="end", type=int, default=1, metavar="J",
                             help="index of the second input (default 1)")
    interpolate.add_argument("--split", default="test", choices=("train", "val", "test"))
    interpolate.add_argument("--steps", type=int, default=9,
                             help="points on the path, ends included (default 9)")
    interpolate.add_argument("--out", help="PNG file (default: RUN_DIR/figures/interpolation-I-J.png)")

    export = commands.add_parser("export", help="export the encoder/decoder (torch.export, ONNX) or "
                                                "posterior draws (ArviZ NetCDF)")
    export.add_argument("run_dir")
    export.add_argument("--torch", metavar="DIR", help="write DIR/encoder.pt2 and DIR/decoder.pt2")
    export.add_argument("--onnx", metavar="DIR",
                        help="write DIR/encoder.onnx and DIR/decoder.onnx (needs onnx)")
    export.add_argument("--arviz", metavar="FILE.nc", help="write posterior draws with importance weights")
    export.add_argument("--num-samples", type=int, default=100, help="--arviz: draws per point (default 100)")
    export.add_argument("--points", type=int, default=100,
                        help="--arviz: the first this many test points (default 100)")
    export.add_argument("--seed", type=int, default=0, help="--arviz: seed of the draws (default 0)")

    disentangle = commands.add_parser("disentangle", help="disentanglement metrics on a data set with "
                                                          "generative factors (e.g. sprites) -> JSON")
    disentangle.add_argument("run_dir")
    disentangle.add_argument("--split", default="test", choices=("train", "val", "test"))
    disentangle.add_argument("--metric", action="append", metavar="NAME",
                             help="metric to compute (repeatable; default all of "
                                  "pyro_vae.disentanglement.METRICS: mig, dci, beta_vae, ...)")
    disentangle.add_argument("--max-points", type=int, default=10000, help="points used (default 10000)")
    disentangle.add_argument("--out", help="also write the JSON to this file")
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
    start = time.perf_counter()
    train(user, out, overrides=args.overrides, resume=args.resume, progress=not args.no_progress)
    if _is_main_process():
        print("\n".join(training_summary(out, time.perf_counter() - start, resumed=args.resume)))


def training_summary(run_dir, seconds, resumed=False):
    """The lines ``pyro-vae train`` ends with: epochs and time, the best validation ELBO and its
    checkpoint, the run directory, the figures and the next command (``resumed``: the time is
    that of the epochs trained since the resume)."""
    from .figures import TRAINING_FIGURE
    from .rundir import RunDir

    rundir = RunDir(run_dir)
    records = rundir.read_metrics()
    epochs = records[-1]["epoch"] if records else 0
    per_epoch = sum(r.get("seconds", 0.0) for r in records) / max(len(records), 1)
    done = f"Continued to epoch {epochs}" if resumed else f"Trained {epochs} epochs"
    lines = [f"{done} in {seconds:.1f} s ({per_epoch:.2f} s per epoch of training); "
             f"last training loss {records[-1]['train_loss']:.2f} nats per point." if records else
             f"{done} in {seconds:.1f} s."]
    best = rundir.checkpoints.best()
    if best is not None:
        lines.append(f"Best validation ELBO {best['score']:.2f} nats per point at epoch {best['epoch']} "
                     f"(checkpoint {rundir.checkpoints.best_path()}).")
    figure = rundir.figures / f"{TRAINING_FIGURE}.png"
    lines.append(f"Run directory: {rundir.path}")
    if figure.is_file():
        lines.append(f"Figures: {figure} (all figures: pyro-vae plot {rundir.path})")
    lines.append(f"Next: pyro-vae evaluate {rundir.path}")
    return lines


def _evaluate(args):
    from .config import parse_option
    from .evaluation import evaluate

    options = dict(parse_option(text) for text in args.option)
    summary = evaluate(args.run_dir, args.num_samples, args.batch_size, progress=not args.no_progress,
                       estimator=args.estimator, force=args.force, options=options)
    if _is_main_process():
        print(json.dumps(summary, indent=2))
        if summary.get("bits_per_dim") is not None:
            _report(f"log p(x) = {summary['log_px_mean']:.2f} nats per point = {summary['bits_per_dim']:.4f} "
                    "bits per dimension.")


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


def _encode(args):
    from .config import parse_override
    from .encoding import encode_run, save_codes

    data = parse_override(f"data={args.data}")["data"] if args.data else None
    codes = encode_run(args.run_dir, args.split, data)
    path = save_codes(codes, args.out)
    shapes = ", ".join(f"{key} {tuple(value.shape)}" for key, value in codes.items())
    _report(f"encoded {len(next(iter(codes.values())))} points of split '{args.split}': {shapes}.")
    print(path)


def _interpolate(args):
    from .figures import interpolation_figure

    print(interpolation_figure(args.run_dir, args.start, args.end, args.split, args.steps, args.out,
                               report=_report))


def _export(args):
    if not (args.torch or args.onnx or args.arviz):
        raise PyroVAEError("export needs at least one of --torch DIR, --onnx DIR, --arviz FILE.nc.")
    from .runs import load_model

    vae, state = load_model(args.run_dir, map_location="cpu")
    _report(f"using the checkpoint '{state['path']}' (epoch {state['epoch']}).")
    vae.eval()
    if args.torch or args.onnx:
        from .export import save_onnx, save_torch_export

        for folder, save in ((args.torch, save_torch_export), (args.onnx, save_onnx)):
            if folder:
                for path in save(vae, folder).values():
                    print(path)
    if args.arviz:
        print(_export_arviz(args))


def _export_arviz(args):
    """``--arviz``: :func:`pyro_vae.arviz_export.to_inference_data` of the first test points,
    with the run's evaluation (``eval_points.pt``) per point where there is one."""
    from .arviz_export import save_inference_data, to_inference_data
    from .runs import load_run
    from .validation import check_int

    check_int(args.points, "--points")
    run, _ = load_run(args.run_dir, map_location="cpu", splits=("test",))
    x = run.test[: args.points]
    if not len(x):
        raise PyroVAEError(f"The run in '{args.run_dir}' has no test points to export.")
    from .figures import load_eval_result

    result = load_eval_result(args.run_dir)
    per_point = result.per_point() if result is not None else {}
    estimates = {k: v[: len(x)] for k, v in per_point.items() if v.dim() == 1}
    idata = to_inference_data(run.vae.eval(), x, num_samples=args.num_samples, seed=args.seed,
                              estimates=estimates)
    return save_inference_data(idata, args.arviz)


def _disentangle(args):
    """:func:`pyro_vae.disentanglement.score_run` with the metrics asked for (its ``METRICS``
    names them; a new metric there is a new ``--metric`` here)."""
    from .atomic import write_json
    from .disentanglement import score_run
    from .runs import load_run

    run, _ = load_run(args.run_dir, splits=(args.split,))
    options = {"metrics": tuple(args.metric)} if args.metric else {}
    scores = score_run(run, args.split, args.max_points, **options)
    if args.out:
        write_json(args.out, scores)
    print(json.dumps(scores, indent=2))


INTERRUPTED = {
    "evaluate": "eval.json was not written (an earlier one is unchanged).",
    "plot": "the figures listed so far are complete; the others were not written.",
    "sample": "nothing was written.",
    "list": "nothing was written.",
    "encode": "nothing was written.",
    "interpolate": "nothing was written.",
    "export": "the files listed so far are complete; the others were not written.",
    "disentangle": "nothing was written.",
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
    handlers = {"train": _train, "evaluate": _evaluate, "list": _list, "plot": _plot, "sample": _sample,
                "encode": _encode, "interpolate": _interpolate, "export": _export,
                "disentangle": _disentangle}
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
