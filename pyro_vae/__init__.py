"""pyro-vae: variational autoencoders as Pyro programs, with honest marginal likelihoods.

>>> import pyro_vae
>>> vae = pyro_vae.VAE(data_shape=784, latent_dim=20)            # Bernoulli VAE, MLP nets
>>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
...                      pyro.infer.Trace_ELBO())                 # doctest: +SKIP
>>> result = pyro_vae.log_likelihood(vae.model, vae.guide, x, num_samples=5000)  # doctest: +SKIP

The names below are imported on first use (``import pyro_vae`` itself loads neither torch
nor matplotlib), so the command line starts fast and importing the package never changes
a user's matplotlib backend.
"""

import importlib

from .errors import ConfigError as ConfigError
from .errors import DataError as DataError
from .errors import PyroVAEError as PyroVAEError

__version__ = "0.1.0"

_LAZY = {
    "BETA_SCHEDULES": "schedules",
    "DATASETS": "data",
    "ESTIMATORS": "estimators",
    "LIKELIHOODS": "likelihoods",
    "MarginalLikelihood": "marginal",
    "NETWORKS": "networks",
    "OBJECTIVES": "objectives",
    "PRIORS": "priors",
    "VAE": "model",
    "encode": "encoding",
    "encode_run": "encoding",
    "evaluate": "evaluation",
    "interpolate": "interpolation",
    "load_dataset": "data",
    "load_model": "runs",
    "load_run": "runs",
    "log_likelihood": "marginal",
    "naive_log_likelihood": "marginal",
    "posterior_predictive": "predictive",
    "train": "training",
}
"""Public name -> the submodule that defines it."""

__all__ = sorted([*_LAZY, "ConfigError", "DataError", "PyroVAEError"])


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})
