import json

import pytest

from pyro_vae import evaluate, train
from pyro_vae.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    train(None, run_dir, progress=False)  # the embedded default, as `pyro-vae train` runs it
    return run_dir


def test_default_model_beats_independent_pixel_baseline(trained_run):
    summary = evaluate(trained_run, num_samples=500, progress=False)
    assert summary["elbo_mean"] > summary["baseline_log_px_mean"] + 1.0
    # log p̂(x) >= ELBO up to Monte Carlo error: importance sampling tightens the bound.
    assert summary["log_px_mean"] > summary["elbo_mean"]
    assert summary["inference_gap_mean"] > 0


def test_cli_evaluate_writes_eval_json_and_figure(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--num-samples", "64", "--no-progress"]) == 0
    summary = json.loads((trained_run / "eval.json").read_text())
    for key in ("log_px_mean", "log_px_stderr", "elbo_mean", "khat_mean", "khat_frac_bad", "num_samples"):
        assert key in summary
    assert summary["num_samples"] == 64 and summary["num_points"] == 360
    assert (trained_run / "figures" / "diagnostics.png").stat().st_size > 0
    assert main(["evaluate", str(trained_run), "--num-samples", "0"]) == 2
    assert "num_samples" in capsys.readouterr().err


def test_evaluate_writes_disentanglement_metrics_for_a_data_set_with_factors(tmp_path):
    run_dir = tmp_path / "sprites"
    train({"data": {"name": "sprites", "num_train": 300, "num_val": 50, "num_test": 100},
           "model": {"latent_dim": 4}, "train": {"epochs": 1}}, run_dir, progress=False)
    summary = evaluate(run_dir, num_samples=20, progress=False)
    scores = json.loads((run_dir / "eval.json").read_text())["disentanglement"]
    assert scores == summary["disentanglement"]
    for key in ("mig", "dci_disentanglement", "sap", "factor_vae_score", "beta_vae_score", "modularity"):
        assert key in scores
    assert 0.0 <= scores["mig"] <= 1.0 and scores["num_points"] == 100
