import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pyro_vae import VAE, evaluate, train
from pyro_vae.cli import main
from pyro_vae.data import binarize_fixed, load_dataset
from pyro_vae.diagnostics import dimension_scores, kl_per_dimension
from pyro_vae.distributions import diagonal_normal
from pyro_vae.figures import FIGURES, plot_run
from pyro_vae.plots import (
    as_images,
    plot_kl_per_dimension,
    plot_latent_space,
    plot_reconstructions,
    plot_samples,
    plot_training_curves,
    plot_traversals,
    save_figure,
    traversal_values,
)
from pyro_vae.rundir import RunDir

NETS = {"encoder": {"hidden": [16]}, "decoder": {"hidden": [16]}}
TINY = {"train": {"epochs": 2, "batch_size": 256}}


def tiny_run(directory, model, data=None):
    config = {"model": {**NETS, **model}, **TINY}
    if data is not None:
        config["data"] = data
    train(config, directory, progress=False)
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot-runs")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    vectors = (rng.normal(size=(300, 10)) + labels[:, None]).astype(np.float32)
    np.savez(root / "vectors.npz", x=vectors, y=labels)
    vector_data = {"name": "array", "path": str(root / "vectors.npz"), "key": "x", "labels_key": "y"}
    return {
        "one-layer": tiny_run(root / "one", {"latent_dim": 3}),
        "hierarchy": tiny_run(root / "two", {"latent_dim": [4, 2], "latent_network": {"hidden": [16]}}),
        "vectors": tiny_run(root / "vec", {"latent_dim": 2, "likelihood": {"name": "gaussian"}}, vector_data),
    }


@pytest.fixture(scope="module")
def digits():
    return binarize_fixed(load_dataset("digits").val, seed=0)[:40]


def check_figure(figure, path):
    assert isinstance(figure, Figure) and figure.axes
    save_figure(figure, path)
    assert path.stat().st_size > 1000


@pytest.mark.filterwarnings("ignore::pyro_vae.marginal.ImportanceSamplingWarning")
@pytest.mark.parametrize("kind", ["one-layer", "vectors"])  # the hierarchy: test_cli_plot_and_sample
def test_plot_run_writes_every_figure(runs, kind):
    run_dir = runs[kind]
    if kind == "one-layer":
        evaluate(run_dir, num_samples=32, progress=False)
    written = plot_run(run_dir)
    expected = set(FIGURES) if kind == "one-layer" else set(FIGURES) - {"diagnostics"}
    assert set(written) == expected
    for name, path in written.items():
        assert path == run_dir / "figures" / f"{name}.png" and path.stat().st_size > 1000


@pytest.mark.parametrize("latent_dim", [3, [4, 2]])
def test_each_figure_of_a_model_is_a_figure_with_axes(latent_dim, digits, tmp_path):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=latent_dim)
    labels = torch.arange(len(digits)) % 4
    check_figure(plot_reconstructions(vae, digits[:10]), tmp_path / "recon.png")
    check_figure(plot_samples(vae, 10), tmp_path / "samples.png")
    check_figure(plot_traversals(vae, digits, steps=5), tmp_path / "traversals.png")
    check_figure(plot_latent_space(vae, digits, labels), tmp_path / "latent.png")
    check_figure(plot_latent_space(vae, digits), tmp_path / "latent-unlabelled.png")
    figure = plot_kl_per_dimension(vae, digits)
    assert len(figure.axes) == len(vae.sites)
    check_figure(figure, tmp_path / "kl.png")


def test_non_image_data_are_drawn_as_lines(tmp_path):
    vae = VAE(data_shape=10, latent_dim=[3, 1], likelihood={"name": "gaussian"})
    x = torch.randn(12, 10)
    assert as_images(x, vae.data_shape) is None
    for name, figure in {
        "recon": plot_reconstructions(vae, x[:5]),
        "samples": plot_samples(vae, 30),
        "traversals": plot_traversals(vae, x),
        "latent": plot_latent_space(vae, x, torch.arange(12) % 2),
    }.items():
        assert any(ax.lines or ax.images or ax.collections for ax in figure.axes)
        check_figure(figure, tmp_path / f"{name}.png")


def test_image_detection():
    assert as_images(torch.rand(2, 784), (784,)).shape == (2, 28, 28)
    assert as_images(torch.rand(2, 3, 5, 5), (3, 5, 5)).shape == (2, 5, 5, 3)
    assert as_images(torch.rand(2, 16), (16,)) is None  # too small to be an image
    assert as_images(torch.rand(2, 2, 5, 5), (2, 5, 5)) is None


def test_kl_per_dimension_matches_the_analytic_kl_of_one_layer(digits):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=5)
    loc, logvar = vae.encode(digits)
    exact = torch.distributions.kl_divergence(diagonal_normal(loc, logvar), vae.prior()).mean()
    kl = kl_per_dimension(vae, digits)["z"]
    assert kl.shape == (5,) and np.all(kl >= 0)
    assert kl.sum() == pytest.approx(exact.item(), rel=1e-4)


def test_kl_per_dimension_of_a_hierarchy_adds_up_to_the_elbo_kl(digits):
    from pyro_vae.arviz_export import to_inference_data

    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2])
    kl = kl_per_dimension(vae, digits, num_particles=64)
    assert kl["z1"].shape == (4,) and kl["z2"].shape == (2,)
    idata = to_inference_data(vae, digits, num_samples=64, seed=0)
    # E_q[log q(z|x) - log p(z)] = E_q[log p(x|z)] - E_q[log w]
    reference = float((idata.log_likelihood["x"] - idata.sample_stats["log_weight"]).mean())
    assert kl["z1"].sum() + kl["z2"].sum() == pytest.approx(reference, abs=0.1)


def test_non_factorised_prior_falls_back_to_variance_of_posterior_means(digits, tmp_path):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3, prior={"name": "mixture", "num_components": 3})
    assert kl_per_dimension(vae, digits)["z"] is None
    values, label = dimension_scores(vae, digits)["z"]
    assert values.shape == (3,) and "variance" in label
    grid = traversal_values(vae, digits, steps=5)
    assert grid.shape == (3, 5) and torch.all(grid[:, 1:] > grid[:, :-1])
    check_figure(plot_traversals(vae, digits, steps=5), tmp_path / "traversals.png")


def test_decoding_along_means_is_deterministic_for_hierarchies():
    vae = VAE(data_shape=(1, 8, 8), latent_dim=[4, 2])
    z = torch.randn(3, 2)
    assert torch.equal(vae.decode_top(z, sample_layers=False), vae.decode_top(z, sample_layers=False))
    assert vae.decode_top(z, sample_layers=False).shape == (3, 1, 8, 8)


def test_training_curves_show_the_metrics_that_were_recorded(tmp_path):
    base = [{"epoch": e, "train_loss": 30.0 - e, "beta": min(1.0, e / 3), "lr": 1e-3, "seconds": 1.0}
            for e in range(1, 6)]
    assert len(plot_training_curves(base).axes) == 2  # ELBO and β; no validation yet is fine
    full = [dict(r, val_elbo=-31.0 + r["epoch"], val_recon=-25.0 + r["epoch"],
                 val_kl={"z1": 3.0, "z2": 1.0}, active_units={"z1": 4, "z2": 2}) for r in base]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))
    figure = plot_training_curves(RunDir(tmp_path).read_metrics())
    assert [ax.get_title() for ax in figure.axes] == [
        "ELBO [nats / point]", "validation E_q[log p(x|z)] [nats / point]",
        "validation latent terms E_q[log q − log p] [nats / point]", "active units (validation)", "β",
    ]
    check_figure(figure, tmp_path / "curves.png")
    per_layer_beta = [dict(r, beta=[1.0, 0.5]) for r in base]
    assert len(plot_training_curves(per_layer_beta).axes[-1].lines) == 2


def test_cli_plot_and_sample(runs, tmp_path, capsys):
    run_dir = runs["hierarchy"]
    assert main(["plot", str(run_dir), "--out-dir", str(tmp_path / "figs")]) == 0
    for name in set(FIGURES) - {"diagnostics"}:  # not evaluated
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 1000
    assert main(["sample", str(run_dir), "-n", "10"]) == 0
    assert (run_dir / "figures" / "samples-10.png").stat().st_size > 0
    assert main(["sample", str(run_dir), "-n", "5", "--draw", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", str(run_dir), "-n", "0"]) == 2
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
