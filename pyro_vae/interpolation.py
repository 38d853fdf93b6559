r"""Interpolation between two inputs in the latent space of a VAE.

Both inputs are encoded to the means of the top layer's q, :math:`z_0 = \mu(x_0)` and
:math:`z_1 = \mu(x_1)`; the path between them is decoded to E[x | z] along the path of
means (:meth:`~pyro_vae.VAE.decode_top` with the layers in between at their means).

* linear: :math:`z(t) = (1 - t)\, z_0 + t\, z_1`;
* spherical (slerp, Shoemake 1985; White 2016 for generative models), with
  :math:`\omega = \arccos(\langle z_0, z_1\rangle / (\lVert z_0\rVert \lVert z_1\rVert))`:

  .. math:: z(t) = \frac{\sin((1 - t)\,\omega)}{\sin\omega}\, z_0 + \frac{\sin(t\,\omega)}{\sin\omega}\, z_1,

  which keeps the norm between those of the ends (under a standard normal prior, codes
  concentrate near a sphere, and the linear midpoint has a small norm that the prior
  rarely produces). For nearly parallel ends (:math:`\sin\omega < 10^{-6}`) it is the
  linear path.

``t`` runs over ``steps`` evenly spaced values from 0 to 1, ends included.
"""

import torch

from .errors import ConfigError
from .networks import eval_mode
from .validation import check_choice, check_int

METHODS = ("linear", "spherical")


def _times(steps, like):
    steps = check_int(steps, "steps", minimum=2)
    return torch.linspace(0, 1, steps, dtype=like.dtype, device=like.device).unsqueeze(-1)


def lerp(z0, z1, steps=9):
    """``steps`` points of the line from ``z0`` to ``z1`` (1-d tensors): ``(steps, d)``."""
    t = _times(steps, z0)
    return (1 - t) * z0 + t * z1


def slerp(z0, z1, steps=9):
    """``steps`` points of the spherical path from ``z0`` to ``z1`` (see the module docstring)."""
    t = _times(steps, z0)
    norms = z0.norm() * z1.norm()
    if norms == 0:
        return lerp(z0, z1, steps)
    omega = torch.arccos((z0 @ z1 / norms).clamp(-1, 1))
    if torch.sin(omega) < 1e-6:
        return lerp(z0, z1, steps)
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


PATHS = {"linear": lerp, "spherical": slerp}


@torch.no_grad()
def interpolate(vae, x0, x1, steps=9, method="linear"):
    """Decoded interpolation from input ``x0`` to ``x1`` (each of shape ``data_shape``):
    ``(codes, images)`` with codes ``(steps, d)`` of the top layer and E[x | z] of shape
    ``(steps, *data_shape)``."""
    check_choice(method, "method", METHODS)
    if tuple(x0.shape) != tuple(vae.data_shape) or tuple(x1.shape) != tuple(vae.data_shape):
        raise ConfigError(f"interpolate needs two points of shape {tuple(vae.data_shape)}, got "
                          f"{tuple(x0.shape)} and {tuple(x1.shape)}.")
    with eval_mode(vae):  # batch normalisation with its running statistics, not those of the pair
        z0, z1 = vae.encode(torch.stack([x0, x1]))[0]
    codes = PATHS[method](z0, z1, steps)
    return codes, vae.decode_top(codes, mean=True, sample_layers=False)
