r"""The distributions of the library's VAE, written for the training loop's hot path.

They are ordinary Pyro distributions (any model, guide, ELBO or estimator can use them)
whose values and gradients are those of the textbook Pyro constructions, computed with
fewer tensor operations and Python calls per step:

* :func:`diagonal_normal` ``(loc, logvar)``: :math:`\mathcal N(\mu, \operatorname{diag} e^{\log\sigma^2})`
  as ``Independent(LogVarNormal, 1)``, exactly ``Normal(loc, exp(logvar / 2)).to_event(1)``
  for sampling and densities, keeping :math:`\log\sigma^2` for the KL;
* ``_UnitNormal(batch_shape)``: the standard normal of the ``standard-normal`` prior
  (private; it takes no loc or scale), with the closed-form KL to a :class:`LogVarNormal`
  written as one expression,
  :math:`\mathrm{KL}(q\,\|\,\mathcal N(0, 1)) = \tfrac12(e^{\log\sigma^2} + \mu^2 - 1 - \log\sigma^2)`
  per coordinate (torch's Normal–Normal KL goes through ratios and a logarithm of them);
* :class:`DiagonalNormalMixture` ``(logits, loc, logvar)``:
  :math:`\sum_k \pi_k \mathcal N(\mu_k, \operatorname{diag} e^{\log\sigma_k^2})`, Pyro's
  ``MixtureSameFamily`` whose log-density is matrix products (forward in float64, backward
  written out) instead of tensors of points × components × dimensions,
  :math:`\log p(z) = \operatorname{logsumexp}_k \bigl[\log\pi_k - \tfrac12\sum_d
  (\log 2\pi\sigma_{kd}^2 + (z_d - \mu_{kd})^2 / \sigma_{kd}^2)\bigr]`
  (the ``mixture`` and ``vamp`` priors; equal to torch's up to rounding, 6–12× faster);
* :class:`IndependentBernoulli` ``(logits, event_dim)``: ``Bernoulli(logits=logits).to_event(event_dim)``
  whose log-density sums the binary cross-entropy *before* negating it: bitwise the same
  values and gradients (negation is exact) with two fewer passes over the pixels.

Pyro's plates call ``expand`` on every sample site; these distributions return
themselves when the shape is already right instead of building a copy.
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch.autograd.function import once_differentiable
from torch.distributions import register_kl

__all__ = ["DiagonalNormalMixture", "IndependentBernoulli", "LogVarNormal", "diagonal_normal"]


class _KeepsShape:
    """Mixin: ``expand`` to the distribution's own batch shape returns the distribution itself."""

    def expand(self, batch_shape, _instance=None):
        if _instance is None and torch.Size(batch_shape) == self.batch_shape:
            return self
        return super().expand(batch_shape, _instance)


class LogVarNormal(dist.Normal):
    r"""``Normal(loc, exp(logvar / 2))`` that keeps ``logvar`` (:math:`\log\sigma^2`)."""

    def __init__(self, loc, logvar, validate_args=None):
        super().__init__(loc, torch.exp(0.5 * logvar), validate_args=validate_args)
        self.logvar = logvar if logvar.shape == self.batch_shape else logvar.expand(self.batch_shape)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if _instance is None and batch_shape == self.batch_shape:
            return self
        new = self._get_checked_instance(LogVarNormal, _instance)
        new.logvar = self.logvar.expand(batch_shape)
        return super().expand(batch_shape, new)


class _UnitNormal(dist.Normal):
    """N(0, 1) elementwise over ``batch_shape``; it takes no loc or scale, so it is never other."""

    def __init__(self, batch_shape=(), device=None, dtype=None, validate_args=None):
        loc = torch.zeros(batch_shape, device=device, dtype=dtype)
        super().__init__(loc, torch.ones_like(loc), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        if _instance is None and torch.Size(batch_shape) == self.batch_shape:
            return self
        return super().expand(batch_shape, self._get_checked_instance(_UnitNormal, _instance))


class _DiagonalNormal(_KeepsShape, dist.Independent):
    """``Independent(LogVarNormal, 1)``."""


def diagonal_normal(loc, logvar):
    r""":math:`\mathcal N(\mathrm{loc}, \operatorname{diag} e^{\mathrm{logvar}})` over the last dimension."""
    return _DiagonalNormal(LogVarNormal(loc, logvar), 1)


class DiagonalNormalMixture(dist.MixtureSameFamily):
    r"""A mixture of K diagonal Gaussians over the last dimension: ``logits`` (…, K) of the
    weights, ``loc`` and ``logvar`` (…, K, D) of the components.

    Sampling and moments are Pyro's ``MixtureSameFamily``. ``log_prob`` computes the
    components' normalisers and precisions once, from the parameters as given (not the
    copies a plate's ``expand`` makes per point); with one set of components for every
    point (2-D ``loc``, as in the priors) and the parameters' dtype it is
    :class:`_MixtureLogDensity`, otherwise the broadcast formula under autograd.
    """

    def __init__(self, logits, loc, logvar, validate_args=None):
        super().__init__(dist.Categorical(logits=logits), diagonal_normal(loc, logvar),
                         validate_args=validate_args)
        log_normaliser = 0.5 * (logvar.sum(-1) + loc.shape[-1] * math.log(2 * math.pi))
        self._terms = (torch.log_softmax(logits, -1) - log_normaliser, loc, torch.exp(-logvar))

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if _instance is None and batch_shape == self.batch_shape:
            return self
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        new._terms = self._terms  # they broadcast against the expanded batch
        return super().expand(batch_shape, new)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_weight, loc, precision = self._terms
        if loc.dim() == 2 and value.dtype == loc.dtype:  # one set of components for all: the priors
            flat = value.reshape(-1, value.shape[-1])
            log_p = _MixtureLogDensity.apply(flat, log_weight, loc, precision).reshape(value.shape[:-1])
        else:  # batched components, or dtypes to promote: the broadcast formula
            squared = ((value.unsqueeze(-2) - loc).square() * precision).sum(-1)
            log_p = torch.logsumexp(log_weight - 0.5 * squared, -1)
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))


class _MixtureLogDensity(torch.autograd.Function):
    r"""log Σ_k exp(w_k − ½ Σ_d p_kd (z_md − μ_kd)²) for points z (M, D) and components
    w (K,), μ and p (K, D).

    Both passes are a few matrix products, where the broadcast formula and its autograd
    would build, keep and reduce (M, K, D) tensors; the backward pass uses the
    responsibilities r_mk (the softmax over k of the terms):
    ∂/∂z_m = Σ_k r_mk p_k ⊙ (μ_k − z_m), ∂/∂μ_k = p_k ⊙ Σ_m r_mk (z_m − μ_k),
    ∂/∂p_k = −½ Σ_m r_mk (z_m − μ_k)², ∂/∂w_k = Σ_m r_mk (each times the incoming gradient).
    """

    @staticmethod
    def forward(ctx, z, log_weight, loc, precision):
        # Σ_d p (z − μ)² = z² pᵀ − 2 z (p μ)ᵀ + Σ_d p μ²: matrix products, no (M, K, D) tensor;
        # in float64, where the cancellation costs less than float32's rounding of the direct sum
        wide = torch.float32 if z.device.type == "mps" else torch.float64  # MPS has no float64
        z64, loc64, precision64 = z.to(wide), loc.to(wide), precision.to(wide)
        squared = (z64.square() @ precision64.T - 2 * z64 @ (precision64 * loc64).T
                   + (precision64 * loc64.square()).sum(-1))
        terms = log_weight - 0.5 * squared.to(z.dtype)
        log_p = torch.logsumexp(terms, -1)
        ctx.save_for_backward(z, loc, precision, torch.exp(terms - log_p.unsqueeze(-1)))
        return log_p

    @staticmethod
    @once_differentiable  # the responsibilities are saved as constants: no second derivatives
    def backward(ctx, grad):
        z, loc, precision, responsibility = ctx.saved_tensors
        weight = responsibility * grad.unsqueeze(-1)  # (M, K)
        weight_sum = weight.sum(0)  # (K,)
        weighted_z = weight.T @ z  # (K, D)
        need_z, need_weight, need_loc, need_precision = ctx.needs_input_grad
        grad_z = weight @ (precision * loc) - (weight @ precision) * z if need_z else None
        grad_loc = precision * (weighted_z - weight_sum.unsqueeze(-1) * loc) if need_loc else None
        grad_precision = (-0.5 * (weight.T @ z.square() - 2 * loc * weighted_z
                                  + weight_sum.unsqueeze(-1) * loc.square())) if need_precision else None
        return grad_z, weight_sum if need_weight else None, grad_loc, grad_precision


@register_kl(LogVarNormal, _UnitNormal)
def _kl_logvar_normal_unit_normal(q, p):
    kl = 0.5 * (q.logvar.exp() + q.loc.pow(2) - 1.0 - q.logvar)
    if p.batch_shape != q.batch_shape:
        kl = kl.expand(torch.broadcast_shapes(kl.shape, p.batch_shape))
    return kl


class IndependentBernoulli(TorchDistribution):
    """``Bernoulli(logits=logits).to_event(event_dim)``, with the log-density negated after the sum.

    ``log_prob(x) = -BCE(logits, x, reduction="none").sum(event dims)``, where ``Independent``
    negates every pixel and then sums. Negation is exact, so the values and gradients are
    bitwise those of Pyro's construction.
    """

    arg_constraints = {"logits": constraints.real}
    has_enumerate_support = False

    def __init__(self, logits, event_dim, validate_args=None):
        if not 0 <= event_dim <= logits.dim():
            raise ValueError(f"event_dim must be in [0, {logits.dim()}], got {event_dim}.")
        self.logits = logits
        split = logits.dim() - event_dim
        super().__init__(logits.shape[:split], logits.shape[split:], validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.boolean, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        if _instance is None and torch.Size(batch_shape) == self.batch_shape:
            return self
        new = self._get_checked_instance(IndependentBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self):
        return torch.sigmoid(self.logits)

    @property
    def mean(self):
        return self.probs

    @property
    def variance(self):
        probs = self.probs
        return probs * (1 - probs)

    def entropy(self):
        probs = self.probs
        entropy = F.binary_cross_entropy_with_logits(self.logits, probs, reduction="none")
        return entropy.sum(tuple(range(-len(self.event_shape), 0))) if self.event_shape else entropy

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits
        if logits.shape != value.shape:
            logits, value = torch.broadcast_tensors(logits, value)
        event_dims = tuple(range(-len(self.event_shape), 0))
        bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return -(bce.sum(event_dims) if event_dims else bce)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape))
