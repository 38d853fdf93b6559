"""Full training epochs: pyro_vae's Trainer against hand-written PyTorch loops, side by side.

Sides (each trains its own copy of the same network from the same initial parameters on
the same training set; one repeat = one epoch):

* ``torch``             hand-written loop, the data on the device, batches by index with a
                        ``torch.randperm`` per epoch (as the trainer), default ``Adam``;
* ``torch+fused``       the same with ``Adam(fused=True)`` (the trainer's optimiser);
* ``torch-dataloader``  the usual ``DataLoader(TensorDataset(x), shuffle=True)`` loop
                        (data on the CPU, pinned and copied per batch on a GPU) with
                        ``Adam(fused=True)``: what the index batching is compared with;
* ``pyro_vae``          ``Trainer._epoch`` as ``fit`` runs it (Pyro validation off, no
                        progress bar): the steps, the β schedule, the per-epoch checkpoint
                        and metrics line; validation is switched off (``validate_every`` is
                        larger than the run) and timed separately.

With dynamic binarisation (default, as the library's MNIST default) every side draws a fresh
``torch.bernoulli`` per batch. Example::

    python benchmarks/epoch.py --data mnist --batch-sizes 256 --repeats 5
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pyro_vae.rundir import RunDir  # noqa: E402
from pyro_vae.runs import Run  # noqa: E402
from pyro_vae.trainer import Trainer  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(repeats=5, hidden="400", data="mnist", conv="no")
    parser.add_argument("--batch-sizes", default="256")
    parser.add_argument("--objective", default="elbo-analytic", choices=["elbo-analytic", "elbo"])
    parser.add_argument("--binarize", default="dynamic", choices=["dynamic", "static"])
    parser.add_argument("--train-size", type=int, default=0,
                        help="use the first N training images (0: all; random data: 50000)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sides", default="torch,torch+fused,torch-dataloader,pyro_vae")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    return parser.parse_args(argv)


def load_splits(args, device):
    from pyro_vae.data import Splits, load_dataset

    if args.data == "mnist":
        splits = load_dataset({"name": "mnist", "root": args.data_root, "binarize": args.binarize})
        if args.train_size:
            splits = dataclasses.replace(splits, train=splits.train[: args.train_size], train_labels=None)
        return splits.to(device)
    n = args.train_size or 50000
    generator = torch.Generator().manual_seed(args.seed)
    grey = torch.rand((n + 100, 1, 28, 28), generator=generator)
    x = grey if args.binarize == "dynamic" else torch.bernoulli(grey, generator=generator)
    info = {"name": "random", "binarize": args.binarize}
    return Splits(train=x[:n], val=x[:0], test=x[n:], info=info).to(device)


def make_config(args, enc, dec, batch, device):
    return {
        "seed": args.seed, "device": str(device), "data": {"name": "unused"},
        "model": {"latent_dim": args.latent_dim, "prior": "standard-normal", "likelihood": "bernoulli",
                  "encoder": enc, "decoder": dec},
        "objective": {"name": args.objective, "num_particles": 1},
        "beta_schedule": {"name": "constant", "beta": 1.0},
        "optim": {"lr": args.lr, "lr_decay": 1.0, "clip_norm": None},
        "train": {"epochs": 10**6, "batch_size": batch, "validate_every": 10**6},
        "eval": {"num_samples": 1000, "batch_size": 1000},
    }


def make_trainer(args, config, splits, proto, name, out_dir):
    from pyro_vae.config import resolve

    vae = common.make_vae(config["model"]["encoder"], config["model"]["decoder"], args.latent_dim,
                          splits.train.device, args.seed, name=name)
    vae.load_state_dict(proto.state_dict())
    run = Run(resolve(config), splits.train.device, splits, vae, splits.val, splits.test)
    trainer = Trainer(run, RunDir(out_dir), progress=False)
    trainer._start(resume=False)
    return trainer


def trainer_epoch(trainer, batch):
    num_batches = math.ceil(len(trainer.run.splits.train) / batch)
    bar = tqdm(total=num_batches, disable=True)

    def epoch():
        with pyro.validation_enabled(False):
            trainer._epoch(num_batches, batch, bar)

    return epoch


def torch_index_epoch(args, splits, proto, batch, fused):
    from pyro_vae.data import batches

    ref = common.ReferenceVAE.from_vae(proto, bound=not args.no_bound)
    opt = torch.optim.Adam(ref.parameters(), lr=args.lr, **({"fused": True} if fused else {}))
    train, dynamic, device = splits.train, args.binarize == "dynamic", splits.train.device
    analytic = args.objective == "elbo-analytic"
    state = {"epoch": 0}

    def epoch():
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + state["epoch"])
        total = torch.zeros((), dtype=torch.float64, device=device)
        for index in batches(len(train), batch, generator, device):
            x = train[index]
            if dynamic:
                x = torch.bernoulli(x)
            total += common.reference_step(ref, opt, x, analytic=analytic)
        state["epoch"] += 1
        return total.item()

    return epoch


def torch_dataloader_epoch(args, splits, proto, batch):
    from torch.utils.data import DataLoader, TensorDataset

    ref = common.ReferenceVAE.from_vae(proto, bound=not args.no_bound)
    opt = torch.optim.Adam(ref.parameters(), lr=args.lr, fused=True)
    device = splits.train.device
    on_gpu = device.type == "cuda"
    loader = DataLoader(TensorDataset(splits.train.cpu()), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed), pin_memory=on_gpu,
                        num_workers=args.workers)
    dynamic, analytic = args.binarize == "dynamic", args.objective == "elbo-analytic"

    def epoch():
        total = torch.zeros((), dtype=torch.float64, device=device)
        for (x,) in loader:
            x = x.to(device, non_blocking=True)
            if dynamic:
                x = torch.bernoulli(x)
            total += common.reference_step(ref, opt, x, analytic=analytic)
        return total.item()

    return epoch


def main(argv=None):
    args = parse_args(argv)
    device = common.setup(args)
    print(common.machine_info(device))
    splits = load_splits(args, device)
    n = len(splits.train)
    print(f"objective {args.objective}, data {args.data} ({n} training images, {args.binarize} "
          f"binarisation), {args.repeats} interleaved epochs per side; ratios: median [min-max]\n")
    names = [s for s in args.sides.split(",") if s]
    results = {"machine": common.machine_info(device), "args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for label, enc, dec in common.network_configs(args):
            for batch in [int(b) for b in args.batch_sizes.split(",")]:
                print(f"== {label}, batch {batch}, {math.ceil(n / batch)} steps per epoch")
                config = make_config(args, enc, dec, batch, device)
                proto = common.make_vae(enc, dec, args.latent_dim, device, args.seed, name="proto")
                sides = {}
                for name in names:
                    if name == "torch":
                        sides[name] = torch_index_epoch(args, splits, proto, batch, fused=False)
                    elif name == "torch+fused":
                        sides[name] = torch_index_epoch(args, splits, proto, batch, fused=True)
                    elif name == "torch-dataloader":
                        sides[name] = torch_dataloader_epoch(args, splits, proto, batch)
                    elif name == "pyro_vae":
                        lib_trainer = make_trainer(args, config, splits, proto, name,
                                                   Path(tmp) / f"{label}-{batch}-{name}".replace(" ", "_"))
                        sides[name] = trainer_epoch(lib_trainer, batch)
                    else:
                        raise SystemExit(f"unknown side {name!r}")
                times = common.interleaved(sides, args.repeats, device)
                run = {"network": label, "batch": batch, "steps": math.ceil(n / batch), "sides": {}}
                rows = [["side", "wall s/epoch", "cpu s/epoch", "wall / torch", "cpu / torch",
                         "wall / fused ref", "cpu / fused ref"]]
                for name in names:
                    medians = {clock: common.median_ms(times[clock][name]) / 1e3 for clock in common.CLOCKS}
                    entry, row = common.side_summary(times, name, "s_per_epoch", medians, digits=3)
                    rows.append(row)
                    run["sides"][name] = entry
                print("  " + common.table(rows).replace("\n", "\n  "))
                if "pyro_vae" in names:
                    extra = epoch_extras(lib_trainer, splits, config, device)
                    run["extras"] = extra
                    print("  per epoch, outside the timed loop: " + ", ".join(f"{k} {v * 1e3:.1f} ms"
                                                                             for k, v in extra.items()))
                print()
                results["runs"].append(run)
                pyro.clear_param_store()
    common.write_json(args, results)


def epoch_extras(trainer, splits, config, device):
    """Seconds of the per-epoch work besides the steps: checkpoint save, validation pass."""
    from pyro_vae.diagnostics import latent_summary

    out = {}
    start = time.perf_counter()
    trainer.checkpoints.save(trainer.state(), trainer.epoch + 10**5)
    out["checkpoint save"] = time.perf_counter() - start
    val = splits.val if len(splits.val) else splits.test
    if len(val):
        x = torch.bernoulli(val, generator=None) if splits.dynamic_binarization else val
        start = time.perf_counter()
        with pyro.validation_enabled(False):
            latent_summary(trainer.run.vae, x, config["eval"]["batch_size"])
        common.sync(device)
        out[f"validation ({len(val)} points)"] = time.perf_counter() - start
    return out


if __name__ == "__main__":
    main()
