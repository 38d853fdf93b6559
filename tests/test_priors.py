import copy
import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from checks import assert_trains_and_evaluates
from scipy import special, stats

from pyro_vae import VAE, ConfigError, PyroVAEError
from pyro_vae.data import binarize_fixed, load_dataset
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.priors import PRIORS, VampPrior, analytic_kl_available, build_prior

pytestmark = pytest.mark.filterwarnings("ignore::pyro_vae.marginal.ImportanceSamplingWarning")

D = 4
SPECS = {
    "standard-normal": "standard-normal",
    "diagonal-normal": "diagonal-normal",
    "laplace": {"name": "laplace", "loc": 0.5, "scale": 2.0},
    "student-t": {"name": "student-t", "df": 4.0, "loc": -1.0, "scale": 0.5},
    "mixture": {"name": "mixture", "num_components": 3},
    "vamp": {"name": "vamp", "num_pseudo": 5},
    "flow": {"name": "flow", "num_flows": 2},
    "flow-spline": {"name": "flow", "num_flows": 2, "transform": "spline-coupling"},
}


@pytest.fixture(scope="module")
def digits():
    return binarize_fixed(load_dataset("digits").train[:128], seed=0)


def make_vae(spec):
    return VAE(data_shape=(1, 8, 8), latent_dim=D, prior=spec,
               encoder={"name": "mlp", "hidden": [32]}, decoder={"name": "mlp", "hidden": [32]})


def randomise(module):
    """Move learned parameters away from their initial values."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))


def log_prob(vae, z):
    return vae.prior().log_prob(torch.as_tensor(z, dtype=torch.float32)).detach().double().numpy()


def test_registered_names():
    assert PRIORS.names() == sorted(
        ["standard-normal", "diagonal-normal", "laplace", "student-t", "mixture", "vamp", "flow"]
    )


@pytest.mark.parametrize("name", SPECS)
def test_shapes_with_particle_dims(name):
    prior = make_vae(SPECS[name]).prior()
    assert prior.batch_shape == () and prior.event_shape == (D,)
    z = prior.sample((3, 5))
    assert z.shape == (3, 5, D)
    lp = prior.log_prob(z)
    assert lp.shape == (3, 5) and torch.isfinite(lp).all()


def test_fixed_priors_against_scipy():
    z = np.random.default_rng(0).normal(size=(6, D)) * 2
    cases = [
        ("standard-normal", stats.norm()),
        ("laplace", stats.laplace(loc=0.5, scale=2.0)),
        ("student-t", stats.t(df=4.0, loc=-1.0, scale=0.5)),
    ]
    for name, reference in cases:
        vae = make_vae(SPECS[name])
        np.testing.assert_allclose(log_prob(vae, z), reference.logpdf(z).sum(-1), rtol=1e-5)


def test_diagonal_normal_against_scipy():
    vae = make_vae("diagonal-normal")
    randomise(vae.prior)
    z = np.random.default_rng(1).normal(size=(6, D))
    loc, scale = vae.prior.loc.detach().numpy(), vae.prior.log_scale.exp().detach().numpy()
    np.testing.assert_allclose(log_prob(vae, z), stats.norm(loc, scale).logpdf(z).sum(-1), rtol=1e-5)


def mixture_log_density(z, log_weights, locs, scales):
    """log Σ_k w_k N(z; μ_k, diag σ_k²) with scipy, z (N, D), locs (K, D)."""
    per_component = stats.norm(locs[None], scales[None]).logpdf(z[:, None]).sum(-1)
    return special.logsumexp(per_component + log_weights, axis=-1)


def test_mixture_against_manual_logsumexp():
    vae = make_vae(SPECS["mixture"])
    randomise(vae.prior)
    p = vae.prior
    z = np.random.default_rng(2).normal(size=(6, D))
    tensors = (p.logits.log_softmax(-1), p.locs, p.log_scales.exp())
    log_weights, locs, scales = (t.detach().numpy() for t in tensors)
    expected = mixture_log_density(z, log_weights, locs, scales)
    np.testing.assert_allclose(log_prob(vae, z), expected, rtol=1e-5)


def test_mixture_starts_close_to_the_standard_normal_in_high_dimensions():
    """KL(N(0, I) ‖ p) of a freshly built 50-dimensional mixture of 50 components, by Monte
    Carlo: about 0.3 nats with the centred start, 10.9 with means drawn from N(0, I) at unit
    scales (which trained a VAE 12 nats worse on MNIST); its covariance is about I."""
    torch.manual_seed(0)
    prior = build_prior({"name": "mixture", "num_components": 50}, 50)()
    z = torch.randn(20000, 50)
    with torch.no_grad():
        kl = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - prior.log_prob(z)).mean().item()
        covariance = torch.cov(prior.sample((20000,)).T)
    assert 0.0 < kl < 0.5
    torch.testing.assert_close(covariance, torch.eye(50), atol=0.1, rtol=0.0)


def test_mixture_with_a_start_epoch_is_the_standard_normal_until_it_starts():
    vae = make_vae({"name": "mixture", "num_components": 3, "start_epoch": 2})
    randomise(vae.prior)
    z = np.random.default_rng(4).normal(size=(6, D))
    np.testing.assert_allclose(log_prob(vae, z), stats.norm().logpdf(z).sum(-1), rtol=1e-5)
    q = dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1)
    assert torch.distributions.kl_divergence(q, vae.prior()).item() == 0.0  # closed form, as N(0, I)
    locs = np.random.default_rng(5).normal(size=(3, D))
    vae.prior.start_at(torch.as_tensor(locs, dtype=torch.float32))
    expected = mixture_log_density(z, np.full(3, -math.log(3)), locs, np.ones((3, D)))
    np.testing.assert_allclose(log_prob(vae, z), expected, rtol=1e-5)


def test_whether_the_mixture_has_started_is_saved_with_it():
    started = make_vae({"name": "mixture", "num_components": 3, "start_epoch": 2})
    started.prior.start_at(torch.ones(3, D))
    waiting = make_vae({"name": "mixture", "num_components": 3, "start_epoch": 2})
    waiting.load_state_dict(started.state_dict())
    assert waiting.prior.started
    state = make_vae(SPECS["mixture"]).state_dict()  # as saved before start_epoch existed
    del state["prior._extra_state"]
    waiting = make_vae({"name": "mixture", "num_components": 3, "start_epoch": 2})
    waiting.load_state_dict(state)
    assert waiting.prior.started


def test_a_mixture_started_at_the_data_trains_and_resumes_exactly(tmp_path):
    """Started after epoch 1 at the encoder's means of 5 training points; a run cut after
    the start and resumed ends where the uninterrupted run does."""
    from pyro_vae import train

    prior = {"name": "mixture", "num_components": 5, "start_epoch": 1}
    config = {"model": {"latent_dim": 2, "prior": prior}, "objective": "elbo-analytic",
              "train": {"epochs": 3}, "data": {"name": "digits"}}
    cut = train({**config, "train": {"epochs": 1}}, tmp_path / "cut", progress=False)
    assert cut.vae.prior.started and torch.equal(cut.vae.prior.logits, torch.zeros(5))
    assert len(set(map(tuple, cut.vae.prior.locs.tolist()))) == 5  # five distinct points
    full = train(config, tmp_path / "full", progress=False)
    resumed = train(config, tmp_path / "cut", resume=True, progress=False)
    a, b = full.vae.state_dict(), resumed.vae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_mixture_that_starts_at_the_data_needs_a_point_per_component(tmp_path):
    from pyro_vae import train

    prior = {"name": "mixture", "num_components": 100_000, "start_epoch": 1}
    with pytest.raises(ConfigError, match="100000 training points"):
        train({"model": {"prior": prior}, "train": {"epochs": 1}}, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="start_epoch"):
        make_vae({"name": "mixture", "start_epoch": -1})


def test_vamp_is_equal_mixture_of_encoder_posteriors_at_pseudo_inputs():
    vae = make_vae(SPECS["vamp"])
    loc, logvar = (t.detach().numpy() for t in vae.encode(vae.prior.pseudo_inputs))
    z = np.random.default_rng(3).normal(size=(6, D))
    expected = mixture_log_density(z, np.full(5, -math.log(5)), loc, np.exp(0.5 * logvar))
    np.testing.assert_allclose(log_prob(vae, z), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["flow", "flow-spline"])
def test_flow_against_change_of_variables(name):
    vae = make_vae(SPECS[name]).double()  # float32 autograd Jacobians of sharp splines are inexact
    randomise(vae.prior)
    prior = vae.prior()

    def normalise(z):  # u = f(z): the inverse of the sampling path through the transforms
        for t in reversed(prior.transforms):
            z = t.inv(z)
        return z

    for z in torch.randn(4, D, dtype=torch.float64):
        jacobian = torch.autograd.functional.jacobian(normalise, z)
        log_det = torch.linalg.slogdet(jacobian)[1]
        expected = stats.norm().logpdf(normalise(z).detach().numpy()).sum() + log_det
        assert prior.log_prob(z).item() == pytest.approx(float(expected), rel=1e-8)


def test_flow_event_shape_and_trainable_parameters():
    prior = build_prior({"name": "flow", "num_flows": 3}, latent_dim=5)
    assert prior().event_shape == (5,) and prior().batch_shape == ()
    names = {n for n, _ in prior.named_parameters()}
    assert sum(n.startswith(f"layers.{i}.") for n in names for i in range(3)) == len(names) > 0


def test_analytic_kl_flags_match_torch():
    for name, spec in SPECS.items():
        prior = make_vae(spec).prior
        p = prior()
        q = dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1)
        try:
            torch.distributions.kl_divergence(q, p)
            implemented = True
        except NotImplementedError:
            implemented = False
        assert analytic_kl_available(prior) is implemented, name


def test_analytic_kl_probe_for_user_priors():
    class UserPrior(torch.nn.Module):
        def __init__(self, family):
            super().__init__()
            self.family = family

        def forward(self):
            return self.family(torch.zeros(D), torch.ones(D)).to_event(1)

    assert analytic_kl_available(UserPrior(dist.Normal)) is True
    assert analytic_kl_available(UserPrior(dist.Cauchy)) is False


@pytest.mark.parametrize("name", ["mixture", "student-t"])
def test_analytic_objective_falls_back_to_monte_carlo(name, digits):
    vae = make_vae(SPECS[name])
    objective = OBJECTIVES.build({"name": "elbo-analytic", "num_particles": 3})
    assert math.isfinite(objective.loss(vae.model, vae.guide, digits[:16]))


@pytest.mark.parametrize("name", SPECS)
def test_trains_and_evaluates(name, digits):
    vae = make_vae(SPECS[name])
    learned = [p.detach().clone() for p in vae.prior.parameters()]
    assert_trains_and_evaluates(vae, digits, lr=1e-2, objective={"name": "elbo", "num_particles": 2})
    assert all(not torch.equal(p0, p) for p0, p in zip(learned, vae.prior.parameters()))


def test_vamp_state_dict_has_no_cycle_and_reloads():
    vae = make_vae(SPECS["vamp"])
    randomise(vae)
    keys = list(vae.state_dict())
    assert "prior.pseudo_inputs" in keys and not any(k.startswith("prior.encoder") for k in keys)
    fresh = make_vae(SPECS["vamp"])
    fresh.load_state_dict(vae.state_dict())
    z = torch.randn(3, D)
    assert torch.allclose(fresh.prior().log_prob(z), vae.prior().log_prob(z))
    clone = copy.deepcopy(vae)  # the bound encoder follows the copy
    with torch.no_grad():
        clone.encoder.net[-1].bias.add_(1.0)
    assert not torch.allclose(clone.prior().log_prob(z), vae.prior().log_prob(z))


def test_vamp_needs_the_vae():
    with pytest.raises(PyroVAEError, match="pyro_vae.VAE"):
        VampPrior(latent_dim=D)()


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "laplace", "scale": -1.0}, "scale"),
        ({"name": "student-t", "df": 0}, "df"),
        ({"name": "mixture", "num_components": 0}, "num_components"),
        ({"name": "vamp", "num_pseudo": 2.5}, "num_pseudo"),
        ({"name": "flow", "transform": "spline"}, "spline-coupling"),
        ({"name": "flow", "num_flows": 0}, "num_flows"),
        ({"name": "mixture", "components": 3}, "num_components"),
    ],
)
def test_bad_options_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_prior(spec, latent_dim=D)


def test_spline_flow_needs_two_latent_dims():
    with pytest.raises(ConfigError, match="latent_dim >= 2"):
        build_prior({"name": "flow", "transform": "spline-coupling"}, latent_dim=1)
