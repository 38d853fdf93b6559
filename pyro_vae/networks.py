"""Encoder and decoder networks, chosen by name.

Convention (any ``nn.Module`` that follows it can be passed instead of a name):

* an **encoder** maps ``x`` of shape ``(*batch, *data_shape)`` to a tensor of shape
  ``(*batch, 2, latent_dim)``: the guide's mean and log-variance stacked on dim ``-2``;
* a **decoder** maps ``z`` of shape ``(*batch, latent_dim)`` to the likelihood's
  parameters, a tensor of shape ``(*batch, *likelihood.param_shape)``.

Builders receive ``in_shape`` and ``out_shape`` from the library, so the output head
always matches the latent size and the chosen likelihood. Registered networks:

* ``mlp`` [hidden, activation, batch_norm, zero_init_head]: fully connected, any shapes;
  ``batch_norm: true`` puts a :class:`StepBatchNorm` between each hidden layer and its
  activation (Sønderby et al. 2016 use batch normalisation in every deterministic layer);
  ``zero_init_head: true`` starts the linear head at zero weights and bias, so the network
  outputs zeros until it has learned otherwise (the latent networks of a hierarchy, which
  then start at p(z_l | z_{l+1}) = N(0, I), see :class:`pyro_vae.model.VAE`);
* ``conv`` [channels, hidden, activation]: for images ``(C, H, W)``. As an encoder,
  stride-2 convolutions (kernel 4) halve H and W once per entry of ``channels``, then a
  hidden dense layer and a linear head; as a decoder, the mirror image (dense layers, then
  stride-2 transposed convolutions). A decoder's ``out_shape`` is ``(*P, C, H, W)``: the
  last layer has ``prod(P)·C`` channels, reshaped to ``(*P, C, H, W)`` (e.g. ``(2, C, H,
  W)`` for a predicted Gaussian scale). By default ``channels`` has one layer per halving
  that keeps the feature map at least 4×4 (28×28: [32, 64] down to 7×7; 64×64:
  [32, 64, 64, 64] down to 4×4). H and W must be divisible by 2^len(channels);
* ``conv-burgess`` [activation]: the published conv network of the β-VAE papers (Burgess et
  al. 2018) for 64×64 images, 4 convolutions of 32 channels and two dense layers of 256,
  He-initialised (:func:`conv_burgess`); the preset for sprites/dSprites.
"""

import contextlib
import math

import torch
import torch.nn as nn

from .errors import ConfigError
from .registry import Registry, suggest
from .validation import check_int, check_ints

NETWORKS = Registry("network")

ACTIVATIONS = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def make_activation(name):
    """The activation module called ``name``."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(
            f"Unknown activation '{name}'.{suggest(name, ACTIVATIONS)} "
            f"Valid activations: {', '.join(sorted(ACTIVATIONS))}."
        )
    return ACTIVATIONS[name]()


class Network(nn.Module):
    """Base: ``net`` maps ``(N, *in_shape)`` to ``(N, prod(out_shape))``; ``forward`` keeps
    the leading batch dims, so ``z`` of shape ``(particles, batch, latent_dim)`` gives
    ``(particles, batch, *out_shape)``."""

    def __init__(self, in_shape, out_shape):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    def forward(self, inputs):
        batch_shape = inputs.shape[: inputs.dim() - len(self.in_shape)]
        flat = self.net(inputs.reshape(-1, *self.in_shape))
        return flat.reshape(*batch_shape, *self.out_shape)


class StepBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` that normalises with the batch's statistics only in a training step.

    In train mode *with gradients enabled* (an optimisation step) it normalises over the
    batch and updates the running mean and variance, as ``BatchNorm1d``. In eval mode, and
    under ``torch.no_grad`` (every estimator, diagnostic and figure), it uses the running
    statistics and leaves them unchanged: ``(h − running_mean)/√(running_var + ε)·γ + β``.
    So a point's log-density never depends on the other points of its batch outside
    training, and a single point can be encoded.
    """

    def forward(self, inputs):
        if self.training and not torch.is_grad_enabled():
            return nn.functional.batch_norm(inputs, self.running_mean, self.running_var, self.weight,
                                            self.bias, False, 0.0, self.eps)
        return super().forward(inputs)


@NETWORKS.register("mlp")
class MLP(Network):
    """Fully connected network: flatten ``in_shape``, hidden layers, linear head to ``out_shape``."""

    def __init__(self, in_shape, out_shape, hidden=(400,), activation="relu", batch_norm=False,
                 zero_init_head=False):
        super().__init__(in_shape, out_shape)
        for option, value in (("batch_norm", batch_norm), ("zero_init_head", zero_init_head)):
            if not isinstance(value, bool):
                raise ConfigError(f"Option '{option}' of 'mlp' must be true or false, got {value!r}.")
        widths = [math.prod(self.in_shape), *_check_widths(hidden)]
        layers = [nn.Flatten()]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers.append(nn.Linear(width_in, width_out))
            if batch_norm:
                layers.append(StepBatchNorm(width_out))
            layers.append(make_activation(activation))
        head = nn.Linear(widths[-1], math.prod(self.out_shape))
        if zero_init_head:  # after the default initialisation, so the random stream is the same
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.net = nn.Sequential(*layers, head)


@NETWORKS.register("conv")
def conv(in_shape, out_shape, channels=None, hidden=256, activation="relu"):
    """A :class:`ConvEncoder` for image inputs, a :class:`ConvDecoder` for image outputs."""
    hidden = check_int(hidden, "Option 'hidden' of 'conv' (one dense layer)")
    if len(in_shape) == 3:
        return ConvEncoder(in_shape, out_shape, channels, hidden, activation)
    if len(in_shape) == 1 and len(out_shape) >= 3:
        return ConvDecoder(in_shape, out_shape, channels, hidden, activation)
    raise ConfigError(
        f"The 'conv' network needs images shaped (C, H, W) as encoder input or decoder output, "
        f"got in_shape {tuple(in_shape)} and out_shape {tuple(out_shape)}; use 'mlp' for other shapes."
    )


def _conv_plan(height, width, channels):
    """The widths of the stride-2 layers and the (H, W) of the smallest feature map."""
    if channels is None:
        depth = 0
        while (height >> depth) % 2 == 0 and (width >> depth) % 2 == 0 and min(height, width) >> depth >= 8:
            depth += 1
        channels = [32] + [64] * (depth - 1) if depth else []
    widths = _check_widths(channels)
    factor = 2 ** len(widths)
    if not widths:
        raise ConfigError(
            f"The 'conv' network cannot halve {height}x{width} images (H and W must be even; sizes "
            "such as 28x28 and 64x64 work). Use 'mlp' for these images."
        )
    if height % factor or width % factor:
        raise ConfigError(
            f"The 'conv' network halves H and W once per entry of 'channels' ({channels!r}), so they "
            f"must be divisible by {factor}, but the images are {height}x{width}. Give fewer channels."
        )
    return widths, (height // factor, width // factor)


class ConvEncoder(Network):
    """Image ``(C, H, W)`` -> stride-2 convolutions -> dense ``hidden`` -> linear head to ``out_shape``."""

    def __init__(self, in_shape, out_shape, channels=None, hidden=256, activation="relu"):
        super().__init__(in_shape, out_shape)
        widths, (h, w) = _conv_plan(*self.in_shape[1:], channels)
        layers = []
        for c_in, c_out in zip([self.in_shape[0], *widths[:-1]], widths):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), make_activation(activation)]
        dense = [widths[-1] * h * w, *_dense_widths(hidden)]
        layers.append(nn.Flatten())
        for d_in, d_out in zip(dense[:-1], dense[1:]):
            layers += [nn.Linear(d_in, d_out), make_activation(activation)]
        layers.append(nn.Linear(dense[-1], math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)


class ConvDecoder(Network):
    """``in_shape`` -> dense ``hidden`` -> dense to the smallest feature map -> stride-2
    transposed convolutions to ``prod(P)·C`` channels, reshaped to ``out_shape = (*P, C, H, W)``."""

    def __init__(self, in_shape, out_shape, channels=None, hidden=256, activation="relu"):
        super().__init__(in_shape, out_shape)
        widths, (h, w) = _conv_plan(*self.out_shape[-2:], channels)
        dense = [math.prod(self.in_shape), *_dense_widths(hidden), widths[-1] * h * w]
        layers = []
        for d_in, d_out in zip(dense[:-1], dense[1:]):
            layers += [nn.Linear(d_in, d_out), make_activation(activation)]
        layers.append(nn.Unflatten(1, (widths[-1], h, w)))
        reverse = widths[::-1]
        for c_in, c_out in zip(reverse, [*reverse[1:], math.prod(self.out_shape[:-2])]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), make_activation(activation)]
        self.net = nn.Sequential(*layers[:-1])  # no activation on the output


def _dense_widths(hidden):
    """The dense layers of a conv network: one width (the ``conv`` option) or a list (presets)."""
    return [hidden] if isinstance(hidden, int) else list(hidden)


@NETWORKS.register("conv-burgess")
def conv_burgess(in_shape, out_shape, activation="relu"):
    """The convolutional network of the β-VAE papers for 64×64 images (Burgess et al. 2018,
    appendix A.1; Higgins et al. 2017 for CelebA/chairs): encoder 4 convolutions with 32
    channels, kernel 4, stride 2 (64 → 4), dense 256, 256, then the head; decoder the mirror
    image. Weights He-normal initialised (fan-in, ReLU gain), biases zero (see
    :func:`he_init`)."""
    if len(in_shape) != 3 and len(out_shape) < 3:
        raise ConfigError(f"The 'conv-burgess' network needs images shaped (C, H, W) as encoder input or "
                          f"decoder output, got in_shape {tuple(in_shape)} and out_shape {tuple(out_shape)}.")
    kind = ConvEncoder if len(in_shape) == 3 else ConvDecoder
    return he_init(kind(in_shape, out_shape, [32, 32, 32, 32], (256, 256), activation))


def he_init(module):
    """He (Kaiming) normal initialisation, fan-in mode with the ReLU gain, of every convolution,
    transposed convolution and linear layer of ``module``; zero biases. PyTorch's default
    (uniform with bound 1/sqrt(fan_in), a gain of 1/sqrt(3)) shrinks the signal by about
    sqrt(6) per ReLU layer, so after the seven layers of the ``conv-burgess`` encoder the
    means barely differ between images at the start (docs/results-disentanglement.md)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return module


def _check_widths(hidden):
    return list(check_ints(hidden, "Hidden widths", allow_empty=True))


@contextlib.contextmanager
def eval_mode(module):
    """``module`` in eval mode within the block (batch normalisation uses its running statistics
    and leaves them as they are), then back in the mode it had."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def build_network(spec, in_shape, out_shape):
    """An ``nn.Module`` from a name, a ``{"name": ..., **options}`` spec, or a module as is
    (checked once: it must map a batch of ``in_shape`` inputs to ``out_shape`` outputs)."""
    if isinstance(spec, nn.Module):
        _check_module(spec, tuple(in_shape), tuple(out_shape))
        return spec
    return NETWORKS.build(spec, in_shape=tuple(in_shape), out_shape=tuple(out_shape))


@torch.no_grad()
def _check_module(module, in_shape, out_shape):
    """Run ``module`` once on zeros of shape ``(2, *in_shape)`` (in eval mode, so no running
    statistics change) and require outputs of shape ``(2, *out_shape)``."""
    parameter = next(module.parameters(), None)
    x = torch.zeros((2, *in_shape)) if parameter is None else parameter.new_zeros((2, *in_shape))
    was_training = module.training
    module.eval()
    try:
        y = module(x)
    except Exception as error:  # any failure of the user's forward, in words
        raise ConfigError(f"The network {type(module).__name__} cannot take inputs of shape (batch, "
                          f"{', '.join(map(str, in_shape))}): {type(error).__name__}: {error}") from None
    finally:
        module.train(was_training)
    if not torch.is_tensor(y) or tuple(y.shape) != (2, *out_shape):
        got = tuple(y.shape[1:]) if torch.is_tensor(y) else type(y).__name__
        raise ConfigError(f"The network {type(module).__name__} maps inputs of shape {in_shape} to {got}; "
                          f"it must give outputs of shape {out_shape} per point.")
