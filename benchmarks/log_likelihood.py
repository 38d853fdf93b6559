"""Importance-sampled log p(x) at large K: pyro_vae.log_likelihood against hand-written PyTorch.

Sides (same untrained-or-not network, same test points, same K):

* ``torch``     a hand-written estimator of the same quantity: per batch of points, per
                chunk of samples, ``log p(x, z_k) - log q(z_k|x)`` in closed form (see
                ``ReferenceVAE.log_weights``) and a streaming float64 logsumexp; the same
                batch and chunk sizes as the library, so the same memory bound;
* ``pyro_vae``  ``pyro_vae.log_likelihood(vae.model, vae.guide, x, num_samples=K)`` with its
                default sizes (or ``--batch-size``/``--chunk-size``): Pyro traces per chunk, the
                float64 streaming reduction, ESS, standard errors and the Pareto k-hat fit;

Before timing, both are run from the same seed (same ε, the library's structure-probing
trace included) and must agree on every point's log p(x). Peak memory: on a GPU
``torch.cuda.max_memory_allocated`` per side; on the CPU the growth of the process's peak
resident set (VmHWM, reset through /proc/self/clear_refs) during one estimate. Example::

    python benchmarks/log_likelihood.py --num-samples 5000 --points 100
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(repeats=5, hidden="400", data="mnist")
    parser.add_argument("--num-samples", default="5000", help="K; comma-separated list allowed")
    parser.add_argument("--points", type=int, default=100, help="test points")
    parser.add_argument("--batch-size", type=int, default=None, help="points per call (library default)")
    parser.add_argument("--chunk-size", type=int, default=None, help="samples per call (library default)")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train the VAE this many steps first (the proposal's quality does "
                             "not change the cost; it changes k-hat warnings)")
    return parser.parse_args(argv)


@torch.no_grad()
def torch_log_px(ref, x, num_samples, batch_size, chunk_size):
    """Streaming float64 logsumexp over chunks of ``ReferenceVAE.log_weights``."""
    out = []
    for xb in x.split(batch_size):
        running_max = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=x.device)
        running_sum = torch.zeros(len(xb), dtype=torch.float64, device=x.device)
        for start in range(0, num_samples, chunk_size):
            lw = ref.log_weights(xb, min(chunk_size, num_samples - start)).double()
            new_max = torch.maximum(running_max, lw.max(0).values)
            running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(lw - new_max).sum(0)
            running_max = new_max
        out.append(running_max + running_sum.log() - math.log(num_samples))
    return torch.cat(out)


def peak_memory(fn, device):
    """Bytes of peak memory growth while ``fn`` runs on a GPU (None elsewhere)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_rss_in_child(argv, side):
    """Bytes by which the peak resident set of a fresh process grows during one estimate
    (``--child-memory SIDE``): freed-but-kept heap from earlier work in this process would
    hide an in-process measurement."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, __file__, *argv, "--child-memory", side],
                         capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)["peak_growth_bytes"]
    print(f"  (memory of {side} not measured: {out.stderr.strip().splitlines()[-1:]})")
    return None


def _status_kb(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def train_briefly(vae, x, steps, device):
    import pyro

    from pyro_vae.objectives import OBJECTIVES, step_loss
    from pyro_vae.trainer import make_adam

    objective, opt = OBJECTIVES.build("elbo-analytic"), make_adam(vae.parameters(), lr=1e-3)
    with pyro.validation_enabled(False):
        for i in range(steps):
            step_loss(objective, vae.model, vae.guide, x[(i * 256) % len(x):][:256])
            opt.step()
            opt.zero_grad(set_to_none=True)


def hidden_arg(spec):
    return ",".join(str(w) for w in spec.get("hidden", [])) if spec.get("name") == "mlp" else ""


def main(argv=None):
    from pyro_vae.marginal import ImportanceSamplingWarning, _sizes, log_likelihood

    args = parse_args(argv)
    device = common.setup(args)
    print(common.machine_info(device))
    x = common.make_data(args, args.points, device)
    results = {"machine": common.machine_info(device), "args": vars(args), "runs": []}
    for label, enc, dec in common.network_configs(args):
        vae = common.make_vae(enc, dec, args.latent_dim, device, args.seed)
        if args.train_steps:
            train_briefly(vae, common.make_data(args, 10000, device), args.train_steps, device)
        vae.eval()
        ref = common.ReferenceVAE.from_vae(vae, bound=not args.no_bound)
        for k in [int(v) for v in args.num_samples.split(",")]:
            batch, chunk = _sizes(x, k, args.chunk_size, args.batch_size)
            print(f"== {label}, K {k}, {len(x)} points, batch {batch} points x chunk {chunk} samples "
                  f"({math.ceil(len(x) / batch) * math.ceil(k / chunk)} model calls)")

            def lib(vae=vae, k=k, batch=batch, chunk=chunk):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ImportanceSamplingWarning)
                    return log_likelihood(vae.model, vae.guide, x, num_samples=k,
                                          batch_size=batch, chunk_size=chunk).log_px

            def hand(ref=ref, k=k, batch=batch, chunk=chunk):
                return torch_log_px(ref, x, k, batch, chunk)

            sides = {"torch": hand, "pyro_vae": lib}
            if args.child_memory:
                import json

                fn = sides[args.child_memory]
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")  # reset the peak (VmHWM) to the current resident set
                base = _status_kb("VmRSS")
                fn()
                print(json.dumps({"peak_growth_bytes": (_status_kb("VmHWM") - base) * 1024}))
                return
            torch.manual_seed(7)
            lib_px = lib()
            torch.manual_seed(7)
            torch.randn(min(batch, len(x)), args.latent_dim, device=device)  # the library's probing trace
            ref_px = hand()
            diff = (lib_px.cpu() - ref_px.cpu()).abs().max().item()
            if not diff < 1e-3:
                raise SystemExit(f"log p(x) differs between library and reference: max |diff| {diff}")
            print(f"  check: same log p(x) per point (max |diff| {diff:.1e} nats, mean log p(x) "
                  f"{lib_px.mean().item():.3f})")
            if device.type == "cuda":
                memory = {name: peak_memory(fn, device) for name, fn in sides.items()}
            else:
                if enc["name"] == "conv":
                    net = ["--hidden", "", "--conv", "yes"]
                else:
                    net = ["--hidden", hidden_arg(enc), "--conv", "no"]
                child_argv = [*(argv if argv is not None else sys.argv[1:]), "--num-samples", str(k),
                              *net, "--json", "/dev/null", "--data", "random"]  # same shapes, no loading
                memory = {name: peak_rss_in_child(child_argv, name) for name in sides}
            times = common.interleaved(sides, args.repeats, device, warmup=0)
            run = {"network": label, "num_samples": k, "points": len(x), "batch": batch, "chunk": chunk,
                   "peak_bytes": memory, "sides": {}}
            rows = [["side", "wall s", "cpu s", "wall / torch", "cpu / torch", "peak memory"]]
            for name, mem in memory.items():
                entry = {clock: {"s": common.median_ms(times[clock][name]) / 1e3,
                                 "vs torch": common.ratio_stats(times[clock], name, "torch")}
                         for clock in common.CLOCKS}
                run["sides"][name] = entry
                rows.append([name, f"{entry['wall']['s']:.3f}", f"{entry['cpu']['s']:.3f}",
                             common.fmt_ratio(entry["wall"]["vs torch"]),
                             common.fmt_ratio(entry["cpu"]["vs torch"]),
                             "n/a" if mem is None else f"{mem / 2**20:.0f} MiB"])
            print("  " + common.table(rows).replace("\n", "\n  ") + "\n")
            results["runs"].append(run)
    common.write_json(args, results)


if __name__ == "__main__":
    main()
