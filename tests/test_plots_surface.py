"""Figure fixes of issue 21: every epoch inside the ELBO panel, panels that say which split they
show, per-site latent terms that may be negative, and the latent space's split in its title."""

import numpy as np
import torch

from pyro_vae import VAE
from pyro_vae.plots import figure_to_rgb, plot_latent_space, plot_training_curves


def _records(n=12, sites=("z",)):
    out = []
    for e in range(1, n + 1):
        kl = {site: (4.0 if i == len(sites) - 1 else -1.47) for i, site in enumerate(sites)}
        out.append({"epoch": e, "train_loss": 200.0 / e + 30, "beta": 1.0, "lr": 1e-3, "seconds": 1.0,
                    "val_elbo": -(150.0 / e + 31), "val_recon": -(150.0 / e + 28), "val_kl": kl,
                    "active_units": {site: 2 for site in sites}})
    return out


def test_the_elbo_panel_holds_every_epoch():
    records = _records()
    figure = plot_training_curves(records)
    low, high = figure.axes[0].get_ylim()
    values = [v for r in records for v in (-r["train_loss"], r["val_elbo"])]
    assert low <= min(values) and high >= max(values)  # the first epochs (far below) included


def test_panels_name_their_split_and_one_site_shows_a_kl():
    titles = [ax.get_title() for ax in plot_training_curves(_records()).axes]
    assert titles[1].startswith("validation E_q[log p(x|z)]")
    assert titles[2] == "validation KL(q(z|x) ‖ p(z)) [nats / point]"
    legends = [t.get_text() for t in plot_training_curves(_records()).axes[0].get_legend().get_texts()]
    assert legends == ["training: − loss (β-weighted)", "validation ELBO"]


def test_per_site_terms_of_a_hierarchy_are_not_called_kl_nor_clipped_at_zero():
    figure = plot_training_curves(_records(sites=("z1", "z2")))
    panel = figure.axes[2]
    assert panel.get_title() == "validation latent terms E_q[log q − log p] [nats / point]"
    assert panel.get_ylim()[0] < -1.47  # the negative bottom-up z1 term is visible
    labels = [line.get_label() for line in panel.lines]
    assert labels == ["z1", "z2", "sum = KL of the joint"]
    np.testing.assert_allclose(panel.lines[-1].get_ydata(), 4.0 - 1.47)


def test_latent_space_names_its_split():
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3).eval()
    x = torch.bernoulli(torch.full((20, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    figure = plot_latent_space(vae, x, split="validation + test")
    assert figure.axes[0].get_title() == "Posterior means of the latents (20 validation + test points)"
    rgb = figure_to_rgb(figure)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
