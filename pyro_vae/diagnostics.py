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

ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def elbo_terms(vae, x):
    """Per-point tensors: ``recon`` (N,) and ``kl`` {site: (N,)}, and ``means`` {site: (N, d)}."""
    with poutine.block():
        guide = poutine.trace(vae.guide).get_trace(x)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    kl, means = {}, {}
    for site in vae.sites:
        value = guide.nodes[site]["value"]
        q, p = guide.nodes[site]["fn"], model.nodes[site]["fn"]
        kl[site] = q.log_prob(value) - p.log_prob(value)
        means[site] = q.mean
    observed = model.nodes["x"]
    return {"recon": observed["fn"].log_prob(observed["value"]), "kl": kl, "means": means}


@torch.no_grad()
def latent_summary(vae, x, batch_size=1000):
    """Means over ``x`` of the ELBO, reconstruction and per-layer KL, and active units per layer."""
    parts = [elbo_terms(vae, xb) for xb in x.split(batch_size)]
    recon = torch.cat([p["recon"] for p in parts])
    kl = {site: torch.cat([p["kl"][site] for p in parts]) for site in vae.sites}
    means = {site: torch.cat([p["means"][site] for p in parts]) for site in vae.sites}
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
