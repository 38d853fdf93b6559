"""The disentangling objectives against independent computations (pyro_vae.disentangling_objectives)."""

import math
import warnings

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE, ConfigError
from pyro_vae.disentangling_objectives import (
    LatentTerms,
    decompose_kl,
    dip_penalty,
    log_importance_weights,
    permute_dims,
)
from pyro_vae.objectives import OBJECTIVES, TraceELBO, check_beta_schedule
from pyro_vae.registry import BuildContext
from pyro_vae.schedules import BETA_SCHEDULES

CONTEXT = BuildContext(num_train=1000)


@pytest.fixture
def vae_and_x():
    torch.manual_seed(0)
    vae = VAE(data_shape=20, latent_dim=4, encoder={"name": "mlp", "hidden": [16]},
              decoder={"name": "mlp", "hidden": [16]})
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    return vae, x


def seeded_loss(objective, vae, x, seed=3):
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        return objective.differentiable_loss(vae.model, vae.guide, x)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_tc_decomposition_sums_back_to_the_kl(vae_and_x, estimator):
    vae, x = vae_and_x
    t = LatentTerms(vae.model, vae.guide, x)
    mi, tc, dwkl = decompose_kl(t.z, t.loc, t.scale, t.log_qzx, t.log_pz, 1000, estimator)
    torch.testing.assert_close(mi + tc + dwkl, t.log_qzx - t.log_pz, rtol=0, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_beta_tcvae_with_equal_weights_is_the_beta_elbo(vae_and_x, beta):
    """α = β = γ: the three terms telescope to β·(log q − log p), the Monte Carlo β-ELBO on the same z."""
    vae, x = vae_and_x
    vae.beta = beta
    spec = {"name": "beta-tcvae", "alpha": beta, "gamma": beta, "estimator": "mss"}
    tcvae = OBJECTIVES.build(spec, CONTEXT)
    elbo = TraceELBO(max_plate_nesting=1)
    torch.testing.assert_close(seeded_loss(tcvae, vae, x), seeded_loss(elbo, vae, x), rtol=1e-6, atol=1e-4)


def aggregate_posterior_case(n=512, d=3, seed=0):
    """Gaussian posteriors q(z|x_n) and a draw z_n from each; the exact log q(z_n) by enumeration."""
    g = torch.Generator().manual_seed(seed)
    loc, scale = torch.randn(n, d, generator=g), torch.full((n, d), 0.5)
    z = loc + scale * torch.randn(n, d, generator=g)
    log_q = torch.distributions.Normal(loc[None], scale[None]).log_prob(z[:, None])
    exact_tc = (torch.logsumexp(log_q.sum(-1), 1) - (torch.logsumexp(log_q, 1)).sum(-1)
                + (d - 1) * math.log(n))
    log_qzx = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    return z, loc, scale, log_qzx, exact_tc.mean().item()


def mean_tc(case, batch_size, estimator, repeats=40):
    z, loc, scale, log_qzx, _ = case
    g = torch.Generator().manual_seed(1)
    total = 0.0
    for _ in range(repeats):
        i = torch.randperm(len(z), generator=g)[:batch_size]
        tc = decompose_kl(z[i], loc[i], scale[i], log_qzx[i], torch.zeros(len(i)), len(z), estimator)[1]
        total += tc.mean()
    return float(total) / repeats


def test_stratified_tc_estimate_converges_to_the_exact_total_correlation():
    case = aggregate_posterior_case()
    exact = case[-1]
    errors = [abs(mean_tc(case, b, "mss") - exact) for b in (8, 64, 512)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01


def test_weighted_sampling_weights_and_its_known_offset():
    """MWS weighs every pair 1/(NB) (Chen et al.'s estimator): log q(z) sits about log B low, so its TC
    carries an offset of about (D − 1)·log B that shrinks in relative terms only; MSS rows sum to one."""
    assert torch.allclose(log_importance_weights(4, 10, "mws"), torch.full((4, 4), -math.log(40)))
    w = log_importance_weights(5, 100, "mss").exp()
    torch.testing.assert_close(w.sum(1), torch.ones(5, dtype=w.dtype))
    assert w[0, 0] == pytest.approx(1 / 100) and w[0, 1] == pytest.approx((100 - 4) / 400)
    case = aggregate_posterior_case()
    offset = mean_tc(case, 512, "mws") - case[-1]
    assert offset == pytest.approx(2 * math.log(512), rel=0.05)


def test_capacity_with_zero_target_is_the_beta_vae(vae_and_x):
    vae, x = vae_and_x
    vae.beta = 4.0
    capacity = OBJECTIVES.build({"name": "capacity", "capacity": 0.0}, CONTEXT)
    analytic = OBJECTIVES.build("elbo-analytic")
    torch.testing.assert_close(seeded_loss(capacity, vae, x), seeded_loss(analytic, vae, x),
                               rtol=1e-6, atol=1e-4)


def test_capacity_target_follows_its_schedule(vae_and_x):
    """C(t) = 10 t for the linear schedule to 20 over 2 epochs: C = 0 at t = 0, 10 at t = 1 (the
    trainer calls ``at_epoch`` before each step), and C_max = 20 after the warm-up."""
    vae, x = vae_and_x
    spec = {"name": "capacity", "capacity": {"name": "linear", "beta": 20.0, "warmup_epochs": 2}}
    capacity = OBJECTIVES.build(spec, CONTEXT)
    t = LatentTerms(vae.model, vae.guide, x)
    kl = t.kl().mean()
    torch.testing.assert_close(capacity._loss(t, training=True), -t.log_px.sum() + 32 * kl.abs())
    for epoch, target in [(1.0, 10.0), (0.5, 5.0), (7.0, 20.0)]:
        capacity.at_epoch(epoch)
        torch.testing.assert_close(capacity._loss(t, training=False),
                                   -t.log_px.sum() + 32 * (kl - target).abs())


def test_dip_penalties_match_numpy():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(50, 4, generator=g, dtype=torch.float64)
    loc = loc @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    scale = torch.rand(50, 4, generator=g, dtype=torch.float64) + 0.1
    mu, var = loc.numpy(), scale.numpy() ** 2
    for variant in ("i", "ii"):
        cov = np.cov(mu, rowvar=False, bias=True) + (np.diag(var.mean(0)) if variant == "ii" else 0)
        off = cov[~np.eye(4, dtype=bool)]
        expected = 2.0 * np.sum(off ** 2) + 7.0 * np.sum((np.diag(cov) - 1) ** 2)
        assert dip_penalty(loc, scale, 2.0, 7.0, variant).item() == pytest.approx(expected, rel=1e-12)


def test_dip_vae_loss_adds_the_batch_scaled_penalty(vae_and_x):
    vae, x = vae_and_x
    for name, factor in (("dip-vae-i", 10.0), ("dip-vae-ii", 1.0)):
        objective = OBJECTIVES.build({"name": name, "lambda_od": 3.0})
        assert objective.lambda_d == 3.0 * factor
        t = LatentTerms(vae.model, vae.guide, x)
        penalty = dip_penalty(t.loc, t.scale, 3.0, 3.0 * factor, objective.variant)
        expected = (-t.log_px + t.kl()).sum() + 32 * penalty
        torch.testing.assert_close(objective._loss(t, training=False), expected)


def gaussian_tc(cov):
    return 0.5 * (np.log(np.diag(cov)).sum() - np.linalg.slogdet(cov)[1])


@pytest.mark.parametrize("rho", [pytest.param(0.0, marks=pytest.mark.slow), 0.8])
def test_factor_vae_discriminator_recovers_a_known_total_correlation(rho):
    torch.manual_seed(0)
    cov = np.array([[1.0, rho, 0.0], [rho, 1.0, rho / 2], [0.0, rho / 2, 1.0]])
    chol = torch.linalg.cholesky(torch.tensor(cov, dtype=torch.float32))
    objective = OBJECTIVES.build({"name": "factor-vae", "hidden": [128, 128], "lr": 1e-3})
    for _ in range(2000):
        objective.discriminator_step(torch.randn(512, 3) @ chol.T)
    with torch.no_grad():
        estimate = objective.total_correlation(torch.randn(20000, 3) @ chol.T).mean().item()
    assert estimate == pytest.approx(gaussian_tc(cov), abs=0.04)


def test_permute_dims_keeps_each_column_and_breaks_dependence():
    torch.manual_seed(0)
    z = torch.randn(4000, 1).repeat(1, 2)
    shuffled = permute_dims(z)
    assert all(torch.equal(shuffled[:, j].sort().values, z[:, j].sort().values) for j in range(2))
    assert abs(np.corrcoef(shuffled.T.numpy())[0, 1]) < 0.05


@pytest.mark.parametrize("objective", [
    {"name": "factor-vae", "hidden": [32]},
    {"name": "capacity", "capacity": {"name": "linear", "beta": 5.0, "warmup_epochs": 2}},
])
def test_objectives_that_follow_training_resume_exactly(tmp_path, objective):
    """FactorVAE's discriminator is in the checkpoint; capacity's C(t) is set from the
    trainer's progress, so a run cut after epoch 1 and resumed ends where the full run does."""
    from pyro_vae import train

    config = {"train": {"epochs": 2}, "objective": objective, "data": {"name": "digits"}}
    full = train(config, tmp_path / "full", progress=False)
    train({**config, "train": {"epochs": 1}}, tmp_path / "cut", progress=False)
    resumed = train(config, tmp_path / "cut", resume=True, progress=False)
    a, b = full.vae.state_dict(), resumed.vae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(sorted((tmp_path / "full").rglob("epoch-0002.pt"))[0], weights_only=True)
    assert set(state.get("objective", {})) == ({"discriminator", "optimizer"}
                                               if objective["name"] == "factor-vae" else set())


def test_iwae_with_a_beta_schedule_warns():
    schedule = BETA_SCHEDULES.build({"name": "linear", "beta": 1.0, "warmup_epochs": 5})
    with pytest.warns(UserWarning, match="not linear in β"):
        check_beta_schedule("iwae", schedule, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_beta_schedule({"name": "iwae"}, BETA_SCHEDULES.build("constant"), 10)
        check_beta_schedule("elbo", schedule, 10)


def test_objectives_need_one_latent_layer_and_the_training_set_size():
    vae = VAE(data_shape=20, latent_dim=[4, 2])
    x = torch.bernoulli(torch.full((8, 20), 0.3))
    with pytest.raises(ConfigError, match="one latent site"):
        OBJECTIVES.build("dip-vae-ii").differentiable_loss(vae.model, vae.guide, x)
    with pytest.raises(ConfigError, match="training-set size"):
        OBJECTIVES.build("beta-tcvae")
    with pytest.raises(ConfigError, match="estimator"):
        OBJECTIVES.build({"name": "beta-tcvae", "estimator": "exact"}, CONTEXT)
