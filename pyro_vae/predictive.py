"""Posterior and prior predictive draws of a VAE with Pyro's own :class:`pyro.infer.Predictive`.

``Predictive(vae.model, guide=vae.guide, num_samples=S)(x)`` replays the model on S draws
of z ~ q(z|x) but returns the *observed* x, since ``"x"`` is conditioned on the data. The
posterior predictive replicates x instead,

    x̃ ~ p(x̃ | x) ≈ ∫ p(x̃ | z_1) q(z | x) dz,

which :func:`posterior_predictive` draws by un-conditioning the model's ``"x"`` site
(``poutine.uncondition``) so that Predictive samples it from p(x | z_1) given the guide's
z. Every latent layer of a hierarchy is drawn from the guide, so the same call works for
``latent_dim=[d_1, ..., d_L]``. The prior predictive needs no data:
``vae.model(None, batch_size=N)`` draws z from the prior and x from p(x|z).
"""

import pyro
from pyro import poutine

from .validation import check_int


def posterior_predictive(vae, x, num_samples=100, return_sites=None):
    """``num_samples`` draws per point of ``x`` from the guide's z and the model's x given z.

    Returns Pyro's :class:`~pyro.infer.Predictive` output: ``{site: (num_samples, N, ...)}``
    with ``"x"`` the replicated data ``(num_samples, N, *data_shape)`` and each latent site
    (``"z"`` or ``"z1"`` … ``"zL"``). ``return_sites`` (default: ``"x"`` and the latent sites)
    as in ``Predictive``.
    """
    num_samples = check_int(num_samples, "num_samples")
    sites = tuple(return_sites) if return_sites is not None else ("x", *vae.sites)
    predictive = pyro.infer.Predictive(poutine.uncondition(vae.model), guide=vae.guide,
                                       num_samples=num_samples, return_sites=sites)
    return predictive(x)


def prior_predictive(vae, batch_size, num_samples=1):
    """``num_samples`` × ``batch_size`` draws of (z, x) from the model alone:
    ``Predictive(vae.model, num_samples=S)(None, batch_size=N)``; ``{site: (S, N, ...)}``."""
    num_samples = check_int(num_samples, "num_samples")
    predictive = pyro.infer.Predictive(vae.model, num_samples=num_samples, return_sites=("x", *vae.sites))
    return predictive(None, batch_size=batch_size)
