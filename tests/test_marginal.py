"""Tests for pyro_vae.marginal against closed-form Gaussian marginal likelihoods."""

import json
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import MultivariateNormal

from pyro_vae.errors import DataError, PyroVAEError
from pyro_vae.marginal import (
    ImportanceSamplingWarning,
    MarginalLikelihood,
    _inspect,
    _log_weights,
    _StreamingWeights,
    log_likelihood,
    naive_log_likelihood,
    warn_if_unreliable,
)
from pyro_vae.psis import _psis_khat_own, kept_top, khat_threshold, psis_khat, tail_length

F64 = torch.float64


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("arviz")


pytestmark = pytest.mark.usefixtures("single_thread")


def quiet(fn, *args, **kwargs):
    """Call an estimator with its k-hat warnings silenced (for small K)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportanceSamplingWarning)
        return fn(*args, **kwargs)


class LinearGaussian:
    r"""x = W z + b + sigma eps, z ~ N(0, I_d): log p(x) = log N(x; b, W W^T + sigma^2 I)."""

    def __init__(self, d=2, D=5, sigma=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.d, self.D, self.sigma = d, D, sigma
        self.W = torch.randn(D, d, generator=g, dtype=F64)
        self.b = torch.randn(D, generator=g, dtype=F64)
        self.marginal = MultivariateNormal(self.b, self.W @ self.W.T + sigma**2 * torch.eye(D))
        # posterior N(M^-1 W^T (x - b) / sigma^2, M^-1), M = I + W^T W / sigma^2
        self.post_cov = torch.linalg.inv(torch.eye(d, dtype=F64) + self.W.T @ self.W / sigma**2)
        self.post_chol = torch.linalg.cholesky(self.post_cov)

    def sample(self, n, seed=1):
        torch.manual_seed(seed)
        return self.marginal.sample((n,))

    def log_px(self, x):
        return self.marginal.log_prob(x)

    def post_mean(self, x):
        return ((x - self.b) @ self.W / self.sigma**2) @ self.post_cov.T

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.d, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def guide_fn(self, shift=0.0, scale=1.0):
        """q = N(mu + shift * L 1, scale^2 Sigma): exact for shift=0, scale=1."""
        offset = shift * self.post_chol @ torch.ones(self.d, dtype=F64)

        def guide(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample(
                    "z",
                    dist.MultivariateNormal(self.post_mean(x) + offset, scale**2 * self.post_cov),
                )

        return guide

    def kl(self, shift, scale):
        """KL(q || p(z|x)) for guide_fn(shift, scale), the same for every x."""
        d = self.d
        return 0.5 * (d * scale**2 + d * shift**2 - d - 2 * d * math.log(scale))


# --------------------------------------------------------------------------------------
# 1. exact guide
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [1, 10, 1000])
def test_exact_guide_gives_exact_log_px(K):
    lg = LinearGaussian(d=3, D=5)
    x = lg.sample(12)
    res = quiet(log_likelihood, lg.model, lg.guide_fn(), x, num_samples=K)
    assert isinstance(res, MarginalLikelihood)
    assert res.log_px.shape == (12,) and res.log_px.dtype == F64
    torch.testing.assert_close(res.log_px, lg.log_px(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(res.ess, torch.full((12,), float(K), dtype=F64), rtol=1e-9, atol=0)
    # the ELBO of the exact posterior is log p(x) as well: no inference gap
    torch.testing.assert_close(res.inference_gap, torch.zeros(12, dtype=F64), rtol=0, atol=1e-9)
    if K == 1:
        assert torch.isnan(res.stderr).all()  # no variance from one sample
    else:
        assert float(res.stderr.max()) < 1e-6
    assert res.num_samples == K


def test_exact_guide_khat_is_good_and_no_warning():
    lg = LinearGaussian()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImportanceSamplingWarning)
        res = log_likelihood(lg.model, lg.guide_fn(), lg.sample(10), num_samples=500)
    assert (res.khat < res.khat_threshold).all()
    assert res.summary()["khat_frac_bad"] == 0.0


def test_data_plate_not_rightmost_with_inner_plate():
    """Data plate at dim -2, an inner feature plate at dim -1, no to_event on x."""
    lg = LinearGaussian(d=2, D=4)
    x = lg.sample(6)

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(lg.d, dtype=F64), 1.0).to_event(1))
            loc = z.squeeze(-2) @ lg.W.T + lg.b
            with pyro.plate("feat", lg.D, dim=-1):
                pyro.sample("x", dist.Normal(loc, lg.sigma), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.MultivariateNormal(lg.post_mean(x).unsqueeze(-2), lg.post_cov))

    res = log_likelihood(model, guide, x, num_samples=100)
    torch.testing.assert_close(res.log_px, lg.log_px(x), rtol=0, atol=1e-9)
    assert _inspect(model, guide, x) == 2


# --------------------------------------------------------------------------------------
# 2. poor guide: convergence and calibrated standard errors
# --------------------------------------------------------------------------------------


def test_poor_guide_converges_and_stderr_covers_truth():
    lg = LinearGaussian(d=2, D=5)
    x = lg.sample(200)
    truth = lg.log_px(x)
    guide = lg.guide_fn(shift=1.0, scale=1.5)  # wider than the posterior: bounded weights
    res = {K: log_likelihood(lg.model, guide, x, num_samples=K) for K in (100, 10000)}
    res10 = quiet(log_likelihood, lg.model, guide, x, num_samples=10)
    err = {K: r.log_px - truth for K, r in res.items()}
    # coverage of the delta-method standard error
    for K in (100, 10000):
        covered = (err[K].abs() < 3 * res[K].stderr).double().mean()
        assert covered >= 0.9, (K, covered)
    # convergence: the error shrinks with K (and small K is biased low: IWAE bound)
    assert err[10000].abs().mean() < (res10.log_px - truth).abs().mean() / 10
    assert (res10.log_px - truth).mean() < 0
    # stderr scales like 1 / sqrt(K)
    ratio = res[100].stderr.mean() / res[10000].stderr.mean()
    assert 7 < ratio < 14  # sqrt(10000 / 100) = 10
    # log p(x) - ELBO estimates KL(q || p(z|x)), known in closed form here
    gap = res[10000].inference_gap.mean()
    assert abs(float(gap) - lg.kl(1.0, 1.5)) < 0.05
    assert (res[10000].khat < res[10000].khat_threshold).all()


# --------------------------------------------------------------------------------------
# 3. k-hat diagnostic and warning
# --------------------------------------------------------------------------------------


def test_narrow_proposal_has_bad_khat_and_warns():
    lg = LinearGaussian(d=2, D=5)
    x = lg.sample(20)
    # q = N(mu, 0.2^2 Sigma): weights have a Pareto tail with k = 1 - 0.2^2 = 0.96
    with pytest.warns(ImportanceSamplingWarning, match=r"for \d+ of 20 data points"):
        res = log_likelihood(lg.model, lg.guide_fn(scale=0.2), x, num_samples=2000)
    assert res.khat_threshold == pytest.approx(1 - 1 / math.log10(2000))
    assert float((res.khat > res.khat_threshold).double().mean()) >= 0.8
    assert res.summary()["khat_frac_bad"] >= 0.8
    assert float(res.khat.median()) > 0.7


def test_good_proposal_has_good_khat():
    lg = LinearGaussian(d=2, D=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImportanceSamplingWarning)
        res = log_likelihood(lg.model, lg.guide_fn(scale=1.3), lg.sample(20), num_samples=2000)
    assert (res.khat < res.khat_threshold).all()
    assert float(res.khat.median()) < 0.3


def test_small_K_warns_that_khat_is_unknown():
    lg = LinearGaussian()
    with pytest.warns(ImportanceSamplingWarning, match="cannot be estimated"):
        res = log_likelihood(lg.model, lg.guide_fn(), lg.sample(3), num_samples=20)
    assert torch.isinf(res.khat).all() and (res.khat > 0).all()
    assert khat_threshold(1) == -math.inf
    assert khat_threshold(10**9) == 0.7


# --------------------------------------------------------------------------------------
# 4. poutine.scale / poutine.mask on latent sites do not change the estimate
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "handler",
    [lambda: poutine.scale(scale=4.0), lambda: poutine.mask(mask=False)],
    ids=["scale4", "maskFalse"],
)
def test_scale_and_mask_on_latents_are_ignored(handler):
    lg = LinearGaussian()
    x = lg.sample(15)
    guide = lg.guide_fn(shift=0.5, scale=1.4)

    def model_h(x):
        with pyro.plate("data", x.shape[0]):
            with handler():
                z = pyro.sample("z", dist.Normal(torch.zeros(lg.d, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)

    def guide_h(x):
        with handler():
            guide(x)

    pyro.set_rng_seed(3)
    ref = log_likelihood(lg.model, guide, x, num_samples=300, chunk_size=70)
    pyro.set_rng_seed(3)
    got = log_likelihood(model_h, guide_h, x, num_samples=300, chunk_size=70)
    for field in ("log_px", "stderr", "ess", "khat", "elbo"):
        torch.testing.assert_close(getattr(got, field), getattr(ref, field), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# 5. hierarchical model z2 -> z1 -> x
# --------------------------------------------------------------------------------------


class TwoLayerGaussian:
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + c, tau^2 I), x | z1 ~ N(W z1 + b, sigma^2 I)."""

    def __init__(self, d2=2, d1=3, D=6, tau=0.7, sigma=0.5, seed=2):
        g = torch.Generator().manual_seed(seed)
        self.d2, self.d1, self.D, self.tau, self.sigma = d2, d1, D, tau, sigma
        self.A = torch.randn(d1, d2, generator=g, dtype=F64)
        self.c = torch.randn(d1, generator=g, dtype=F64)
        self.W = torch.randn(D, d1, generator=g, dtype=F64)
        self.b = torch.randn(D, generator=g, dtype=F64)
        # v = (z2, z1, x) = mean + L eps
        Z = torch.zeros
        L = torch.cat(
            [
                torch.cat([torch.eye(d2), Z(d2, d1), Z(d2, D)], 1),
                torch.cat([self.A, tau * torch.eye(d1), Z(d1, D)], 1),
                torch.cat([self.W @ self.A, tau * self.W, sigma * torch.eye(D)], 1),
            ],
            0,
        ).double()
        self.mean = torch.cat([Z(d2), self.c, self.W @ self.c + self.b]).double()
        self.cov = L @ L.T
        nz = d2 + d1
        Szz, Szx, Sxx = self.cov[:nz, :nz], self.cov[:nz, nz:], self.cov[nz:, nz:]
        self.marginal = MultivariateNormal(self.mean[nz:], Sxx)
        self.gain = Szx @ torch.linalg.inv(Sxx)  # posterior mean = m_z + gain (x - m_x)
        self.post_cov = Szz - self.gain @ Szx.T
        P = self.post_cov
        self.cov2 = P[:d2, :d2]
        self.G12 = P[d2:, :d2] @ torch.linalg.inv(self.cov2)  # z1 | z2 regression
        self.cov1_given2 = P[d2:, d2:] - self.G12 @ P[:d2, d2:]
        self.cov1 = P[d2:, d2:]

    def sample(self, n, seed=5):
        torch.manual_seed(seed)
        return self.marginal.sample((n,))

    def post_mean(self, x):
        nz = self.d2 + self.d1
        m = self.mean[:nz] + (x - self.mean[nz:]) @ self.gain.T
        return m[..., : self.d2], m[..., self.d2 :]

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(self.d2, dtype=F64), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ self.A.T + self.c, self.tau).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def exact_guide(self, x):
        m2, m1 = self.post_mean(x)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.MultivariateNormal(m2, self.cov2))
            pyro.sample(
                "z1", dist.MultivariateNormal(m1 + (z2 - m2) @ self.G12.T, self.cov1_given2)
            )

    def factorised_guide(self, x, scale=1.3):
        m2, m1 = self.post_mean(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z2", dist.MultivariateNormal(m2, scale**2 * self.cov2))
            pyro.sample("z1", dist.MultivariateNormal(m1, scale**2 * self.cov1))


def test_hierarchical_exact_joint_posterior_guide():
    hm = TwoLayerGaussian()
    x = hm.sample(10)
    for K in (1, 50):
        res = quiet(log_likelihood, hm.model, hm.exact_guide, x, num_samples=K)
        # tolerance: rounding in the closed-form posterior of the test, not the estimator
        torch.testing.assert_close(res.log_px, hm.marginal.log_prob(x), rtol=0, atol=1e-6)


def test_hierarchical_factorised_guide_within_error_bars():
    hm = TwoLayerGaussian()
    x = hm.sample(60)
    res = log_likelihood(hm.model, hm.factorised_guide, x, num_samples=5000)
    err = res.log_px - hm.marginal.log_prob(x)
    assert (err.abs() < 3 * res.stderr).double().mean() >= 0.9
    assert float(err.abs().max()) < 0.2
    assert float(res.inference_gap.min()) > 0  # the factorised guide is not exact


def test_global_latent_is_part_of_each_points_proposal():
    """x_n = W z_n + b + g 1 + sigma eps with a global g ~ N(0, 1) outside the data plate."""
    lg = LinearGaussian(d=2, D=4)
    ones = torch.ones(lg.D, dtype=F64)
    marg = MultivariateNormal(
        lg.b, lg.W @ lg.W.T + lg.sigma**2 * torch.eye(lg.D) + ones.outer(ones)
    )
    torch.manual_seed(4)
    x = marg.sample((30,))

    def model(x):
        g = pyro.sample("g", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(lg.d, dtype=F64), 1.0).to_event(1))
            loc = z @ lg.W.T + lg.b + g.unsqueeze(-1)  # g: () or (S, 1)
            pyro.sample("x", dist.Normal(loc, lg.sigma).to_event(1), obs=x)

    def guide(x):
        # q(g) differs from the prior; z_n from the exact posterior given g
        g = pyro.sample("g", dist.Normal(torch.tensor(0.3, dtype=F64), 1.2))
        mu = lg.post_mean(x - g.unsqueeze(-1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mu, lg.post_cov))

    res = log_likelihood(model, guide, x, num_samples=4000)
    err = res.log_px - marg.log_prob(x)
    assert (err.abs() < 3.5 * res.stderr).double().mean() >= 0.85
    assert float(err.abs().max()) < 0.1


# --------------------------------------------------------------------------------------
# 6. per-point results, batching and chunking
# --------------------------------------------------------------------------------------


def test_batch_equals_points_alone_and_chunking_is_irrelevant_for_exact_guide():
    lg = LinearGaussian(d=3, D=5)
    x = lg.sample(9)
    guide = lg.guide_fn()
    full = log_likelihood(lg.model, guide, x, num_samples=60)
    for i in (0, 4, 8):
        alone = log_likelihood(lg.model, guide, x[i : i + 1], num_samples=60)
        torch.testing.assert_close(alone.log_px, full.log_px[i : i + 1], rtol=0, atol=1e-10)
    for batch_size, chunk_size in [(1, 7), (2, 13), (4, 60), (9, 1), (100, 1000)]:
        res = log_likelihood(
            lg.model, guide, x, num_samples=60, chunk_size=chunk_size, batch_size=batch_size
        )
        torch.testing.assert_close(res.log_px, full.log_px, rtol=0, atol=1e-10)
        torch.testing.assert_close(res.ess, full.ess, rtol=1e-9, atol=0)


def test_chunking_changes_poor_guide_only_within_mc_error():
    lg = LinearGaussian()
    x = lg.sample(50)
    guide = lg.guide_fn(shift=1.0, scale=1.5)
    a = log_likelihood(lg.model, guide, x, num_samples=3000, chunk_size=3000, batch_size=50)
    b = log_likelihood(lg.model, guide, x, num_samples=3000, chunk_size=37, batch_size=7)
    assert not torch.equal(a.log_px, b.log_px)  # different draws ...
    z = (a.log_px - b.log_px).abs() / (a.stderr**2 + b.stderr**2).sqrt()
    assert (z < 3).double().mean() >= 0.9  # ... same answer up to Monte Carlo error


# --------------------------------------------------------------------------------------
# 7. k-hat against ArviZ, ESS and stderr formulas
# --------------------------------------------------------------------------------------


def _weight_sets(K, rng):
    u = rng.uniform(size=K)
    return {
        "lognormal": rng.normal(0.0, 1.5, size=K),
        "gpd_k0.3": np.log((u ** (-0.3) - 1) / 0.3),
        "gpd_k0.8": np.log((u ** (-0.8) - 1) / 0.8),
        "bounded": np.log(rng.uniform(size=K)),
        "student_t": -0.5 * 4 * np.log1p(rng.standard_t(3, size=K) ** 2 / 4),
        "huge_range": rng.normal(0.0, 40.0, size=K),
    }


@pytest.mark.parametrize("K", [25, 100, 1000, 4001])
def test_streaming_khat_matches_arviz_psislw(K):
    az = _arviz()
    rng = np.random.default_rng(K)
    sets = _weight_sets(K, rng)
    lw = np.stack(list(sets.values()))  # (rows, K)
    ref = az.psislw(lw.copy(), reff=1.0)[1]
    stats = _StreamingWeights(lw.shape[0], K, torch.device("cpu"))
    for start in range(0, K, 37):  # irregular chunks
        stats.update(torch.as_tensor(lw[:, start : start + 37]))
    out = stats.finalize()
    np.testing.assert_allclose(out["khat"].numpy(), ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(_psis_khat_own(lw), ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(psis_khat(lw), ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(psis_khat(torch.as_tensor(lw), use_arviz=False), ref, atol=1e-8)

    # the streaming sums reproduce the full-vector formulas
    w = np.exp(lw - lw.max(axis=1, keepdims=True))
    log_px = np.log(w.mean(axis=1)) + lw.max(axis=1)
    ess = w.sum(axis=1) ** 2 / (w**2).sum(axis=1)
    se = np.sqrt(w.var(axis=1, ddof=1) / K) / w.mean(axis=1)
    np.testing.assert_allclose(out["log_px"].numpy(), log_px, rtol=1e-12)
    np.testing.assert_allclose(out["ess"].numpy(), ess, rtol=1e-9)
    np.testing.assert_allclose(out["stderr"].numpy(), se, rtol=1e-7)
    np.testing.assert_allclose(out["elbo"].numpy(), lw.mean(axis=1), rtol=1e-12)


def test_tail_length_matches_arviz_rule():
    az = _arviz()
    import inspect

    src = inspect.getsource(az.psislw)
    assert "min(n_samples / 5.0, 3 * (n_samples / reff) ** 0.5)" in src
    for K in (21, 100, 225, 226, 1000, 5000, 10**6):
        assert tail_length(K) == int(np.ceil(min(K / 5.0, 3 * K**0.5)))


def test_end_to_end_khat_matches_arviz_on_the_actual_weights():
    az = _arviz()
    lg = LinearGaussian()
    x = lg.sample(8)
    guide = lg.guide_fn(shift=0.8, scale=0.7)
    K = 800
    pyro.set_rng_seed(11)
    res = quiet(log_likelihood, lg.model, guide, x, num_samples=K, chunk_size=K, batch_size=8)
    # replay the same random stream through the internals to get the full weights
    pyro.set_rng_seed(11)
    with torch.no_grad():
        nesting = _inspect(lg.model, guide, x)
        lw = _log_weights(lg.model, guide, x, K, nesting).numpy()
    np.testing.assert_allclose(res.khat.numpy(), az.psislw(lw.copy())[1], atol=1e-8)
    ess = np.exp(2 * np.logaddexp.reduce(lw, 1) - np.logaddexp.reduce(2 * lw, 1))
    np.testing.assert_allclose(res.ess.numpy(), ess, rtol=1e-9)
    np.testing.assert_allclose(res.log_px.numpy(), np.logaddexp.reduce(lw, 1) - np.log(K))


def test_tied_top_weights_give_minus_inf_khat():
    lw = np.zeros((2, 500))
    lw[1, :3] = 1.0  # only 3 values above a tied cutoff
    np.testing.assert_array_equal(_psis_khat_own(lw), [-np.inf, -np.inf])
    lw = np.full((1, 500), -np.inf)
    assert np.isnan(_psis_khat_own(lw)).all()


def test_zero_weights_give_minus_inf_and_warn():
    lg = LinearGaussian()
    x = lg.sample(4)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(lg.d, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)
            dead = torch.tensor([0.0, -math.inf, 0.0, 0.0], dtype=F64)
            pyro.factor("constraint", dead)  # p(x_1, z) = 0 for every z

    with pytest.warns(ImportanceSamplingWarning, match="are zero .* for 1 of 4 data points"):
        res = log_likelihood(model, lg.guide_fn(), x, num_samples=100)
    assert res.log_px[1] == -math.inf and torch.isnan(res.khat[1])
    torch.testing.assert_close(res.log_px[[0, 2, 3]], lg.log_px(x)[[0, 2, 3]], rtol=0, atol=1e-9)


def test_psis_khat_falls_back_without_arviz(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("arviz"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    lw = np.random.default_rng(0).normal(size=(3, 300))
    np.testing.assert_allclose(psis_khat(lw), _psis_khat_own(lw))


def test_psis_khat_adapter_for_arviz_1(monkeypatch):
    """ArviZ >= 1.0: arviz_stats' array_stats.psislw takes the log-likelihood (negated lw)."""
    import sys
    import types

    calls = []

    def fake_psislw(ary, r_eff=1.0, axis=-1):
        calls.append(r_eff)
        lw = -np.asarray(ary)
        return lw - lw.max(axis=-1, keepdims=True), _psis_khat_own(lw)

    base = types.ModuleType("arviz_stats.base")
    base.array_stats = types.SimpleNamespace(psislw=fake_psislw)
    monkeypatch.setitem(sys.modules, "arviz", types.SimpleNamespace(__version__="1.0.0"))
    monkeypatch.setitem(sys.modules, "arviz_stats", types.ModuleType("arviz_stats"))
    monkeypatch.setitem(sys.modules, "arviz_stats.base", base)
    lw = np.random.default_rng(1).standard_t(2, size=(4, 400))
    np.testing.assert_allclose(psis_khat(lw), _psis_khat_own(lw))
    assert calls == [1.0]


# --------------------------------------------------------------------------------------
# 8. naive (prior-sampling) estimator
# --------------------------------------------------------------------------------------


def test_naive_estimator_converges_in_low_dimension():
    lg = LinearGaussian(d=1, D=1, sigma=1.0)
    x = lg.sample(40)
    res = quiet(naive_log_likelihood, lg.model, x, num_samples=20000)
    err = res.log_px - lg.log_px(x)
    assert (err.abs() < 3 * res.stderr).double().mean() >= 0.9
    # outlying points (x ~ 4 sd out) are hard for the prior proposal: k-hat flags them
    good = res.khat < res.khat_threshold
    assert good.double().mean() >= 0.9
    assert float(err[good].abs().median()) < 0.02
    assert float(err[good].abs().max()) < 0.15
    # elbo field = E_prior log p(x|z) = log N(x; b, s^2) - (W W^T) / (2 s^2) in closed form
    s2 = lg.sigma**2
    expect = (
        -0.5 * math.log(2 * math.pi * s2)
        - ((x - lg.b) ** 2).sum(-1) / (2 * s2)
        - (lg.W**2).sum() / (2 * s2)
    )
    assert float((res.elbo - expect).abs().max()) < 0.3
    assert abs(float((res.elbo - expect).mean())) < 0.05


def test_naive_estimator_is_far_below_importance_sampling_in_high_dimension():
    lg = LinearGaussian(d=5, D=50, sigma=0.2)
    x = lg.sample(5)
    naive = quiet(naive_log_likelihood, lg.model, x, num_samples=1000)
    is_ = log_likelihood(lg.model, lg.guide_fn(), x, num_samples=1000)
    torch.testing.assert_close(is_.log_px, lg.log_px(x), rtol=0, atol=1e-5)
    assert float((is_.log_px - naive.log_px).min()) > 5.0


# --------------------------------------------------------------------------------------
# 9. bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [0, -3, 2.5, True, "10"])
def test_bad_num_samples(K):
    lg = LinearGaussian()
    with pytest.raises(PyroVAEError, match="num_samples must be a positive integer"):
        log_likelihood(lg.model, lg.guide_fn(), lg.sample(2), num_samples=K)
    with pytest.raises(PyroVAEError, match="num_samples"):
        naive_log_likelihood(lg.model, lg.sample(2), num_samples=K)


@pytest.mark.parametrize(
    "x, match",
    [
        ([[0.0] * 5], "must be a torch.Tensor"),
        (torch.zeros(0, 5, dtype=F64), "empty"),
        (torch.tensor(1.0, dtype=F64), "leading data dimension"),
        (torch.tensor([[0.0] * 5, [math.nan] + [0.0] * 4], dtype=F64), "NaN or infinite"),
        (torch.tensor([[math.inf] * 5], dtype=F64), "NaN or infinite"),
    ],
)
def test_bad_x(x, match):
    lg = LinearGaussian()
    with pytest.raises(DataError, match=match):
        log_likelihood(lg.model, lg.guide_fn(), x, num_samples=10)


def test_bad_sizes_and_models():
    lg = LinearGaussian()
    x = lg.sample(3)
    with pytest.raises(PyroVAEError, match="chunk_size"):
        log_likelihood(lg.model, lg.guide_fn(), x, chunk_size=0)
    with pytest.raises(PyroVAEError, match="batch_size"):
        log_likelihood(lg.model, lg.guide_fn(), x, batch_size=-1)
    with pytest.raises(PyroVAEError, match="needs a guide"):
        log_likelihood(lg.model, None, x)

    def no_plate_model(x):
        pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0).to_event(2), obs=x)

    with pytest.raises(PyroVAEError, match="pyro.plate named 'data'"):
        naive_log_likelihood(no_plate_model, x, num_samples=10)

    def unplated_guide(x):
        mu = lg.post_mean(x)
        pyro.sample("z", dist.Normal(mu, 1.0).to_event(2))

    with pytest.raises(PyroVAEError, match="inside the 'data' plate only in the model"):
        log_likelihood(lg.model, unplated_guide, x, num_samples=10)

    def nan_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.full((lg.d,), math.nan, dtype=F64), 1.0).to_event(1))

    with pytest.raises(PyroVAEError, match="NaN"):
        with pyro.validation_enabled(False):
            log_likelihood(lg.model, nan_guide, x, num_samples=10)


# --------------------------------------------------------------------------------------
# 10. bounded memory and the result object
# --------------------------------------------------------------------------------------


def test_stored_tail_is_order_sqrt_K():
    for K in (1, 10, 100, 10**4, 10**6, 10**8):
        assert kept_top(K) <= 3 * math.sqrt(K) + 2
        assert kept_top(K) <= K
    K, B = 50000, 3
    stats = _StreamingWeights(B, K, torch.device("cpu"))
    rng = torch.Generator().manual_seed(0)
    widths = []
    chunks = []
    for _ in range(K // 500):
        lw = torch.randn(B, 500, generator=rng, dtype=F64)
        chunks.append(lw)
        stats.update(lw)
        widths.append(stats.top.shape[1])
    assert max(widths) == kept_top(K) == tail_length(K) + 1 == 672
    full = torch.cat(chunks, 1)
    torch.testing.assert_close(stats.top, full.topk(672, dim=1).values)
    out = stats.finalize()
    torch.testing.assert_close(out["log_px"], full.logsumexp(1) - math.log(K))


def test_log_likelihood_keeps_only_the_tail(monkeypatch):
    widths = []
    real_update = _StreamingWeights.update

    def spy(self, lw):
        assert lw.shape[1] <= 100
        real_update(self, lw)
        widths.append(self.top.shape[1])

    monkeypatch.setattr(_StreamingWeights, "update", spy)
    lg = LinearGaussian()
    log_likelihood(lg.model, lg.guide_fn(scale=1.2), lg.sample(4), num_samples=5000, chunk_size=100)
    assert len(widths) == 50 and max(widths) == kept_top(5000) == 214


def test_summary_and_mean():
    lg = LinearGaussian()
    x = lg.sample(40)
    res = log_likelihood(lg.model, lg.guide_fn(shift=0.5, scale=1.3), x, num_samples=400)
    s = res.summary()
    assert set(s) == {
        "log_px_mean",
        "log_px_stderr",
        "khat_mean",
        "khat_median",
        "khat_frac_bad",
        "khat_frac_over_half",
        "ess_mean",
        "num_samples",
        "num_points",
    }
    json.loads(json.dumps(s))
    assert all(type(v) in (float, int) for v in s.values())
    assert s["num_samples"] == 400 and s["num_points"] == 40
    mean, se = res.mean()
    assert mean == pytest.approx(float(res.log_px.mean()))
    expect = math.sqrt(float(res.log_px.var()) / 40 + float((res.stderr**2).mean()) / 40)
    assert se == pytest.approx(expect)
    assert s["log_px_mean"] == mean and s["log_px_stderr"] == se
    assert 1 <= s["ess_mean"] <= 400


def test_progress_bar_and_param_store_untouched(capsys):
    lg = LinearGaussian()
    res = log_likelihood(
        lg.model, lg.guide_fn(), lg.sample(3), num_samples=50, chunk_size=10, progress=True
    )
    assert res.log_px.shape == (3,)
    assert "log p(x)" in capsys.readouterr().err
    assert len(pyro.get_param_store()) == 0


def test_float32_model():
    """A float32 model/guide (the usual VAE case) is accumulated in float64."""
    lg = LinearGaussian()
    W, b, cov = lg.W.float(), lg.b.float(), lg.post_cov.float()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(lg.d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, lg.sigma).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(lg.post_mean(x.double()).float(), cov))

    x = lg.sample(6)
    res = log_likelihood(model, guide, x.float(), num_samples=1000)
    assert res.log_px.dtype == F64
    torch.testing.assert_close(res.log_px, lg.log_px(x), rtol=0, atol=1e-4)


def test_stderr_warning_between_half_and_the_threshold():
    """k̂ in (0.5, 0.7]: one warning that the stderr understates the error, not that the
    estimate is unreliable (the rule measured by benchmarks/khat_calibration.py)."""
    n = 4
    per_point = {"log_px": torch.zeros(n, dtype=F64), "stderr": torch.full((n,), 0.1, dtype=F64),
                 "ess": torch.full((n,), 100.0, dtype=F64), "elbo": torch.zeros(n, dtype=F64),
                 "khat": torch.tensor([0.3, 0.6, 0.65, 0.2], dtype=F64)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_unreliable(MarginalLikelihood.from_per_point(per_point, 5000))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 of 4 data points" in messages[0] and "understates" in messages[0]
    per_point["khat"] = torch.tensor([0.3, 0.6, 0.9, 0.2], dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_unreliable(MarginalLikelihood.from_per_point(per_point, 5000))
    assert len(caught) == 2 and "exceeds the threshold 0.70 for 1 of 4" in str(caught[1].message)
