"""Time of the ``mixture`` prior's log-density and its gradient against torch's MixtureSameFamily.

The library's ``mixture`` (and ``vamp``) prior is a :class:`~pyro_vae.distributions.DiagonalNormalMixture`:
its log-density and the backward pass are a few matrix products (the forward in float64),
with each component's normaliser and precision computed once per call. The reference is
the textbook construction, ``MixtureSameFamily(Categorical(logits), Normal(loc,
scale).to_event(1))``, from the same parameters. One timed call is what a training step
asks of the prior: build the distribution from the parameters, ``log_prob`` of the sampled
z (points, or particles × points for IWAE) and the backward pass to the parameters and z.
The two must agree (checked first). Ratios are reference / library (above 1: the library is faster)::

    python benchmarks/mixture_prior.py --components 100 --latent-dim 50 --shapes 100 5x100
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

from pyro_vae.priors import Mixture  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--components", type=int, default=100)
    parser.add_argument("--shapes", nargs="+", default=["100", "5x100"],
                        help="batch shapes of z: points, or particles x points")
    parser.add_argument("--repeat-seconds", type=float, default=0.3)
    return parser.parse_args(argv)


def textbook(prior):
    """The reference distribution from the library prior's parameters."""
    components = dist.Normal(prior.locs, prior.log_scales.exp()).to_event(1)
    return dist.MixtureSameFamily(dist.Categorical(logits=prior.logits), components)


def timed_side(make_distribution, z, steps):
    def run():
        for _ in range(steps):
            make_distribution().log_prob(z).sum().backward()
    return run


def main(argv=None):
    args = parse_args(argv)
    device = common.setup(args)
    torch.manual_seed(args.seed)
    prior = Mixture(args.latent_dim, args.components).to(device)
    with torch.no_grad():  # a prior some way into training: spread means, unequal scales and weights
        prior.locs.normal_()
        prior.log_scales.uniform_(-1.5, 0.0)
        prior.logits.normal_()
    print(common.machine_info(device))
    print(f"mixture of {args.components} diagonal Gaussians in {args.latent_dim} dimensions; "
          "ms per call (log_prob + backward); ratio textbook / library, median [min-max] over repeats")
    rows = [["z shape", "library ms", "textbook ms", "ratio (wall)", "ratio (cpu)"]]
    for shape in args.shapes:
        z_shape = (*(int(n) for n in shape.split("x")), args.latent_dim)
        z = torch.randn(z_shape, device=device).mul_(1.5).requires_grad_()
        ours, theirs = prior().log_prob(z), textbook(prior).log_prob(z)
        common.check_close(f"log p(z), z {shape}", ours.sum().item(), theirs.sum().item())
        steps = common.calibrate(timed_side(prior, z, 1), device, args.repeat_seconds)
        sides = {"library": timed_side(prior, z, steps),
                 "textbook": timed_side(lambda: textbook(prior), z, steps)}
        times = common.interleaved(sides, args.repeats, device)
        rows.append([shape, f"{common.median_ms(times['wall']['library'], steps):.3f}",
                     f"{common.median_ms(times['wall']['textbook'], steps):.3f}",
                     *(common.fmt_ratio(common.ratio_stats(times[clock], "textbook", "library"))
                       for clock in common.CLOCKS)])
    print(common.table(rows))


if __name__ == "__main__":
    main()
