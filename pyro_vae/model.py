"""The VAE as a pair of Pyro programs: ``model`` p(z) p(x|z) and ``guide`` q(z|x).

β-VAE: the latent sample statements are wrapped in ``poutine.scale(scale=β)`` in the
model **and** the guide, so the ELBO's latent terms E_q[log p(z) − log q(z|x)] = −KL are
multiplied by β while E_q[log p(x|z)] is not:

    loss(β) = −E_q[log p(x|z)] + β · KL(q(z|x) ‖ p(z)).

``poutine.scale`` rejects 0, so β = 0 uses ``poutine.mask(mask=False)``, which drops the
latent terms but still draws z with the reparameterisation (the reconstruction term
keeps its gradient).
"""

import contextlib
import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine

from .errors import ConfigError
from .likelihoods import build_likelihood
from .networks import build_network
from .priors import build_prior

LOGVAR_BOUND = 30.0
"""|log σ²| of the guide is kept below this bound (via tanh), so exp() cannot overflow."""


def latent_scale(beta):
    """The handler that multiplies a latent site's log-densities by ``beta``."""
    if beta == 1:
        return contextlib.nullcontext()
    if beta == 0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


def check_beta(beta):
    """``beta`` as a float, rejecting negative, infinite or non-numeric values."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ConfigError(f"beta must be a finite number, got {beta!r}.")
    if beta < 0:
        raise ConfigError(f"beta must be >= 0, got {beta}.")
    return float(beta)


def _data_shape(data_shape):
    shape = (data_shape,) if isinstance(data_shape, int) else tuple(data_shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ConfigError(f"data_shape must be a positive int or tuple of them, got {data_shape!r}.")
    return shape


class VAE(nn.Module):
    """A variational autoencoder whose ``model`` and ``guide`` are Pyro functions.

    Args:
        data_shape: shape of one data point (int or tuple), e.g. ``784`` or ``(1, 28, 28)``.
        latent_dim: size of the latent code z.
        prior: p(z); a name from :data:`pyro_vae.priors.PRIORS`, a spec mapping, or a module.
        likelihood: p(x|z); a name from :data:`pyro_vae.likelihoods.LIKELIHOODS`, etc.
        encoder, decoder: networks (see :mod:`pyro_vae.networks` for the convention).
        beta: weight β ≥ 0 of the KL term; settable between steps (``vae.beta = 4``).
        name: prefix of the parameters in Pyro's param store (``pyro.module``).

    ``SVI(vae.model, vae.guide, optim, Trace_ELBO())`` trains it. As with every
    ``pyro.module``, call ``pyro.clear_param_store()`` before training a new instance
    under the same ``name`` in one process.
    """

    def __init__(
        self,
        data_shape=784,
        latent_dim=20,
        prior="standard-normal",
        likelihood="bernoulli",
        encoder="mlp",
        decoder="mlp",
        beta=1.0,
        name="vae",
    ):
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim!r}.")
        self.data_shape = _data_shape(data_shape)
        self.latent_dim = latent_dim
        self.name = name
        self.beta = beta
        self.prior = build_prior(prior, latent_dim)
        self.likelihood = build_likelihood(likelihood, self.data_shape)
        self.encoder = build_network(encoder, self.data_shape, (2, latent_dim))
        self.decoder = build_network(decoder, (latent_dim,), self.likelihood.param_shape)

    @property
    def beta(self):
        return self._beta

    @beta.setter
    def beta(self, value):
        self._beta = check_beta(value)

    def encode(self, x):
        """The guide's mean and log-variance, each of shape ``(*batch, latent_dim)``."""
        loc, logvar = self.encoder(x).unbind(-2)
        return loc, LOGVAR_BOUND * torch.tanh(logvar / LOGVAR_BOUND)

    def model(self, x):
        """p(z) p(x|z) with x observed; ``x`` has shape ``(batch, *data_shape)``."""
        pyro.module(self.name, self)
        with pyro.plate("data", x.shape[0], device=x.device):
            with latent_scale(self.beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x):
        """q(z|x) = N(μ(x), diag exp(log σ²(x))), reparameterised."""
        pyro.module(self.name, self)
        with pyro.plate("data", x.shape[0], device=x.device):
            loc, logvar = self.encode(x)
            with latent_scale(self.beta):
                pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * logvar)).to_event(1))

    @torch.no_grad()
    def reconstruct(self, x):
        """E[x | z = μ(x)]: the decoder's mean at the guide's mean."""
        return self.likelihood.mean(self.decoder(self.encode(x)[0]))

    @torch.no_grad()
    def sample(self, num_samples, mean=True):
        """``num_samples`` draws from the model: E[x|z] (``mean=True``) or x ~ p(x|z)."""
        z = self.prior().sample((num_samples,))
        params = self.decoder(z)
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()
