"""How much test log p(x) a learned prior adds to a trained one-layer VAE, encoder and decoder fixed.

    python benchmarks/prior_gap.py /work/runs/eq200-1l/vae-1l-an --components 10 100 \\
        --hierarchies residual:unit residual:bounded bottom-up:learned --epochs 10

The ELBO's latent term splits as E_x KL(q(z|x) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z)) (Hoffman
& Johnson 2016): with the encoder and decoder held fixed, a prior can only shrink the second
term, the mismatch between p(z) and the aggregate posterior q(z) = E_x q(z|x). This script
measures how much of it a learned prior recovers on test data, for the two kinds of learned
prior a user of the library can choose:

* ``mixture`` (``--components K``): p(z) = Σ_k π_k N(μ_k, diag σ_k²), the library's
  ``mixture`` prior, its means started at the encoder's means of K random training images;
* a hierarchy (``--hierarchies INFERENCE:VARIANCE``): the run's VAE grown into two layers,
  z1 the run's z and z2 of ``--top-dim`` units, with the library's latent networks (zero
  heads: it starts as the run's model; ``--random-heads`` for random ones; hidden widths
  ``--latent-hidden``), the given guide and ``conditional_variance``. Its
  prior p(z1) = ∫ p(z1|z2) p(z2) dz2 is reached only through a bound, so it also pays its own
  inference gap for z2.

Each candidate shares the run's trained encoder and decoder, frozen, and fits the rest
(mixture weights, means and scales, or the latent networks) to the training ELBO with Adam,
``--epochs`` epochs of ``--batch-size`` (learning rate ``--mixture-lr`` for the mixtures,
``--lr`` for the hierarchies), one fresh binarisation per batch (the run's data transform).
All are then scored like the run's own model: per test image, log p̂(x) by importance
sampling (K = ``--num-samples``, :func:`pyro_vae.log_likelihood`) and the ELBO, on the first
``--test-points`` test images, and the gains are paired differences with the run's model on
the same images. One torch thread.
"""

import argparse
import copy
import time
import warnings
from pathlib import Path

import pyro
import torch
from hierarchy_ais import paired  # this script's folder is on sys.path when run as a script
from pyro.infer import TraceMeanField_ELBO

from pyro_vae.errors import ConfigError
from pyro_vae.marginal import log_likelihood
from pyro_vae.model import CONDITIONAL_VARIANCES, INFERENCE
from pyro_vae.networks import eval_mode
from pyro_vae.runs import build_model, load_run
from pyro_vae.validation import check_choice


def grown(run, **model_options):
    """A VAE of the run's architecture with ``model_options`` changed, sharing the run's
    trained encoder and decoder, frozen (their copies; the run's model is not touched)."""
    config = copy.deepcopy(run.config)
    config["model"].update(model_options)
    vae = build_model(config, run.splits.data_shape, run.device)
    for part in ("encoder", "decoder"):
        getattr(vae, part).load_state_dict(getattr(run.vae, part).state_dict())
        getattr(vae, part).requires_grad_(False)
    return vae


def mixture_prior(run, components, generator):
    """The run's model with a mixture of ``components`` Gaussians as p(z), its means at the
    encoder's means of as many random training images, its scales 1, its weights equal."""
    vae = grown(run, prior={"name": "mixture", "num_components": components})
    train = run.splits.train
    index = torch.randperm(len(train), generator=generator, device=train.device)[:components]
    vae.prior.start_at(vae.encode(run.splits.fixed_transform(train[index], 0))[0])
    return vae


def fit(run, vae, epochs, batch_size, lr, generator):
    """Fit the parameters of ``vae`` that are not frozen to the training ELBO (closed-form KL
    where the sites have one); returns the seconds taken."""
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, eps=1e-4)
    elbo = TraceMeanField_ELBO()
    vae.register_params = False
    start = time.perf_counter()
    vae.train()
    for _ in range(epochs):
        for x in run.train_batches(batch_size, generator):
            loss = elbo.differentiable_loss(vae.model, vae.guide, x) / len(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    vae.eval()
    return time.perf_counter() - start


def score(vae, x, num_samples, seed):
    """Per-image log p̂(x) and ELBO on ``x`` (the estimate ``pyro-vae evaluate`` makes)."""
    pyro.set_rng_seed(seed)
    with eval_mode(vae):
        result = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples, batch_size=50)
    return result.log_px, result.elbo


def hierarchy_spec(text):
    """``"INFERENCE:VARIANCE"`` (the variance ``unit`` if left out) as a checked pair."""
    inference, _, variance = text.partition(":")
    try:
        return (check_choice(inference, "the guide of --hierarchies", INFERENCE),
                check_choice(variance or "unit", "the variance of --hierarchies", CONDITIONAL_VARIANCES))
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def candidates(run, args, generator):
    """(name, untrained model, learning rate) of every learned prior asked for."""
    for components in args.components:
        yield f"mixture of {components}", mixture_prior(run, components, generator), args.mixture_lr
    top = args.top_dim or run.vae.latent_dims[0]
    latent_network = {**run.config["model"]["latent_network"], "zero_init_head": not args.random_heads}
    if args.latent_hidden:
        latent_network["hidden"] = args.latent_hidden
    for inference, variance in args.hierarchies:
        yield (f"two layers, {inference}, {variance} variance",
               grown(run, latent_dim=[run.vae.latent_dims[0], top], inference=inference,
                     conditional_variance=variance, latent_network=latent_network), args.lr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory of a trained one-layer VAE")
    parser.add_argument("--components", type=int, nargs="*", default=[10, 100])
    parser.add_argument("--hierarchies", nargs="*", type=hierarchy_spec,
                        default=[("residual", "unit"), ("residual", "bounded")],
                        help="INFERENCE:VARIANCE of the two-layer models to grow")
    parser.add_argument("--top-dim", type=int, default=None, help="units of z2 (default: as many as z1)")
    parser.add_argument("--latent-hidden", type=int, nargs="+", default=None,
                        help="hidden widths of the hierarchies' latent networks (default: the library's)")
    parser.add_argument("--random-heads", action="store_true",
                        help="start the hierarchies' latent networks with random heads instead of zero ones")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate for the hierarchies")
    parser.add_argument("--mixture-lr", type=float, default=1e-2,
                        help="Adam's learning rate for the mixtures (few parameters, in the units of z)")
    parser.add_argument("--test-points", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # the bottom-up guide's known false alarm (docs/guide/hierarchies.md, elbo-analytic)
    warnings.filterwarnings("ignore", message="Failed to verify mean field restriction")
    run, _ = load_run(args.run, map_location="cpu")
    if len(run.vae.latent_dims) != 1:
        raise SystemExit(f"{args.run}: needs a one-layer VAE, got latent_dim {run.vae.latent_dim}.")
    run.vae.eval()
    x = run.test[: args.test_points]
    reference = score(run.vae, x, args.num_samples, args.seed)
    print(f"{args.run}: test log p̂(x) {reference[0].mean():.2f}, ELBO {reference[1].mean():.2f} "
          f"(first {len(x)} test images, K = {args.num_samples}); learned priors fitted for "
          f"{args.epochs} epochs with the encoder and decoder fixed:", flush=True)
    print("| prior | fit s | test log p̂(x) | gain | test ELBO | gain |\n|---|---:|---:|---:|---:|---:|")
    generator = torch.Generator().manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    for name, vae, lr in candidates(run, args, generator):
        seconds = fit(run, vae, args.epochs, args.batch_size, lr, generator)
        scores = score(vae, x, args.num_samples, args.seed)
        cells = [f"{value.mean():.2f} | {mean:+.2f} ± {stderr:.2f}"
                 for value, (mean, stderr) in ((s, paired(s - r)) for s, r in zip(scores, reference))]
        print(f"| {name} | {seconds:.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
