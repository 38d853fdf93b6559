"""The hot-path distributions are the textbook Pyro constructions, bitwise where promised."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_vae.distributions import (
    DiagonalNormalMixture,
    IndependentBernoulli,
    LogVarNormal,
    _MixtureLogDensity,
    _UnitNormal,
    diagonal_normal,
)
from pyro_vae.priors import StandardNormal


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("event_dim", [0, 1, 3])
def test_independent_bernoulli_is_pyros_bernoulli_bitwise(event_dim):
    logits = (3 * _rand(5, 1, 4, 4)).requires_grad_()
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(1))
    ours = IndependentBernoulli(logits, event_dim)
    pyros = dist.Bernoulli(logits=logits).to_event(event_dim)
    assert ours.batch_shape == pyros.batch_shape and ours.event_shape == pyros.event_shape
    (grad_ours,) = torch.autograd.grad(ours.log_prob(x).sum(), logits)
    (grad_pyro,) = torch.autograd.grad(pyros.log_prob(x).sum(), logits)
    assert torch.equal(ours.log_prob(x), pyros.log_prob(x))
    assert torch.equal(grad_ours, grad_pyro)
    assert torch.equal(ours.mean, pyros.mean) and torch.allclose(ours.variance, pyros.variance)
    assert torch.allclose(ours.entropy(), pyros.entropy(), rtol=1e-6)


def test_independent_bernoulli_samples_expands_and_validates():
    logits = _rand(3, 2, 2)
    d = IndependentBernoulli(logits, 2)
    torch.manual_seed(0)
    ours = d.sample((4,))
    torch.manual_seed(0)
    assert torch.equal(ours, dist.Bernoulli(logits=logits).to_event(2).sample((4,)))
    assert ours.shape == (4, 3, 2, 2) and set(ours.unique().tolist()) <= {0.0, 1.0}
    assert d.expand((3,)) is d  # the plates' no-op expand builds nothing
    wide = d.expand((5, 3))
    assert wide.batch_shape == (5, 3) and wide.log_prob(ours[0]).shape == (5, 3)
    assert torch.equal(wide.log_prob(ours[0])[2], d.log_prob(ours[0]))
    with pytest.raises(ValueError):
        IndependentBernoulli(logits, 2, validate_args=True).log_prob(torch.full((3, 2, 2), 0.5))
    with pytest.raises(ValueError, match="event_dim"):
        IndependentBernoulli(logits, 4)


def test_diagonal_normal_is_normal_to_event_bitwise():
    loc, logvar = _rand(6, 3).requires_grad_(), _rand(6, 3, seed=1).requires_grad_()
    ours = diagonal_normal(loc, logvar)
    pyros = dist.Normal(loc, torch.exp(0.5 * logvar)).to_event(1)
    torch.manual_seed(0)
    z = ours.rsample()
    torch.manual_seed(0)
    assert torch.equal(z, pyros.rsample())
    assert torch.equal(ours.log_prob(z), pyros.log_prob(z))
    assert ours.batch_shape == (6,) and ours.event_shape == (3,)
    assert ours.expand((6,)) is ours
    wide = ours.expand((2, 6))
    assert wide.batch_shape == (2, 6) and isinstance(wide.base_dist, LogVarNormal)
    assert torch.equal(wide.base_dist.logvar[1], logvar)
    assert torch.equal(wide.log_prob(z)[0], ours.log_prob(z))


def test_kl_to_the_unit_normal_is_the_closed_form():
    loc, logvar = _rand(6, 3), 2 * _rand(6, 3, seed=1)
    q = diagonal_normal(loc, logvar)
    p = StandardNormal(3)().expand((6,))
    assert isinstance(p.base_dist, _UnitNormal)  # the standard-normal prior takes the fast KL
    expected = 0.5 * (logvar.exp() + loc**2 - 1 - logvar).sum(-1)
    assert torch.allclose(kl_divergence(q, p), expected, rtol=1e-6)
    torch_kl = kl_divergence(dist.Normal(loc, torch.exp(0.5 * logvar)).to_event(1),
                             dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1))
    assert torch.allclose(kl_divergence(q, p), torch_kl, rtol=1e-5)
    # broadcasting against a larger prior batch (e.g. a particle dim) keeps every term
    wide = _UnitNormal((3,)).to_event(1).expand((4, 6))
    assert isinstance(wide.base_dist, _UnitNormal) and kl_divergence(q, wide).shape == (4, 6)
    # against other Normals, torch's Normal-Normal KL applies
    other = dist.Normal(torch.ones(3), 2 * torch.ones(3)).to_event(1)
    reference = kl_divergence(dist.Normal(loc, torch.exp(0.5 * logvar)).to_event(1), other)
    assert torch.allclose(kl_divergence(q, other), reference, rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_the_unit_normal_is_only_ever_the_standard_normal(seed):
    """Its closed-form KL ignores loc and scale, so it takes neither (the KL to
    ``UnitNormal(2, 3)`` used to come out 0 for q = N(0, 1), not 0.876)."""
    with pytest.raises(TypeError):
        _UnitNormal(torch.tensor(2.0), torch.tensor(3.0))
    with pytest.raises(TypeError):
        _UnitNormal(loc=torch.tensor(2.0), scale=torch.tensor(3.0))
    p = _UnitNormal((5,), dtype=torch.float64)
    assert torch.equal(p.loc, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(p.scale, torch.ones(5, dtype=torch.float64))
    loc, logvar = 3 * _rand(2, 5, seed=seed).double(), 2 * _rand(2, 5, seed=seed + 10).double()
    torch_kl = kl_divergence(dist.Normal(loc, torch.exp(0.5 * logvar)), dist.Normal(p.loc, p.scale))
    assert torch.allclose(kl_divergence(LogVarNormal(loc, logvar), p), torch_kl, rtol=1e-12)


def test_the_distributions_inside_pyro_plates():
    loc, logvar = _rand(4, 2), _rand(4, 2, seed=1)

    def model():
        with pyro.plate("data", 4):
            pyro.sample("z", StandardNormal(2)())
            pyro.sample("x", IndependentBernoulli(_rand(4, 3), 1), obs=torch.ones(4, 3))

    def guide():
        with pyro.plate("data", 4):
            pyro.sample("z", diagonal_normal(loc, logvar))

    guide_trace = poutine.trace(guide).get_trace()
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace()
    for trace in (model_trace, guide_trace):
        trace.compute_log_prob()
    assert model_trace.nodes["z"]["fn"].batch_shape == (4,)
    assert isinstance(model_trace.nodes["z"]["fn"].base_dist, _UnitNormal)
    assert model_trace.nodes["x"]["log_prob"].shape == (4,)
    assert guide_trace.nodes["z"]["log_prob"].shape == (4,)


def _mixture_params(batch=(), k=4, d=3):
    """float64 (logits, loc, logvar) of a mixture, leaves that require gradients."""
    params = (_rand(*batch, k, seed=1), 2 * _rand(*batch, k, d, seed=2), _rand(*batch, k, d, seed=3))
    return [p.double().requires_grad_() for p in params]


@pytest.mark.parametrize(
    "batch, value_shape",
    [((), (6, 3)), ((), (2, 6, 3)), ((), (3,)), ((5,), (5, 3)), ((5,), (2, 5, 3))],
    ids=["points", "particles-points", "one-point", "batched-components", "batched-particles"],
)
def test_the_diagonal_normal_mixture_is_torchs_mixture_same_family(batch, value_shape):
    """Values and gradients (point, weights, means, log-variances) against torch's own
    MixtureSameFamily(Categorical, Independent(Normal)), in float64; the components shared
    by every point take the matrix-product backward, batched ones the autograd one."""
    ours, theirs = _mixture_params(batch), _mixture_params(batch)
    value = (3 * _rand(*value_shape, seed=4)).double()
    values = [value.clone().requires_grad_() for _ in range(2)]
    logits, loc, logvar = ours
    ours_lp = DiagonalNormalMixture(logits, loc, logvar).log_prob(values[0])
    logits, loc, logvar = theirs
    torch_mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(loc, torch.exp(0.5 * logvar)), 1))
    theirs_lp = torch_mixture.log_prob(values[1])
    assert ours_lp.shape == theirs_lp.shape
    assert torch.allclose(ours_lp, theirs_lp, rtol=1e-12, atol=1e-12)
    weights = torch.randn(ours_lp.shape, generator=torch.Generator().manual_seed(5)).double()  # not uniform
    (ours_lp * weights).sum().backward()
    (theirs_lp * weights).sum().backward()
    for mine, reference in zip([values[0], *ours], [values[1], *theirs]):
        assert torch.allclose(mine.grad, reference.grad, rtol=1e-10, atol=1e-12)


def test_the_diagonal_normal_mixture_promotes_a_float64_point_against_float32_components():
    logits, loc, logvar = (p.detach().float() for p in _mixture_params())
    z = _rand(6, 3, seed=10).double()
    ours = DiagonalNormalMixture(logits, loc, logvar).log_prob(z)
    exact = DiagonalNormalMixture(logits.double(), loc.double(), logvar.double()).log_prob(z)
    assert ours.dtype == torch.float64 and torch.allclose(ours, exact, rtol=1e-6)


def test_the_mixture_log_density_backward_passes_gradcheck():
    z = (2 * _rand(7, 3, seed=6)).double().requires_grad_()
    logits, loc, logvar = _mixture_params()
    precision = torch.exp(-logvar).detach().requires_grad_()
    assert torch.autograd.gradcheck(_MixtureLogDensity.apply, (z, logits, loc, precision))


def test_the_diagonal_normal_mixture_inside_a_plate():
    logits, loc, logvar = (p.detach().float() for p in _mixture_params())
    mixture = DiagonalNormalMixture(logits, loc, logvar)
    assert mixture.expand(()) is mixture
    z = _rand(6, 3, seed=7)

    def model():
        with pyro.plate("data", 6):
            pyro.sample("z", mixture, obs=z)

    trace = poutine.trace(model).get_trace()
    trace.compute_log_prob()
    site = trace.nodes["z"]
    assert isinstance(site["fn"], DiagonalNormalMixture) and site["fn"].batch_shape == (6,)
    assert torch.allclose(site["log_prob"], mixture.log_prob(z))
    assert mixture.sample((5,)).shape == (5, 3) and site["fn"].sample().shape == (6, 3)


def test_the_mixture_log_density_keeps_float32_accuracy_far_out_and_at_narrow_components():
    """The matrix-product form cancels large terms; computed in float64 it stays within
    float32 rounding of the exact value, for points on components of σ down to 0.01 and for
    points ten units out (where z² p is some 10⁶ per coordinate)."""
    generator = torch.Generator().manual_seed(8)
    k, d = 20, 50
    loc = 3 * torch.randn(k, d, generator=generator)
    logvar = torch.empty(k, d).uniform_(-9.2, 0.0, generator=generator)
    logits = torch.randn(k, generator=generator)
    z = torch.cat([loc[:10] + 0.01 * torch.randn(10, d, generator=generator),
                   10 * torch.randn(10, d, generator=generator)])
    ours = DiagonalNormalMixture(logits, loc, logvar).log_prob(z).double()
    components = torch.distributions.Normal(loc.double(), torch.exp(0.5 * logvar.double()))
    exact = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits.double()),
        torch.distributions.Independent(components, 1)).log_prob(z.double())
    assert torch.allclose(ours, exact, rtol=1e-6, atol=1e-4)


def test_the_mixture_log_density_refuses_second_derivatives():
    """Its backward pass treats the responsibilities as constants, so a second derivative
    would be wrong: it raises instead of returning one."""
    z = _rand(5, 3, seed=9).double().requires_grad_()
    logits, loc, logvar = _mixture_params()
    (grad,) = torch.autograd.grad(DiagonalNormalMixture(logits, loc, logvar).log_prob(z).sum(), z,
                                  create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        grad.sum().backward()
