"""Encoder/decoder export: the exported programs reproduce the library's outputs."""

import pytest
import torch

from pyro_vae import VAE
from pyro_vae.export import export_programs, save_onnx, save_torch_export


def _vae(latent_dim):
    torch.manual_seed(0)
    return VAE(data_shape=(1, 8, 8), latent_dim=latent_dim).eval()


def _inputs(vae, n=5):
    x = torch.bernoulli(torch.full((n, 1, 8, 8), 0.4), generator=torch.Generator().manual_seed(1))
    return x, torch.randn(n, vae.latent_dims[-1], generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("latent_dim", [3, [4, 2]])
def test_torch_export_round_trip(tmp_path, latent_dim):
    vae = _vae(latent_dim)
    paths = save_torch_export(vae, tmp_path)
    x, z = _inputs(vae, n=7)  # another batch size than the example the programs were traced with
    encoder = torch.export.load(str(paths["encoder"])).module()
    decoder = torch.export.load(str(paths["decoder"])).module()
    with torch.no_grad():
        for got, want in zip(encoder(x), vae.encode(x)):
            torch.testing.assert_close(got, want)
        torch.testing.assert_close(decoder(z), vae.decode_top(z, mean=True, sample_layers=False))
    assert set(export_programs(vae)) == {"encoder", "decoder"}


def test_onnx_export_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    vae = _vae([4, 2])
    paths = save_onnx(vae, tmp_path)
    x, z = _inputs(vae, n=3)
    mean, logvar = ReferenceEvaluator(onnx.load(str(paths["encoder"]))).run(None, {"x": x.numpy()})
    (decoded,) = ReferenceEvaluator(onnx.load(str(paths["decoder"]))).run(None, {"z": z.numpy()})
    with torch.no_grad():
        want_mean, want_logvar = vae.encode(x)
        want_x = vae.decode_top(z, mean=True, sample_layers=False)
    torch.testing.assert_close(torch.from_numpy(mean), want_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(logvar), want_logvar, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(decoded), want_x, rtol=1e-4, atol=1e-5)
