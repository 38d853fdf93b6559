"""The hierarchy options: free bits, per-layer KL warm-up, batch normalisation in the latent
networks, and the ladder guide on the embedded digits with the library's defaults."""

import json

import pyro
import pytest
import torch
import torch.nn as nn
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_vae import VAE, ConfigError, log_likelihood, train
from pyro_vae.config import DEFAULTS
from pyro_vae.objectives import OBJECTIVES, FreeBitsELBO, MeanFieldELBO, TraceELBO
from pyro_vae.schedules import BETA_SCHEDULES


def small_vae(inference="top-down", beta=1.0):
    torch.manual_seed(0)
    return VAE(data_shape=6, latent_dim=[3, 2], inference=inference, beta=beta,
               latent_network={"name": "mlp", "hidden": [8], "activation": "tanh"})


X = torch.bernoulli(torch.full((10, 6), 0.4), generator=torch.Generator().manual_seed(1))


def seeded(objective, vae, x=X, seed=3):
    pyro.set_rng_seed(seed)
    return objective.differentiable_loss(vae.model, vae.guide, x)


def free_bits_by_hand(vae, x, free_bits, per="dimension", seed=3):
    """−Σ_n log p(x_n|z_n) + Σ_l β_l·N·Σ_g max(λ, mean_n KL_{n,l,g}), closed-form KL, one draw."""
    pyro.set_rng_seed(seed)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    loss = -model.nodes["x"]["fn"].log_prob(x).sum()
    for site, beta in zip(vae.sites, vae._betas):
        kl = kl_divergence(guide.nodes[site]["fn"].base_dist, model.nodes[site]["fn"].base_dist)  # (N, d)
        kl = kl if per == "dimension" else kl.sum(-1, keepdim=True)
        loss = loss + beta * len(x) * kl.mean(0).clamp(min=free_bits).sum()
    return loss


@pytest.mark.parametrize("per", ["dimension", "layer"])
@pytest.mark.parametrize("free_bits", [0.05, 0.3, 2.0])
def test_free_bits_loss_is_the_closed_form_clamp(per, free_bits):
    vae = small_vae(beta=[1.0, 0.5])
    objective = OBJECTIVES.build({"name": "elbo-analytic", "free_bits": free_bits, "free_bits_per": per})
    assert isinstance(objective, FreeBitsELBO)
    torch.testing.assert_close(seeded(objective, vae), free_bits_by_hand(vae, X, free_bits, per))


def test_free_bits_below_the_threshold_give_no_kl_gradient():
    """With λ above every dimension's KL, the loss is −log p(x|z) + constant: its gradients are
    those of the reconstruction alone (the β = 0 ELBO, which masks the latent terms)."""
    vae = small_vae()
    clamped = OBJECTIVES.build({"name": "elbo-analytic", "free_bits": 100.0})
    loss = seeded(clamped, vae)
    grads = torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)
    vae.beta = 0.0
    reconstruction = seeded(OBJECTIVES.build("elbo"), vae)
    expected = torch.autograd.grad(reconstruction, list(vae.parameters()), allow_unused=True)
    n_latent = sum(vae.latent_dims)
    assert loss.item() == pytest.approx(reconstruction.item() + len(X) * n_latent * 100.0, rel=1e-6)
    for g, e in zip(grads, expected):
        if e is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, e)


def test_free_bits_zero_is_the_plain_objective_and_bad_options_are_refused():
    assert type(OBJECTIVES.build({"name": "elbo", "free_bits": 0})) is TraceELBO
    assert type(OBJECTIVES.build({"name": "elbo-analytic", "free_bits": 0.0})) is MeanFieldELBO
    with pytest.raises(ConfigError, match="free_bits"):
        OBJECTIVES.build({"name": "elbo", "free_bits": -1})
    with pytest.raises(ConfigError, match="free_bits_per"):
        OBJECTIVES.build({"name": "elbo", "free_bits": 0.1, "free_bits_per": "unit"})


DECAYING = {"name": "linear", "start": 0.4, "beta": 0.0, "warmup_epochs": 4}


def test_free_bits_follow_their_schedule_and_end_on_the_elbo():
    """λ(t) from a schedule spec: 0.4 at t = 0, 0.3 at t = 1, and from t = 4 on λ = 0, where
    the closed-form loss is the negative ELBO (``TraceMeanField_ELBO``'s, same draw)."""
    vae = small_vae(beta=[1.0, 0.5])
    objective = OBJECTIVES.build({"name": "elbo-analytic", "free_bits": DECAYING})
    assert isinstance(objective, FreeBitsELBO) and objective.free_bits == 0.4
    objective.at_epoch(1.0)
    torch.testing.assert_close(seeded(objective, vae), free_bits_by_hand(vae, X, 0.3))
    objective.at_epoch(6.0)
    torch.testing.assert_close(seeded(objective, vae), seeded(OBJECTIVES.build("elbo-analytic"), vae))
    constant = OBJECTIVES.build({"name": "elbo-analytic", "free_bits": 0.2})
    constant.at_epoch(50.0)
    assert constant.free_bits == 0.2
    with pytest.raises(ConfigError, match="free_bits.*one number, not one per layer"):
        OBJECTIVES.build({"name": "elbo", "free_bits": {"name": "linear", "start": [1.0, 0.5], "beta": 0}})
    with pytest.raises(ConfigError, match="start"):
        OBJECTIVES.build({"name": "elbo", "free_bits": {"name": "linear", "start": -1.0}})


def test_the_trainer_sets_the_free_bits_of_each_step(tmp_path, monkeypatch):
    """The trainer calls ``at_epoch(t)`` before every step, t = epoch + step / batches, as it
    sets β; the run's loss is then the free-bits loss at λ(t)."""
    seen = []
    original = FreeBitsELBO.at_epoch
    monkeypatch.setattr(FreeBitsELBO, "at_epoch", lambda self, t: (seen.append(t), original(self, t)))
    config = {"data": {"name": "digits"}, "train": {"epochs": 2, "batch_size": 512},
              "objective": {"name": "elbo-analytic", "free_bits": DECAYING}}
    run = train(config, tmp_path / "run", progress=False)
    batches = -(-len(run.splits.train) // 512)
    assert seen == [epoch + step / batches for epoch in range(2) for step in range(batches)]


def test_monte_carlo_free_bits_clamp_the_batch_mean_of_the_sampled_kl():
    """``elbo`` with free bits: the clamp applies to mean_n [log q(z_nd) − log p(z_nd)] at the
    drawn z (the bottom-up guide's lower layer, which has no closed form, included)."""
    vae = small_vae(inference="bottom-up")
    objective = OBJECTIVES.build({"name": "elbo", "free_bits": 0.2})
    pyro.set_rng_seed(3)
    guide = poutine.trace(vae.guide).get_trace(X)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(X)
    expected = -model.nodes["x"]["fn"].log_prob(X).sum()
    for site in vae.sites:
        value = guide.nodes[site]["value"]
        q, p = guide.nodes[site]["fn"].base_dist, model.nodes[site]["fn"].base_dist
        kl = q.log_prob(value) - p.log_prob(value)
        expected = expected + len(X) * kl.mean(0).clamp(min=0.2).sum()
    torch.testing.assert_close(seeded(objective, vae), expected)
    analytic = OBJECTIVES.build({"name": "elbo-analytic", "free_bits": 0.2})
    assert torch.isfinite(seeded(analytic, vae))  # z1: Monte Carlo, z2: closed form


def test_free_bits_with_particles_average_over_particles_and_points():
    vae = small_vae()
    one = seeded(OBJECTIVES.build({"name": "elbo-analytic", "free_bits": 1e3}), vae)
    four = seeded(OBJECTIVES.build({"name": "elbo-analytic", "free_bits": 1e3, "num_particles": 4}), vae)
    assert four.item() == pytest.approx(one.item(), rel=0.05)  # the KL part, N·d·λ, dominates
    assert abs(four.item() - one.item()) > 0  # the particles are different draws


def test_per_layer_warmup_is_one_key():
    schedule = BETA_SCHEDULES.build({"name": "linear", "warmup_epochs": [2, 8]})
    assert schedule(0) == [0.0, 0.0]
    assert schedule(1) == [0.5, 0.125]
    assert schedule(4) == [1.0, 0.5]
    assert schedule(10) == [1.0, 1.0]
    both = BETA_SCHEDULES.build({"name": "linear", "beta": [1.0, 2.0], "start": 0.5, "warmup_epochs": [1, 2]})
    assert both(1) == [1.0, 1.25]
    with pytest.raises(ConfigError, match="different lengths"):
        BETA_SCHEDULES.build({"name": "linear", "beta": [1.0, 1.0, 1.0], "warmup_epochs": [1, 2]})
    with pytest.raises(ConfigError, match="warmup_epochs"):
        BETA_SCHEDULES.build({"name": "linear", "warmup_epochs": [1, 0]})
    vae = small_vae()
    vae.beta = schedule(1)
    assert vae.beta == (0.5, 0.125)


def test_latent_networks_have_batch_norm_by_default():
    assert DEFAULTS["model"]["latent_network"]["batch_norm"] is True
    vae = VAE(data_shape=6, latent_dim=[4, 2])
    for net in (*vae.upward, *vae.downward):
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
        assert [m.num_features for m in norms] == [100, 100]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in vae.encoder.modules())
    plain = VAE(data_shape=6, latent_dim=[4, 2], latent_network={"name": "mlp", "hidden": [5]})
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    with pytest.raises(ConfigError, match="batch_norm"):
        VAE(data_shape=6, latent_dim=[4, 2], latent_network={"name": "mlp", "batch_norm": "yes"})


@pytest.mark.parametrize("inference", ["bottom-up", "top-down", "residual"])
def test_a_hierarchy_starts_as_the_one_layer_model(inference):
    """The default latent networks start with a zero head: p(z1|z2) = N(0, I) and the
    bottom-up q(z2|·) = N(0, I) = p(z2), so at initialisation z2 costs no KL and every
    draw's log p(z1|z2) is the one-layer model's log N(z1; 0, I); with the residual guide
    q(z1|z2, x) is the one-layer guide with the same encoder."""
    assert DEFAULTS["model"]["latent_network"]["zero_init_head"] is True
    torch.manual_seed(0)
    vae = VAE(data_shape=6, latent_dim=[3, 2], inference=inference)
    flat = VAE(data_shape=6, latent_dim=3)
    flat.encoder.load_state_dict(vae.encoder.state_dict())
    pyro.set_rng_seed(1)
    guide = poutine.trace(vae.guide).get_trace(X)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(X)
    guide.compute_log_prob()
    model.compute_log_prob()
    z1, z2 = guide.nodes["z1"]["value"], guide.nodes["z2"]["value"]
    standard = torch.distributions.Normal(0.0, 1.0)
    torch.testing.assert_close(guide.nodes["z2"]["log_prob"], model.nodes["z2"]["log_prob"])
    torch.testing.assert_close(model.nodes["z1"]["log_prob"], standard.log_prob(z1).sum(-1))
    torch.testing.assert_close(guide.nodes["z2"]["log_prob"], standard.log_prob(z2).sum(-1))
    if inference == "residual":
        flat_q = poutine.trace(flat.guide).get_trace(X).nodes["z"]["fn"].base_dist
        q = guide.nodes["z1"]["fn"].base_dist
        torch.testing.assert_close((q.loc, q.scale), (flat_q.loc, flat_q.scale))
    started = VAE(data_shape=6, latent_dim=[3, 2], latent_network={"name": "mlp", "hidden": [5]})
    assert started.downward[0].net[-1].weight.abs().sum() > 0  # an explicit spec without the option
    with pytest.raises(ConfigError, match="zero_init_head"):
        VAE(data_shape=6, latent_dim=[3, 2], latent_network={"name": "mlp", "zero_init_head": 1})


@pytest.mark.parametrize("inference", ["bottom-up", "top-down", "residual"])
def test_unit_conditional_variance_learns_the_mean_alone(inference):
    """conditional_variance="unit": p(z1|z2) = N(μ1(z2), I) with μ1 the network's single
    output; the residual guide is then q(z1|z2, x) = N(μ1 + μ̂, σ̂²)."""
    torch.manual_seed(0)
    vae = VAE(data_shape=6, latent_dim=[3, 2], inference=inference, conditional_variance="unit",
              latent_network={"name": "mlp", "hidden": [8], "activation": "tanh"})
    assert vae.downward[0].out_shape == (1, 3)
    pyro.set_rng_seed(1)
    guide = poutine.trace(vae.guide).get_trace(X)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(X)
    p, z2 = model.nodes["z1"]["fn"].base_dist, guide.nodes["z2"]["value"]
    with torch.no_grad():
        loc = vae.downward[0](z2)[..., 0, :]
        torch.testing.assert_close(p.loc, loc)
        torch.testing.assert_close(p.scale, torch.ones_like(loc))
        if inference == "residual":
            shift, log_scale2 = vae.encode_layers(X)[0]
            q = guide.nodes["z1"]["fn"].base_dist
            torch.testing.assert_close((q.loc, q.scale), (loc + shift, torch.exp(0.5 * log_scale2)))
            means = vae.guide_means(X)
            torch.testing.assert_close(means[0], vae.downward[0](means[1])[..., 0, :] + shift)
    assert vae.decode_top(torch.zeros(4, 2), sample_layers=False).shape == (4, 6)
    assert torch.isfinite(log_likelihood(vae.model, vae.guide, X, num_samples=20).log_px).all()
    with pytest.raises(ConfigError, match="conditional_variance"):
        VAE(data_shape=6, latent_dim=[3, 2], conditional_variance="fixed")


def test_bounded_conditional_variance_stays_between_its_bounds():
    """conditional_variance="bounded": σ1² = 0.05 + 0.95·sigmoid(v + 4.6) of the network's second
    output v, so 0.05 < σ1² < 1 whatever v; a zero head starts at 0.05 + 0.95·sigmoid(4.6)."""
    torch.manual_seed(0)
    vae = VAE(data_shape=6, latent_dim=[3, 2], conditional_variance="bounded",
              latent_network={"name": "mlp", "hidden": [8], "activation": "tanh", "zero_init_head": True})
    assert vae.downward[0].out_shape == (2, 3)
    z2 = torch.randn(5, 2)
    with torch.no_grad():
        loc, logvar = vae.conditional_params(0, z2)
        torch.testing.assert_close(loc, vae.downward[0](z2)[..., 0, :])
        start = torch.tensor(0.05 + 0.95 / (1 + torch.exp(torch.tensor(-4.6)).item()))
        torch.testing.assert_close(logvar, start.log().expand(5, 3))
        head = vae.downward[0].net[-1]
        for bias, variance in ((-1e3, 0.05), (1e3, 1.0)):
            head.bias.fill_(bias)
            torch.testing.assert_close(vae.conditional_params(0, z2)[1].exp(), torch.full((5, 3), variance))
        head.bias.zero_()
        head.weight.normal_(0, 10.0)
        variance = vae.conditional_params(0, z2)[1].exp()
    assert ((variance >= 0.05) & (variance <= 1.0)).all() and variance.std() > 0.05
    assert torch.isfinite(log_likelihood(vae.model, vae.guide, X, num_samples=20).log_px).all()


def test_batch_norm_normalises_in_training_and_uses_running_statistics_in_eval():
    vae = VAE(data_shape=6, latent_dim=[4, 2],
              latent_network={"name": "mlp", "hidden": [7], "batch_norm": True})
    norm = vae.upward[0].net[2]
    assert isinstance(norm, nn.BatchNorm1d)
    hidden = vae.upward[0].net[:2]
    z = torch.randn(50, 4) * 3 + 2
    torch.testing.assert_close(norm(hidden(z)).mean(0), torch.zeros(7), atol=1e-5, rtol=0)
    before = norm.running_mean.clone()
    h = hidden(z)
    with torch.no_grad():  # train mode without gradients: the running statistics, unchanged
        expected = (h - norm.running_mean) / (norm.running_var + norm.eps).sqrt() * norm.weight + norm.bias
        torch.testing.assert_close(norm(h), expected)
        assert vae.encode(x=torch.ones(1, 6))[0].shape == (1, 2)
    assert torch.equal(norm.running_mean, before)
    vae.eval()
    x = torch.bernoulli(torch.full((20, 6), 0.5))
    first = log_likelihood(vae.model, vae.guide, x, num_samples=50).log_px
    assert torch.equal(norm.running_mean, before)
    assert torch.isfinite(first).all()
    one = vae.decode_top(torch.zeros(1, 2))  # a batch of one works in eval mode
    assert one.shape == (1, 6)


@pytest.mark.parametrize("inference", ["top-down", None], ids=["ladder", "default-guide"])
def test_hierarchy_does_not_collapse_on_digits_with_the_defaults(tmp_path, inference):
    """The ladder guide, and the default (residual) guide, on the embedded digits with the
    library's defaults (batch normalisation, zero heads, unit variance of p(z1|z2)) keep a
    non-zero KL in the top layer and beat the independent-pixel baseline; without batch
    normalisation the same runs collapse to KL ≈ 0 (measured: test log p(x) −27.25 nats, the
    independent-Bernoulli baseline; see docs/results-hierarchy.md)."""
    model = {"latent_dim": [16, 8]} if inference is None else {"latent_dim": [16, 8], "inference": inference}
    run = train({"model": model, "train": {"epochs": 30}}, tmp_path / "run", progress=False)
    assert run.vae.inference == (inference or "residual")
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert sum(last["val_kl"].values()) > 1.0
    assert last["active_units"]["z2"] >= 2
    train_x = run.splits.train
    p = train_x.mean(0).clamp(1e-3, 1 - 1e-3)
    val = run.val
    baseline = (val * p.log() + (1 - val) * (1 - p).log()).flatten(1).sum(1).mean().item()
    assert last["val_elbo"] > baseline + 1.0


def test_residual_guide_kl_depends_on_the_bottom_up_pass_alone():
    """q(z1|z2,x) = N(μ + σ μ̂, σ² σ̂²) against p(z1|z2) = N(μ, σ²): the KL is
    ½ Σ (μ̂² + σ̂² − log σ̂² − 1) whatever the prior's network, which moves q's mean only."""
    vae = small_vae("residual")

    def z1_terms():
        pyro.set_rng_seed(0)
        guide = poutine.trace(vae.guide).get_trace(X)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(X)
        q, p = guide.nodes["z1"]["fn"].base_dist, model.nodes["z1"]["fn"].base_dist
        return kl_divergence(q, p), q.loc

    with torch.no_grad():
        kl, loc = z1_terms()
        shift, log_scale2 = vae.encode_layers(X)[0]
        assert torch.allclose(kl, 0.5 * (shift**2 + log_scale2.exp() - log_scale2 - 1), atol=1e-5)
        for parameter in vae.downward.parameters():
            parameter.add_(0.3)
        moved_kl, moved_loc = z1_terms()
    assert torch.allclose(moved_kl, kl, atol=1e-5) and not torch.allclose(moved_loc, loc)


def test_skip_connections_feed_every_layer_to_the_decoder():
    torch.manual_seed(0)
    vae = VAE(data_shape=6, latent_dim=[3, 2], skip_connections=True)
    assert vae.decoder.in_shape == (5,)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    z1, z2 = torch.randn(4, 3), torch.randn(4, 2)

    def likelihood_of_x(z2):
        trace = poutine.trace(poutine.condition(vae.model, data={"z1": z1, "z2": z2})).get_trace(x)
        return trace.nodes["x"]["fn"].log_prob(x)

    assert not torch.allclose(likelihood_of_x(z2), likelihood_of_x(z2 + 1.0))  # x depends on z2 given z1
    assert vae.decode_top(torch.zeros(3, 2)).shape == (3, 6) and vae.reconstruct(x).shape == (4, 6)
    assert torch.isfinite(log_likelihood(vae.model, vae.guide, x, num_samples=20).log_px).all()
    assert VAE(data_shape=6, latent_dim=3, skip_connections=True).decoder.in_shape == (3,)  # one layer: no-op
    plain = VAE(data_shape=6, latent_dim=[3, 2])
    assert plain.decoder.in_shape == (3,)
    with pytest.raises(ConfigError, match="skip_connections"):
        VAE(data_shape=6, latent_dim=[3, 2], skip_connections="yes")
