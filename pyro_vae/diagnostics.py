"""Per-layer diagnostics of a trained VAE: ELBO terms, KL per layer, active units.

From one guide trace replayed through the model (one draw of z per data point), with
unscaled densities (β excluded):

* reconstruction  E_q[log p(x|z_1)];
* KL of layer l   E_q[log q(z_l|·) − log p(z_l|·)] (a Monte Carlo estimate, valid for any prior);
* active units of layer l: dimensions whose posterior mean varies across the data,
  Cov_x(E_q[z_l]) > 0.01 (Burda et al. 2015), a detector of collapsed layers.

The ELBO per point is reconstruction − Σ_l KL_l.
"""

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

ACTIVE_UNIT_THRESHOLD = 0.01


def _per_point(log_prob, num_points):
    """A site's log-density summed to one value per data point (the data plate is dim 0)."""
    return log_prob.reshape(num_points, -1).sum(-1) if log_prob.dim() else log_prob.expand(num_points)


@torch.no_grad()
def elbo_terms(vae, x):
    """Per-point tensors: ``recon`` (N,), ``kl`` {site: (N,)} and ``means`` {site: (N, d)}.

    Works for any model/guide pair whose latent sites are drawn by the guide inside the
    data plate; ``means`` holds the guide sites whose distribution has a mean.
    """
    with poutine.block():
        guide = poutine.trace(vae.guide).get_trace(x)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    n = len(x)
    kl, means, recon = {}, {}, torch.zeros(n, device=x.device)
    for _, site in _sample_sites(model):
        if site["is_observed"]:
            recon = recon + _per_point(site["fn"].log_prob(site["value"]), n)
    for name, q in _sample_sites(guide):  # latent sites in the guide's order (z1, z2, ...)
        if name in model.nodes and not q["is_observed"]:
            value, p = q["value"], model.nodes[name]["fn"]
            kl[name] = _per_point(q["fn"].log_prob(value) - p.log_prob(value), n)
            try:
                means[name] = q["fn"].mean.reshape(n, -1)
            except (NotImplementedError, RuntimeError):
                pass
    return {"recon": recon, "kl": kl, "means": means}


def _sample_sites(trace):
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)]


@torch.no_grad()
def latent_summary(vae, x, batch_size=1000):
    """Means over ``x`` of the ELBO, reconstruction and per-layer KL, and active units per layer."""
    parts = [elbo_terms(vae, xb) for xb in x.split(batch_size)]
    recon = torch.cat([p["recon"] for p in parts])
    kl = {site: torch.cat([p["kl"][site] for p in parts]) for site in parts[0]["kl"]}
    means = {site: torch.cat([p["means"][site] for p in parts]) for site in parts[0]["means"]}
    total_kl = sum(kl.values())
    return {
        "val_elbo": (recon - total_kl).mean().item(),
        "val_recon": recon.mean().item(),
        "val_kl": {site: value.mean().item() for site, value in kl.items()},
        "active_units": {
            site: int((m.var(0) > ACTIVE_UNIT_THRESHOLD).sum()) if len(m) > 1 else 0
            for site, m in means.items()
        },
    }
