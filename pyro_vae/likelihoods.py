"""Observation models p(x|z): decoder output -> Pyro distribution, chosen by name.

A likelihood is an ``nn.Module`` with

* ``param_shape``: the decoder's output shape for one data point; likelihoods with
  several parameters per pixel stack them in front: ``(P, *data_shape)``;
* ``forward(params)``: a distribution whose event shape is ``data_shape``, so that
  ``log_prob`` sums over pixels (the reconstruction term is a *sum*, never a mean);
* ``mean(params)``: E[x|z], for reconstructions and samples in figures;
* ``validate(x)``: raises :class:`~pyro_vae.errors.DataError` when ``x`` is outside
  the support, with the reason in words.

Registered likelihoods, their options and the data they need:

====================== ================================ ======================================
name                   options                          data
====================== ================================ ======================================
bernoulli                                               binary, 0 or 1
continuous-bernoulli                                    [0, 1]
gaussian, laplace      scale: number, learned,          real
                       predicted
beta                                                    strictly inside (0, 1)
categorical            levels                           the grid k/(levels−1) in [0, 1]
discretized-logistic   levels, num_mixtures             the grid k/(levels−1) in [0, 1]
poisson                                                 counts 0, 1, 2, …
negative-binomial      total_count: number, learned,    counts 0, 1, 2, …
                       predicted
====================== ================================ ======================================

Pixel levels are given, like every dataset of the library, scaled into [0, 1]:
grey level k of L is the value k/(L−1) (digits: L = 17, MNIST: L = 256). Counts are
raw non-negative integers. Positive parameters that the decoder predicts or that are
learned are θ = exp(b·tanh(r/b)) of the raw value r, smooth and bounded in [1e-3, 1e3]
(b = log 1e3); Poisson rates use b = 20.
"""

import math

import pyro.distributions as dist
import torch
import torch.nn as nn
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints

from .distributions import IndependentBernoulli
from .errors import ConfigError, DataError
from .registry import Registry
from .validation import check_int, check_number

LIKELIHOODS = Registry("likelihood")

LOG_BOUND = math.log(1e3)
LOG_RATE_BOUND = 20.0
COUNT_ADVICE = (
    "Count likelihoods model raw integer counts; the library's image datasets are scaled "
    "into [0, 1] (digits: k/16), so rescale them to integers, or use a likelihood for [0, 1]."
)


def bounded_exp(raw, bound=LOG_BOUND):
    """exp(bound · tanh(raw / bound)): positive, in [e^−bound, e^bound], ≈ exp(raw) near 0."""
    return torch.exp(bound * torch.tanh(raw / bound))


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

    def mean(self, params):
        """E[x|z] from the decoder's output."""
        return self(params).mean

    def _event(self, base):
        return base.to_event(len(self.data_shape))

    def _unstack(self, params):
        """Split stacked parameters ``(*batch, P, *data_shape)`` into P tensors."""
        return params.unbind(-len(self.data_shape) - 1)

    @staticmethod
    def _require(x, ok, what, advice):
        """Raise a DataError naming ``what`` is needed when some value of ``x`` is not ``ok``."""
        if not bool(ok.all()):
            bad = x[~ok]
            raise DataError(
                f"{what}, but {bad.numel()} of {x.numel()} values are not "
                f"(e.g. {bad.flatten()[0].item():g}). {advice}"
            )


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    """x ~ Bernoulli(sigmoid(logits)) per pixel; data must be binary (0 or 1)."""

    def forward(self, params):
        return IndependentBernoulli(params, len(self.data_shape))

    def validate(self, x):
        super().validate(x)
        self._require(
            x, (x == 0) | (x == 1), "The Bernoulli likelihood needs binary data (0 or 1)",
            "Grey levels? Binarise them (data option binarize: dynamic, static or threshold), "
            "or choose a likelihood for [0, 1] such as 'continuous-bernoulli' or 'gaussian'.",
        )


@LIKELIHOODS.register("continuous-bernoulli")
class ContinuousBernoulli(Likelihood):
    """x ~ CB(λ) per pixel, p(x) = C(λ) λ^x (1 − λ)^(1−x) on [0, 1], λ = sigmoid(logits)
    (Loaiza-Ganem & Cunningham 2019); C(λ) = 2 atanh(1 − 2λ) / (1 − 2λ) normalises it."""

    def forward(self, params):
        return self._event(dist.ContinuousBernoulli(logits=params))

    def validate(self, x):
        super().validate(x)
        self._require(
            x, (x >= 0) & (x <= 1), "The continuous Bernoulli likelihood needs data in [0, 1]",
            "Scale the data into [0, 1] or use 'gaussian'.",
        )


class WithDispersion(Likelihood):
    """Base of likelihoods with a positive second parameter θ per pixel, given as a fixed
    number, ``"learned"`` (one θ for all pixels, starting at 1) or ``"predicted"`` by the
    decoder (``param_shape = (2, *data_shape)``); learned and predicted θ are bounded."""

    def __init__(self, data_shape, theta, what):
        super().__init__(data_shape)
        self.predicted = theta == "predicted"
        self.learned = theta == "learned"
        if self.predicted:
            self.param_shape = (2, *self.data_shape)
        elif self.learned:
            self.raw_theta = nn.Parameter(torch.zeros(()))
        elif isinstance(theta, str):
            raise ConfigError(f"{what} must be a finite number > 0, 'learned' or 'predicted', got {theta!r}.")
        else:
            self.register_buffer("theta", torch.tensor(check_number(theta, what, greater_than=0)))

    def _split(self, params):
        """The decoder's main parameter and θ."""
        if self.predicted:
            params, raw = self._unstack(params)
            return params, bounded_exp(raw)
        return params, bounded_exp(self.raw_theta) if self.learned else self.theta


class LocationScale(WithDispersion):
    """x ~ family(μ(z), σ) per pixel; ``scale`` σ is a number, ``"learned"`` or ``"predicted"``."""

    family = dist.Normal

    def __init__(self, data_shape, scale=1.0):
        super().__init__(data_shape, scale, "scale")

    def forward(self, params):
        return self._event(self.family(*self._split(params)))


@LIKELIHOODS.register("gaussian")
class Gaussian(LocationScale):
    """x ~ N(μ(z), σ²) per pixel: log p = −(x − μ)²/(2σ²) − log σ − ½ log 2π."""


@LIKELIHOODS.register("laplace")
class Laplace(LocationScale):
    """x ~ Laplace(μ(z), σ) per pixel: log p = −|x − μ|/σ − log 2σ."""

    family = dist.Laplace


@LIKELIHOODS.register("beta")
class Beta(Likelihood):
    """x ~ Beta(α(z), β(z)) per pixel on (0, 1); the decoder predicts both (``(2, *data_shape)``)."""

    def __init__(self, data_shape):
        super().__init__(data_shape)
        self.param_shape = (2, *self.data_shape)

    def forward(self, params):
        alpha, beta = self._unstack(params)
        return self._event(dist.Beta(bounded_exp(alpha), bounded_exp(beta)))

    def validate(self, x):
        super().validate(x)
        self._require(
            x, (x > 0) & (x < 1), "The Beta likelihood needs data strictly inside (0, 1)",
            "Its density is 0 or infinite at exactly 0 and 1: clamp the data, e.g. "
            "x.clamp(1e-3, 1 - 1e-3), or dequantise grey levels k of L as (k + u)/L with "
            "u ~ U(0, 1); or use 'continuous-bernoulli', which allows 0 and 1.",
        )


@LIKELIHOODS.register("poisson")
class Poisson(Likelihood):
    """x ~ Poisson(λ) per pixel, log λ = decoder output (bounded to ±20): counts."""

    def forward(self, params):
        return self._event(dist.Poisson(bounded_exp(params, LOG_RATE_BOUND)))

    def validate(self, x):
        super().validate(x)
        self._require(x, (x >= 0) & (x == x.round()), "The Poisson likelihood needs counts", COUNT_ADVICE)


@LIKELIHOODS.register("negative-binomial")
class NegativeBinomial(WithDispersion):
    """x ~ NB(r, p) per pixel, P(x) = Γ(x + r)/(x! Γ(r)) (1 − p)^r p^x, logit p = decoder output,
    mean r·p/(1 − p); ``total_count`` r is a number, ``"learned"`` or ``"predicted"``."""

    def __init__(self, data_shape, total_count="learned"):
        super().__init__(data_shape, total_count, "total_count")

    def forward(self, params):
        logits, total_count = self._split(params)
        return self._event(dist.NegativeBinomial(total_count, logits=logits))

    def validate(self, x):
        super().validate(x)
        self._require(
            x, (x >= 0) & (x == x.round()), "The negative binomial likelihood needs counts", COUNT_ADVICE
        )


class GridDistribution(TorchDistribution):
    """Base of distributions over the L-level grid x ∈ {0, 1/(L−1), …, 1}; batch dims are
    those of ``logits`` but the last (one entry per level or per mixture component)."""

    support = constraints.interval(0.0, 1.0)

    def __init__(self, logits, levels, validate_args=None):
        self.logits = logits
        self.levels = levels
        super().__init__(logits.shape[:-1], validate_args=validate_args)

    def _index(self, value):
        """The level k of x = k/(L−1)."""
        if self._validate_args:
            self._validate_sample(value)
        return (value * (self.levels - 1)).round().long()


class GridCategorical(GridDistribution):
    """x = k/(L−1) with k ~ Categorical(softmax(logits)), L = ``logits.shape[-1]``."""

    arg_constraints = {"logits": constraints.real_vector}

    def __init__(self, logits, validate_args=None):
        super().__init__(logits, logits.shape[-1], validate_args)
        self._categorical = dist.Categorical(logits=logits)

    @property
    def mean(self):
        grid = torch.linspace(0, 1, self.levels, dtype=self.logits.dtype, device=self.logits.device)
        return self._categorical.probs @ grid

    def log_prob(self, value):
        return self._categorical.log_prob(self._index(value))

    def sample(self, sample_shape=()):
        return self._categorical.sample(sample_shape).to(self.logits.dtype) / (self.levels - 1)


class DiscretizedLogisticMixture(GridDistribution):
    """Mixture of M discretised logistics on the L-level grid (Salimans et al. 2017, PixelCNN++).

    With y = 2x − 1 ∈ [−1, 1] and bin half-width h = 1/(L−1), component m (weight π_m =
    softmax(logits)_m, location μ_m, scale s_m) gives level x the logistic mass of its bin,
    the edges taking the tails:

        P_m(x) = σ(a) − σ(b),  a = (y + h − μ_m)/s_m,  b = (y − h − μ_m)/s_m,
        P_m(0) = σ(a),  P_m(1) = 1 − σ(b) = σ(−b),

    computed as log σ(a) + log σ(−b) + log(1 − e^{−2h/s_m}) for inner levels (exact,
    stable in both tails); log P(x) = logsumexp_m (log π_m + log P_m(x)). Parameters have
    the M components in the last dim.
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "locs": constraints.real_vector,
        "scales": constraints.independent(constraints.positive, 1),
    }

    def __init__(self, logits, locs, scales, levels=256, validate_args=None):
        self.locs, self.scales = locs, scales
        super().__init__(logits, levels, validate_args)

    def log_prob(self, value):
        k = self._index(value).unsqueeze(-1)
        top = self.levels - 1
        h = 1.0 / top
        y = (2 * value - 1).unsqueeze(-1)
        a = (y + h - self.locs) / self.scales
        b = (y - h - self.locs) / self.scales
        zero = a.new_zeros(())
        log_mass = (
            torch.where(k < top, F.logsigmoid(a), zero)
            + torch.where(k > 0, F.logsigmoid(-b), zero)
            + torch.where((k > 0) & (k < top), torch.log(-torch.expm1(-2 * h / self.scales)), zero)
        )
        return torch.logsumexp(self.logits.log_softmax(-1) + log_mass, -1)

    @property
    def mean(self):
        """E[x] = (1/(L−1)) Σ_m π_m Σ_j P_m(y > t_j) over the bin edges t_j = −1 + (2j + 1)h."""
        top = self.levels - 1
        above = sum(torch.sigmoid((self.locs - (2 * j + 1 - top) / top) / self.scales) for j in range(top))
        return (self.logits.softmax(-1) * above).sum(-1) / top

    def sample(self, sample_shape=()):
        with torch.no_grad():
            shape = self._extended_shape(torch.Size(sample_shape))
            m = dist.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
            loc = self.locs.expand(shape + self.locs.shape[-1:]).gather(-1, m).squeeze(-1)
            scale = self.scales.expand(shape + self.scales.shape[-1:]).gather(-1, m).squeeze(-1)
            u = torch.rand(shape, dtype=loc.dtype, device=loc.device).clamp(1e-6, 1 - 1e-6)
            y = loc + scale * (torch.log(u) - torch.log1p(-u))
            top = self.levels - 1
            return ((y + 1) * top / 2).round().clamp(0, top) / top


class GridLikelihood(Likelihood):
    """Base of likelihoods for data on the grid k/(L−1), k = 0..L−1, in [0, 1] (``levels`` L)."""

    def __init__(self, data_shape, levels=256):
        super().__init__(data_shape)
        self.levels = check_int(levels, "levels", minimum=2)

    def _last(self, params):
        """Move the stacked parameter dim (just before the data dims) to the end."""
        return params.movedim(-len(self.data_shape) - 1, -1)

    def validate(self, x):
        super().validate(x)
        top = self.levels - 1
        scaled = x * top
        self._require(
            x, (x >= 0) & (x <= 1) & ((scaled - scaled.round()).abs() < 1e-3),
            f"The {self.label} likelihood with levels={self.levels} needs data on the grid k/{top}, "
            f"k = 0..{top}",
            "Set levels to the number of grey levels of the data (digits: 17, MNIST: 256); "
            "data are scaled into [0, 1], so level k of L is k/(L-1).",
        )


@LIKELIHOODS.register("categorical")
class Categorical(GridLikelihood):
    """x = k/(L−1) with k ~ Categorical(softmax(logits)) per pixel, a free distribution over
    the ``levels`` L; param_shape ``(L, *data_shape)``."""

    label = "categorical"

    def __init__(self, data_shape, levels=256):
        super().__init__(data_shape, levels)
        self.param_shape = (levels, *self.data_shape)

    def forward(self, params):
        return self._event(GridCategorical(self._last(params)))


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogistic(GridLikelihood):
    """Mixture of ``num_mixtures`` discretised logistics per pixel on ``levels`` levels
    (:class:`DiscretizedLogisticMixture`); channels are independent given z (no PixelCNN++
    RGB coupling). param_shape ``(3, M, *data_shape)``: logits, locations, raw scales."""

    label = "discretized logistic"

    def __init__(self, data_shape, levels=256, num_mixtures=5):
        super().__init__(data_shape, levels)
        num_mixtures = check_int(num_mixtures, "num_mixtures")
        self.param_shape = (3, num_mixtures, *self.data_shape)

    def forward(self, params):
        logits, locs, raw_scales = (self._last(p) for p in params.unbind(-len(self.data_shape) - 2))
        mixture = DiscretizedLogisticMixture(logits, locs, bounded_exp(raw_scales), self.levels)
        return self._event(mixture)


def build_likelihood(spec, data_shape):
    """A likelihood module from a name, a spec mapping, or a module as is."""
    if isinstance(spec, nn.Module):
        return spec
    return LIKELIHOODS.build(spec, data_shape=tuple(data_shape))
