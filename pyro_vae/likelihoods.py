"""Observation models p(x|z): decoder output -> Pyro distribution, chosen by name.

A likelihood is an ``nn.Module`` with

* ``param_shape``: the decoder's output shape for one data point;
* ``forward(params)``: a distribution whose event shape is ``data_shape``, so that
  ``log_prob`` sums over pixels (the reconstruction term is a *sum*, never a mean);
* ``mean(params)``: E[x|z], for reconstructions and samples in figures;
* ``validate(x)``: raises :class:`~pyro_vae.errors.DataError` when ``x`` is outside
  the support, with the reason in words.
"""

import math

import pyro.distributions as dist
import torch
import torch.nn as nn

from .errors import ConfigError, DataError
from .registry import Registry

LIKELIHOODS = Registry("likelihood")


class Likelihood(nn.Module):
    """Base class: holds ``data_shape`` and checks that data are finite and shaped right."""

    def __init__(self, data_shape):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.param_shape = self.data_shape

    def validate(self, x):
        if tuple(x.shape[1:]) != self.data_shape:
            raise DataError(
                f"Data points have shape {tuple(x.shape[1:])} but the model expects "
                f"{self.data_shape} (data must be shaped (batch, *data_shape))."
            )
        if not torch.isfinite(x).all():
            raise DataError("Data contain NaN or infinite values; clean or impute them first.")

    def _event(self, base):
        return base.to_event(len(self.data_shape))


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    """x ~ Bernoulli(sigmoid(logits)) per pixel; data must be binary (0 or 1)."""

    def forward(self, params):
        return self._event(dist.Bernoulli(logits=params))

    def mean(self, params):
        return torch.sigmoid(params)

    def validate(self, x):
        super().validate(x)
        if not ((x == 0) | (x == 1)).all():
            raise DataError(
                "The Bernoulli likelihood needs binary data (0 or 1), but the data have other "
                "values (grey levels?). Binarise them (data option binarize: dynamic, static "
                "or threshold), or choose a likelihood for continuous data such as 'gaussian'."
            )


@LIKELIHOODS.register("gaussian")
class Gaussian(Likelihood):
    """x ~ N(decoder(z), σ²) per pixel with a fixed σ (``scale``) or one learned σ.

    ``scale="learned"`` learns log σ, initialised at log 1 and kept in [1e-3, 1e3].
    """

    def __init__(self, data_shape, scale=1.0):
        super().__init__(data_shape)
        if scale == "learned":
            self.log_scale = nn.Parameter(torch.zeros(()))
        elif isinstance(scale, (int, float)) and scale > 0:
            self.register_buffer("log_scale", torch.tensor(math.log(scale)))
        else:
            raise ConfigError(f"Gaussian scale must be a positive number or 'learned', got {scale!r}.")

    def forward(self, params):
        scale = self.log_scale.clamp(math.log(1e-3), math.log(1e3)).exp()
        return self._event(dist.Normal(params, scale))

    def mean(self, params):
        return params


def build_likelihood(spec, data_shape):
    """A likelihood module from a name, a spec mapping, or a module as is."""
    if isinstance(spec, nn.Module):
        return spec
    return LIKELIHOODS.build(spec, data_shape=tuple(data_shape))
