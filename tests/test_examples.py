"""The examples' short modes run, and a hand-written model/guide goes through the library's
training loop, resume and estimator."""

import importlib.util
from pathlib import Path

import torch

import pyro_vae

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name="custom_model"):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_model_example_runs_in_short_mode(tmp_path):
    result = load_example().main(["--epochs", "1", "--num-samples", "50", "--out", str(tmp_path / "run")])
    assert torch.isfinite(result.log_px).all() and len(result.log_px) == 360


def test_custom_model_trains_resumes_and_evaluates(tmp_path):
    example = load_example()
    config = {"train": {"epochs": 2}, "beta_schedule": {"name": "linear", "start": 0.5, "warmup_epochs": 2}}
    torch.manual_seed(0)
    full = pyro_vae.train(config, tmp_path / "full", model=example.TwoLayerVAE(), progress=False)
    first = full.vae.state_dict()
    torch.manual_seed(0)
    cut = example.TwoLayerVAE()
    pyro_vae.train(config, tmp_path / "cut", overrides=["train.epochs=1"], model=cut, progress=False)
    resumed = pyro_vae.train(None, tmp_path / "cut", overrides=["train.epochs=2"], resume=True,
                             model=example.TwoLayerVAE(), progress=False)
    assert all(torch.equal(first[k], resumed.vae.state_dict()[k]) for k in first)
    summary = pyro_vae.evaluate(tmp_path / "full", num_samples=30, progress=False,
                                model=example.TwoLayerVAE())
    assert summary["log_px_mean"] > summary["elbo_mean"] - 1.0
    metrics = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert '"z1"' in metrics[-1] and '"z2"' in metrics[-1]  # per-site KL and active units


def test_marginal_likelihood_example_runs_in_short_mode(tmp_path):
    argv = ["--run-dir", str(tmp_path / "run"), "--epochs", "2", "--points", "20",
            "--num-samples", "30", "300"]
    _, (_, is_large, _, _, naive_large, elbo) = load_example("marginal_likelihood").main(argv)
    assert is_large > elbo and is_large > naive_large  # importance sampling beats both bounds here
