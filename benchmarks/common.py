"""Shared pieces of the benchmarks: the hand-written reference VAE, data, timing helpers.

The reference is what one writes in plain PyTorch for the same model. It *reuses deep
copies of the library's encoder and decoder modules* (so the networks, their parameters
and their forward code are identical on both sides: "same network") and writes the VAE
arithmetic by hand:

    loc, logvar = encoder(x).unbind(-2);  logvar = logvar.clamp(-30, 30)   (as pyro_vae)
    z = loc + eps * exp(logvar / 2),       eps ~ N(0, I) via torch.randn_like
    loss = BCE-with-logits(decoder(z), x).sum() + beta * KL(N(loc, exp(logvar)) || N(0, I))

(``--no-bound`` drops the clamp from the reference, i.e. a textbook VAE). ``eps`` is drawn
from the same global generator, in the same order, as Pyro's ``Normal.rsample``, so after
``torch.manual_seed(s)`` both sides see the same noise and must compute the same loss and
gradients up to float rounding: every script checks this before it times anything.

Timing: every side runs ``steps`` consecutive calls per repeat; the sides are interleaved
(ABC..., order reversed every other repeat) so that load from other processes on a shared
machine hits all of them alike. Two clocks are read around every repeat: wall time
(``time.perf_counter``, after ``torch.cuda.synchronize`` on a GPU) and the CPU time of the
process (``time.process_time``: with one torch thread this is the time the work itself
took, insensitive to other processes taking the core away; on a loaded machine it is the
more reliable of the two, on a GPU it is meaningless). A ratio is the median over repeats
of the paired ratio side/baseline, with its min and max.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from pyro_vae.model import LOGVAR_BOUND
except ImportError:  # pragma: no cover - the bound moved
    LOGVAR_BOUND = 30.0

CLOCKS = ("wall", "cpu")


# --------------------------------------------------------------------------------------
# command line


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads for both sides (0: leave torch's default)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved timing repeats per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="random", choices=["random", "mnist"],
                        help="random binary tensor of MNIST shape, or real MNIST (static binarisation)")
    parser.add_argument("--data-root", default="/work/shared/data", help="MNIST root (torchvision layout)")
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--hidden", default="400;400,400",
                        help="MLP hidden widths: ';'-separated configurations of ','-separated widths")
    parser.add_argument("--conv", choices=["auto", "yes", "no"], default="auto",
                        help="also the 'conv' encoder/decoder (auto: when pyro_vae.networks has it)")
    parser.add_argument("--no-bound", action="store_true",
                        help="the reference omits the clamp of the log-variance (textbook VAE)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser


def setup(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but CUDA is not available here")
    import pyro

    pyro.enable_validation(False)  # as in the trainer's hot loop
    return device


def network_configs(args) -> list[tuple[str, dict, dict]]:
    """(label, encoder spec, decoder spec) for every MLP width list and, if present, conv."""
    from pyro_vae.networks import NETWORKS

    configs = []
    for widths in filter(None, args.hidden.split(";")):
        hidden = [int(w) for w in widths.split(",")]
        spec = {"name": "mlp", "hidden": hidden}
        label = "mlp 784-" + "-".join(map(str, hidden)) + f"-{args.latent_dim}"
        configs.append((label, spec, spec))
    has_conv = "conv" in NETWORKS.names()
    if args.conv == "yes" and not has_conv:
        raise SystemExit("--conv yes: no 'conv' network is registered in pyro_vae.networks")
    if args.conv != "no" and has_conv:
        configs.append((f"conv (default channels)-{args.latent_dim}", {"name": "conv"}, {"name": "conv"}))
    elif args.conv == "auto":
        print("(no 'conv' network registered in pyro_vae.networks: skipping the conv configuration)")
    return configs


def machine_info(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = "load avg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    import pyro

    text = (f"pyro {pyro.__version__}, torch {torch.__version__}, {cpu}, {os.cpu_count()} cores "
            f"visible, torch threads {torch.get_num_threads()}, {load}, device {device}")
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    return text


def write_json(args, payload) -> None:
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
        print(f"wrote {args.json}")


# --------------------------------------------------------------------------------------
# data and models


def make_data(args, n: int, device: torch.device) -> torch.Tensor:
    """``n`` binary images of shape (1, 28, 28) on ``device``."""
    generator = torch.Generator().manual_seed(args.seed)
    if args.data == "random":
        x = torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=generator)
    else:
        from pyro_vae.data import load_dataset

        x = load_dataset({"name": "mnist", "root": args.data_root, "binarize": "static"}).train
        if n > len(x):
            x = x.repeat(math.ceil(n / len(x)), 1, 1, 1)
        x = x[torch.randperm(len(x), generator=generator)[:n]]
    return x.to(device)


def make_vae(encoder, decoder, latent_dim: int, device: torch.device, seed: int = 0, name: str = "vae"):
    """A Bernoulli VAE for (1, 28, 28) images; every side gets its own ``name`` in the param store."""
    from pyro_vae import VAE

    torch.manual_seed(seed)
    return VAE(data_shape=(1, 28, 28), latent_dim=latent_dim, encoder=encoder, decoder=decoder,
               name=name).to(device)


class ReferenceVAE(nn.Module):
    """A hand-written Bernoulli VAE with a standard-normal prior around copies of given networks.

    ``autocast`` (a dtype) runs the networks under ``torch.autocast`` and casts their outputs
    back to float32, as ``train.mixed_precision`` does in the library.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, bound: bool = True, autocast=None):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.decoder = copy.deepcopy(decoder)
        self.bound = bound
        self.autocast = autocast

    @classmethod
    def from_vae(cls, vae, bound: bool = True, autocast=None) -> ReferenceVAE:
        return cls(vae.encoder, vae.decoder, bound, autocast)

    def net(self, net, inputs):
        if self.autocast is None:
            return net(inputs)
        with torch.autocast(inputs.device.type, dtype=self.autocast):
            return net(inputs).float()

    def encode(self, x):
        loc, logvar = self.net(self.encoder, x).unbind(-2)
        if self.bound:
            logvar = logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)
        return loc, logvar

    def loss(self, x, beta: float = 1.0, analytic: bool = True):
        """-ELBO summed over the batch with one z per point; analytic or Monte Carlo KL."""
        loc, logvar = self.encode(x)
        eps = torch.randn_like(loc)
        z = loc + eps * torch.exp(0.5 * logvar)
        rec = F.binary_cross_entropy_with_logits(self.net(self.decoder, z), x, reduction="sum")
        if analytic:
            kl = 0.5 * (logvar.exp() + loc.pow(2) - 1.0 - logvar).sum()
        else:  # log q(z|x) - log p(z) at the sampled z (the constants cancel)
            kl = 0.5 * (z.pow(2) - eps.pow(2) - logvar).sum()
        return rec + beta * kl

    def log_weights(self, x, num: int):
        """log p(x, z_k) - log q(z_k | x), z_k ~ q(z | x), for ``num`` draws: shape (num, batch)."""
        loc, logvar = self.encode(x)
        eps = torch.randn((num, *loc.shape), dtype=loc.dtype, device=loc.device)
        z = loc + eps * torch.exp(0.5 * logvar)
        logits = self.decoder(z)
        log_px_z = -F.binary_cross_entropy_with_logits(
            logits, x.expand(num, *x.shape), reduction="none").flatten(2).sum(-1)
        # log N(z; 0, I) - log N(z; loc, exp(logvar)): the 2π terms cancel
        return log_px_z + 0.5 * (eps.pow(2) - z.pow(2) + logvar).sum(-1)


def reference_step(ref: ReferenceVAE, optimizer, x, beta: float = 1.0, analytic: bool = True):
    """One hand-written training step; returns the detached loss (no host synchronisation)."""
    loss = ref.loss(x, beta, analytic)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# --------------------------------------------------------------------------------------
# checks


def check_close(name: str, lib: float, ref: float, rel: float = 1e-5) -> None:
    """Fail loudly when the two sides do not compute the same number."""
    if not math.isclose(lib, ref, rel_tol=rel, abs_tol=1e-3):
        raise SystemExit(f"{name}: library {lib!r} != reference {ref!r} (rel. tol. {rel}); "
                         "the benchmark would compare different computations")
    print(f"  check {name}: library {lib:.8g} == reference {ref:.8g} "
          f"(rel. diff {abs(lib - ref) / max(abs(ref), 1e-12):.1e})")


def check_grads(name: str, lib_params, ref_params, rel: float = 1e-4) -> None:
    """Gradients of corresponding parameters agree to ``rel`` of their largest entry."""
    worst = 0.0
    for a, b in zip(lib_params, ref_params):
        scale = max(b.grad.abs().max().item(), 1e-12)
        worst = max(worst, (a.grad - b.grad).abs().max().item() / scale)
    if worst > rel:
        raise SystemExit(f"{name}: gradients differ (max rel. diff {worst:.1e} > {rel})")
    print(f"  check {name}: max rel. gradient diff {worst:.1e}")


# --------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(sides: dict[str, Callable[[], None]], repeats: int, device: torch.device,
                warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """``{clock: {side: [seconds per repeat]}}`` with the sides interleaved, order alternating."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    sync(device)
    times = {clock: {name: [] for name in names} for clock in CLOCKS}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            sides[name]()
            sync(device)
            times["wall"][name].append(time.perf_counter() - wall)
            times["cpu"][name].append(time.process_time() - cpu)
    return times


def ratio_stats(times: dict[str, list[float]], side: str, base: str) -> dict[str, float]:
    ratios = [a / b for a, b in zip(times[side], times[base])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def side_summary(times: dict, name: str, key: str, medians: dict[str, float], digits: int):
    """The JSON entry and table row of one timed side: its median per clock (``medians``,
    recorded under ``key``) and its ratios to the hand-written references: ``torch`` and the
    like-for-like one (``torch+fused``, or ``torch+fused-bf16`` for a ``-bf16`` side)."""
    entry = {clock: {key: medians[clock]} for clock in CLOCKS}
    row = [name, *(f"{medians[clock]:.{digits}f}" for clock in CLOCKS)]
    for base in ("torch", "torch+fused-bf16" if name.endswith("-bf16") else "torch+fused"):
        for clock in CLOCKS:
            if base in times[clock]:
                stats = ratio_stats(times[clock], name, base)
                entry[clock][f"vs {base}"] = stats
                row.append(fmt_ratio(stats))
            else:
                row.append("-")
    return entry, row


def fmt_ratio(stats: dict[str, float]) -> str:
    return f"{stats['median']:.3f} [{stats['min']:.2f}-{stats['max']:.2f}]"


def median_ms(seconds: list[float], per: int = 1) -> float:
    return statistics.median(seconds) / per * 1e3


def calibrate(fn: Callable[[], None], device: torch.device, target_s: float, minimum: int = 2) -> int:
    """How many calls of ``fn`` take about ``target_s`` seconds (after one warm-up call)."""
    fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return max(minimum, round(target_s / max(time.perf_counter() - start, 1e-6)))


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)
