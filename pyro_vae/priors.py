"""Priors p(z) over one latent layer, chosen by name.

A prior is an ``nn.Module`` whose ``forward()`` returns a Pyro distribution with
``batch_shape == ()`` and ``event_shape == (latent_dim,)``; the model's data plate
broadcasts it over the batch. Constants are buffers, so ``.to(device)`` moves them;
learned quantities are parameters, trained with the VAE (``pyro.module``).

Registered priors (options in brackets):

* ``standard-normal``: N(0, I);
* ``diagonal-normal``: N(μ, diag σ²) with learned μ, log σ;
* ``laplace`` [loc, scale]: Π_i Laplace(z_i; loc, scale), fixed;
* ``student-t`` [df, loc, scale]: Π_i t_df(z_i; loc, scale), fixed;
* ``mixture`` [num_components, start_epoch]: Σ_k π_k N(z; μ_k, diag σ_k²), all learned;
  N(0, I) until ``start_epoch`` if given, then started at the encoder's means of training points;
* ``vamp`` [num_pseudo]: VampPrior (Tomczak & Welling 2018),
  p(z) = (1/K) Σ_k q(z | u_k) with learned pseudo-inputs u_k and the VAE's own encoder;
* ``flow`` [num_flows, transform]: p(z) = N(f(z); 0, I) ``|det ∂f/∂z|`` with f a stack of
  learned invertible maps (masked autoregressive or spline coupling).

A prior that needs the VAE defines ``attach(vae)``, which :class:`~pyro_vae.VAE` calls
once its networks exist.

``elbo-analytic`` (``TraceMeanField_ELBO``) uses the closed-form KL(q ‖ p) only where
``kl_divergence(Normal(...).to_event(1), prior())`` is registered in torch/Pyro (here:
``standard-normal``, ``diagonal-normal``, ``laplace``). Otherwise it catches the
``NotImplementedError`` and, without a warning, uses the Monte Carlo term
log p(z) − log q(z|x) at the sampled z, as ``Trace_ELBO`` does. :func:`analytic_kl_available`
tells which case applies.
"""

import math

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn as nn
from torch.distributions import kl_divergence

from .distributions import DiagonalNormalMixture, _UnitNormal
from .errors import ConfigError, PyroVAEError
from .registry import Registry
from .validation import check_int, check_number

PRIORS = Registry("prior")


class FixedPrior(nn.Module):
    """Base of the fixed factorised priors p(z) = Π_i family(z_i; loc, scale)."""

    family = dist.Normal

    def __init__(self, latent_dim, loc=0.0, scale=1.0):
        super().__init__()
        self.register_buffer("loc", torch.full((latent_dim,), check_number(loc, "Prior loc")))
        scale = check_number(scale, "Prior scale", greater_than=0)
        self.register_buffer("scale", torch.full((latent_dim,), scale))

    def forward(self):
        return self.family(self.loc, self.scale).to_event(1)


@PRIORS.register("standard-normal")
class StandardNormal(FixedPrior):
    """p(z) = N(0, I). Allows the analytic KL of ``elbo-analytic``."""

    analytic_kl = True

    def __init__(self, latent_dim):
        super().__init__(latent_dim)

    def forward(self):
        return _UnitNormal(self.loc.shape, self.loc.device, self.loc.dtype).to_event(1)


@PRIORS.register("laplace")
class Laplace(FixedPrior):
    """p(z) = Π_i exp(−|z_i − loc| / scale) / (2 scale); KL(Normal ‖ Laplace) is analytic."""

    analytic_kl = True
    family = dist.Laplace


@PRIORS.register("student-t")
class StudentT(FixedPrior):
    """p(z) = Π_i t_df((z_i − loc) / scale) / scale, heavy-tailed; KL by Monte Carlo."""

    analytic_kl = False

    def __init__(self, latent_dim, df=3.0, loc=0.0, scale=1.0):
        super().__init__(latent_dim, loc, scale)
        self.register_buffer("df", torch.tensor(check_number(df, "Student-t df", greater_than=0)))

    def family(self, loc, scale):
        return dist.StudentT(self.df, loc, scale)


@PRIORS.register("diagonal-normal")
class DiagonalNormal(nn.Module):
    """p(z) = N(μ, diag σ²) with learned μ and log σ (initialised at N(0, I))."""

    analytic_kl = True

    def __init__(self, latent_dim):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


@PRIORS.register("mixture")
class Mixture(nn.Module):
    """p(z) = Σ_k softmax(w)_k N(z; μ_k, diag σ_k²), every w, μ_k, log σ_k learned.

    With ``start_epoch`` 0 (the default) the mixture starts close to N(0, I): μ_k ~ N(0, s² I)
    (distinct, so the components can separate) and σ_k² = 1 − s², so that its covariance is
    about I, with s = ``INIT_SPREAD``; the weights start equal. (Means drawn from N(0, I)
    with unit scales, the former start, put p(z) 10.9 nats of KL(N(0, I) ‖ p) away from
    N(0, I) in 50 dimensions, against 0.3 now; a one-layer VAE on MNIST trained with it from
    the start ended 12 nats lower, ``docs/results-hierarchy.md``.)

    With ``start_epoch`` E > 0 the prior is N(0, I) (with its closed-form KL) for the first E
    epochs; after epoch E the trainer calls :meth:`start_at` with the encoder's means of
    ``num_components`` random training points, and from then on p(z) is the mixture, trained
    with the rest of the model. Whether it has started is saved with the parameters
    (``get_extra_state``), so checkpoints, resume and evaluation see the same prior.
    """

    analytic_kl = False
    INIT_SPREAD = 0.3

    def __init__(self, latent_dim, num_components=10, start_epoch=0):
        super().__init__()
        k = check_int(num_components, "num_components")
        self.start_epoch = check_int(start_epoch, "start_epoch", minimum=0)
        self.started = self.start_epoch == 0
        # a mixture that starts at the data draws nothing now (its start is overwritten), so
        # the run is the one with N(0, I) until then, random numbers included
        spread = self.INIT_SPREAD if self.started else 0.0
        locs = torch.randn(k, latent_dim) if self.started else torch.zeros(k, latent_dim)
        self.logits = nn.Parameter(torch.zeros(k))
        self.locs = nn.Parameter(spread * locs)
        self.log_scales = nn.Parameter(torch.full((k, latent_dim), 0.5 * math.log1p(-spread**2)))

    @property
    def num_components(self):
        return self.logits.shape[0]

    @torch.no_grad()
    def start_at(self, locs):
        """Become the mixture with means ``locs`` (K, latent_dim), unit scales, equal weights."""
        self.locs.copy_(locs)
        self.log_scales.zero_()
        self.logits.zero_()
        self.started = True

    def get_extra_state(self):
        return torch.tensor(self.started)  # a tensor, as checkpoints hold only tensors

    def set_extra_state(self, state):
        self.started = bool(state)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state dicts saved before ``start_epoch`` existed hold a mixture trained from the start
        state_dict.setdefault(prefix + "_extra_state", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self):
        if not self.started:
            return _UnitNormal(self.locs.shape[-1:], self.locs.device, self.locs.dtype).to_event(1)
        return DiagonalNormalMixture(self.logits, self.locs, 2 * self.log_scales)


@PRIORS.register("vamp")
class VampPrior(nn.Module):
    """VampPrior: p(z) = (1/K) Σ_k q(z | u_k), the guide at K learned pseudo-inputs u_k.

    ``attach(vae)`` (called by :class:`~pyro_vae.VAE`) takes the data shape and the
    encoder from the VAE; the pseudo-inputs, of the data shape, start uniform in [0, 1]
    (the range of the library's image data). The VAE is kept as a bound method, not a
    submodule, so the state dict has no cycle.
    """

    analytic_kl = False

    def __init__(self, latent_dim, num_pseudo=50):
        super().__init__()
        self.latent_dim = latent_dim
        self.num_pseudo = check_int(num_pseudo, "num_pseudo")
        self.register_parameter("pseudo_inputs", None)
        self._encode = None

    def attach(self, vae):
        """Use ``vae.encode`` as q(z | u) and create pseudo-inputs of ``vae.data_shape``."""
        if vae.latent_dims[-1] != self.latent_dim:
            raise ConfigError(
                f"The VampPrior has latent_dim {self.latent_dim} but the VAE's (top) latent layer "
                f"has {vae.latent_dims[-1]}."
            )
        shape = (self.num_pseudo, *vae.data_shape)
        if self.pseudo_inputs is None or self.pseudo_inputs.shape != shape:
            self.pseudo_inputs = nn.Parameter(torch.rand(shape))
        self._encode = vae.encode

    def forward(self):
        if self._encode is None:
            raise PyroVAEError("The VampPrior needs an encoder: pass it to pyro_vae.VAE(prior=...).")
        loc, logvar = self._encode(self.pseudo_inputs)
        return DiagonalNormalMixture(loc.new_zeros(self.num_pseudo), loc, logvar)


FLOW_TRANSFORMS = {"affine-autoregressive": T.affine_autoregressive, "spline-coupling": T.spline_coupling}


@PRIORS.register("flow")
class Flow(nn.Module):
    """Normalising-flow prior: u = f(z) ~ N(0, I) with f = f_n ∘ P ∘ … ∘ P ∘ f_1 invertible.

    log p(z) = log N(f(z); 0, I) + log ``|det ∂f/∂z|``. Each f_i is a Pyro transform
    (``transform``: ``affine-autoregressive``, MAF-style so that log p(z) takes one
    network pass per layer, or ``spline-coupling``, which needs latent_dim ≥ 2) and P
    reverses the order of the coordinates between layers.
    """

    analytic_kl = False

    def __init__(self, latent_dim, num_flows=2, transform="affine-autoregressive"):
        super().__init__()
        if not isinstance(transform, str) or transform not in FLOW_TRANSFORMS:
            raise ConfigError(
                f"Unknown flow transform {transform!r}; choose one of {', '.join(FLOW_TRANSFORMS)}."
            )
        if transform == "spline-coupling" and latent_dim < 2:
            raise ConfigError("The spline-coupling flow needs latent_dim >= 2; use affine-autoregressive.")
        num_flows = check_int(num_flows, "num_flows")
        self.layers = nn.ModuleList(FLOW_TRANSFORMS[transform](latent_dim) for _ in range(num_flows))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def forward(self):
        transforms = []  # applied in order to u ~ N(0, I); log_prob inverts them (f_i forward)
        for layer in reversed(self.layers):
            transforms += [layer.inv, T.Permute(self.reverse)]
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, transforms[:-1])


def analytic_kl_available(prior):
    """Whether ``elbo-analytic`` computes KL(q ‖ prior) in closed form for this prior module.

    Uses the class attribute ``analytic_kl`` where defined; otherwise tries
    ``kl_divergence(Normal(z, 1).to_event(1), prior())``. When False, ``TraceMeanField_ELBO``
    falls back to a Monte Carlo KL, log q(z|x) − log p(z) at the sampled z.
    """
    known = getattr(prior, "analytic_kl", None)
    if known is not None:
        return bool(known)
    p = prior()
    z = p.sample()
    q = dist.Normal(z, torch.ones_like(z)).to_event(len(p.event_shape))
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


def build_prior(spec, latent_dim):
    """A prior module from a name, a spec mapping, or a module as is."""
    if isinstance(spec, nn.Module):
        return spec
    return PRIORS.build(spec, latent_dim=latent_dim)
