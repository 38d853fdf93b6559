"""The VAE as a pair of Pyro programs: ``model`` p(z) p(x|z) and ``guide`` q(z|x).

One latent layer (``latent_dim=20``) has the site ``"z"``. A hierarchy
(``latent_dim=[d_1, ..., d_L]``, top layer last) has sites ``"z1"`` … ``"zL"``:

    model:  z_L ~ p(z_L),  z_l ~ N(μ_l(z_{l+1}), σ_l²(z_{l+1})) for l = L−1 … 1,  x ~ p(x | z_1)

(σ_l = 1 with ``conditional_variance="unit"``; σ_l² learned within (0.05, 1) with
``"bounded"``), and a guide chosen by ``inference`` (default ``"residual"``):

* ``"bottom-up"`` (Burda et al. 2015): q(z_1|x) q(z_2|z_1) … q(z_L|z_{L−1}); the layers below
  the top carry no closed-form KL to the model's p(z_l|z_{l+1}) (which depends on z_{l+1},
  drawn after z_l), so ``TraceMeanField_ELBO`` uses the Monte Carlo term for them and the
  ELBO stays unbiased;
* ``"top-down"`` (ladder, Sønderby et al. 2016): a deterministic bottom-up pass gives
  (μ̂_l, σ̂_l²) per layer from the same networks fed with means; then from the top,
  q(z_L|x) = N(μ̂_L, σ̂_L²) and q(z_l | z_{l+1}, x) is the precision-weighted product of
  N(μ̂_l, σ̂_l²) and the generative p(z_l | z_{l+1}):
  σ_q⁻² = σ̂_l⁻² + σ_l⁻²,  μ_q = σ_q² (μ̂_l σ̂_l⁻² + μ_l σ_l⁻²);
* ``"residual"`` (top-down with residual normals, Vahdat & Kautz 2020): the same top-down
  order and bottom-up pass, but (μ̂_l, log σ̂_l²) are read as a shift and scale relative to
  the generative p(z_l | z_{l+1}) = N(μ_l, σ_l²):
  q(z_l | z_{l+1}, x) = N(μ_l + σ_l μ̂_l, σ_l² σ̂_l²), so that
  KL(q ‖ p) = ½ Σ (μ̂_l² + σ̂_l² − log σ̂_l² − 1) per point depends on the bottom-up pass
  alone, not on where the prior's mean μ_l(z_{l+1}) happens to be. With the latent
  networks' zero-initialised heads (the default) it starts as the one-layer guide; on
  MNIST after 10 epochs it is 15.6 nats of test log p(x) ahead of the bottom-up guide with
  the same objective (``docs/results-hierarchy.md``), hence the default.

β-VAE: each layer's sample statements are wrapped in ``poutine.scale(scale=β_l)`` in the
model **and** the guide, so the ELBO's latent terms E_q[log p(z_l|·) − log q(z_l|·)]
are multiplied by β_l while E_q[log p(x|z_1)] is not; for one layer,

    loss(β) = −E_q[log p(x|z)] + β · KL(q(z|x) ‖ p(z)).

``poutine.scale`` rejects 0, so β = 0 uses ``poutine.mask(mask=False)``, which drops the
latent terms but still draws z with the reparameterisation.
"""

import contextlib

import pyro
import torch
import torch.nn as nn
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from torch.distributions import register_kl

from .distributions import _DiagonalNormal, diagonal_normal
from .errors import ConfigError, DataError
from .likelihoods import build_likelihood
from .networks import build_network, eval_mode
from .priors import build_prior
from .validation import check_choice, check_int, check_ints, check_number

LOGVAR_BOUND = 30.0
"""``|log σ²|`` of Gaussian latents is clamped to this bound, so exp() cannot overflow."""

INFERENCE = ("bottom-up", "top-down", "residual")
CONDITIONAL_VARIANCES = ("learned", "unit", "bounded")
BOUNDED_VARIANCE_MIN = 0.05
"""The least σ_l² of p(z_l | z_{l+1}) with ``conditional_variance="bounded"`` (σ_l ≥ 0.22)."""
BOUNDED_VARIANCE_OFFSET = 4.6
"""Added to the network's variance output before the sigmoid, so that a zero head gives
σ_l² = 0.05 + 0.95 · sigmoid(4.6) ≈ 0.99: the hierarchy starts within 1 % of its one-layer
model's variance, on the flat end of the sigmoid, where σ_l² moves only when pushed steadily."""


def latent_scale(beta):
    """The handler that multiplies a latent site's log-densities by ``beta``."""
    if beta == 1:
        return contextlib.nullcontext()
    if beta == 0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


def check_beta(beta):
    """``beta`` as a float, rejecting negative, infinite or non-numeric values."""
    return check_number(beta, "beta", minimum=0)


class _MonteCarloKLNormal(_DiagonalNormal):
    """A diagonal Gaussian guide site whose KL to the model's site has no closed form here.

    In a bottom-up guide, z_l (l < L) is drawn *before* z_{l+1}, on which the model's
    p(z_l|z_{l+1}) depends; E_q[log q(z_l|·) − log p(z_l|z_{l+1})] is then not
    E_q[KL(q(z_l|·) ‖ p(z_l|z_{l+1}))] at the drawn z_{l+1} (z_{l+1} depends on z_l).
    Raising ``NotImplementedError`` for that pair makes ``TraceMeanField_ELBO`` (the
    objective ``elbo-analytic``) use the Monte Carlo term for these sites, which is correct.
    """


@register_kl(_MonteCarloKLNormal, _DiagonalNormal)
def _no_closed_form_kl(q, p):
    raise NotImplementedError("the model's site depends on guide sites drawn after this one")


def bounded_logvar(output):
    """log σ² with σ² = m + (1 − m) · sigmoid(output + c) in (m, 1), m = :data:`BOUNDED_VARIANCE_MIN`,
    c = :data:`BOUNDED_VARIANCE_OFFSET`."""
    sigmoid = torch.sigmoid(output + BOUNDED_VARIANCE_OFFSET)
    return torch.log(BOUNDED_VARIANCE_MIN + (1 - BOUNDED_VARIANCE_MIN) * sigmoid)


def gaussian_params(output):
    """Split a network output ``(*batch, 2, d)`` into mean and bounded log-variance."""
    loc, logvar = output.unbind(-2)
    return loc, logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)


class VAE(nn.Module):
    """A variational autoencoder whose ``model`` and ``guide`` are Pyro functions.

    Args:
        data_shape: shape of one data point (int or tuple), e.g. ``784`` or ``(1, 28, 28)``.
        latent_dim: size of z, or a sequence ``[d_1, ..., d_L]`` for a hierarchy (top last).
        prior: p(z) (of the top layer); a name from :data:`pyro_vae.priors.PRIORS`, a spec
            mapping, or a module.
        likelihood: p(x|z_1); a name from :data:`pyro_vae.likelihoods.LIKELIHOODS`, etc.
        encoder, decoder: networks for q(z_1|x) and p(x|z_1) (see :mod:`pyro_vae.networks`).
        latent_network: network spec of the conditional Gaussians between latent layers,
            p(z_l|z_{l+1}) and q(z_{l+1}|z_l) (hierarchies only; default: an MLP with two
            hidden layers of 100 tanh units and batch normalisation, Sønderby et al. 2016,
            whose head starts at zero, ``zero_init_head``: at initialisation every
            p(z_l|z_{l+1}) is N(0, I), so the hierarchy starts as the one-layer model with
            prior N(0, I) on z_1, and the bottom-up q(z_{l+1}|z_l) is N(0, I) too).
        inference: the guide of a hierarchy: ``"residual"`` (the default; top-down with
            residual normals), ``"top-down"`` (ladder) or ``"bottom-up"``.
        skip_connections: hierarchies only; if true the decoder sees every layer,
            p(x | z_1, …, z_L) with input [z_1, …, z_L] concatenated, instead of z_1 alone.
        conditional_variance: hierarchies only; ``"unit"`` (the default): the latent network
            gives the mean alone and p(z_l | z_{l+1}) = N(μ_l(z_{l+1}), I); ``"learned"``: it
            gives the mean and the variance; ``"bounded"``: it gives the mean and a variance
            confined to (0.05, 1) (:func:`bounded_logvar`), fine enough for p(z_l) to model
            structure below the unit scale, bounded away from the collapse of the learned
            variance.
        beta: β ≥ 0, or one per layer; settable between steps (``vae.beta = 4``).
        name: prefix of the parameters in Pyro's param store (``pyro.module``).

    ``SVI(vae.model, vae.guide, optim, Trace_ELBO())`` trains it. As with every
    ``pyro.module``, call ``pyro.clear_param_store()`` before training a new instance
    under the same ``name`` in one process.

    Two attributes are for training loops (the library's trainer sets them for its steps):

    * ``register_params`` (default True): whether ``model`` and ``guide`` register the
      parameters with ``pyro.module``, which ``SVI`` and Pyro's ``loss_and_grads`` need
      to find them. A loop that optimises ``vae.parameters()`` itself and back-propagates
      ``differentiable_loss`` can turn it off and save a walk over every parameter per call.
    * ``network_autocast`` (default None): a dtype such as ``torch.bfloat16`` runs the
      networks under ``torch.autocast`` (mixed precision) and casts their outputs back to
      the input's dtype, so that every density, KL and sample is computed in full precision.
    """

    def __init__(
        self,
        data_shape=784,
        latent_dim=20,
        prior="standard-normal",
        likelihood="bernoulli",
        encoder="mlp",
        decoder="mlp",
        latent_network=None,
        inference="residual",
        beta=1.0,
        name="vae",
        skip_connections=False,
        conditional_variance="unit",
    ):
        super().__init__()
        self.data_shape = check_ints(data_shape, "data_shape")
        self.latent_dims = check_ints(latent_dim, "latent_dim")
        check_choice(inference, "inference", INFERENCE)
        check_choice(conditional_variance, "conditional_variance", CONDITIONAL_VARIANCES)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name (the param-store prefix) must be a non-empty string, got {name!r}.")
        if not isinstance(skip_connections, bool):
            raise ConfigError(f"skip_connections must be true or false, got {skip_connections!r}.")
        self.inference = inference
        self.conditional_variance = conditional_variance
        self.skip_connections = skip_connections and len(self.latent_dims) > 1
        self.name = name
        self.register_params = True
        self.network_autocast = None
        depth = len(self.latent_dims)
        self.sites = ("z",) if depth == 1 else tuple(f"z{layer}" for layer in range(1, depth + 1))
        self.beta = beta
        latent_network = latent_network or {"name": "mlp", "hidden": [100, 100], "activation": "tanh",
                                            "batch_norm": True, "zero_init_head": True}
        dims = self.latent_dims
        self.prior = build_prior(prior, dims[-1])
        self.likelihood = build_likelihood(likelihood, self.data_shape)
        self.encoder = build_network(encoder, self.data_shape, (2, dims[0]))
        decoder_in = sum(dims) if self.skip_connections else dims[0]
        self.decoder = build_network(decoder, (decoder_in,), self.likelihood.param_shape)
        # q(z_{l+1} | z_l) and p(z_l | z_{l+1}) for l = 1 … L−1
        self.upward = nn.ModuleList(build_network(latent_network, (dims[i],), (2, dims[i + 1]))
                                    for i in range(depth - 1))
        outputs = 1 if conditional_variance == "unit" else 2  # the mean, or (mean, variance output)
        self.downward = nn.ModuleList(build_network(latent_network, (dims[i + 1],), (outputs, dims[i]))
                                      for i in range(depth - 1))
        if hasattr(self.prior, "attach"):
            self.prior.attach(self)

    @property
    def latent_dim(self):
        """The latent size of a one-layer VAE, or the tuple of layer sizes of a hierarchy."""
        return self.latent_dims[0] if len(self.latent_dims) == 1 else self.latent_dims

    @property
    def beta(self):
        """β of each layer (a float for one layer, a tuple for a hierarchy)."""
        return self._betas[0] if len(self._betas) == 1 else self._betas

    @beta.setter
    def beta(self, value):
        depth = len(self.latent_dims)
        if isinstance(value, (list, tuple)):
            if len(value) != depth:
                raise ConfigError(f"beta has {len(value)} entries for {depth} latent layers.")
            self._betas = tuple(check_beta(b) for b in value)
        else:
            self._betas = (check_beta(value),) * depth

    def _sample(self, layer, fn):
        with latent_scale(self._betas[layer]):
            return pyro.sample(self.sites[layer], fn)

    def encode_layers(self, x):
        """(mean, log-variance) of q for every layer along the deterministic path of means."""
        params = [gaussian_params(self._net(self.encoder, x))]
        for net in self.upward:
            params.append(gaussian_params(self._net(net, params[-1][0])))
        return params

    def encode(self, x):
        """The mean and log-variance of the top layer's q along the path of means (in eval mode:
        batch normalisation with its running statistics, so one point can be encoded)."""
        with eval_mode(self):
            return self.encode_layers(x)[-1]

    def check_input(self, x):
        """With Pyro validation on (its default), raise :class:`~pyro_vae.errors.DataError`
        unless ``x`` is a tensor of the parameters' dtype shaped ``(batch, *data_shape)``
        inside the likelihood's support. The trainer checks its data once and then runs
        with validation off, so the hot loop pays nothing."""
        if not is_validation_enabled():
            return
        dtype = next(self.parameters()).dtype
        if not torch.is_tensor(x) or x.dtype != dtype:
            what = f"{x.dtype} tensor" if torch.is_tensor(x) else type(x).__name__
            raise DataError(f"x must be a {dtype} tensor like the model's parameters, got a {what}.")
        if x.dim() and x.shape[0] == 0:
            raise DataError(f"x is an empty batch (shape {tuple(x.shape)}); a batch needs at least one "
                            "data point.")
        self.likelihood.validate(x)  # shape (batch, *data_shape), finite, inside the support

    def _net(self, net, inputs):
        """``net(inputs)``, under ``torch.autocast`` when ``network_autocast`` is set."""
        if self.network_autocast is None:
            return net(inputs)
        with torch.autocast(inputs.device.type, dtype=self.network_autocast):
            outputs = net(inputs)
        return outputs.to(inputs.dtype)

    def _register(self):
        if self.register_params:
            pyro.module(self.name, self)

    def model(self, x=None, batch_size=None):
        """p(z_L) ∏ p(z_l|z_{l+1}) p(x|z_1) with x observed; ``x`` has shape ``(batch, *data_shape)``.

        With ``x=None`` the model draws ``batch_size`` points: x is sampled from p(x|z_1)
        (the prior predictive; ``pyro.infer.Predictive(vae.model, num_samples=S)(None,
        batch_size=N)``). For replicated data given x (the posterior predictive), see
        :func:`pyro_vae.posterior_predictive`.
        """
        if x is None:
            if batch_size is None:
                raise DataError("model(x=None) draws x and needs batch_size (the number of points).")
            size, device = check_int(batch_size, "batch_size"), next(self.parameters()).device
        else:
            self.check_input(x)
            size, device = x.shape[0], x.device
        self._register()
        with pyro.plate("data", size, device=device):
            zs = [self._sample(-1, self.prior())]
            for layer in reversed(range(len(self.downward))):
                zs.insert(0, self._sample(layer, diagonal_normal(*self.conditional_params(layer, zs[0]))))
            return pyro.sample("x", self.likelihood(self._net(self.decoder, self._decoder_input(zs))), obs=x)

    def conditional_params(self, layer, z):
        """(mean, log-variance) of the model's p(z_l | z_{l+1} = z), l = ``layer`` + 1 (the index
        into ``downward``); the log-variance is 0 with ``conditional_variance="unit"`` and
        :func:`bounded_logvar` of the second output with ``"bounded"``."""
        output = self._net(self.downward[layer], z)
        if self.conditional_variance == "learned":
            return gaussian_params(output)
        if self.conditional_variance == "bounded":
            loc, variance_output = output.unbind(-2)
            return loc, bounded_logvar(variance_output)
        loc = output[..., 0, :]
        return loc, torch.zeros_like(loc)

    def _decoder_input(self, zs):
        """The decoder's input from the layers ``[z_1, …, z_L]``: z_1, or all of them concatenated."""
        return torch.cat(zs, dim=-1) if self.skip_connections else zs[0]

    def guide(self, x):
        """q(z|x): diagonal Gaussians with mean and log-variance from the networks, reparameterised."""
        self.check_input(x)
        self._register()
        with pyro.plate("data", x.shape[0], device=x.device):
            if self.inference != "bottom-up" and self.upward:
                self._top_down_guide(x)
            else:
                h = x
                top = len(self.upward)
                for layer, net in enumerate([self.encoder, *self.upward]):
                    fn = diagonal_normal(*gaussian_params(self._net(net, h)))
                    h = self._sample(layer, fn if layer == top else _MonteCarloKLNormal(fn.base_dist, 1))

    def _top_down_guide(self, x):
        bottom_up = self.encode_layers(x)
        z = self._sample(-1, diagonal_normal(*bottom_up[-1]))
        for layer in reversed(range(len(self.downward))):
            prior = self.conditional_params(layer, z)
            z = self._sample(layer, diagonal_normal(*self._combine(bottom_up[layer], prior)))

    def _combine(self, bottom_up, prior):
        """(mean, log-variance) of q(z_l | z_{l+1}, x) from the bottom-up pass's (μ̂, log σ̂²)
        and the generative p(z_l | z_{l+1})'s (μ, log σ²) (module docstring)."""
        (loc_q, logvar_q), (loc_p, logvar_p) = bottom_up, prior
        if self.inference == "residual":
            logvar = (logvar_p + logvar_q).clamp(-LOGVAR_BOUND, LOGVAR_BOUND)
            return loc_p + torch.exp(0.5 * logvar_p) * loc_q, logvar
        precision_q, precision_p = torch.exp(-logvar_q), torch.exp(-logvar_p)
        precision = precision_q + precision_p
        return (loc_q * precision_q + loc_p * precision_p) / precision, -torch.log(precision)

    def guide_means(self, x):
        """The guide's mean of every layer along the path of means, ``[m_1, …, m_L]``: each
        layer q conditions on is set to its own mean (for ``bottom-up`` the bottom-up
        pass's means; for ``top-down`` and ``residual`` the means of q(z_l | z_{l+1} = m_{l+1}, x))."""
        bottom_up = self.encode_layers(x)
        if self.inference == "bottom-up" or not self.upward:
            return [loc for loc, _ in bottom_up]
        means = [bottom_up[-1][0]]
        for layer in reversed(range(len(self.downward))):
            prior = self.conditional_params(layer, means[0])
            means.insert(0, self._combine(bottom_up[layer], prior)[0])
        return means

    @torch.no_grad()
    def reconstruct(self, x):
        """E[x | z = m(x)]: the decoder's mean with every layer at its guide mean along the path
        of means (:meth:`guide_means`; z_1 alone without skip connections)."""
        with eval_mode(self):
            return self.likelihood.mean(self.decoder(self._decoder_input(self.guide_means(x))))

    @torch.no_grad()
    def decode_top(self, z_top, mean=True, sample_layers=True):
        """E[x|z_1] (``mean=True``) or x ~ p(x|z_1), with z_1 reached from the top layer's z_L.

        The layers in between are drawn from p(z_l|z_{l+1}) (``sample_layers=True``) or set
        to their means, which makes the output a deterministic function of z_L (traversals).
        """
        zs = [z_top]
        with eval_mode(self):  # batch normalisation with its running statistics
            for layer in reversed(range(len(self.downward))):
                loc, logvar = self.conditional_params(layer, zs[0])
                zs.insert(0, diagonal_normal(loc, logvar).sample() if sample_layers else loc)
            params = self.decoder(self._decoder_input(zs))
        return self.likelihood.mean(params) if mean else self.likelihood(params).sample()

    @torch.no_grad()
    def sample(self, num_samples, mean=True):
        """``num_samples`` draws from the model: E[x|z] (``mean=True``) or x ~ p(x|z)."""
        return self.decode_top(self.prior().sample((num_samples,)), mean)
