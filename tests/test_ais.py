"""AIS, BDMC, refined proposals and the gap decomposition against closed forms.

The models are linear-Gaussian (p(z) = N(0, I), p(x | z) = N(Wz + b, σ²I)), whose log p(x),
posterior N(m, S) and KL-optimal mean-field Gaussian q* = N(m, diag(1/Λ_ii)), Λ = S⁻¹, are
known, so log p(x), ELBO[q*] = log p(x) − KL(q* ‖ p(z|x)) and both inference gaps have exact
values; a two-layer version and a Gamma–Poisson model (a constrained latent) too.
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import MultivariateNormal, NegativeBinomial

from pyro_vae.ais import ais, annealing_schedule, bdmc
from pyro_vae.errors import ConfigError, ImportanceSamplingWarning, PyroVAEError
from pyro_vae.estimators import build_estimator
from pyro_vae.latent_space import LatentSpace
from pyro_vae.marginal import log_likelihood
from pyro_vae.refined import refined_log_likelihood

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


class Correlated:
    """x = W z + b + σ ε with a correlated posterior; ``guide`` is mean-field."""

    def __init__(self, d=50, D=60, sigma=0.5, scale=0.1, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.d, self.sigma = d, sigma
        self.W = torch.randn(D, d, generator=g, dtype=F64) * scale
        self.b = torch.randn(D, generator=g, dtype=F64)
        self.marginal = MultivariateNormal(self.b, self.W @ self.W.T + sigma**2 * torch.eye(D, dtype=F64))
        self.precision = torch.eye(d, dtype=F64) + self.W.T @ self.W / sigma**2
        self.post_cov = torch.linalg.inv(self.precision)
        self.shift, self.stretch = 0.0, 1.0  # the guide: q* moved by `shift`, its sd times `stretch`
        self.beta = 1.0

    def post_mean(self, x):
        return ((x - self.b) @ self.W / self.sigma**2) @ self.post_cov.T

    def mean_field_sd(self):
        return self.precision.diagonal().rsqrt()

    def kl_to_posterior(self, mean, sd, x):
        """KL(N(mean, diag sd²) ‖ p(z | x)) per point."""
        diff = mean - self.post_mean(x)
        trace = (self.precision.diagonal() * sd**2).sum()
        mahalanobis = (diff @ self.precision * diff).sum(-1)
        return 0.5 * (trace - self.d + mahalanobis + torch.logdet(self.post_cov) - 2 * sd.log().sum())

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(self.d, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.beta):
            pyro.sample("z", dist.Normal(self.post_mean(x) + self.shift, self.mean_field_sd() * self.stretch)
                        .to_event(1))

    def sample(self, n, seed=1):
        torch.manual_seed(seed)
        return self.marginal.sample((n,))


def assert_agrees(result, truth, slack=0.02):
    """The mean error is within 3 of its own standard errors (plus ``slack``)."""
    error = float((result.log_px - truth).mean())
    stderr = math.sqrt(float((result.stderr**2).mean()) / len(truth))
    assert abs(error) < 3 * stderr + slack, (error, stderr)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportanceSamplingWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def correlated():
    return Correlated(scale=0.2)


# --------------------------------------------------------------------------------------
# Where importance sampling fails
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ais_and_bdmc_where_importance_sampling_fails(correlated):
    """50-d correlated posterior, KL-optimal mean-field guide (KL(q* ‖ p(z|x)) = 9.7 nats):
    IS at K = 5000 is flagged (k̂ > 0.7) and 2.9 nats off; AIS with 300 steps agrees with the
    closed form within its standard error (±0.4 nats), BDMC brackets the truth."""
    m = correlated
    x = m.sample(10)
    truth = m.marginal.log_prob(x)
    torch.manual_seed(0)
    plain = quiet(log_likelihood, m.model, m.guide, x, num_samples=5000)
    assert float(plain.khat.min()) > 0.7
    assert float((truth - plain.log_px).mean()) > 2.0
    torch.manual_seed(0)
    annealed = ais(m.model, m.guide, x, num_steps=300, num_chains=8)
    assert abs(float((annealed.log_px - truth).mean())) < 0.4
    assert_agrees(annealed, truth)
    assert 0.5 < float(annealed.accept.mean()) < 0.8
    torch.manual_seed(1)
    bounds = bdmc(m.model, m.guide, x, num_steps=[10, 300])
    truth_sim = m.marginal.log_prob(bounds.x)
    assert (bounds.lower.mean(1) < truth_sim.mean() + 0.2).all()
    assert (bounds.upper.mean(1) > truth_sim.mean() - 0.2).all()
    assert float(bounds.gap[1].mean()) < float(bounds.gap[0].mean()) / 3


def test_ais_error_falls_with_steps(correlated):
    m = Correlated(d=10, D=12, scale=0.3)
    x = m.sample(20)
    truth = m.marginal.log_prob(x)
    errors = []
    for steps in (3, 30, 300):
        torch.manual_seed(0)
        result = ais(m.model, m.guide, x, num_steps=steps, num_chains=4)
        errors.append(float((result.log_px - truth).abs().mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 3


def test_ais_is_unbiased_for_p_x():
    """Mean of p̂/p over 3000 independent estimates (one chain each, 4 steps) is 1."""
    m = Correlated(d=3, D=4, scale=0.8, seed=2)
    m.stretch = 1.5  # a poor start, so that each estimate is noisy
    x = m.sample(1).expand(3000, -1)
    torch.manual_seed(0)
    result = ais(m.model, m.guide, x, num_steps=4, num_chains=1, leapfrog_steps=2, step_size=0.3)
    ratio = (result.log_px - m.marginal.log_prob(x)).exp()
    assert float(ratio.std()) > 0.1  # the estimates do vary
    assert abs(float(ratio.mean()) - 1.0) < 4 * float(ratio.std()) / math.sqrt(len(ratio))


def test_ais_stderr_covers_the_truth():
    m = Correlated(d=5, D=8, scale=0.5, seed=3)
    m.stretch = 1.3
    x = m.sample(200)
    torch.manual_seed(0)
    result = ais(m.model, m.guide, x, num_steps=30, num_chains=16)
    z = (result.log_px - m.marginal.log_prob(x)) / result.stderr
    assert float(result.ess.mean()) > 8  # the chains agree
    assert 0.88 < float((z.abs() < 2).double().mean()) <= 1.0


def test_ais_ignores_beta_and_scale(correlated):
    m = Correlated(d=4, D=6, scale=0.5)
    x = m.sample(5)
    estimates = []
    for beta in (1.0, 0.25):
        m.beta = beta
        torch.manual_seed(0)
        estimates.append(ais(m.model, m.guide, x, num_steps=20, num_chains=2).log_px)
    assert torch.allclose(estimates[0], estimates[1])


def test_ais_from_the_prior_without_a_guide():
    m = Correlated(d=2, D=3, scale=0.5)
    x = m.sample(10)
    torch.manual_seed(0)
    result = ais(m.model, None, x, num_steps=200, num_chains=8, start="prior")
    assert_agrees(result, m.marginal.log_prob(x))


def test_schedules():
    sig = annealing_schedule("sigmoid", 10)
    lin = annealing_schedule("linear", 10)
    assert sig[0] == 0 and sig[-1] == 1 and lin[5] == 0.5 and (sig.diff() > 0).all()
    assert sig.diff()[0] < lin.diff()[0]  # small steps at the ends
    with pytest.raises(ConfigError, match="schedule"):
        annealing_schedule("cosine", 10)


# --------------------------------------------------------------------------------------
# Other latent structures
# --------------------------------------------------------------------------------------


class TwoLayer:
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2, s²I), x | z1 ~ N(W z1, σ²I). The guide q(z1 | x) q(z2 | z1)
    is the exact posterior p(z1 | x) p(z2 | z1) with its covariances widened by ``stretch``²."""

    def __init__(self, d2=2, d1=3, D=4, stretch=1.3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(d1, d2, generator=g, dtype=F64)
        self.W = torch.randn(D, d1, generator=g, dtype=F64)
        self.s, self.sigma, self.d1, self.d2 = 0.7, 0.5, d1, d2
        cov1 = self.A @ self.A.T + self.s**2 * torch.eye(d1, dtype=F64)
        self.marginal = MultivariateNormal(torch.zeros(D, dtype=F64), self.W @ cov1 @ self.W.T
                                           + self.sigma**2 * torch.eye(D, dtype=F64))
        self.S1 = torch.linalg.inv(torch.linalg.inv(cov1) + self.W.T @ self.W / self.sigma**2)
        self.S2 = torch.linalg.inv(torch.eye(d2, dtype=F64) + self.A.T @ self.A / self.s**2)
        self.K = self.S2 @ self.A.T / self.s**2
        self.stretch = stretch

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(self.d2, dtype=F64), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ self.A.T, self.s).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.W.T, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            m1 = x @ self.W @ self.S1 / self.sigma**2
            z1 = pyro.sample("z1", dist.MultivariateNormal(m1, self.S1 * self.stretch**2))
            pyro.sample("z2", dist.MultivariateNormal(z1 @ self.K.T, self.S2 * self.stretch**2))


def test_ais_on_a_hierarchy_with_a_dependent_guide():
    exact = TwoLayer(stretch=1.0)
    x = exact.marginal.sample((10,))
    assert LatentSpace(exact.model, exact.guide, x)._fixed_guide is None  # q(z2 | z1): replayed
    torch.manual_seed(0)
    result = ais(exact.model, exact.guide, x, num_steps=5, num_chains=2)
    assert torch.allclose(result.log_px, exact.marginal.log_prob(x), atol=1e-8)  # exact proposal
    wide = TwoLayer(stretch=1.3)
    torch.manual_seed(0)
    result = ais(wide.model, wide.guide, x, num_steps=100, num_chains=8)
    assert_agrees(result, wide.marginal.log_prob(x))


class GammaPoisson:
    """z ~ Gamma(a, b), x | z ~ Poisson(z): x ~ NegativeBinomial(a, 1/(1 + b)); z > 0."""

    a, b = 3.0, 0.5

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(torch.tensor(self.a, dtype=F64), self.b))
            pyro.sample("x", dist.Poisson(z), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal((x + 1).log(), 0.5))

    def log_px(self, x):
        probs = torch.tensor(1 / (1 + self.b), dtype=F64)
        return NegativeBinomial(torch.tensor(self.a, dtype=F64), probs=probs).log_prob(x)


def test_ais_on_a_constrained_latent():
    m = GammaPoisson()
    x = torch.tensor([0.0, 2.0, 5.0, 11.0, 20.0], dtype=F64)
    torch.manual_seed(0)
    result = ais(m.model, m.guide, x, num_steps=200, num_chains=8)
    assert_agrees(result, m.log_px(x))
    torch.manual_seed(0)
    refined = quiet(refined_log_likelihood, m.model, m.guide, x, num_samples=2000)
    assert torch.allclose(refined.log_px, m.log_px(x), atol=0.05)


def test_clear_errors_for_unsupported_latents():
    def discrete_model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(torch.tensor(0.5, dtype=F64)))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(torch.tensor(0.3, dtype=F64)))

    x = torch.zeros(3, dtype=F64)
    with pytest.raises(PyroVAEError, match="'c' is discrete"):
        ais(discrete_model, discrete_guide, x, num_steps=2)

    def global_model(x):
        g = pyro.sample("g", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(g, 1.0), obs=x)

    def global_guide(x):
        pyro.sample("g", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))

    with pytest.raises(PyroVAEError, match="'g' is outside the 'data' plate"):
        ais(global_model, global_guide, x, num_steps=2)
    m = Correlated(d=2, D=3)
    with pytest.raises(PyroVAEError, match="'z' is sampled in the model but not in the guide"):
        ais(m.model, lambda x: None, m.sample(2), num_steps=2)
    with pytest.raises(ConfigError, match="num_chains"):
        ais(m.model, m.guide, m.sample(2), num_chains=0)
    with pytest.raises(ConfigError, match="start"):
        ais(m.model, m.guide, m.sample(2), start="posterior")


# --------------------------------------------------------------------------------------
# Refined proposals and the gap decomposition
# --------------------------------------------------------------------------------------


def test_refinement_recovers_the_kl_optimal_mean_field_gaussian():
    """From a guide that is off (moved, too wide), the refined q* reaches the KL-optimal
    mean-field Gaussian: ELBO[q*] and both gaps match their closed forms."""
    m = Correlated(d=8, D=10, scale=0.4)
    m.shift, m.stretch = 0.5, 2.0
    x = m.sample(8)
    truth = m.marginal.log_prob(x)
    torch.manual_seed(0)
    result = quiet(refined_log_likelihood, m.model, m.guide, x, num_samples=2000, refine_steps=300,
                   elbo_samples=2000)
    sd = m.mean_field_sd()
    approximation = m.kl_to_posterior(m.post_mean(x), sd, x)
    total = m.kl_to_posterior(m.post_mean(x) + m.shift, sd * m.stretch, x)
    assert torch.allclose(truth - result.elbo_refined, approximation, atol=0.1)
    assert torch.allclose(truth - result.elbo, total, rtol=0.05)
    assert torch.allclose(result.amortisation_gap + result.approximation_gap, result.log_px - result.elbo)
    assert float(result.khat.max()) > 0.5  # q* is narrower than the posterior: heavy-tailed weights


def test_refined_importance_sampling_with_a_defensive_mixture_is_unbiased():
    """Mean of p̂/p over 3000 estimates with K = 4 draws, half from the refined proposal and
    half from the amortised guide, weighted by the mixture density, is 1."""
    m = Correlated(d=2, D=3, scale=0.8, seed=2)
    m.stretch, m.shift = 1.5, 0.3
    x = m.sample(1).expand(3000, -1)
    torch.manual_seed(0)
    result = quiet(refined_log_likelihood, m.model, m.guide, x, num_samples=4, refine_steps=20, mixture=0.5,
                   elbo_samples=2)
    ratio = (result.log_px - m.marginal.log_prob(x)).exp()
    assert float(ratio.std()) > 0.05
    assert abs(float(ratio.mean()) - 1.0) < 4 * float(ratio.std()) / math.sqrt(len(ratio))


def test_gaps_estimator_composes_the_three():
    m = Correlated(d=4, D=6, scale=0.5)
    m.shift = 0.3
    x = m.sample(6)
    estimator = build_estimator({"name": "gaps", "ais": {"num_steps": 300}}, 500)
    torch.manual_seed(0)
    result = estimator.estimate(m.model, m.guide, x)
    truth = m.marginal.log_prob(x)
    assert_agrees(result, truth)
    exact_gap = m.kl_to_posterior(m.post_mean(x), m.mean_field_sd(), x)
    assert abs(float((result.approximation_gap - exact_gap).mean())) < 0.15
    summary = estimator.combine(result.per_point()).summary()
    assert summary["num_points"] == 6 and math.isfinite(summary["amortisation_gap_mean"])


# --------------------------------------------------------------------------------------
# Through `pyro-vae evaluate`
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from pyro_vae import train

    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    train(None, run_dir, overrides=["train.epochs=2"], progress=False)
    return run_dir


def test_cli_evaluate_with_ais_and_gaps(digits_run, capsys, tmp_path):
    import json

    from pyro_vae.ais import AISResult
    from pyro_vae.cli import main
    from pyro_vae.estimators import GapDecomposition
    from pyro_vae.figures import load_eval_result

    ais_run = ["evaluate", str(digits_run), "--estimator", "ais", "--no-progress"]
    assert main([*ais_run, "--option", "num_steps=4", "--option", "num_chains=2"]) == 0
    summary = json.loads((digits_run / "eval.json").read_text())
    assert summary["estimator"] == {"name": "ais", "num_steps": 4, "num_chains": 2}
    assert summary["num_points"] == 360 and 0 < summary["accept_mean"] <= 1
    assert summary["bits_per_dim"] == pytest.approx(-summary["log_px_mean"] / (64 * math.log(2)))
    assert isinstance(load_eval_result(digits_run), AISResult)
    assert (digits_run / "figures" / "diagnostics.png").stat().st_size > 0
    capsys.readouterr()
    assert main([*ais_run, "--num-samples", "10"]) == 2
    assert "takes no num_samples" in capsys.readouterr().err
    assert main([*ais_run, "--option", "num_stepz=3"]) == 2
    assert "Did you mean 'num_steps'" in capsys.readouterr().err
    assert main([*ais_run, "--option", "num_steps"]) == 2
    assert "key=value" in capsys.readouterr().err

    gaps = ["evaluate", str(digits_run), "--estimator", "gaps", "--num-samples", "50", "--no-progress",
            "--option", "ais={num_steps: 4, num_chains: 2}", "--option", "refined={refine_steps: 5}"]
    assert main(gaps) == 0
    summary = json.loads((digits_run / "eval.json").read_text())
    result = load_eval_result(digits_run)
    assert isinstance(result, GapDecomposition)
    assert summary["approximation_gap_mean"] + summary["amortisation_gap_mean"] == pytest.approx(
        summary["inference_gap_mean"])
    out = tmp_path / "draws.nc"
    assert main(["export", str(digits_run), "--arviz", str(out), "--points", "5", "--num-samples", "3"]) == 0
    from pyro_vae.arviz_export import load_inference_data

    idata = load_inference_data(out)
    assert idata.constant_data["eval_log_px"].values == pytest.approx(result.log_px[:5].numpy())
