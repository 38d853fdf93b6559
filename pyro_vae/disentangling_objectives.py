r"""Objectives for disentanglement: capacity-controlled β-VAE, β-TCVAE, DIP-VAE I/II, FactorVAE.

Each is a Pyro ELBO class (``differentiable_loss(model, guide, x)`` and ``loss``) over a
plain model/guide pair with **one** latent site ``z`` in a ``"data"`` plate and a
diagonal-Gaussian guide (as :class:`~pyro_vae.VAE` with one latent layer). The loss is a
*sum* over the batch of per-point terms, as the library's other objectives, so the
published per-point weights keep their meaning. The β of ``beta_schedule`` reaches them
as it reaches ``elbo``: the VAE wraps ``z`` in ``poutine.scale(β)`` in model and guide,
and these objectives read that scale off the trace (``poutine.mask(False)`` reads as β = 0)
and use it as the weight written β below; every density is evaluated unscaled.

With per-point reconstruction term :math:`\ell_n = \log p(x_n|z_n)`, :math:`z_n \sim q(z|x_n)`
and :math:`\mathrm{KL}_n = \mathrm{KL}(q(z|x_n)\,\|\,p(z))` (closed form where the prior has
one, else :math:`\log q(z_n|x_n) - \log p(z_n)`), over a batch of B points:

* ``capacity`` (Burgess et al. 2018): :math:`\sum_n -\ell_n + B\,\beta\,|\overline{\mathrm{KL}} - C(t)|`
  with :math:`\overline{\mathrm{KL}}` the batch mean. β is the paper's γ (1000 on dSprites);
  C(t) in nats is any β schedule's value (default: linear from 0 to 25 over 10 epochs),
  with t the training progress in epochs (``at_epoch(t)``, set by the trainer). With C = 0 it is
  β-VAE with the closed-form KL.
* ``beta-tcvae`` (Chen et al. 2018): :math:`\log q(z_n|x_n) - \log p(z_n)` split into
  index-code MI :math:`\log q(z_n|x_n) - \log q(z_n)`, total correlation
  :math:`\log q(z_n) - \sum_d \log q(z_{nd})` and dimension-wise KL
  :math:`\sum_d \log q(z_{nd}) - \log p(z_n)`; loss
  :math:`\sum_n -\ell_n + \alpha\,\mathrm{MI}_n + \beta\,\mathrm{TC}_n + \gamma\,\mathrm{DWKL}_n`
  (the paper's β is the schedule's β; ``alpha``, ``gamma`` default 1). The aggregate
  posterior :math:`q(z) = \frac1N\sum_m q(z|x_m)` is estimated from the batch,
  :math:`\log q(z_n) \approx \operatorname{logsumexp}_m [\log w_{nm} + \log q(z_n|x_m)]`
  (and per dimension alike), with minibatch-weighted sampling (``estimator: mws``,
  :math:`w_{nm} = 1/(NB)`) or minibatch-stratified sampling (``mss``: :math:`w_{nn} = 1/N`,
  :math:`w_{n,n+1} = (N-M)/(NM)`, the other :math:`1/M`, with M = B − 1). N is the
  training-set size from the build context. The three terms sum to the Monte Carlo KL
  exactly, whatever the estimator: with α = β = γ = 1 the loss is the ELBO's.
* ``dip-vae-i`` / ``dip-vae-ii`` (Kumar et al. 2018): the β-VAE loss plus
  :math:`B\,[\lambda_{od} \sum_{i \ne j} C_{ij}^2 + \lambda_d \sum_i (C_{ii} - 1)^2]` where C is
  the batch covariance of the guide means :math:`\mu(x)` (I) or of z under q,
  :math:`\mathrm{Cov}[\mu(x)] + \mathbb E[\operatorname{diag}\sigma^2(x)]` (II).
  ``lambda_d`` defaults to 10·``lambda_od`` (I) or ``lambda_od`` (II), as disentanglement_lib.
* ``factor-vae`` (Kim & Mnih 2018): the β-VAE loss (β = 1 in the paper) plus
  :math:`B\,\gamma\,\widehat{\mathrm{TC}}` with
  :math:`\widehat{\mathrm{TC}} = \overline{D_0(z_n) - D_1(z_n)}`,
  the density-ratio estimate from a discriminator D (logits: 0 = from q(z), 1 = from
  :math:`\prod_d q(z_d)`) that is trained, in the same step and before the VAE's loss is
  formed, on the batch's codes (detached) against the same codes with every dimension
  permuted over the batch, with its own Adam optimiser. Its state is in the checkpoint
  (``state_dict``), so resume is exact. One process only (not under ``torchrun``).

``factor-vae`` keeps state (the discriminator) and exposes ``state_dict``/``load_state_dict``,
which the trainer saves and restores with its checkpoint; ``capacity`` follows training
progress through ``at_epoch(t)``, which the trainer calls before each step.
"""

import math

import torch
import torch.nn as nn
from pyro import poutine
from pyro.distributions import Independent
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from .errors import ConfigError
from .registry import BuildContext
from .schedules import scalar_schedule
from .validation import check_choice, check_ints, check_number

__all__ = [
    "FACTORIES",
    "BetaTCVAE",
    "CapacityVAE",
    "DIPVAE",
    "Discriminator",
    "FactorVAE",
    "LatentTerms",
    "decompose_kl",
    "discriminator_loss",
    "dip_penalty",
    "log_importance_weights",
    "permute_dims",
]

ESTIMATORS = ("mws", "mss")


class LatentTerms:
    """The per-point quantities of one model/guide pass, unscaled, for a one-layer latent model.

    Attributes: ``z`` ``(B, D)``, ``loc``/``scale`` of the guide ``(B, D)``, ``log_px`` (B,),
    ``log_qzx`` (B,), ``log_pz`` (B,), ``beta`` (the scale on the latent site, 0 when masked),
    and ``prior``/``posterior`` (the site distributions).
    """

    def __init__(self, model, guide, *args, **kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        latent = [n for n, s in guide_trace.nodes.items()
                  if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)]
        if len(latent) != 1:
            raise ConfigError(f"The disentangling objectives need a model with one latent site, found "
                              f"{len(latent)} ({', '.join(latent) or 'none'}): use one latent layer.")
        name = latent[0]
        g, m = guide_trace.nodes[name], model_trace.nodes[name]
        base = g["fn"].base_dist if isinstance(g["fn"], Independent) else g["fn"]
        if not (hasattr(base, "loc") and hasattr(base, "scale")) or g["value"].dim() != 2:
            raise ConfigError("The disentangling objectives need a guide q(z|x) that is a diagonal Gaussian "
                              f"over a (batch, latent_dim) site; '{name}' is {type(g['fn']).__name__}.")
        self.z, self.loc, self.scale = g["value"], base.loc, base.scale
        self.posterior, self.prior = g["fn"], m["fn"]
        self.beta = 0.0 if _masked(g) else float(g["scale"])
        self.log_qzx = g["fn"].log_prob(self.z)
        self.log_pz = m["fn"].log_prob(self.z)
        self.log_px = sum(_site_log_prob(s) for s in model_trace.nodes.values()
                          if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s))

    def kl(self):
        """Per-point KL(q(z|x_n) ‖ p(z)): closed form where available, else log q − log p at z."""
        try:
            return kl_divergence(self.posterior, self.prior).expand(self.log_qzx.shape)
        except NotImplementedError:
            return self.log_qzx - self.log_pz


def _masked(site):
    mask = site["mask"]
    return mask is not None and not (bool(mask.all()) if torch.is_tensor(mask) else bool(mask))


def _site_log_prob(site):
    """Per-point log-density of an observed site (its scale and mask applied), summed to ``(B,)``."""
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_prob = log_prob * site["mask"]
    return log_prob * site["scale"]


def _dataset_size(context):
    num_train = (context or BuildContext()).num_train
    if num_train is None:
        raise ConfigError("This objective needs the training-set size N (BuildContext.num_train); build it "
                          "with the run's context, e.g. OBJECTIVES.build(spec, run.context).")
    return num_train


# -- β-TCVAE -------------------------------------------------------------------------------------

def log_importance_weights(batch_size, dataset_size, estimator="mws", dtype=None, device=None):
    r"""``(B, B)`` log-weights :math:`\log w_{nm}` of the aggregate-posterior estimate (see the module)."""
    n, b = float(dataset_size), batch_size
    if estimator == "mws" or b < 2:
        return torch.full((b, b), -math.log(n * b), dtype=dtype, device=device)
    m = b - 1
    weights = torch.full((b, b), 1.0 / m, dtype=dtype, device=device)
    rows = torch.arange(b, device=device)
    weights[rows, (rows + 1) % b] = (n - m) / (n * m)
    weights[rows, rows] = 1.0 / n
    return weights.log()


def decompose_kl(z, loc, scale, log_qzx, log_pz, dataset_size, estimator="mws"):
    """Per-point (MI, TC, dimension-wise KL) of the batch; they sum to ``log_qzx − log_pz``."""
    log_q = torch.distributions.Normal(loc.unsqueeze(0), scale.unsqueeze(0)).log_prob(z.unsqueeze(1))
    log_w = log_importance_weights(len(z), dataset_size, estimator, z.dtype, z.device)  # (n, m)
    log_qz = torch.logsumexp(log_w + log_q.sum(-1), dim=1)
    log_prod_qz = torch.logsumexp(log_w.unsqueeze(-1) + log_q, dim=1).sum(-1)
    return log_qzx - log_qz, log_qz - log_prod_qz, log_prod_qz - log_pz


class _Objective:
    """Shared surface: ``loss`` (a float, no side effects) over ``differentiable_loss``."""

    def _loss(self, terms, training):
        raise NotImplementedError

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self._loss(LatentTerms(model, guide, *args, **kwargs), training=True)

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return float(self._loss(LatentTerms(model, guide, *args, **kwargs), training=False))


class BetaTCVAE(_Objective):
    """β-TCVAE (Chen et al. 2018): α·MI + β·TC + γ·dimension-wise KL (see the module)."""

    def __init__(self, num_train, alpha=1.0, gamma=1.0, estimator="mws"):
        self.num_train = num_train
        self.alpha, self.gamma = alpha, gamma
        self.estimator = estimator

    def _loss(self, t, training):
        mi, tc, dwkl = decompose_kl(t.z, t.loc, t.scale, t.log_qzx, t.log_pz, self.num_train, self.estimator)
        return (-t.log_px + self.alpha * mi + t.beta * tc + self.gamma * dwkl).sum()


# -- capacity ------------------------------------------------------------------------------------

class CapacityVAE(_Objective):
    """Capacity-controlled β-VAE (Burgess et al. 2018): Σ −log p(x|z) + B·β·abs(mean KL − C(t)).

    t is training progress in epochs; :meth:`at_epoch` sets C(t), and the trainer calls it
    before each step, as it sets β (in a hand-written ``SVI`` loop, call it yourself)."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.target = float(capacity(0.0))

    def at_epoch(self, t):
        """Set the target C to C(t) at training progress ``t`` (epochs, fractional within one)."""
        self.target = float(self.capacity(t))

    def _loss(self, t, training):
        return -t.log_px.sum() + len(t.z) * t.beta * (t.kl().mean() - self.target).abs()


# -- DIP-VAE -------------------------------------------------------------------------------------

def dip_penalty(loc, scale, lambda_od, lambda_d, variant="i"):
    r""":math:`\lambda_{od}\sum_{i\ne j} C_{ij}^2 + \lambda_d \sum_i (C_{ii}-1)^2` of the batch covariance
    C of the guide means (``"i"``) or of z under q (``"ii"``: plus the mean guide variance)."""
    centred = loc - loc.mean(0)
    cov = centred.T @ centred / len(loc)
    if variant == "ii":
        cov = cov + torch.diag((scale * scale).mean(0))
    diag = torch.diagonal(cov)
    off_diag = cov - torch.diag(diag)
    return lambda_od * off_diag.pow(2).sum() + lambda_d * (diag - 1).pow(2).sum()


class DIPVAE(_Objective):
    """DIP-VAE I or II (Kumar et al. 2018): the β-VAE loss plus B times the DIP penalty."""

    def __init__(self, variant, lambda_od, lambda_d):
        self.variant, self.lambda_od, self.lambda_d = variant, lambda_od, lambda_d

    def _loss(self, t, training):
        penalty = dip_penalty(t.loc, t.scale, self.lambda_od, self.lambda_d, self.variant)
        return (-t.log_px + t.beta * t.kl()).sum() + len(t.z) * penalty


# -- FactorVAE -----------------------------------------------------------------------------------

def permute_dims(z):
    """Each column of ``z`` ``(B, D)`` permuted over the batch independently: samples of ∏_d q(z_d)."""
    order = torch.argsort(torch.rand(z.shape, device=z.device), dim=0)
    return torch.gather(z, 0, order)


class Discriminator(nn.Module):
    """MLP ``(B, D) -> (B, 2)`` logits (0: a code from q(z), 1: from ∏_d q(z_d)); leaky ReLU 0.2.

    Kim & Mnih use six hidden layers of 1000 units."""

    def __init__(self, latent_dim, hidden=(1000,) * 6):
        super().__init__()
        layers, width = [], latent_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LeakyReLU(0.2)]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, z):
        return self.net(z)

    def total_correlation(self, z):
        """Per-point density-ratio estimate of log q(z) − log ∏_d q(z_d): D_0(z) − D_1(z)."""
        logits = self(z)
        return logits[:, 0] - logits[:, 1]


def discriminator_loss(discriminator, z):
    """Cross-entropy of the discriminator on codes ``z`` (label 0) and their permutation (label 1)."""
    logits = discriminator(torch.cat([z, permute_dims(z)]))
    labels = torch.cat([torch.zeros(len(z)), torch.ones(len(z))]).to(logits.device, torch.long)
    return nn.functional.cross_entropy(logits, labels)


class FactorVAE(_Objective):
    """FactorVAE (Kim & Mnih 2018): the β-VAE loss plus B·γ·TC(discriminator); see the module.

    The discriminator (and its Adam optimiser, betas 0.5, 0.9) is built for the model's latent
    size at the first loss, or when a checkpoint's state is loaded (the trainer restores it
    before the first step), unless ``latent_dim`` is given."""

    def __init__(self, gamma=10.0, hidden=(1000,) * 6, lr=1e-4, device=None, latent_dim=None):
        self.gamma, self.hidden, self.lr, self.device = gamma, tuple(hidden), lr, device
        self.discriminator = self.optimizer = None
        if latent_dim is not None:
            self._build(latent_dim)

    def _build(self, latent_dim):
        self.discriminator = Discriminator(latent_dim, self.hidden).to(self.device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.9))

    def discriminator_step(self, z):
        """One Adam step of the discriminator on the codes ``z`` (detached); returns its loss."""
        if self.discriminator is None:
            self._build(z.shape[1])
        loss = discriminator_loss(self.discriminator, z.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def total_correlation(self, z):
        """The discriminator's per-point TC estimate at ``z``, differentiable in ``z`` only."""
        if self.discriminator is None:
            self._build(z.shape[1])
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        logits = torch.func.functional_call(self.discriminator, frozen, (z,))
        return logits[:, 0] - logits[:, 1]

    def _loss(self, t, training):
        if training:
            self.discriminator_step(t.z)
        tc = self.total_correlation(t.z)
        return (-t.log_px + t.beta * t.kl()).sum() + len(t.z) * self.gamma * tc.mean()

    def state_dict(self):
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        if not state:
            return
        self._build(state["discriminator"]["net.0.weight"].shape[1])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


# -- factories (registered in pyro_vae.objectives) -----------------------------------------------

def _weight(value, what):
    return check_number(value, f"objective option '{what}'", minimum=0)


def capacity(context, capacity=None):
    """Capacity-controlled β-VAE; ``capacity``: C(t) in nats as a β schedule spec or a number
    (default ``{name: linear, start: 0, beta: 25, warmup_epochs: 10}``: the schedule's ``beta`` is C_max)."""
    if capacity is None:
        capacity = {"name": "linear", "start": 0.0, "beta": 25.0, "warmup_epochs": 10}
    schedule = scalar_schedule(capacity, "objective 'capacity': C(t)", context)
    return CapacityVAE(schedule)


def beta_tcvae(context, alpha=1.0, gamma=1.0, estimator="mws"):
    """β-TCVAE; β is the β schedule's, ``alpha`` weighs the index-code MI, ``gamma`` the dimension-wise KL,
    ``estimator`` ``mws`` (minibatch-weighted) or ``mss`` (minibatch-stratified sampling)."""
    return BetaTCVAE(_dataset_size(context), _weight(alpha, "alpha"), _weight(gamma, "gamma"),
                     check_choice(estimator, "objective option 'estimator'", ESTIMATORS))


def _dip(variant, default_factor):
    def factory(lambda_od=10.0, lambda_d=None):
        lambda_od = _weight(lambda_od, "lambda_od")
        lambda_d = default_factor * lambda_od if lambda_d is None else _weight(lambda_d, "lambda_d")
        return DIPVAE(variant, lambda_od, lambda_d)

    factory.__doc__ = f"DIP-VAE-{variant.upper()}; ``lambda_d`` defaults to {default_factor:g}·``lambda_od``."
    return factory


def factor_vae(context, gamma=10.0, hidden=(1000,) * 6, lr=1e-4):
    """FactorVAE; ``gamma`` weighs the total correlation, ``hidden`` are the discriminator's widths,
    ``lr`` its Adam learning rate."""
    hidden = check_ints(hidden, "objective option 'hidden'")
    lr = check_number(lr, "objective option 'lr'", greater_than=0)
    return FactorVAE(_weight(gamma, "gamma"), hidden, lr, (context or BuildContext()).device)


FACTORIES = {
    "capacity": capacity,
    "beta-tcvae": beta_tcvae,
    "dip-vae-i": _dip("i", 10.0),
    "dip-vae-ii": _dip("ii", 1.0),
    "factor-vae": factor_vae,
}
"""Name -> factory of the objectives above, registered in :data:`pyro_vae.objectives.OBJECTIVES`."""
