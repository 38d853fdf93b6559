import io
import json
import pickle
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
import yaml

from pyro_vae import VAE, PyroVAEError, train
from pyro_vae.checkpoints import CheckpointDir, CheckpointError, load_checkpoint
from pyro_vae.cli import main
from pyro_vae.errors import TrainingDiverged

SMALL = {
    "model": {"latent_dim": 3, "encoder": {"hidden": [32]}, "decoder": {"hidden": [32]}},
    "train": {"epochs": 4, "batch_size": 128},
}


def params(run):
    return {k: v.detach().clone() for k, v in run.vae.state_dict().items()}


def test_run_directory_holds_config_metrics_checkpoints_and_figure(tmp_path):
    train(SMALL, tmp_path / "run", progress=False)
    run_dir = tmp_path / "run"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["latent_dim"] == 3 and config["data_info"]["name"] == "digits"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all(r["val_elbo"] < 0 for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert len(CheckpointDir(run_dir / "checkpoints").paths()) == 2
    assert (run_dir / "figures" / "reconstructions_and_samples.png").stat().st_size > 0


def test_same_seed_gives_identical_parameters(tmp_path):
    first = params(train(SMALL, tmp_path / "a", progress=False))
    second = params(train(SMALL, tmp_path / "b", progress=False))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    config = dict(SMALL, beta_schedule={"name": "linear", "warmup_epochs": 3})
    reference = params(train(config, tmp_path / "full", progress=False))
    train(config, tmp_path / "cut", overrides=["train.epochs=2"], progress=False)
    resumed = params(train(None, tmp_path / "cut", overrides=["train.epochs=4"], resume=True,
                           progress=False))
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    train(SMALL, tmp_path / "run", progress=False)
    checkpoints = CheckpointDir(tmp_path / "run" / "checkpoints")
    newest, previous = checkpoints.paths()
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=newest.name):
        load_checkpoint(newest)
    state = checkpoints.load_latest()
    assert state["epoch"] == 3
    assert f"Falling back to '{previous}'" in capsys.readouterr().err


class _Exploit:
    def __reduce__(self):
        return (print, ("code ran on load",))


def test_checkpoint_that_runs_code_on_load_is_refused(tmp_path):
    path = tmp_path / "epoch-0001.pt"
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "payload": _Exploit()}, buffer, pickle_module=pickle)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="epoch-0001.pt"):
        load_checkpoint(path)


def test_existing_run_is_not_overwritten(tmp_path):
    train(dict(SMALL, train={"epochs": 1}), tmp_path / "run", progress=False)
    with pytest.raises(PyroVAEError, match="--resume"):
        train(SMALL, tmp_path / "run", progress=False)


def test_cli_train_and_bad_input_exit_codes(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--out", str(out), "--no-progress", "--set", "train.epochs=1"]) == 0
    assert (out / "config.yaml").exists()
    assert main(["train", "--out", str(tmp_path / "x"), "--set", "train.epohcs=1"]) == 2
    assert "Did you mean 'epochs'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "y"), "--set", "model.prior=gausian"]) == 2
    assert main(["train", "--out", str(tmp_path / "z"), "--set", "optim.lr=-1"]) == 2
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed")
    assert main(["train", "--config", str(bad_yaml), "--out", str(tmp_path / "w")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "w").exists()
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


class _ZeroNoiseVAE(torch.nn.Module):
    """A model whose likelihood has scale 0: log p(x|z) is NaN, the KL is fine."""

    def __init__(self):
        super().__init__()
        self.vae = VAE(data_shape=(1, 8, 8), latent_dim=2)

    def model(self, x):
        pyro.module("zero_noise", self)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc = self.vae.decoder(z)
            pyro.sample("x", dist.Normal(loc, torch.zeros_like(loc)).to_event(3), obs=x)

    def guide(self, x):
        self.vae.guide(x)


def test_nan_loss_names_the_bad_term_and_keeps_the_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="non-finite on the current batch: the reconstruction term"):
        train(SMALL, tmp_path / "run", model=_ZeroNoiseVAE(), progress=False)
    assert not CheckpointDir(tmp_path / "run" / "checkpoints").paths()


def test_streaming_path_gives_the_same_run_as_device_resident_data(tmp_path, monkeypatch):
    resident = params(train(SMALL, tmp_path / "resident", progress=False))
    monkeypatch.setattr(sys.modules["pyro_vae.runs"], "fits_on_device", lambda splits, device: False)
    run = train(SMALL, tmp_path / "streamed", progress=False)
    assert run.streaming
    streamed = params(run)
    assert all(torch.equal(resident[k], streamed[k]) for k in resident)


def test_lr_milestones_give_a_staircase_and_resume_exactly(tmp_path):
    config = {**SMALL, "optim": {"lr": 1e-2, "lr_decay": 0.5, "lr_milestones": [1, 3]}}
    full = train(config, tmp_path / "full", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [line["lr"] for line in lines] == [5e-3, 5e-3, 2.5e-3, 2.5e-3]  # after epochs 1, 2, 3, 4
    train(config, tmp_path / "cut", overrides=["train.epochs=2"], progress=False)
    resumed = train(None, tmp_path / "cut", overrides=["train.epochs=4"], resume=True, progress=False)
    assert all(torch.equal(params(full)[k], params(resumed)[k]) for k in params(full))
    with pytest.raises(PyroVAEError, match="lr_milestones cannot be switched"):
        train(None, tmp_path / "cut", overrides=["train.epochs=5", "optim.lr_milestones=null"], resume=True,
              progress=False)
