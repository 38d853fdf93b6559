"""Property-based hardening tests: random shapes, values and configs into the public API and the CLI.

Every input either works (finite log-probabilities, a complete run directory) or is refused
with a :class:`~pyro_vae.PyroVAEError` (from the CLI: exit status 2, one message on stderr,
no run directory); never another exception type. The float32 numerics of the marginal
likelihood estimator are checked against closed forms and float64 recomputations at K = 10^5.
"""

import contextlib
import io
import json
import math
import tempfile
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pyro import poutine

from pyro_vae import VAE, PyroVAEError, log_likelihood, naive_log_likelihood
from pyro_vae.cli import main
from pyro_vae.config import DEFAULTS
from pyro_vae.priors import PRIORS

settings.register_profile(
    "pyro-vae-hardening",
    max_examples=20,
    deadline=None,
    database=None,  # no .hypothesis/ state between runs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
HARDENING = settings.get_profile("pyro-vae-hardening")

# --------------------------------------------------------------------------------------
# VAE(data_shape, latent_dim, parts): builds and traces, or raises PyroVAEError
# --------------------------------------------------------------------------------------

SMALL_INTS = st.integers(-2, 5)
JUNK_SCALARS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), st.booleans())
SHAPE_LIKE = st.one_of(
    SMALL_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.lists(SMALL_INTS, max_size=3),
    st.lists(SMALL_INTS, max_size=3).map(tuple),
    st.lists(st.one_of(SMALL_INTS, JUNK_SCALARS), min_size=1, max_size=2),
    st.text(max_size=3),
    st.booleans(),
    st.dictionaries(st.text(max_size=2), SMALL_INTS, max_size=1),
)

# For each argument of VAE: values that must work, and values that may be refused.
VALID_ARGS = {
    "data_shape": st.one_of(st.integers(1, 6), st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
                            st.sampled_from([(1, 8, 8), (2, 4, 4), [3, 2]])),
    "latent_dim": st.one_of(st.integers(1, 4), st.lists(st.integers(1, 3), min_size=1, max_size=3)),
    "likelihood": st.sampled_from([
        "bernoulli", "continuous-bernoulli", "gaussian", {"name": "gaussian", "scale": "learned"},
        {"name": "laplace", "scale": "predicted"}, {"name": "gaussian", "scale": 0.1}, "beta", "poisson",
        "negative-binomial", {"name": "negative-binomial", "total_count": "predicted"},
        {"name": "categorical", "levels": 5},
        {"name": "discretized-logistic", "levels": 5, "num_mixtures": 2},
    ]),
    "prior": st.sampled_from([
        "standard-normal", "diagonal-normal", "laplace", {"name": "student-t", "df": 3},
        {"name": "mixture", "num_components": 2}, {"name": "vamp", "num_pseudo": 3},
        {"name": "flow", "num_flows": 1},
    ]),
    "encoder": st.sampled_from([{"name": "mlp", "hidden": [4]}, {"name": "mlp", "hidden": []},
                                {"name": "mlp", "hidden": [3, 2], "activation": "tanh"}]),
    "decoder": st.sampled_from([{"name": "mlp", "hidden": [4]}, {"name": "mlp", "hidden": [5, 3]}]),
    "inference": st.sampled_from(["bottom-up", "top-down", "residual"]),
    "beta": st.one_of(st.floats(0, 10), st.integers(0, 3)),
}
JUNK_ARGS = {
    "data_shape": SHAPE_LIKE,
    "latent_dim": SHAPE_LIKE,
    "likelihood": st.sampled_from([
        {"name": "gaussian", "scale": -1.0}, {"name": "gaussian", "scale": math.nan},
        {"name": "categorical", "levels": 1}, {"name": "discretized-logistic", "num_mixtures": 0},
        {"name": "poisson", "rate": 1}, {"scale": 1.0}, "gausian", "", 3, None, [],
    ]),
    "prior": st.sampled_from([
        {"name": "mixture", "num_components": 0}, {"name": "laplace", "scale": 0},
        {"name": "flow", "transform": "x"}, {"name": "student-t", "df": -1}, "standard_normal", None, 1.5,
    ]),
    "encoder": st.sampled_from([
        {"name": "conv", "channels": [2], "hidden": 4}, {"name": "conv"}, {"name": "mlp", "hidden": [-1]},
        {"name": "mlp", "hidden": [2.5]}, {"name": "mlp", "hiden": [4]},
        {"name": "mlp", "activation": "rleu"}, "mpl", None,
    ]),
    "decoder": st.sampled_from([{"name": "conv", "hidden": 4}, {"name": "mlp", "hidden": "4"}, "convv"]),
    "inference": st.sampled_from(["sideways", None, 1, "Top-Down"]),
    "beta": st.one_of(st.floats(max_value=-1e-9),
                      st.sampled_from([math.nan, math.inf, "1", None, [1.0] * 4])),
}


def valid_data(likelihood, n, generator):
    """A batch of n points in the support of ``likelihood`` (a built module)."""
    shape = (n, *likelihood.data_shape)
    u = torch.rand(shape, generator=generator)
    name = type(likelihood).__name__
    if name == "Bernoulli":
        return (u < 0.5).float()
    if name in ("Gaussian", "Laplace"):
        return torch.randn(shape, generator=generator)
    if name == "Beta":
        return u.clamp(0.01, 0.99)
    if name in ("Poisson", "NegativeBinomial"):
        return (u * 5).floor()
    if name in ("Categorical", "DiscretizedLogistic"):
        top = likelihood.levels - 1
        return (u * top).round() / top
    return u  # continuous Bernoulli: [0, 1]


@st.composite
def vae_arguments(draw):
    """Keyword arguments of VAE, one of them (or none: ``broken = None``) drawn from the junk."""
    broken = draw(st.sampled_from([None] * 6 + list(JUNK_ARGS)))
    kwargs = {name: draw(JUNK_ARGS[name] if name == broken else valid) for name, valid in VALID_ARGS.items()}
    return broken, kwargs


@settings(HARDENING, max_examples=40)
@given(arguments=vae_arguments(), batch=st.integers(1, 3))
@pytest.mark.filterwarnings("ignore:ConditionalAutoRegressiveNN input_dim = 1")
def test_vae_builds_and_traces_or_raises_pyrovaeerror(arguments, batch):
    broken, kwargs = arguments
    pyro.clear_param_store()
    try:
        vae = VAE(latent_network={"name": "mlp", "hidden": [4]}, **kwargs)
    except PyroVAEError:
        assert broken is not None, f"valid arguments were refused: {kwargs}"
        event(f"refused: {broken}")
        return
    event(f"built with {'valid arguments' if broken is None else 'junk ' + broken}")
    assert math.prod(vae.data_shape) >= 1 and all(d >= 1 for d in vae.latent_dims)
    x = valid_data(vae.likelihood, batch, torch.Generator().manual_seed(batch))
    vae.likelihood.validate(x)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert torch.isfinite(guide_trace.log_prob_sum()) and torch.isfinite(model_trace.log_prob_sum())
    assert model_trace.nodes["x"]["value"].shape == x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # K = 2 is too small for k-hat: ImportanceSamplingWarning
        result = log_likelihood(vae.model, vae.guide, x, num_samples=2)
    assert result.log_px.shape == (batch,) and bool(torch.isfinite(result.log_px).all())


# --------------------------------------------------------------------------------------
# log_likelihood(model, guide, x) with random x: a result or PyroVAEError
# --------------------------------------------------------------------------------------

X_KINDS = [
    "binary", "gaussian-finite", "non-finite", "empty-batch", "empty-width", "zero-dim", "list", "numpy",
    "wrong-width", "extra-dim", "one-dim", "int", "bool", "float64", "out-of-support",
]


@st.composite
def x_tensors(draw, kinds):
    """(kind, x) for a VAE with data_shape (4,): valid, non-finite, empty, mis-shaped or mistyped."""
    kind = draw(st.sampled_from(kinds))
    n = draw(st.integers(1, 4))
    binary = st.lists(st.sampled_from([0.0, 1.0]), min_size=4 * n, max_size=4 * n)
    values = torch.tensor(draw(binary)).reshape(n, 4)
    if kind == "gaussian-finite":
        floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)
        values = torch.tensor(draw(st.lists(floats, min_size=4 * n, max_size=4 * n))).reshape(n, 4)
    elif kind == "non-finite":
        cells = draw(st.lists(st.integers(0, 4 * n - 1), min_size=1, max_size=3))
        bad = draw(st.lists(st.sampled_from([math.nan, math.inf, -math.inf]), min_size=len(cells),
                            max_size=len(cells)))
        values = values.flatten()
        values[cells] = torch.tensor(bad)
        values = values.reshape(n, 4)
    elif kind == "empty-batch":
        values = torch.zeros(0, 4)
    elif kind == "empty-width":
        values = torch.zeros(n, 0)
    elif kind == "zero-dim":
        values = torch.tensor(1.0)
    elif kind == "list":
        values = values.tolist()
    elif kind == "numpy":
        values = values.numpy()
    elif kind == "wrong-width":
        values = torch.ones(n, draw(st.sampled_from([1, 3, 5, 8])))
    elif kind == "extra-dim":
        values = values.unsqueeze(1)
    elif kind == "one-dim":
        values = values[0]
    elif kind in ("int", "bool", "float64"):
        values = values.to({"int": torch.int64, "bool": torch.bool, "float64": torch.float64}[kind])
    elif kind == "out-of-support":
        values = values + 0.5
    return kind, values


@pytest.fixture(scope="module")
def small_vaes():
    pyro.set_rng_seed(0)
    return {
        "bernoulli": VAE(data_shape=4, latent_dim=2, encoder={"name": "mlp", "hidden": [8]},
                         decoder={"name": "mlp", "hidden": [8]}),
        "gaussian": VAE(data_shape=4, latent_dim=2, likelihood="gaussian", name="gvae",
                        encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]}),
    }


@settings(HARDENING, max_examples=40,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=x_tensors(list(X_KINDS)), naive=st.booleans())
def test_log_likelihood_of_random_x_is_a_result_or_pyrovaeerror(small_vaes, case, naive):
    kind, x = case
    event(kind)
    vae = small_vaes["gaussian" if kind == "gaussian-finite" else "bernoulli"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # K = 3: ImportanceSamplingWarning
        try:
            if naive:
                result = naive_log_likelihood(vae.model, x, num_samples=3)
            else:
                result = log_likelihood(vae.model, vae.guide, x, num_samples=3)
        except PyroVAEError:
            assert kind not in ("binary", "gaussian-finite"), f"valid {kind} data were refused"
            return
    assert kind in ("binary", "gaussian-finite"), f"{kind} data were accepted: {x!r}"
    assert result.log_px.shape == (x.shape[0],) and bool(torch.isfinite(result.log_px).all())


# --------------------------------------------------------------------------------------
# pyro-vae train --set key=value: exit 0 with a complete run, or exit 2 and nothing left
# --------------------------------------------------------------------------------------


def leaf_paths(mapping, prefix=""):
    """The dotted key paths of DEFAULTS: sections, their leaves and the options of specs."""
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from leaf_paths(value, path + ".")


KEYS = sorted(leaf_paths(DEFAULTS))
JUNK = ["-1", "0", "1.5", "abc", "null", "[]", "{}", ".nan", ".inf", "true", "[1, x]", "{a: 1}", "-3e2", ""]
# Valid values that keep a run small (one epoch on the digits with tiny networks).
VALID = {
    "seed": ["0", "7", "4294967295"],
    "device": ["cpu", "auto"],
    "data": ["digits", "{name: digits, binarize: static}"],
    "data.name": ["digits"],
    "data.binarize": ["dynamic", "static", "threshold"],
    "model.latent_dim": ["1", "3", "[2, 1]"],
    "model.prior": PRIORS.names(),
    "model.likelihood": ["bernoulli", "continuous-bernoulli", "gaussian", "poisson"],
    "model.encoder": ["mlp", "{name: mlp, hidden: [4]}", "conv"],
    "model.encoder.name": ["mlp"],
    "model.encoder.hidden": ["[4]", "[]", "[8, 4]"],
    "model.encoder.activation": ["tanh", "elu"],
    "model.decoder.hidden": ["[4]", "[8, 4]"],
    "model.decoder.activation": ["softplus", "gelu"],
    "model.latent_network.hidden": ["[4]"],
    "model.latent_network.activation": ["relu"],
    "model.inference": ["bottom-up", "top-down", "residual"],
    "objective.name": ["elbo", "elbo-analytic", "iwae"],
    "objective.num_particles": ["1", "2"],
    "beta_schedule.name": ["constant", "linear", "cyclical"],
    "beta_schedule.beta": ["0", "0.5", "4"],
    "optim.lr": ["1e-3", "0.01", "3.0e-4"],
    "optim.lr_decay": ["0.9", "1"],
    "optim.clip_norm": ["null", "10", "1e2"],
    "train.batch_size": ["128", "500", "5000"],
    "train.validate_every": ["1", "3"],
    "eval.num_samples": ["1", "50"],
    "eval.batch_size": ["7", "100"],
}
TINY = ["train.epochs=1", "model.encoder.hidden=[8]", "model.decoder.hidden=[8]", "train.batch_size=256"]


def misspell(word, draw):
    """``word`` with one letter dropped, doubled or swapped with the next one."""
    i = draw(st.integers(0, len(word) - 1))
    how = draw(st.sampled_from(["drop", "double", "swap"]))
    if how == "drop":
        return word[:i] + word[i + 1:]
    if how == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + word[i] + word[i:]


@st.composite
def overrides(draw):
    """A ``key=value`` override: a valid value, a junk value, or a misspelt key."""
    key = draw(st.sampled_from(KEYS))
    choice = draw(st.sampled_from(["valid", "junk", "misspelt"]))
    if choice == "misspelt":
        parts = key.split(".")
        at = draw(st.integers(0, len(parts) - 1))
        parts[at] = misspell(parts[at], draw)
        wrong = ".".join(parts)
        assume(wrong not in KEYS)
        return wrong, draw(st.sampled_from(VALID.get(key, ["1"])))
    if choice == "valid" and key in VALID:
        return key, draw(st.sampled_from(VALID[key]))
    return key, draw(st.sampled_from(JUNK))


def run_cli(argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse
            status = exit_.code
    return status, err.getvalue()


@settings(HARDENING, max_examples=15)
@given(sets=st.lists(overrides(), min_size=1, max_size=3))
def test_cli_train_with_random_overrides_completes_or_exits_2_leaving_nothing(sets):
    pyro.clear_param_store()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["train", "--out", str(out), "--no-progress"]
        for key, value in sets:
            argv += ["--set", f"{key}={value}"]
        status, err = run_cli(argv[:4] + [a for o in TINY for a in ("--set", o)] + argv[4:])
        assert status in (0, 2), (status, err)
        event(f"exit status {status}")
        if status == 2:
            assert err.startswith("pyro-vae train: error: ") and "Traceback" not in err, err
            assert not out.exists(), f"{sets}: exit 2 but {sorted(p.name for p in out.rglob('*'))} left"
        else:
            assert err == "" or "Traceback" not in err
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in records] == [1] and math.isfinite(records[0]["train_loss"])
            assert (out / "config.yaml").is_file() and (out / "checkpoints" / "epoch-0001.pt").is_file()
            assert (out / "figures" / "reconstructions_and_samples.png").stat().st_size > 0
            assert not list(out.rglob("*.tmp"))


# --------------------------------------------------------------------------------------
# The estimator in float32 at K = 10^5 (chunked): closed form and float64 recomputation
# --------------------------------------------------------------------------------------


def linear_gaussian(data_dim, latent_dim, sigma, n, seed=0):
    """z ~ N(0, I), x | z ~ N(W z + b, σ² I): data, exact log p(x) and the exact posterior (float64)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(data_dim, generator=g, dtype=torch.float64)
    z = torch.randn(n, latent_dim, generator=g, dtype=torch.float64)
    x = (z @ w.T + b + sigma * torch.randn(n, data_dim, generator=g, dtype=torch.float64)).float().double()
    marginal = dist.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(data_dim, dtype=torch.float64))
    cov = torch.linalg.inv(torch.eye(latent_dim, dtype=torch.float64) + w.T @ w / sigma**2)
    mean = (x - b) @ w @ cov.T / sigma**2
    return {"w": w, "b": b, "sigma": sigma, "x": x, "log_px": marginal.log_prob(x), "mean": mean, "cov": cov}


def log_joint(problem, z):
    """log p(x, z) in float64 for z of shape (..., n, latent_dim)."""
    prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    likelihood = dist.Normal(z @ problem["w"].T + problem["b"], problem["sigma"])
    return prior + likelihood.log_prob(problem["x"]).sum(-1)


def float32_pair(problem, shift=0.0, widen=1.0, draws=None):
    """Model and guide in float32; the guide is the exact posterior moved by ``shift`` and
    widened by ``widen``. Draws made under the particle plate are appended to ``draws``."""
    w, b = problem["w"].float(), problem["b"].float()
    loc = (problem["mean"] + shift).float()
    tril = (widen * torch.linalg.cholesky(problem["cov"])).float()
    d = w.shape[1]

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), torch.ones(d)).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T + b, problem["sigma"]).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))
        if draws is not None and z.dim() == 3:
            draws.append(z.detach().clone())

    return model, guide


FLOAT32_LOG_MAX = math.log(torch.finfo(torch.float32).max)  # about 88.7


def test_float32_estimate_with_exact_posterior_guide_is_log_px_at_k_1e5():
    # log p(x) is about +110 > log(float32 max) = 88.7: e^{w} overflows float32
    problem = linear_gaussian(data_dim=40, latent_dim=3, sigma=0.01, n=2)
    draws = []
    model, guide = float32_pair(problem, draws=draws)
    result = log_likelihood(model, guide, problem["x"].float(), num_samples=100_000)
    assert len(draws) > 1 and sum(len(z) for z in draws) == 100_000  # chunked
    assert bool((problem["log_px"] > FLOAT32_LOG_MAX).all())
    # every weight is log p(x) up to float32 rounding of the log-densities
    assert torch.allclose(result.log_px, problem["log_px"], rtol=1e-6, atol=1e-4), (result.log_px, problem)
    assert bool((result.ess > 0.99 * 100_000).all()) and bool((result.stderr < 1e-3).all())


@pytest.mark.parametrize("data_dim, latent_dim, sigma, shift, widen", [
    (20, 2, 0.1, 1.5, 2.5),  # log weights around -3000: e^{w} underflows even in float64
    (40, 3, 0.01, 0.0, 1.5),  # log weights up to about +110: e^{w} overflows float32
])
def test_float32_estimate_with_poor_guide_matches_float64_of_same_draws_at_k_1e5(
    data_dim, latent_dim, sigma, shift, widen
):
    problem = linear_gaussian(data_dim, latent_dim, sigma, n=2)
    draws = []
    model, guide = float32_pair(problem, shift, widen, draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a poor guide: Pareto k-hat warning expected
        result = log_likelihood(model, guide, problem["x"].float(), num_samples=100_000)
    assert len(draws) > 1  # chunked
    z = torch.cat(draws).double()  # the very draws of the estimator, (K, n, d), exact in float64
    assert z.shape == (100_000, 2, latent_dim)
    proposal = dist.MultivariateNormal(problem["mean"] + shift,
                                       scale_tril=widen * torch.linalg.cholesky(problem["cov"]))
    log_w = log_joint(problem, z) - proposal.log_prob(z)
    reference = torch.logsumexp(log_w, 0) - math.log(len(z))
    assert bool(torch.isfinite(result.log_px).all()) and bool(torch.isfinite(result.elbo).all())
    assert bool(((result.ess >= 1) & (result.ess <= 100_000)).all())
    assert not bool(torch.isnan(result.khat).any())
    assert torch.allclose(result.log_px, reference, rtol=1e-6, atol=1e-4), (result.log_px, reference)
    assert torch.allclose(result.elbo, log_w.mean(0), rtol=1e-6, atol=1e-4)
    assert bool((result.log_px < problem["log_px"] + 0.05).all())  # a lower bound up to MC error
