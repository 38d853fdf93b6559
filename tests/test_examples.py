"""The examples' short modes run, and a hand-written model/guide goes through the library's
training loop, resume and estimator."""

import argparse
import importlib.util
import math
from pathlib import Path

import torch
from checks import write_fake_mnist

import pyro_vae
from pyro_vae.trainer import make_lr_scheduler

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


def test_mnist_example_runs_in_short_mode(tmp_path):
    root = write_fake_mnist(tmp_path / "data")
    results = load_example("mnist_vae").main([
        "--root", str(root), "--out", str(tmp_path / "out"), "--set", "data.val_size=20",
        "--test-images", "20", "--num-samples", "5",
    ])
    for side in ("library", "reference"):
        r = results[side]
        assert math.isfinite(r["test_elbo"]) and math.isfinite(r["test_trace_elbo_1"])
        assert r["test_iwae_bound"] >= r["test_elbo"]  # log-mean-exp >= mean of the same draws
    assert results["setup"]["train_images"] == 100 and results["setup"]["test_images"] == 20
    assert (tmp_path / "out" / "comparison.json").is_file()


def test_sprites_example_runs_in_short_mode(tmp_path):
    results = load_example("sprites_beta").main([
        "--epochs", "1", "--num-train", "300", "--runs", "beta1", "beta4", "--out", str(tmp_path),
    ])
    beta1, beta4 = results["runs"]["beta1"], results["runs"]["beta4"]
    assert beta4["test_kl"] < beta1["test_kl"]  # the same data and seed; β = 4 pays four times per nat of KL
    assert all(0 <= r["mig"] <= 1 for r in (beta1, beta4))
    assert any((tmp_path / "beta4" / "figures").glob("*traversal*.png"))


def test_burda_example_runs_in_short_mode(tmp_path):
    root = write_fake_mnist(tmp_path / "data")
    rows = load_example("burda_table1").main([
        "--data-root", str(root), "--stages", "2", "--models", "vae-1l-k1", "iwae-2l-k5",
        "--test-points", "20", "--num-samples", "50", "--out", str(tmp_path / "out"),
    ])
    assert [row["model"] for row in rows] == ["vae-1l-k1", "iwae-2l-k5"]
    assert all(row["epochs"] == 4 and row["num_points"] == 20 for row in rows)
    assert all(row["test_log_px"] > row["test_elbo"] - 3 * row["test_log_px_stderr"] for row in rows)
    assert set(rows[1]["active_units"]) == {"z1", "z2"}
    assert "| iwae-2l-k5 |" in (tmp_path / "out" / "table1.md").read_text()


def test_burda_schedule_is_the_papers_staircase():
    example = load_example("burda_table1")
    args = argparse.Namespace(seed=0, device="cpu", data_root=Path("."), val_size=0, batch_size=20,
                              num_samples=5000, eval_batch_size=100)
    optim = example.make_config("vae-1l-k1", args, example.PAPER_STAGES)["optim"]
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=optim["lr"])
    scheduler = make_lr_scheduler(optimizer, optim)
    lrs = []
    for _ in range(3280):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    stage_of_epoch = [i for i in range(8) for _ in range(3**i)]
    assert len(stage_of_epoch) == len(lrs) == 3280
    assert all(math.isclose(lr, 1e-3 * 10 ** (-i / 7), rel_tol=1e-9) for lr, i in zip(lrs, stage_of_epoch))
    assert optim["eps"] == 1e-4


def test_hierarchical_example_runs_in_short_mode(tmp_path):
    argv = ["--epochs", "2", "--num-samples", "50", "--out", str(tmp_path)]
    rows = load_example("hierarchical_vae").main(argv)
    assert list(rows) == ["one-layer", "two-layer", "ladder"]
    assert set(rows["one-layer"]["kl_per_layer"]) == {"z"}
    assert set(rows["two-layer"]["kl_per_layer"]) == set(rows["ladder"]["kl_per_layer"]) == {"z1", "z2"}
    assert all(r["log_px"] > r["elbo"] - 3 * r["log_px_stderr"] for r in rows.values())
    assert all((tmp_path / name / "figures" / "diagnostics.png").is_file() for name in rows)


def test_custom_estimator_example_agrees_with_plain_importance_sampling():
    repeated, plain = load_example("custom_estimator").main(["--epochs", "1", "--num-samples", "200"])
    assert repeated["estimator"]["name"] == "repeated-importance" and repeated["repeats"] == 4
    assert repeated["num_points"] == plain["num_points"] == 360
    # both pool 200 samples per point: the means agree within their standard errors
    assert abs(repeated["log_px_mean"] - plain["log_px_mean"]) < 3 * plain["log_px_stderr"]


def test_custom_objective_example_receives_the_training_set_size():
    run, records = load_example("custom_objective").main(["--epochs", "1"])
    num_train = len(run.splits.train)
    assert run.config["objective"] == {"name": "dataset-elbo"}
    # the loss is the batch ELBO scaled by N/B: per point, about N/B times the ELBO's size
    batch = run.config["train"]["batch_size"]
    assert records[-1]["train_loss"] > (num_train / batch) * 0.5 * -records[-1]["val_elbo"]
