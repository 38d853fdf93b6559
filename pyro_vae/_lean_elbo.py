"""The lean ELBOs behind the objectives ``elbo``, ``elbo-analytic`` and ``iwae``.

:class:`TraceELBO`, :class:`MeanFieldELBO` and :class:`IWAE` subclass Pyro's ``Trace_ELBO``,
``TraceMeanField_ELBO`` and ``RenyiELBO`` and rely on Pyro internals: they override the
private ``ELBO._get_trace`` and ``Trace_ELBO._differentiable_loss_particle``, call
``_get_traces`` and ``pyro.infer.trace_elbo._compute_log_r``, and mirror the site-by-site
loss code of those classes term for term. Tested with Pyro 1.9.2; checked by reading
against Pyro 1.8.6, whose ``trace_elbo``, ``trace_mean_field_elbo`` and ``renyi_elbo``
modules are the same. ``setup.cfg`` caps ``pyro-ppl`` at the newest version tested.
``tests/test_hot_path.py`` guards this module: gradients bitwise those of Pyro's classes.
What the lean path skips is described in :mod:`pyro_vae.objectives`, the public surface.
"""

import math

import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled, torch_item, torch_sum
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan
from torch.distributions import Independent, kl_divergence


def _detach(value):
    return value.detach() if torch.is_tensor(value) else value


def _plus(total, term):
    """``total + term``, where ``total`` None stands for a sum with no terms yet."""
    return term if total is None else total + term


def _minus(total, term):
    """``total - term``, where ``total`` None stands for a sum with no terms yet."""
    return -term if total is None else total - term


def _mean(particles, num_particles):
    """Average the per-particle losses (one particle: the loss itself, no division)."""
    total = None
    for particle in particles:
        total = _plus(total, particle if num_particles == 1 else particle / num_particles)
    return total


class _LeanTraces:
    """Mixin: guide and model traces without Pyro's eager bookkeeping (validation off only).

    ``get_importance_trace`` copies both traces to drop subsample sites and computes every
    site's log-density and score parts up front. Here the subsample sites are removed in
    place from the fresh traces and nothing else is computed: the particle losses below ask
    for exactly the densities they use, through the traces' memoising ``compute_*`` methods.

    The particle losses accumulate the *loss* (−ELBO) directly, term by term in Pyro's site
    order, rather than the ELBO from ``0.0`` and then negating it: in IEEE arithmetic
    ``-(((0 + a) - b) + c) == ((-a) + b) - c`` exactly, so values and gradients are bitwise
    Pyro's, with no ``0.0 +``, ``/ 1`` or final negation as extra tensor operations.
    """

    def _lean(self, guide):
        return not is_validation_enabled() and not isinstance(poutine.unwrap(guide), Messenger)

    def _get_trace(self, model, guide, args, kwargs):
        if not self._lean(guide):
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        for trace in (model_trace, guide_trace):
            for name in [name for name, site in trace.nodes.items() if site_is_subsample(site)]:
                trace.remove_node(name)
        model_trace.lean = True
        return model_trace, guide_trace

    def _lean_particles(self, model, guide, args, kwargs):
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            yield self._lean_particle(model_trace, guide_trace)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a tensor with gradients, without a host synchronisation."""
        if not self._lean(guide):
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return _mean(self._lean_particles(model, guide, args, kwargs), self.num_particles)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        if not self._lean(guide):
            return super().loss_and_grads(model, guide, *args, **kwargs)
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle = self._lean_particle(model_trace, guide_trace)
            loss = loss + _detach(particle) / self.num_particles
            trainable_params = any(
                site["type"] == "param"
                for trace in (model_trace, guide_trace)
                for site in trace.nodes.values()
            )
            if trainable_params and getattr(particle, "requires_grad", False):
                (particle / self.num_particles).backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if not getattr(model_trace, "lean", False):
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        surrogate = self._lean_particle(model_trace, guide_trace)
        return torch_item(surrogate), surrogate


class TraceELBO(_LeanTraces, Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` with the lean hot path (see :mod:`pyro_vae.objectives`)."""

    def _lean_particle(self, model_trace, guide_trace):
        """Trace_ELBO's surrogate loss; its value is the loss (``-elbo``) itself.

        Same terms in the same order as ``Trace_ELBO._differentiable_loss_particle``, as
        tensors. When a guide site is not reparameterised the surrogate's value differs
        from the loss; then the returned tensor is ``surrogate + (loss - surrogate).detach()``
        (the loss's value, the surrogate's gradient), as Pyro's ``differentiable_loss``.
        """
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        surrogate_loss = None
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                surrogate_loss = _minus(surrogate_loss, site["log_prob_sum"])
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                if not is_identically_zero(entropy_term):
                    surrogate_loss = _plus(surrogate_loss, entropy_term.sum())
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    log_r_site = log_r.sum_to(site["cond_indep_stack"])
                    surrogate_loss = _minus(surrogate_loss, (log_r_site * score_function_term).sum())
        if surrogate_loss is None:
            return 0.0
        if log_r is None:
            return surrogate_loss  # all reparameterised: the surrogate is the loss
        loss = None
        for trace, add in ((model_trace, _minus), (guide_trace, _plus)):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    loss = add(loss, _detach(site["log_prob_sum"]))
        return surrogate_loss + _detach(loss - surrogate_loss)


class MeanFieldELBO(_LeanTraces, TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` with the lean hot path (see :mod:`pyro_vae.objectives`)."""

    def _lean_particle(self, model_trace, guide_trace):
        """TraceMeanField_ELBO's particle loss: same terms, same order, only the densities used."""
        loss = None
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                model_trace.compute_log_prob(lambda n, _, name=name: n == name)
                loss = _minus(loss, model_site["log_prob_sum"])
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl_qp = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                model_trace.compute_log_prob(lambda n, _, name=name: n == name)
                guide_trace.compute_score_parts()
                entropy_term = guide_site["score_parts"].entropy_term
                loss = _minus(loss, model_site["log_prob_sum"]) + entropy_term.sum()
                continue
            kl_qp = scale_and_mask(kl_qp, scale=guide_site["scale"], mask=guide_site["mask"])
            if torch.is_tensor(kl_qp):
                kl_qp_sum = kl_qp.sum()
            else:
                kl_qp_sum = kl_qp * torch.Size(guide_site["fn"].batch_shape).numel()
            loss = _plus(loss, kl_qp_sum)
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                assert guide_site["infer"].get("is_auxiliary")
                guide_trace.compute_score_parts()
                loss = _plus(loss, guide_site["score_parts"].entropy_term.sum())
        return 0.0 if loss is None else loss

    def loss(self, model, guide, *args, **kwargs):
        if not self._lean(guide):
            return super().loss(model, guide, *args, **kwargs)
        loss = _mean(map(_detach, self._lean_particles(model, guide, args, kwargs)), self.num_particles)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss


class IWAE(RenyiELBO):
    """:class:`pyro.infer.RenyiELBO` with α = 0 and a ``differentiable_loss``.

    Pyro's class has only ``loss_and_grads``, which reads the loss back to the host every
    step and back-propagates only where the traces hold ``pyro.param`` sites. Here the same
    surrogate, Σ_k w̃_k (log p(x, z_k) − log q(z_k|x)) with self-normalised weights w̃_k
    (detached), computed as Pyro computes it, is returned as a tensor whose value is the loss
    −Σ_n log (1/K) Σ_k w_{n,k} and whose gradient is the surrogate's: the gradients are
    bitwise those of ``loss_and_grads``. This lets the trainer skip the per-call parameter
    registration and the host synchronisation, and lets DDP train the IWAE bound.
    """

    def __init__(self, **kwargs):
        super().__init__(alpha=0, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        log_weights, surrogates = [], []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_weight = surrogate = None
            for trace, add in ((model_trace, _plus), (guide_trace, _minus)):
                for site in trace.nodes.values():
                    if site["type"] != "sample":
                        continue
                    log_prob_sum = torch_sum(site["log_prob"], sum_dims)
                    log_weight = add(log_weight, log_prob_sum.detach())
                    if trace is model_trace:
                        surrogate = add(surrogate, log_prob_sum)
                        continue
                    _, score_function_term, entropy_term = site["score_parts"]
                    if not is_identically_zero(entropy_term):  # reparameterised: its path gradient
                        if not is_identically_zero(score_function_term):
                            raise NotImplementedError("iwae: a partially reparameterised guide site")
                        surrogate = add(surrogate, log_prob_sum)
            if log_weight is None:
                return 0.0
            log_weights.append(log_weight)
            surrogates.append(log_weight if surrogate is None else surrogate)
        vectorized = self.vectorize_particles and self.num_particles > 1
        log_weights = log_weights[0] if vectorized else torch.stack(log_weights)
        surrogates = surrogates[0] if vectorized else torch.stack(surrogates)
        log_mean_weight = torch.logsumexp(log_weights, dim=0, keepdim=True) - math.log(self.num_particles)
        normalized_weights = (log_weights - log_mean_weight).exp()
        surrogate_loss = -(normalized_weights * surrogates).sum() / self.num_particles
        return surrogate_loss + (-log_mean_weight.sum() - surrogate_loss).detach()


def univariate_base(fn):
    """The univariate base of an ``Independent(base, 1)`` distribution, or None."""
    if isinstance(fn, Independent) and fn.reinterpreted_batch_ndims == 1 and fn.base_dist.event_shape == ():
        return fn.base_dist
    return None


def _has_closed_form_kl(q, p):
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


class FreeBitsELBO(Trace_ELBO):
    """The ELBO with free bits (Kingma et al. 2016), for reparameterised guides.

    For a batch of N points (and K vectorised particles), with KL̄_{l,g} the KL term of group g
    of latent layer l averaged over the batch and the particles (g: one latent dimension with
    ``per="dimension"``, the whole layer with ``per="layer"``), the loss per particle is

        −Σ_n log p(x_n|z_n) + Σ_l β_l · N · Σ_g max(λ, KL̄_{l,g}),

    so a group whose average KL is below λ nats contributes the constant λ and no gradient:
    the optimiser gains nothing from pushing it further towards the prior. With λ = 0 the
    loss is the negative ELBO. The KL term of a group is the closed form KL(q ‖ p) where torch
    has one for the site (``analytic=True``, the objective ``elbo-analytic``), else the Monte
    Carlo term log q(z|·) − log p(z|·) at the drawn z (the objective ``elbo``). β_l is the
    site's scale (``poutine.scale``); sites masked out (β = 0) are dropped.

    ``free_bits`` is λ or a schedule t -> λ(t) (t in epochs), e.g. one that decays to 0 so
    that training ends on the ELBO (a closed-form KL is never negative, so λ = 0 clamps
    nothing); :meth:`at_epoch` sets λ(t), and the trainer calls it before each step, as it
    sets β.
    """

    def __init__(self, free_bits, per="dimension", analytic=False, **kwargs):
        super().__init__(**kwargs)
        self.schedule = free_bits if callable(free_bits) else None
        self.free_bits = float(free_bits(0.0) if self.schedule else free_bits)
        self.per = per
        self.analytic = analytic

    def at_epoch(self, t):
        """Set λ to the schedule's λ(t) at training progress ``t`` (epochs, fractional within one)."""
        if self.schedule is not None:
            self.free_bits = float(self.schedule(t))

    def differentiable_loss(self, model, guide, *args, **kwargs):
        total = None
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            total = _plus(total, self._particle(model_trace, guide_trace))
        return total / self.num_particles

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            loss = torch_item(self.differentiable_loss(model, guide, *args, **kwargs))
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if getattr(loss, "requires_grad", False):
            loss.backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def _particle(self, model_trace, guide_trace):
        loss = None
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            guide_site = guide_trace.nodes.get(name)
            if site["is_observed"] or guide_site is None:  # log p(x|z), or a latent of the model only
                loss = _minus(loss, site["log_prob_sum"])
                continue
            if guide_site["mask"] is False:
                continue
            if not guide_site["fn"].has_rsample:
                raise NotImplementedError(f"free bits need a reparameterised guide site, not {name!r}")
            kl = self._kl(site, guide_site)  # (..., groups), batch and particle dims first
            groups = kl.reshape(-1, kl.shape[-1])
            term = groups.mean(0).clamp(min=self.free_bits).sum() * len(groups)
            loss = _plus(loss, term * guide_site["scale"])
        return 0.0 if loss is None else loss

    def _kl(self, model_site, guide_site):
        """The unscaled KL term of a site per point, one column per group."""
        q, p, value = guide_site["fn"], model_site["fn"], guide_site["value"]
        analytic = self.analytic and _has_closed_form_kl(q, p)
        if self.per == "dimension":
            q, p = univariate_base(q), univariate_base(p)
            if q is None or p is None:
                raise NotImplementedError(
                    f"free bits per dimension need factorised distributions at site {guide_site['name']!r} "
                    "(Independent over one dimension) in the model and the guide; use free_bits_per: layer")
        if analytic:
            kl = kl_divergence(q, p)
        else:
            kl = q.log_prob(value) - p.log_prob(value)
        return kl if self.per == "dimension" else kl.unsqueeze(-1)
