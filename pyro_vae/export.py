"""The encoder and decoder of a VAE as programs that run without Pyro: ``torch.export``
(``.pt2``) and, with the optional ``onnx`` package, ONNX (``.onnx``).

* :class:`Encoder`: x ``(N, *data_shape)`` -> ``(mean, logvar)`` of the top layer's q along
  the path of means (:meth:`~pyro_vae.VAE.encode`);
* :class:`Decoder`: z ``(N, d_top)`` -> E[x | z] ``(N, *data_shape)``, the layers in between
  at their means (:meth:`~pyro_vae.VAE.decode_top` with ``mean=True, sample_layers=False``).

Both are plain ``nn.Module`` wrappers over the VAE's networks, exported in eval mode (batch
normalisation with its running statistics); the batch dimension is exported as dynamic.
Load the ``.pt2`` files with ``torch.export.load(path).module()``, the ``.onnx`` files with
any ONNX runtime (inputs ``x`` / ``z``).
"""

from pathlib import Path

import pyro
import torch
from torch import nn

from .atomic import atomic_write
from .errors import ConfigError
from .networks import eval_mode

EXAMPLE_BATCH = 2
"""Size of the example batch the programs are traced with (the batch size stays dynamic)."""


class Encoder(nn.Module):
    """x -> (mean, logvar) of q for the top latent layer."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        return self.vae.encode(x)


class Decoder(nn.Module):
    """z (top layer) -> E[x | z] along the path of means."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode_top(z, mean=True, sample_layers=False)


def _parts(vae):
    """``{name: (module, example input, input name)}`` of the encoder and decoder, on vae's device."""
    parameter = next(vae.parameters())
    x = torch.zeros(EXAMPLE_BATCH, *vae.data_shape, dtype=parameter.dtype, device=parameter.device)
    z = torch.zeros(EXAMPLE_BATCH, vae.latent_dims[-1], dtype=parameter.dtype, device=parameter.device)
    return {"encoder": (Encoder(vae), x, "x"), "decoder": (Decoder(vae), z, "z")}


def export_programs(vae):
    """``{"encoder": ExportedProgram, "decoder": ExportedProgram}`` by ``torch.export.export``, in
    eval mode (batch normalisation with its running statistics; ``vae``'s mode is restored)."""
    programs = {}
    batch = torch.export.Dim("batch", min=1)
    with eval_mode(vae), torch.no_grad(), pyro.validation_enabled(False):  # no data-dependent checks
        for name, (module, example, _) in _parts(vae).items():
            programs[name] = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    return programs


def save_torch_export(vae, folder):
    """Write ``folder/encoder.pt2`` and ``folder/decoder.pt2``; returns ``{name: path}``."""
    paths = {}
    for name, program in export_programs(vae).items():
        path = Path(folder) / f"{name}.pt2"
        with atomic_write(path) as tmp, open(tmp, "wb") as handle:
            torch.export.save(program, handle)
        paths[name] = path
    return paths


def save_onnx(vae, folder):
    """Write ``folder/encoder.onnx`` and ``folder/decoder.onnx`` (needs ``pip install onnx``);
    returns ``{name: path}``. The encoder's outputs are named ``mean`` and ``logvar``, the
    decoder's ``x_mean``."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'pyro-vae[onnx]'.") from None
    outputs = {"encoder": ["mean", "logvar"], "decoder": ["x_mean"]}
    paths = {}
    with eval_mode(vae), torch.no_grad(), pyro.validation_enabled(False):
        for name, (module, example, input_name) in _parts(vae).items():
            path = Path(folder) / f"{name}.onnx"
            axes = {input_name: {0: "batch"}, **{output: {0: "batch"} for output in outputs[name]}}
            with atomic_write(path) as tmp:
                torch.onnx.export(module, (example,), str(tmp), input_names=[input_name],
                                  output_names=outputs[name], dynamic_axes=axes, dynamo=False)
            paths[name] = path
    return paths
