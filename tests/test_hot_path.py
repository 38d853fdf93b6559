"""The hot path of training: the lean ELBOs compute what Pyro's ELBOs compute; NaN stops a run.

With Pyro validation disabled (as in the trainer), :class:`pyro_vae.objectives.TraceELBO`
and :class:`~pyro_vae.objectives.MeanFieldELBO` skip Pyro's unused bookkeeping; their
gradients must be bitwise those of ``Trace_ELBO``/``TraceMeanField_ELBO.loss_and_grads``
and their values equal up to the float32-vs-float64 sum of Pyro's ``Trace_ELBO``. These
tests guard ``pyro_vae._lean_elbo``, which relies on Pyro internals.
"""

import importlib
import json
import math

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

import pyro_vae
from pyro_vae import VAE
from pyro_vae.distributions import diagonal_normal
from pyro_vae.objectives import OBJECTIVES, step_loss

PYRO = {
    "elbo": Trace_ELBO,
    "elbo-analytic": TraceMeanField_ELBO,
    "iwae": lambda **options: RenyiELBO(alpha=0, **options),
}

CASES = [
    ("elbo-analytic", {"latent_dim": 4}, 1.0, 1),
    ("elbo-analytic", {"latent_dim": 4}, 0.0, 1),
    ("elbo-analytic", {"latent_dim": 4}, 2.5, 3),
    ("elbo-analytic", {"latent_dim": [4, 3], "inference": "top-down"}, (1.0, 0.5), 1),
    ("elbo-analytic", {"latent_dim": 4, "prior": "mixture"}, 1.0, 2),  # no closed-form KL
    ("elbo", {"latent_dim": 4}, 1.0, 1),
    ("elbo", {"latent_dim": 4}, 0.0, 4),
    ("elbo", {"latent_dim": [4, 3]}, 3.0, 1),
]


def _grads(vae):
    return [None if p.grad is None else p.grad.clone() for p in vae.parameters()]


def _assert_same_grads(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.equal(g, w)


@pytest.mark.parametrize("name, model, beta, particles", CASES)
def test_lean_path_matches_pyro(name, model, beta, particles):
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), beta=beta, **model)
    spec = {"name": name, "num_particles": particles}
    reference = PYRO[name](num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)

    torch.manual_seed(1)
    with pyro.validation_enabled(True):
        expected = reference.loss_and_grads(vae.model, vae.guide, x)
    expected_grads = _grads(vae)

    for run in ("step_loss", "loss_and_grads"):
        vae.zero_grad(set_to_none=True)
        objective = OBJECTIVES.build(spec)
        torch.manual_seed(1)
        with pyro.validation_enabled(False):
            if run == "step_loss":
                loss = step_loss(objective, vae.model, vae.guide, x)
                assert torch.is_tensor(loss) and not loss.requires_grad
                value = loss.item()
            else:
                value = objective.loss_and_grads(vae.model, vae.guide, x)
        assert math.isclose(value, expected, rel_tol=1e-6), run
        _assert_same_grads(_grads(vae), expected_grads)


def _pyro_and_fast_path(name, particles, vae, x):
    """Pyro's ``loss_and_grads`` and ``step_loss`` on the objective ``name``, validation off
    and the same seed on both sides: (Pyro's value, its gradients, ours, our gradients)."""
    options = dict(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    results = []
    for run in ("pyro", "fast"):
        vae.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with pyro.validation_enabled(False):
            if run == "pyro":
                value = PYRO[name](**options).loss_and_grads(vae.model, vae.guide, x)
            else:
                objective = OBJECTIVES.build({"name": name, "num_particles": particles})
                value = step_loss(objective, vae.model, vae.guide, x).item()
        results += [value, _grads(vae)]
    return results


@pytest.mark.parametrize("latent_dim", [4, [4, 2]])
@pytest.mark.parametrize("name, particles", [
    ("elbo", 1), ("elbo", 3), ("elbo-analytic", 1), ("elbo-analytic", 4), ("iwae", 5),
])
def test_fast_path_is_pyros_bitwise_with_validation_off(name, particles, latent_dim):
    """Every gradient is bitwise Pyro's; so is the value, except Trace_ELBO's, which Pyro sums
    from Python floats (float64) where the fast path sums float32 tensors, with no ``.item()``."""
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), latent_dim=latent_dim, inference="top-down", beta=1.5)
    expected, expected_grads, value, grads = _pyro_and_fast_path(name, particles, vae, x)
    if name == "elbo":
        assert math.isclose(value, expected, rel_tol=1e-6)
    else:
        assert value == expected
    assert all(g is not None for g in grads)
    _assert_same_grads(grads, expected_grads)


def _score_function_normal(loc, logvar):
    q = diagonal_normal(loc, logvar)
    q.base_dist.has_rsample_(False)
    return q


@pytest.mark.parametrize("latent_dim", [4, [4, 2]])
def test_fast_elbo_with_a_score_function_guide_site_is_pyros_bitwise(monkeypatch, latent_dim):
    """Guide sites that are not reparameterised: Trace_ELBO's score-function surrogate."""
    monkeypatch.setattr(importlib.import_module("pyro_vae.model"), "diagonal_normal", _score_function_normal)
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), latent_dim=latent_dim)
    torch.manual_seed(1)
    guide_trace = pyro.poutine.trace(vae.guide).get_trace(x)
    assert not any(site["fn"].has_rsample for site in guide_trace.nodes.values() if site["type"] == "sample")
    expected, expected_grads, value, grads = _pyro_and_fast_path("elbo", 1, vae, x)
    assert math.isclose(value, expected, rel_tol=1e-6)
    assert all(g is not None for g in grads)
    _assert_same_grads(grads, expected_grads)


def test_lean_loss_is_a_float_and_matches_pyro():
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4, beta=0.5)
    torch.manual_seed(2)
    with pyro.validation_enabled(True), torch.no_grad():
        expected = TraceMeanField_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
    torch.manual_seed(2)
    with pyro.validation_enabled(False), torch.no_grad():
        got = OBJECTIVES.build("elbo-analytic").loss(vae.model, vae.guide, x)
    assert isinstance(got, float) and got == expected


def test_step_loss_falls_back_to_loss_and_grads_without_a_differentiable_loss():
    x = torch.bernoulli(torch.full((8, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    loss = step_loss(RenyiELBO(alpha=0.5, max_plate_nesting=1), vae.model, vae.guide, x)
    assert torch.is_tensor(loss) and torch.isfinite(loss)
    assert all(p.grad is not None for p in vae.encoder.parameters())


@pytest.mark.parametrize("model, beta, particles", [
    ({"latent_dim": 4}, 1.0, 5),
    ({"latent_dim": 4}, 0.0, 3),
    ({"latent_dim": [4, 3]}, (2.0, 0.5), 4),
    ({"latent_dim": 4, "prior": "vamp"}, 1.0, 1),
])
def test_iwae_differentiable_loss_has_renyis_value_and_gradients(model, beta, particles):
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), beta=beta, **model)
    options = dict(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    torch.manual_seed(1)
    expected = RenyiELBO(alpha=0, **options).loss_and_grads(vae.model, vae.guide, x)
    expected_grads = _grads(vae)
    vae.zero_grad(set_to_none=True)
    vae.register_params = False  # nothing needs the param store
    torch.manual_seed(1)
    loss = step_loss(OBJECTIVES.build({"name": "iwae", "num_particles": particles}), vae.model, vae.guide, x)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    _assert_same_grads(_grads(vae), expected_grads)


@pytest.mark.parametrize("sync_every", [1, 4])
def test_non_finite_loss_stops_training_at_its_step(tmp_path, monkeypatch, sync_every):
    train_module = importlib.import_module("pyro_vae.trainer")
    real_step_loss = train_module.step_loss
    calls = []

    def nan_at_seventh_step(*args):
        loss = real_step_loss(*args)
        calls.append(1)
        return loss * math.nan if len(calls) == 7 else loss

    monkeypatch.setattr(train_module, "step_loss", nan_at_seventh_step)
    monkeypatch.setattr(train_module, "_sync_every", lambda device: sync_every)
    config = {"model": {"latent_dim": 2, "encoder": {"hidden": [8]}, "decoder": {"hidden": [8]}},
              "train": {"epochs": 2, "batch_size": 256}}
    with pytest.raises(train_module.TrainingDiverged, match="epoch 2, step 2"):
        pyro_vae.train(config, tmp_path / "run", progress=False)
    # epoch 1 (5 steps of 256 of the 1257 training digits) was checkpointed, epoch 2 was not
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch-*.pt")] == ["epoch-0001.pt"]


def _count_registrations(monkeypatch):
    calls = []
    real = pyro.module

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(pyro, "module", counting)
    return calls


TINY = {"model": {"latent_dim": 2, "encoder": {"hidden": [8]}, "decoder": {"hidden": [8]}},
        "train": {"epochs": 1, "batch_size": 512}}


@pytest.mark.parametrize("objective, registers", [("elbo-analytic", False), ("iwae", False), ("renyi", True)])
def test_trainer_registers_params_only_if_its_objective_needs_it(tmp_path, monkeypatch, objective, registers):
    train_module = importlib.import_module("pyro_vae.trainer")
    calls = _count_registrations(monkeypatch)
    per_step = []

    def counted_step_loss(*args):
        before = len(calls)
        loss = step_loss(*args)
        per_step.append(len(calls) - before)
        return loss

    monkeypatch.setattr(train_module, "step_loss", counted_step_loss)
    if objective == "renyi":  # a user's objective with loss_and_grads only, which needs param sites
        monkeypatch.setitem(OBJECTIVES._entries, "renyi",
                            lambda: RenyiELBO(alpha=0.5, max_plate_nesting=1))
    run = pyro_vae.train({**TINY, "objective": objective}, tmp_path / "run", progress=False)
    assert len(per_step) == 3  # 1257 training digits in batches of 512
    assert all(n >= 2 if registers else n == 0 for n in per_step)
    assert run.vae.register_params and run.vae.network_autocast is None  # restored after the steps


def test_unregistered_step_has_the_registered_steps_gradients():
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4, beta=2.0)
    objective = OBJECTIVES.build("elbo-analytic")
    grads = []
    for register in (True, False):
        vae.zero_grad(set_to_none=True)
        vae.register_params = register
        torch.manual_seed(1)
        with pyro.validation_enabled(False):
            step_loss(objective, vae.model, vae.guide, x)
        grads.append(_grads(vae))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_mixed_precision_runs_the_networks_in_bf16_and_the_densities_in_float32():
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4)
    seen = []
    vae.decoder.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    vae.likelihood.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
    objective = OBJECTIVES.build("elbo-analytic")
    losses = {}
    for dtype in (None, torch.bfloat16):
        vae.network_autocast = dtype
        vae.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with pyro.validation_enabled(False):
            losses[dtype] = step_loss(objective, vae.model, vae.guide, x).item()
        assert all(p.grad.dtype == torch.float32 for p in vae.parameters())
    assert seen == [torch.float32, torch.float32, torch.bfloat16, torch.float32]
    assert losses[torch.bfloat16] != losses[None]  # autocast was on
    assert math.isclose(losses[torch.bfloat16], losses[None], rel_tol=2e-2)  # bf16's 8 bits of mantissa


def test_mixed_precision_in_the_trainer_and_its_errors(tmp_path):
    from pyro_vae import ConfigError, train

    bf16 = {**TINY, "train": {**TINY["train"], "mixed_precision": "bf16"}}
    run = train(bf16, tmp_path / "bf16", progress=False)
    metrics = (tmp_path / "bf16" / "metrics.jsonl").read_text()
    assert math.isfinite(json.loads(metrics.splitlines()[-1])["train_loss"])
    assert run.vae.network_autocast is None
    with pytest.raises(ConfigError, match="float16 needs loss scaling"):
        train({**TINY, "train": {"mixed_precision": "fp16"}}, tmp_path / "fp16", progress=False)

    class Plain(torch.nn.Module):  # a custom model without the network_autocast switch
        def __init__(self):
            super().__init__()
            self.vae = VAE(data_shape=(1, 8, 8), latent_dim=2)

        def model(self, x):
            self.vae.model(x)

        def guide(self, x):
            self.vae.guide(x)

    with pytest.raises(ConfigError, match="network_autocast"):
        train(bf16, tmp_path / "plain", model=Plain(), progress=False)
    assert not (tmp_path / "fp16").exists() and not (tmp_path / "plain").exists()
