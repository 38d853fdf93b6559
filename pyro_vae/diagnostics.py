"""Per-layer diagnostics of a trained VAE: ELBO terms, KL per layer, active units.

From one guide trace replayed through the model (one draw of z per data point), with
unscaled densities (β excluded):

* reconstruction  E_q[log p(x|z_1)];
* KL of layer l   E_q[log q(z_l|·) − log p(z_l|·)] (a Monte Carlo estimate, valid for any prior);
* active units of layer l (:func:`mean_variances`): dimensions whose posterior mean varies
  across the data, Cov_x(E_q[z_l|x]) > 0.01 (Burda et al. 2015), a detector of collapsed
  layers; E_q[z_l|x] is the mean under q of z_l *marginally*, i.e. averaged over the draws
  of the sites q draws before it (see :func:`mean_variances` for the estimator).

The ELBO per point is reconstruction − Σ_l KL_l (:func:`elbo_terms`, :func:`latent_summary`).

Per latent dimension (the figures of :mod:`pyro_vae.plots` sort and draw these):
:func:`kl_per_dimension` (average KL(q ‖ p) of each dimension of each layer),
:func:`posterior_means` and :func:`dimension_scores` (the KL where the prior factorises,
else the variance of the posterior means).
"""

import torch
from torch.distributions import Normal, kl_divergence

from ._lean_elbo import univariate_base
from .networks import eval_mode
from .traces import latent_sites, log_densities, per_point, trace_model_and_guide

ACTIVE_UNIT_THRESHOLD = 0.01
ACTIVE_UNIT_DRAWS = 16
"""Draws of the guide per point that estimate E_q[z_l|x] for sites drawn after another."""


@torch.no_grad()
def elbo_terms(vae, x):
    """Per-point tensors: ``recon`` (N,), ``kl`` {site: (N,)} and ``means`` {site: (N, d)}.

    Works for any model/guide pair with latent sites drawn by the guide, per point as
    :mod:`pyro_vae.traces` defines it (the ``"data"`` plate, unscaled densities);
    ``means`` holds the guide sites whose distribution has a mean.
    """
    n = len(x)
    traces = trace_model_and_guide(vae.model, vae.guide, x)
    observed, latent = log_densities(*traces, n)
    recon = sum(observed.values(), torch.zeros(n, device=x.device))
    kl = {name: lq - lp for name, (lp, lq) in latent.items()}  # guide order (z1, z2, ...)
    means = {}
    for name, (_, q) in latent_sites(*traces).items():
        try:
            means[name] = per_point(q["fn"].mean, q, n)
        except (NotImplementedError, RuntimeError):
            pass
    return {"recon": recon, "kl": kl, "means": means}


@torch.no_grad()
def latent_summary(vae, x, batch_size=1000):
    """Means over ``x`` of the ELBO, reconstruction and per-layer KL (one draw of z per point),
    and active units per layer (:func:`mean_variances` above :data:`ACTIVE_UNIT_THRESHOLD`),
    with ``vae`` in eval mode."""
    with eval_mode(vae):
        parts = [elbo_terms(vae, xb) for xb in x.split(batch_size)]
    recon = torch.cat([p["recon"] for p in parts])
    kl = {site: torch.cat([p["kl"][site] for p in parts]) for site in parts[0]["kl"]}
    total_kl = sum(kl.values())
    return {
        "val_elbo": (recon - total_kl).mean().item(),
        "val_recon": recon.mean().item(),
        "val_kl": {site: value.mean().item() for site, value in kl.items()},
        "active_units": {site: int((variance > ACTIVE_UNIT_THRESHOLD).sum())
                         for site, variance in mean_variances(vae, x, batch_size=batch_size).items()},
    }


@torch.no_grad()
def mean_variances(vae, x, num_draws=ACTIVE_UNIT_DRAWS, batch_size=1000):
    """Cov_x(E_q[z_l|x]) per dimension of every latent site with a mean: ``{site: (d,) tensor}``.

    By the tower rule E_q[z_l|x] = E_q[ m_l(pa_l) ] with m_l(pa_l) the mean of the guide's
    distribution of z_l given the sites drawn before it (pa_l: z_{l−1} in a bottom-up guide,
    z_{l+1} in a top-down or residual one). The guide runs ``num_draws`` times per point (in eval mode, so
    batch normalisation uses its running statistics and does not update them):

    * a site whose m_l is the same in every draw (the first site drawn: q(z_1|x) bottom-up,
      q(z_L|x) top-down or residual, a one-layer VAE) has E_q[z_l|x] = m_l exactly: its variance over x;
    * for the others, the draws are split into halves A, B with averages m̄_A, m̄_B, and the
      covariance over x of m̄_A with m̄_B is returned. The variance of one average would add
      E_x Var_q[m_l]/(draws) (the noise of the draws, what a single draw at the sampled
      parents adds in full); the two halves are independent given x, so their covariance
      over x is an unbiased estimate of Var_x(E_q[z_l|x]).

    A model with one latent site (``vae.sites``) needs no repeated draws and gets two.
    """
    if num_draws < 2 or num_draws % 2:
        raise ValueError(f"num_draws must be even and at least 2, got {num_draws}.")
    if len(getattr(vae, "sites", ())) == 1:
        num_draws = 2
    with eval_mode(vae):
        parts = [_conditional_means(vae, xb, num_draws) for xb in x.split(max(1, batch_size // num_draws))]
    out = {}
    for site in parts[0]:
        draws = torch.cat([p[site] for p in parts], dim=1).double()  # (draws, N, d)
        if len(x) < 2:
            out[site] = torch.zeros(draws.shape[-1], dtype=draws.dtype)
        elif bool((draws == draws[:1]).all()):
            out[site] = draws[0].var(0)
        else:
            half_a, half_b = (h.mean(0) for h in draws.chunk(2))
            out[site] = ((half_a - half_a.mean(0)) * (half_b - half_b.mean(0))).sum(0) / (len(x) - 1)
    return {site: value.cpu() for site, value in out.items()}


def _conditional_means(vae, x, num_draws):
    """``{site: (num_draws, N, d)}``: the mean of q(z_l | sites drawn before it) in each draw."""
    xs = x.repeat((num_draws,) + (1,) * (x.dim() - 1))
    model_trace, guide_trace = trace_model_and_guide(vae.model, vae.guide, xs)
    means = {}
    for name, (_, q) in latent_sites(model_trace, guide_trace).items():
        try:
            mean = per_point(q["fn"].mean, q, len(xs))
        except (NotImplementedError, RuntimeError):
            continue
        means[name] = mean.reshape(num_draws, len(x), -1)
    return means


@torch.no_grad()
def posterior_means(vae, x, batch_size=1024):
    """Means of q for every layer along the path of means: ``{site: (N, d) tensor}``."""
    with eval_mode(vae):
        parts = [vae.guide_means(xb) for xb in x.split(batch_size)]
    return {site: torch.cat([p[layer] for p in parts]) for layer, site in enumerate(vae.sites)}


@torch.no_grad()
def kl_per_dimension(vae, x, num_particles=8, batch_size=512):
    """Average KL(q ‖ p) per latent dimension and layer, in nats per data point.

    Returns ``{site: (d,) numpy array or None}``. Each dimension's term is
    E_x E_q[log q(z_d | ·) − log p(z_d | ·)] (unscaled by β), so the entries of all layers
    add up to the KL part of the ELBO. For the top layer with Gaussian q and a Gaussian
    prior the KL is exact per draw; lower layers (whose prior depends on the layer above)
    use ``num_particles`` Monte Carlo draws per point. ``None`` marks a layer whose prior
    does not factorise over dimensions (mixture, VampPrior, flow): there is no
    per-dimension KL, see :func:`posterior_means` for a substitute.
    """
    top = vae.sites[-1]
    sums = {site: 0.0 for site in vae.sites}
    for xb in x.split(max(1, batch_size // num_particles)):
        xs = xb.repeat((num_particles,) + (1,) * (xb.dim() - 1))
        model, guide = trace_model_and_guide(vae.model, vae.guide, xs)
        for site in vae.sites:
            if sums[site] is None:
                continue
            q, p = univariate_base(guide.nodes[site]["fn"]), univariate_base(model.nodes[site]["fn"])
            if q is None or p is None:
                sums[site] = None
                continue
            if site == top and isinstance(q, Normal) and isinstance(p, Normal):
                kl = kl_divergence(q, p)
            else:
                value = guide.nodes[site]["value"]
                kl = q.log_prob(value) - p.log_prob(value)
            # summed over points and particles (and any other plate), one value per dimension
            sums[site] = sums[site] + kl.double().flatten(0, -2).sum(0).cpu()
    count = len(x) * num_particles
    return {site: None if s is None else (s / count).numpy() for site, s in sums.items()}


def dimension_scores(vae, x, num_particles=8):
    """Per-dimension activity of each layer: ``{site: (values, label)}``.

    The KL of :func:`kl_per_dimension` where it exists, else the variance over ``x`` of the
    posterior means (a dimension the decoder ignores has both close to 0).
    """
    kl = kl_per_dimension(vae, x, num_particles)
    means = None
    out = {}
    for site in vae.sites:
        if kl[site] is not None:
            out[site] = (kl[site], "KL(q ‖ p) [nats]")
        else:
            means = posterior_means(vae, x) if means is None else means
            out[site] = (means[site].detach().double().var(0).cpu().numpy(), "variance of posterior mean")
    return out
