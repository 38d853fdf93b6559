import warnings

import numpy as np
import pytest

from pyro_vae import VAE, ConfigError, DataError, log_likelihood
from pyro_vae.arviz_export import (
    load_inference_data,
    log_px_from,
    save_inference_data,
    to_inference_data,
)
from pyro_vae.data import binarize_fixed, load_dataset

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az


@pytest.fixture(scope="module")
def digits():
    return binarize_fixed(load_dataset("digits").val, seed=0)[:6]


@pytest.mark.parametrize("latent_dim", [3, [4, 2]])
def test_groups_and_dims_survive_a_netcdf_round_trip(latent_dim, digits, tmp_path):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=latent_dim)
    idata = to_inference_data(vae, digits, num_samples=50, point_index=np.arange(10, 16), seed=0)
    path = save_inference_data(idata, tmp_path / "out" / "posterior.nc")
    for data in (idata, load_inference_data(path)):
        for site, d in zip(vae.sites, vae.latent_dims):
            z = data.posterior[site]
            assert z.dims == ("chain", "draw", "point", f"{site}_dim")
            assert z.shape == (1, 50, 6, d)
        assert data.sample_stats["log_weight"].dims == ("chain", "draw", "point")
        assert data.log_likelihood["x"].shape == (1, 50, 6)
        assert list(data.posterior["point"].values) == list(range(10, 16))
    loaded = load_inference_data(path)
    np.testing.assert_allclose(loaded.sample_stats["log_weight"], idata.sample_stats["log_weight"])
    save_inference_data(idata, path)  # overwriting a file that is (or was) open works


def test_datatree_of_newer_arviz_saves_and_loads(digits, tmp_path, monkeypatch):
    import pyro_vae.arviz_export as export

    idata = to_inference_data(VAE(data_shape=(1, 8, 8), latent_dim=3), digits, num_samples=10, seed=0)
    tree = idata.to_datatree() if hasattr(idata, "to_datatree") else idata
    monkeypatch.setattr(export, "arviz_major_version", lambda: 1)  # the ArviZ >= 1 code paths
    loaded = load_inference_data(save_inference_data(tree, tmp_path / "tree.nc"))
    assert loaded.posterior["z"].dims == ("chain", "draw", "point", "z_dim")
    np.testing.assert_allclose(log_px_from(loaded), log_px_from(idata))


def test_arviz_summaries_work_on_the_posterior(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2])
    idata = to_inference_data(vae, digits[:3], num_samples=100, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one chain: no R-hat
        summary = az.summary(idata, var_names=["z2"])
        ess = az.ess(idata, var_names=["z1"])
    assert len(summary) == 3 * 2 and np.all(np.isfinite(summary["mean"]))
    assert ess["z1"].shape == (3, 4) and np.all(ess["z1"].values > 10)


def test_weights_reproduce_the_importance_sampled_log_likelihood(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2])
    idata = to_inference_data(vae, digits, num_samples=2000, seed=0)
    reference = log_likelihood(vae.model, vae.guide, digits, num_samples=2000).log_px.numpy()
    np.testing.assert_allclose(log_px_from(idata), reference, atol=0.15)
    lw = idata.sample_stats["log_weight"].values
    lq = idata.sample_stats["log_q"].values
    assert np.all(np.isfinite(lw)) and np.all(np.isfinite(lq))


def test_weights_ignore_beta_and_draws_follow_the_seed(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    first = to_inference_data(vae, digits, num_samples=20, seed=3)
    vae.beta = 4.0
    second = to_inference_data(vae, digits, num_samples=20, seed=3)
    np.testing.assert_allclose(first.posterior["z"].values, second.posterior["z"].values)
    np.testing.assert_allclose(first.sample_stats["log_weight"], second.sample_stats["log_weight"], rtol=1e-6)


def test_batches_give_the_same_result_as_one_call(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    whole = to_inference_data(vae, digits, num_samples=5, seed=1)
    parts = to_inference_data(vae, digits, num_samples=5, seed=1, batch_size=2)
    assert parts.posterior["z"].shape == whole.posterior["z"].shape


def test_bad_input_is_rejected(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    with pytest.raises(ConfigError, match="num_samples must be a positive integer, got 0"):
        to_inference_data(vae, digits, num_samples=0)
    with pytest.raises(DataError, match="point_index"):
        to_inference_data(vae, digits, num_samples=2, point_index=[1, 2])
    with pytest.raises(DataError, match="non-empty"):
        to_inference_data(vae, digits[:0], num_samples=2)
