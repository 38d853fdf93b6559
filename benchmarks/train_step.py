"""Training-step time of pyro_vae against a hand-written PyTorch VAE, side by side.

Every side trains its own copy of the same network (same initial parameters) on the same
batches (a pool of distinct batches cycled in the same order), one step at a time:

* ``torch``          hand-written VAE (see common.py), ``torch.optim.Adam`` with its default
                     implementation, as a hand-written loop usually is;
* ``torch+fused``    the same with ``Adam(fused=True)``, the optimiser the trainer uses: the
                     ratio against it is the framework's overhead alone (the target);
* ``pyro_vae``       the library's step as ``Trainer`` runs it: ``step_loss`` with the
                     registry's objective under the trainer's ``step_settings`` (no
                     per-call ``pyro.module``), ``make_adam``, Pyro validation off;
* ``pyro-svi``       plain ``pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam, ELBO)``
                     with Pyro's own ELBO class, for reference;
* with ``--mixed-precision``, ``torch+fused-bf16`` and ``pyro_vae-bf16``: the networks under
  ``torch.autocast(dtype=bfloat16)`` on both sides (``train.mixed_precision: bf16``); meant
  for GPUs (CPUs without bfloat16 units run it slower than float32).

Before timing, the library's and the reference's loss and gradients are compared at the same
seed (same ε). Example::

    python benchmarks/train_step.py --batch-sizes 128,256,1024 --threads 1
    python benchmarks/train_step.py --device cuda --threads 0 --mixed-precision
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="128,256,1024")
    parser.add_argument("--objective", default="elbo-analytic", choices=["elbo-analytic", "elbo"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per repeat and side (0: about --repeat-seconds worth)")
    parser.add_argument("--repeat-seconds", type=float, default=0.4)
    parser.add_argument("--pool", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument("--sides", default="torch,torch+fused,pyro_vae,pyro-svi",
                        help="comma-separated sides to time (see the module docstring)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="also the bf16-autocast sides torch+fused-bf16 and pyro_vae-bf16")
    return parser.parse_args(argv)


class Cycle:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __call__(self):
        x = self.batches[self.i % len(self.batches)]
        self.i += 1
        return x


def library_step(vae, objective, mixed_precision, lr):
    """One step of the library's trainer loop (see ``Trainer._step`` and ``Trainer._epoch``)."""
    from pyro_vae.objectives import step_loss
    from pyro_vae.trainer import make_adam, step_settings, temporary_attributes

    settings = step_settings(vae, objective, mixed_precision)
    opt = make_adam(vae.parameters(), lr=lr)

    def step(x):
        with temporary_attributes(vae, settings):
            loss = step_loss(objective, vae.model, vae.guide, x)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def build_sides(args, enc, dec, device, batches, names):
    """name -> callable running one training step (each side with its own model copy)."""
    from pyro_vae.objectives import OBJECTIVES

    analytic = args.objective == "elbo-analytic"
    proto = common.make_vae(enc, dec, args.latent_dim, device, args.seed, name="proto")
    steps = {}
    for name in names:
        cycle = Cycle(batches)
        bf16 = name.endswith("-bf16")
        if name.startswith("torch"):
            ref = common.ReferenceVAE.from_vae(proto, bound=not args.no_bound,
                                               autocast=torch.bfloat16 if bf16 else None)
            fused = {} if name == "torch" else {"fused": True}
            opt = torch.optim.Adam(ref.parameters(), lr=args.lr, **fused)
            steps[name] = (lambda ref=ref, opt=opt, cycle=cycle:
                           common.reference_step(ref, opt, cycle(), analytic=analytic))
            continue
        vae = common.make_vae(enc, dec, args.latent_dim, device, args.seed, name=name.replace("-", "_"))
        vae.load_state_dict(proto.state_dict())
        if name.startswith("pyro_vae"):
            step = library_step(vae, OBJECTIVES.build(args.objective), "bf16" if bf16 else None, args.lr)
            steps[name] = lambda step=step, cycle=cycle: step(cycle())
        elif name == "pyro-svi":
            elbo = (TraceMeanField_ELBO if analytic else Trace_ELBO)(max_plate_nesting=1)
            svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": args.lr}), elbo)
            steps[name] = lambda svi=svi, cycle=cycle: svi.step(cycle())
        else:
            raise SystemExit(f"unknown side {name!r}")
    return steps, proto


def check_same_computation(args, proto, x):
    """Library loss/gradients == hand-written loss/gradients at the same seed (same ε)."""
    from pyro_vae.objectives import OBJECTIVES, step_loss
    from pyro_vae.trainer import step_settings, temporary_attributes

    ref = common.ReferenceVAE.from_vae(proto, bound=not args.no_bound)
    objective = OBJECTIVES.build(args.objective)
    for beta in (1.0, 0.5):
        proto.beta = beta
        proto.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        with temporary_attributes(proto, step_settings(proto, objective, None)):
            lib = step_loss(objective, proto.model, proto.guide, x).item()
        torch.manual_seed(123)
        ref_loss = ref.loss(x, beta, analytic=args.objective == "elbo-analytic")
        ref_loss.backward()
        common.check_close(f"loss (beta={beta})", lib, ref_loss.item())
        lib_params = [*proto.encoder.parameters(), *proto.decoder.parameters()]
        common.check_grads(f"gradients (beta={beta})", lib_params, [*ref.encoder.parameters(),
                                                                      *ref.decoder.parameters()])
        ref.zero_grad(set_to_none=True)
        proto.zero_grad(set_to_none=True)
    proto.beta = 1.0


def main(argv=None):
    args = parse_args(argv)
    device = common.setup(args)
    print(common.machine_info(device))
    print(f"objective {args.objective}, latent {args.latent_dim}, data {args.data}, "
          f"{args.repeats} interleaved repeats; ratios: median [min-max] over repeats\n")
    names = [n for n in args.sides.split(",") if n]
    if args.mixed_precision:
        names += ["torch+fused-bf16", "pyro_vae-bf16"]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    data = common.make_data(args, max(batch_sizes) * args.pool, device)
    results = {"machine": common.machine_info(device), "args": vars(args), "runs": []}
    for label, enc, dec in common.network_configs(args):
        for batch in batch_sizes:
            print(f"== {label}, batch {batch}")
            batches = list(data[: batch * args.pool].split(batch))
            steps, proto = build_sides(args, enc, dec, device, batches, names)
            check_same_computation(args, proto, batches[0])
            n = args.steps or common.calibrate(steps[names[0]], device, args.repeat_seconds / 4) * 4
            runners = {name: (lambda f=f, n=n: [f() for _ in range(n)]) for name, f in steps.items()}
            times = common.interleaved(runners, args.repeats, device)
            rows = [["side", "wall ms/step", "cpu ms/step", "wall / torch", "cpu / torch",
                     "wall / fused ref", "cpu / fused ref"]]
            run = {"network": label, "batch": batch, "steps_per_repeat": n, "sides": {}}
            for name in names:
                medians = {clock: common.median_ms(times[clock][name], n) for clock in common.CLOCKS}
                entry, row = common.side_summary(times, name, "ms_per_step", medians, digits=2)
                rows.append(row)
                run["sides"][name] = entry
            print(f"  {n} steps per repeat")
            print("  " + common.table(rows).replace("\n", "\n  ") + "\n")
            results["runs"].append(run)
            pyro.clear_param_store()
    common.write_json(args, results)


if __name__ == "__main__":
    main()
