"""AIS of log p(x): pyro_vae.ais against a hand-written PyTorch AIS of the same VAE.

Sides (same network, same points, same schedule and transitions):

* ``torch``     written by hand for the Bernoulli VAE: the guide N(loc, diag sd²) from one
                encoder call, z₀ = loc + sd·ε for C chains + P pilots, the sigmoidal schedule,
                per transition L leapfrog steps of size ε·sd (diagonal mass matrix), the
                gradient of log p(x, z) by one backward pass through the decoder and that of
                log q in closed form, Metropolis accept, ε adapted per point by the pilots;
* ``pyro_vae``  ``pyro_vae.ais.ais(vae.model, vae.guide, x, ...)``: Pyro traces of the model
                conditioned on z at every leapfrog step, the guide's distributions reused.

Both run first from the same seed and their log p̂(x) must agree within their standard
errors. Then the time per estimate (interleaved repeats, wall and CPU clocks), and the growth
of the peak resident set (VmHWM, reset via /proc/self/clear_refs) of the library's AIS for
``--steps`` and for 16x as many: flat in the number of steps. glibc's adaptive mmap
threshold makes single peaks noisy; fix it for the memory numbers. Example::

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/ais.py --points 100 --steps 50 --train-steps 300
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(repeats=3, hidden="400", data="mnist", conv="no")
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--steps", type=int, default=50, help="annealing steps T")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--pilots", type=int, default=2)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=300, help="Adam steps on the data first")
    return parser.parse_args(argv)


def hand_ais(ref, x, betas, chains, pilots, leapfrog, step_size=0.5, target=0.65, rate=0.05):
    """log p̂(x) (B,) by AIS from the guide; see the module docstring."""
    with torch.no_grad():
        loc, logvar = ref.encode(x)
        sd = torch.exp(0.5 * logvar)
    rows = chains + pilots

    def scores(z):
        z = z.detach().requires_grad_(True)
        logits = ref.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits),
                                                      reduction="none").flatten(2).sum(-1)
        log_joint = log_lik - 0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
        grad_joint = torch.autograd.grad(log_joint.sum(), z)[0]
        w = (z.detach() - loc) / sd
        log_q = (-0.5 * w**2 - sd.log()).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
        return log_joint.detach(), log_q, grad_joint, -w / sd

    z = loc + sd * torch.randn(rows, *loc.shape, dtype=loc.dtype, device=loc.device)
    lp, lq, gp, gq = scores(z)
    log_w = torch.zeros(chains, len(x), dtype=torch.float64, device=loc.device)
    eps = torch.full((len(x),), step_size, dtype=loc.dtype, device=loc.device)
    for t in range(1, len(betas)):
        log_w += float(betas[t] - betas[t - 1]) * (lp - lq).double()[:chains]
        if t == len(betas) - 1:
            break
        beta = float(betas[t])
        step = (eps[:, None] * sd)[None]
        p0 = torch.randn_like(z)
        h0 = -((1 - beta) * lq + beta * lp) + 0.5 * (p0**2).sum(-1)
        p = p0 + 0.5 * step * ((1 - beta) * gq + beta * gp)
        v = z
        for i in range(leapfrog):
            v = v + step * p
            nlp, nlq, ngp, ngq = scores(v)
            p = p + (0.5 if i == leapfrog - 1 else 1.0) * step * ((1 - beta) * ngq + beta * ngp)
        h1 = -((1 - beta) * nlq + beta * nlp) + 0.5 * (p**2).sum(-1)
        log_accept = torch.nan_to_num((h0 - h1).clamp(max=0.0), nan=-math.inf)
        accepted = torch.rand_like(log_accept).log() < log_accept
        z = torch.where(accepted[..., None], v, z)
        lp, lq = torch.where(accepted, nlp, lp), torch.where(accepted, nlq, lq)
        gp, gq = torch.where(accepted[..., None], ngp, gp), torch.where(accepted[..., None], ngq, gq)
        up = log_accept.exp()[chains:].mean(0) > target
        eps = eps * torch.where(up, 1.0 + rate, 1.0 - rate)
    log_px = torch.logsumexp(log_w, 0) - math.log(chains)
    return log_px


def peak_growth_mb(fn):
    """Growth of this process's peak resident set while ``fn`` runs, MB (Linux)."""
    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return math.nan

    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    base = status("VmHWM:")
    fn()
    return status("VmHWM:") - base


def main(argv=None):
    args = parse_args(argv)
    device = common.setup(args)
    from pyro_vae.ais import ais, annealing_schedule

    label, encoder, decoder = common.network_configs(args)[0]
    vae = common.make_vae(encoder, decoder, args.latent_dim, device)
    data = common.make_data(args, 2000 + args.points, device)
    if args.train_steps:
        ref = common.ReferenceVAE.from_vae(vae)
        optimiser = torch.optim.Adam(ref.parameters(), lr=1e-3)
        for step in range(args.train_steps):
            batch = data[(step * 100) % 2000:][:100]
            common.reference_step(ref, optimiser, batch)
        vae.encoder.load_state_dict(ref.encoder.state_dict())
        vae.decoder.load_state_dict(ref.decoder.state_dict())
    vae.eval()
    ref = common.ReferenceVAE.from_vae(vae).eval()
    x = data[2000:]
    betas = annealing_schedule("sigmoid", args.steps)
    options = dict(num_steps=args.steps, num_chains=args.chains, pilot_chains=args.pilots,
                   leapfrog_steps=args.leapfrog, batch_size=args.points)
    print(common.machine_info(device))
    print(f"{label}, {args.points} points, T = {args.steps}, C = {args.chains} + {args.pilots} pilots, "
          f"L = {args.leapfrog}")
    torch.manual_seed(args.seed)
    library = ais(vae.model, vae.guide, x, **options)
    torch.manual_seed(args.seed)
    hand = hand_ais(ref, x, betas, args.chains, args.pilots, args.leapfrog)
    difference = float((library.log_px - hand).mean())
    stderr = math.sqrt(2 * float((library.stderr**2).mean()) / len(x))
    print(f"mean log p(x): library {float(library.log_px.mean()):.3f}, hand-written "
          f"{float(hand.mean()):.3f} (difference {difference:.3f}, its standard error {stderr:.3f})")
    if abs(difference) > 4 * stderr + 0.05:
        raise SystemExit("the two AIS implementations disagree")
    sides = {"torch": lambda: hand_ais(ref, x, betas, args.chains, args.pilots, args.leapfrog),
             "pyro_vae": lambda: ais(vae.model, vae.guide, x, **options)}
    times = common.interleaved(sides, args.repeats, device, warmup=0)
    for clock in common.CLOCKS:
        stats = common.ratio_stats(times[clock], "pyro_vae", "torch")
        print(f"{clock:>4}: torch {common.median_ms(times[clock]['torch']) / 1e3:.2f} s, pyro_vae "
              f"{common.median_ms(times[clock]['pyro_vae']) / 1e3:.2f} s, ratio {common.fmt_ratio(stats)}")
    per_image = common.median_ms(times["wall"]["pyro_vae"]) / 1e3 / len(x)
    print(f"library: {per_image * 1e3:.0f} ms per image for T = {args.steps} "
          f"({per_image * 1000 / args.steps:.2f} s per image per 1000 steps)")
    if device.type == "cpu" and Path("/proc/self/clear_refs").exists():
        short = peak_growth_mb(lambda: ais(vae.model, vae.guide, x, **options))
        longer = {**options, "num_steps": 16 * args.steps}
        long = peak_growth_mb(lambda: ais(vae.model, vae.guide, x, **longer))
        print(f"peak memory growth: {short:.1f} MB for T = {args.steps}, {long:.1f} MB for "
              f"T = {16 * args.steps}")


if __name__ == "__main__":
    main()
