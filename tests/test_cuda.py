"""CUDA: training, evaluation and the estimator on a GPU (skipped without one; ``-m cuda`` selects them).

What must hold on the device: tensors stay there end to end, the densities equal the CPU's
for the same parameters and draws, the estimator's results come back as CPU float64, the
streaming path (pinned memory, non-blocking copies) trains the same model as device-resident
data, and bf16 mixed precision keeps the loss within bf16 rounding of float32.
"""

import copy
import json
import math
import sys

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import VAE, evaluate, load_run, log_likelihood, train
from pyro_vae.objectives import OBJECTIVES, step_loss

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SMALL = {
    "device": "cuda",
    "model": {"latent_dim": 3, "encoder": {"hidden": [32]}, "decoder": {"hidden": [32]}},
    "train": {"epochs": 2, "batch_size": 128},
}


def _x(n=64, device="cpu"):
    generator = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((n, 1, 8, 8), 0.3), generator=generator).to(device)


def _on_gpu(vae):
    """A CUDA copy of ``vae`` under its own name in Pyro's param store."""
    gpu = copy.deepcopy(vae).cuda()
    gpu.name = f"{vae.name}_cuda"
    return gpu


def test_training_and_evaluation_stay_on_the_gpu(tmp_path):
    run = train(SMALL, tmp_path / "run", progress=False)
    assert run.device.type == "cuda" and not run.streaming
    assert all(p.is_cuda for p in run.vae.parameters()) and run.splits.train.is_cuda
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all(math.isfinite(json.loads(line)["train_loss"]) for line in lines)
    summary = evaluate(tmp_path / "run", num_samples=50, progress=False)
    assert math.isfinite(summary["log_px_mean"]) and summary["log_px_mean"] > summary["elbo_mean"] - 1.0
    on_cpu, _ = load_run(tmp_path / "run", map_location="cpu")  # a GPU checkpoint loads anywhere
    assert torch.equal(next(on_cpu.vae.parameters()).cpu(), next(run.vae.parameters()).cpu())


def test_densities_on_the_gpu_equal_the_cpus():
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4)
    x = _x()
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    z = guide_trace.nodes["z"]["value"].detach()
    log_w = {}
    for device, module in (("cpu", vae), ("cuda", _on_gpu(vae))):
        data = {"z": z.to(device)}
        guide = poutine.trace(poutine.condition(module.guide, data=data)).get_trace(x.to(device))
        model = poutine.trace(poutine.condition(module.model, data=data)).get_trace(x.to(device))
        log_w[device] = (model.log_prob_sum() - guide.log_prob_sum()).item()
    assert math.isclose(log_w["cuda"], log_w["cpu"], rel_tol=1e-5)


def test_estimator_on_the_gpu_agrees_with_the_cpu_within_its_error():
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4)
    x = _x(32)
    pyro.set_rng_seed(0)
    cpu = log_likelihood(vae.model, vae.guide, x, num_samples=2000)
    on_gpu = _on_gpu(vae)
    gpu = log_likelihood(on_gpu.model, on_gpu.guide, x.cuda(), num_samples=2000)
    assert gpu.log_px.device.type == "cpu" and gpu.log_px.dtype == torch.float64 and gpu.log_px.shape == (32,)
    error = 5 * torch.sqrt(cpu.stderr**2 + gpu.stderr**2) + 1e-3
    assert ((gpu.log_px - cpu.log_px).abs() <= error).all()


def test_streamed_training_data_give_the_same_run_as_device_resident_data(tmp_path, monkeypatch):
    resident = train(SMALL, tmp_path / "resident", progress=False).vae.state_dict()
    train_module = sys.modules["pyro_vae.runs"]
    monkeypatch.setattr(train_module, "fits_on_device", lambda splits, device: False)
    run = train(SMALL, tmp_path / "streamed", progress=False)
    assert run.streaming and not run.splits.train.is_cuda and run.splits.test.is_cuda
    streamed = run.vae.state_dict()
    assert all(torch.allclose(resident[k], streamed[k], rtol=1e-4, atol=1e-6) for k in resident)


def test_bf16_mixed_precision_on_the_gpu(tmp_path):
    vae = VAE(data_shape=(1, 8, 8), latent_dim=4).cuda()
    x = _x(256, "cuda")
    objective = OBJECTIVES.build("elbo-analytic")
    losses = {}
    for dtype in (None, torch.bfloat16):
        vae.network_autocast = dtype
        torch.manual_seed(0)
        with pyro.validation_enabled(False):
            losses[dtype] = step_loss(objective, vae.model, vae.guide, x).item()
    assert math.isclose(losses[torch.bfloat16], losses[None], rel_tol=2e-2)
    run = train({**SMALL, "train": {**SMALL["train"], "mixed_precision": "bf16"}}, tmp_path / "bf16",
                progress=False)
    last = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(last["train_loss"]) and run.vae.network_autocast is None
