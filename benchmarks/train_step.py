"""Training-step time of pyro_vae against a hand-written PyTorch VAE, side by side.

Every side trains its own copy of the same network (same initial parameters) on the same
batches (a pool of distinct batches cycled in the same order), one step at a time:

* ``torch``            hand-written VAE (see common.py), ``torch.optim.Adam`` (default
                       implementation): the baseline of the issue's target;
* ``torch+fused``      the same with ``Adam(fused=True)``, the optimiser the trainer uses:
                       the ratio against it is pure framework overhead;
* ``pyro_vae``         the library's step as ``Trainer`` runs it: ``step_loss`` with the
                       registry's objective, ``make_adam``, Pyro validation off;
* ``pyro_vae-before``  the step before this work: Pyro's own ``TraceMeanField_ELBO`` /
                       ``Trace_ELBO`` ``.loss_and_grads`` (a float per step) + default Adam;
* ``pyro-svi``         plain ``pyro.infer.SVI(..., pyro.optim.Adam)`` with Pyro's ELBO;
* with ``--proposals``, ``pyro_vae`` plus changes proposed outside this benchmark's reach:
  ``pyro_vae-no-module``   ``pyro.module`` a no-op, i.e. a VAE that does not re-register
                           its parameters on every call of ``model``/``guide`` (model.py);
  ``pyro_vae-fused-bern``  the Bernoulli likelihood as ``common.FusedBernoulli`` (negation
                           after the event sum; bitwise the same values; likelihoods.py);
  ``pyro_vae-both``        both.

Before timing, the library's and the reference's loss and gradients are compared at the same
seed (same ε). Example::

    python benchmarks/train_step.py --batch-sizes 128,256,1024 --threads 1
    python benchmarks/train_step.py --device cuda --threads 0
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
    parser.add_argument("--sides", default="torch,torch+fused,pyro_vae,pyro_vae-before,pyro-svi",
                        help="comma-separated sides to time (see the module docstring)")
    parser.add_argument("--proposals", action="store_true", help="also time pyro_vae-no-module")
    return parser.parse_args(argv)


class Cycle:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __call__(self):
        x = self.batches[self.i % len(self.batches)]
        self.i += 1
        return x


def build_sides(args, enc, dec, device, batches, names):
    """name -> callable running one training step (each side with its own model copy)."""
    from pyro_vae.objectives import OBJECTIVES, step_loss
    from pyro_vae.train import make_adam

    analytic = args.objective == "elbo-analytic"
    pyro_cls = TraceMeanField_ELBO if analytic else Trace_ELBO
    proto = common.make_vae(enc, dec, args.latent_dim, device, args.seed, name="proto")
    steps, models = {}, {}
    for name in names:
        cycle = Cycle(batches)
        if name.startswith("torch"):
            ref = common.ReferenceVAE.from_vae(proto, bound=not args.no_bound)
            kw = {"fused": True} if name == "torch+fused" else {}
            opt = torch.optim.Adam(ref.parameters(), lr=args.lr, **kw)
            steps[name] = (lambda ref=ref, opt=opt, cycle=cycle:
                           common.reference_step(ref, opt, cycle(), analytic=analytic))
            models[name] = ref
            continue
        vae = common.make_vae(enc, dec, args.latent_dim, device, args.seed, name=name.replace("-", "_"))
        vae.load_state_dict(proto.state_dict())
        models[name] = vae
        if name in ("pyro_vae", "pyro_vae-no-module", "pyro_vae-fused-bern", "pyro_vae-both"):
            objective = OBJECTIVES.build(args.objective)
            opt = make_adam(vae.parameters(), lr=args.lr)
            no_module = name in ("pyro_vae-no-module", "pyro_vae-both")
            fused = name in ("pyro_vae-fused-bern", "pyro_vae-both")

            def step(vae=vae, opt=opt, objective=objective, cycle=cycle, no_module=no_module, fused=fused):
                with (common.without_pyro_module() if no_module else _null(),
                      common.fused_bernoulli() if fused else _null()):
                    loss = step_loss(objective, vae.model, vae.guide, cycle())
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss
        elif name == "pyro_vae-before":
            objective = pyro_cls(max_plate_nesting=1)
            opt = torch.optim.Adam(vae.parameters(), lr=args.lr)

            def step(vae=vae, opt=opt, objective=objective, cycle=cycle):
                loss = objective.loss_and_grads(vae.model, vae.guide, cycle())
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss
        elif name == "pyro-svi":
            svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": args.lr}), pyro_cls(max_plate_nesting=1))

            def step(svi=svi, cycle=cycle):
                return svi.step(cycle())
        else:
            raise SystemExit(f"unknown side {name!r}")
        steps[name] = step
    return steps, models, proto


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def check_same_computation(args, proto, x, device):
    """Library loss/gradients == hand-written loss/gradients at the same seed (same ε)."""
    from pyro_vae.objectives import OBJECTIVES, step_loss

    ref = common.ReferenceVAE.from_vae(proto, bound=not args.no_bound)
    objective = OBJECTIVES.build(args.objective)
    for beta in (1.0, 0.5):
        proto.beta = beta
        proto.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        lib = step_loss(objective, proto.model, proto.guide, x).item()
        torch.manual_seed(123)
        ref_loss = ref.loss(x, beta, analytic=args.objective == "elbo-analytic")
        ref_loss.backward()
        common.check_close(f"loss (beta={beta})", lib, ref_loss.item())
        lib_params = [*proto.encoder.parameters(), *proto.decoder.parameters()]
        common.check_grads(f"gradients (beta={beta})", lib_params, [*ref.encoder.parameters(),
                                                                      *ref.decoder.parameters()])
        ref.zero_grad(set_to_none=True)
        if args.proposals:
            with common.without_pyro_module(), common.fused_bernoulli():
                torch.manual_seed(123)
                proposal = step_loss(objective, proto.model, proto.guide, x).item()
            if proposal != lib:
                raise SystemExit(f"proposals change the loss: {proposal!r} != {lib!r}")
            print(f"  check proposals (beta={beta}): same loss bitwise")
        proto.zero_grad(set_to_none=True)
    proto.beta = 1.0
    proto.zero_grad(set_to_none=True)


def main(argv=None):
    args = parse_args(argv)
    device = common.setup(args)
    print(common.machine_info(device))
    print(f"objective {args.objective}, latent {args.latent_dim}, data {args.data}, "
          f"{args.repeats} interleaved repeats; ratios: median [min-max] over repeats\n")
    names = [n for n in args.sides.split(",") if n]
    if args.proposals:
        names += ["pyro_vae-no-module", "pyro_vae-fused-bern", "pyro_vae-both"]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    data = common.make_data(args, max(batch_sizes) * args.pool, device)
    results = {"machine": common.machine_info(device), "args": vars(args), "runs": []}
    for label, enc, dec in common.network_configs(args):
        for batch in batch_sizes:
            print(f"== {label}, batch {batch}")
            batches = list(data[: batch * args.pool].split(batch))
            steps, models, proto = build_sides(args, enc, dec, device, batches, names)
            check_same_computation(args, proto, batches[0], device)
            n = args.steps or common.calibrate(steps[names[0]], device, args.repeat_seconds / 4) * 4
            runners = {name: (lambda f=f, n=n: [f() for _ in range(n)]) for name, f in steps.items()}
            times = common.interleaved(runners, args.repeats, device)
            rows = [["side", "wall ms/step", "cpu ms/step", "wall / torch", "cpu / torch",
                     "wall / torch+fused", "cpu / torch+fused"]]
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
