"""The hot path of training: the lean ELBOs compute what Pyro's ELBOs compute; NaN stops a run.

With Pyro validation disabled (as in the trainer), :class:`pyro_vae.objectives.TraceELBO`
and :class:`~pyro_vae.objectives.MeanFieldELBO` skip Pyro's unused bookkeeping; their
gradients must be bitwise those of ``Trace_ELBO``/``TraceMeanField_ELBO.loss_and_grads``
and their values equal up to the float32-vs-float64 sum of Pyro's ``Trace_ELBO``.
"""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE
from pyro_vae.objectives import OBJECTIVES, step_loss

PYRO = {"elbo": Trace_ELBO, "elbo-analytic": TraceMeanField_ELBO}

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
        for got, want in zip(_grads(vae), expected_grads):
            assert (got is None and want is None) or torch.equal(got, want), run


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


def test_step_loss_falls_back_to_loss_and_grads_for_renyi():
    x = torch.bernoulli(torch.full((8, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3)
    loss = step_loss(OBJECTIVES.build("iwae"), vae.model, vae.guide, x)
    assert torch.is_tensor(loss) and torch.isfinite(loss)
    assert all(p.grad is not None for p in vae.encoder.parameters())


@pytest.mark.parametrize("sync_every", [1, 4])
def test_non_finite_loss_stops_training_at_its_step(tmp_path, monkeypatch, sync_every):
    import importlib

    train_module = importlib.import_module("pyro_vae.train")
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
        train_module.train(config, tmp_path / "run", progress=False)
    # epoch 1 (5 steps of 256 of the 1257 training digits) was checkpointed, epoch 2 was not
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["epoch-0001.pt"]
