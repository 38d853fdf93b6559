"""Full training epochs: pyro_vae's Trainer against hand-written PyTorch loops, side by side.

Sides (each trains its own copy of the same network from the same initial parameters on
the same training set; one repeat = one epoch):

* ``torch``             hand-written loop, the data on the device, batches by index with a
                        ``torch.randperm`` per epoch (as the trainer), default ``Adam``;
* ``torch+fused``       the same with ``Adam(fused=True)`` (the trainer's optimiser);
* ``torch-dataloader``  the usual ``DataLoader(TensorDataset(x), shuffle=True)`` loop
                        (data on the CPU, pinned and copied per batch on a GPU), default Adam;
* ``pyro_vae``          ``Trainer._epoch`` as ``fit`` runs it (Pyro validation off, no
                        progress bar): the steps, the β schedule, the per-epoch checkpoint
                        and metrics line; validation is switched off (``validate_every`` is
                        larger than the run) and timed separately;
* ``pyro_vae-before``   the trainer's epoch loop before this work (Pyro's ELBO
                        ``loss_and_grads`` returning a float every step, default Adam,
                        progress-bar postfix every step), with the same checkpointing.

With dynamic binarisation (default, as the library's MNIST default) every side draws a fresh
``torch.bernoulli`` per batch. Example::

    python benchmarks/epoch.py --data mnist --batch-sizes 256 --repeats 5
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

train_module = importlib.import_module("pyro_vae.train")


def parse_args(argv=None):
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(repeats=5, hidden="400", data="mnist", conv="no")
    parser.add_argument("--batch-sizes", default="256")
    parser.add_argument("--objective", default="elbo-analytic", choices=["elbo-analytic", "elbo"])
    parser.add_argument("--binarize", default="dynamic", choices=["dynamic", "static"])
    parser.add_argument("--train-size", type=int, default=0,
                        help="use the first N training images (0: all; random data: 50000)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sides", default="torch,torch+fused,torch-dataloader,pyro_vae,pyro_vae-before")
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


def make_trainer(args, config, splits, proto, name, out_dir, before=False):
    from pyro_vae.config import resolve

    vae = common.make_vae(config["model"]["encoder"], config["model"]["decoder"], args.latent_dim,
                          splits.train.device, args.seed, name=name)
    vae.load_state_dict(proto.state_dict())
    run = train_module.Run(resolve(config), splits.train.device, splits, vae, splits.val, splits.test)
    trainer = (BeforeTrainer if before else train_module.Trainer)(run, out_dir, progress=False)
    trainer._start(resume=False)
    return trainer


class BeforeTrainer(train_module.Trainer):
    """The trainer as it was before this work: Pyro ELBO ``loss_and_grads``, default Adam."""

    def __init__(self, run, out_dir, progress=True):
        super().__init__(run, out_dir, progress)
        name = run.config["objective"]["name"]
        elbo = TraceMeanField_ELBO if name == "elbo-analytic" else Trace_ELBO
        self.objective = elbo(max_plate_nesting=1)
        self.optimizer = torch.optim.Adam(run.vae.parameters(), lr=run.config["optim"]["lr"])
        decay = run.config["optim"]["lr_decay"]
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, decay)

    def _epoch(self, num_batches, batch_size, bar):
        from pyro_vae.data import batches

        run, vae, config = self.run, self.run.vae, self.run.config
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(config["seed"] * 1_000_003 + self.epoch)
        total = 0.0
        for step, index in enumerate(batches(len(run.splits.train), batch_size, generator, run.device)):
            vae.beta = self.schedule(self.epoch + step / num_batches)
            x = run.train_batch(index)
            loss = self.objective.loss_and_grads(vae.model, vae.guide, x)
            if not math.isfinite(loss):
                self._diverged(step)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            total += loss
            bar.update()
            bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss / len(x):.2f}", refresh=False)
        self.scheduler.step()
        self.epoch += 1
        record = {"epoch": self.epoch, "train_loss": total / len(run.splits.train),
                  "seconds": time.perf_counter() - start}
        self.checkpoints.save(self.state(), self.epoch)
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


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
    opt = torch.optim.Adam(ref.parameters(), lr=args.lr)
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
                    elif name in ("pyro_vae", "pyro_vae-before"):
                        trainer = make_trainer(args, config, splits, proto, name.replace("-", "_"),
                                               Path(tmp) / f"{label}-{batch}-{name}".replace(" ", "_"),
                                               before=name == "pyro_vae-before")
                        sides[name] = trainer_epoch(trainer, batch)
                        if name == "pyro_vae":
                            lib_trainer = trainer
                    else:
                        raise SystemExit(f"unknown side {name!r}")
                times = common.interleaved(sides, args.repeats, device)
                run = {"network": label, "batch": batch, "steps": math.ceil(n / batch), "sides": {}}
                rows = [["side", "wall s/epoch", "cpu s/epoch", "wall / torch", "cpu / torch",
                         "wall / torch+fused", "cpu / torch+fused"]]
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
