"""pyro-vae: variational autoencoders as Pyro programs, with honest marginal likelihoods.

>>> import pyro_vae
>>> vae = pyro_vae.VAE(data_shape=784, latent_dim=20)            # Bernoulli VAE, MLP nets
>>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
...                      pyro.infer.Trace_ELBO())                 # doctest: +SKIP
>>> result = pyro_vae.log_likelihood(vae.model, vae.guide, x, num_samples=5000)  # doctest: +SKIP
"""

from .data import DATASETS, load_dataset
from .errors import ConfigError, DataError, PyroVAEError
from .evaluate import evaluate
from .likelihoods import LIKELIHOODS
from .marginal import MarginalLikelihood, log_likelihood, naive_log_likelihood
from .model import VAE
from .networks import NETWORKS
from .objectives import OBJECTIVES
from .priors import PRIORS
from .schedules import BETA_SCHEDULES
from .train import load_run, train

__version__ = "0.1.0"

__all__ = [
    "BETA_SCHEDULES",
    "ConfigError",
    "DATASETS",
    "DataError",
    "LIKELIHOODS",
    "MarginalLikelihood",
    "NETWORKS",
    "OBJECTIVES",
    "PRIORS",
    "PyroVAEError",
    "VAE",
    "evaluate",
    "load_dataset",
    "load_run",
    "log_likelihood",
    "naive_log_likelihood",
    "train",
]
