"""What the command line says when a command is interrupted, fails on the file system or
memory, or is given input it cannot use: one truthful paragraph and exit status 2 (3 for a
diverged training run, 130 for Ctrl-C), never a traceback."""

import pyro
import pytest
import torch
import torch.nn as nn

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.errors import DataError

TINY = ["--set", "train.epochs=2", "--set", "train.batch_size=256", "--set", "model.latent_dim=2",
        "--set", "model.encoder.hidden=[16]", "--set", "model.decoder.hidden=[16]", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command, target, said", [
    (["evaluate"], "pyro_vae.evaluation.evaluate", "eval.json was not written"),
    (["plot"], "pyro_vae.figures.plot_run", "the figures listed so far are complete"),
    (["sample"], "pyro_vae.figures.sample_grid", "nothing was written"),
])
def test_ctrl_c_says_what_each_command_left(run_dir, monkeypatch, capsys, command, target, said):
    monkeypatch.setattr(target, _interrupt)
    assert main([*command, str(run_dir)]) == 130
    err = capsys.readouterr().err
    assert said in err and "--resume" not in err and "Traceback" not in err


def test_ctrl_c_during_start_up_is_no_traceback(monkeypatch, capsys):
    monkeypatch.setattr("pyro_vae.config.load_yaml", _interrupt)
    assert main(["train", "--config", "any.yaml"]) == 130
    err = capsys.readouterr().err
    assert err == "pyro-vae train: interrupted; nothing was written.\n"


def test_ctrl_c_during_training_names_the_newest_checkpoint_or_none(tmp_path, monkeypatch, capsys):
    from pyro_vae.trainer import Trainer

    real_epoch, calls = Trainer._epoch, []

    def second_epoch_interrupted(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_epoch(self, *args)

    monkeypatch.setattr(Trainer, "_epoch", second_epoch_interrupted)
    assert main(["train", "--out", str(tmp_path / "a"), *TINY]) == 130
    err = capsys.readouterr().err
    assert "epoch-0001.pt" in err and f"pyro-vae train --out {tmp_path / 'a'} --resume" in err
    monkeypatch.setattr(Trainer, "_epoch", _interrupt)
    assert main(["train", "--out", str(tmp_path / "b"), *TINY]) == 130
    assert "no epoch was completed" in capsys.readouterr().err


def test_warnings_are_one_clean_line(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--num-samples", "5", "--no-progress"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("pyro-vae evaluate: warning: Pareto k-hat cannot")
    assert ".py" not in warning[0]


@pytest.mark.parametrize("out, said", [
    ("/proc/no-such-process/run", "Cannot use '/proc/no-such-process/run' as the run directory"),
    ("a" * 300, "File name too long"),
])
def test_an_unusable_out_is_a_clear_error(tmp_path, capsys, out, said):
    assert main(["train", "--out", str(tmp_path / out) if not out.startswith("/") else out, *TINY]) == 2
    assert said in capsys.readouterr().err


def test_a_model_too_large_for_memory_is_bad_input(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path / "big"), *TINY, "--set", "model.latent_dim=1000000000"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not fit in the memory of cpu" in err and "latent_dim 1000000000" in err
    assert not (tmp_path / "big").exists()  # nothing written


def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  epochs: 3\nmodel:\n  latent_dim: 4\ntrain:\n  epochs: 5\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'train' (first given on line 1)" in err and "line 5" in err


def test_resume_cannot_change_the_model(run_dir, capsys):
    before = (run_dir / "config.yaml").read_text()
    assert main(["train", "--out", str(run_dir), "--resume", "--set", "model.latent_dim=16"]) == 2
    assert "--resume cannot change the model (model.latent_dim: 2 -> 16)" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_text() == before


def test_a_broken_config_yaml_is_named(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in run_dir.iterdir():
        if item.is_file():
            (broken / item.name).write_bytes(item.read_bytes())
    (broken / "checkpoints").symlink_to(run_dir / "checkpoints")
    text = (run_dir / "config.yaml").read_text()
    (broken / "config.yaml").write_text(text.replace("activation: relu", "activation: rel", 1))
    assert main(["sample", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"The run's config file '{broken / 'config.yaml'}'" in err and "Unknown activation 'rel'" in err


def test_python_api_rejects_an_empty_batch_and_a_network_of_the_wrong_shape():
    vae = pyro_vae.VAE(data_shape=16, latent_dim=2)
    with pytest.raises(DataError, match=r"empty \(shape \(0, 16\)\)"):
        pyro_vae.log_likelihood(vae.model, vae.guide, torch.zeros(0, 16), num_samples=10)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    with pytest.raises(DataError, match=r"x is an empty batch \(shape \(0, 16\)\)"):
        svi.step(torch.zeros(0, 16))
    with pytest.raises(pyro_vae.ConfigError, match=r"maps inputs of shape \(3,\) to \(3,\); it must give "
                                                   r"outputs of shape \(2, 2\)"):
        pyro_vae.VAE(data_shape=3, latent_dim=2, encoder=nn.Linear(3, 3))
    fitting = nn.Sequential(nn.Linear(3, 4), nn.Unflatten(-1, (2, 2)))
    assert pyro_vae.VAE(data_shape=3, latent_dim=2, encoder=fitting).encoder is fitting


def test_a_resume_that_diverges_exits_3_and_leaves_the_config_as_it_was(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = (run / "config.yaml").read_bytes()
    status = main(["train", "--out", str(run), "--resume", "--set", "train.epochs=3",
                   "--set", "beta_schedule.beta=1e38", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 3 and err.startswith("pyro-vae train: training diverged: ") and "Likely cause: β" in err
    assert (run / "config.yaml").read_bytes() == before
    kept = sorted(p.name for p in (run / "checkpoints").glob("epoch-*.pt"))
    assert kept == ["epoch-0001.pt", "epoch-0002.pt"]


def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "pyro_vae.cli", "train", "--out", str(out), *TINY, "--set",
               "train.epochs=200"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("checkpoints/epoch-*.pt")):  # the first writer is training
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.2)
        again = command[:-2] + ["--set", "train.epochs=3", "--resume"]
        second = subprocess.run(again, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"is being written by process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    resumed = subprocess.run(command[:-1] + ["train.epochs=3", "--resume"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"taking over the lock of process {first.pid}, which is no longer running" in resumed.stderr
