"""Divergence without NaN: a loss that explodes relative to the run's own recent losses stops
training with TrainingDiverged (train.divergence_factor), names the likely cause (the learning
rate or β) and keeps the last good checkpoint; ordinary runs raise no false alarm."""

import importlib
import json
import math
import re
import shutil

import pytest
import torch

import pyro_vae
from pyro_vae.checkpoints import CheckpointDir, load_checkpoint
from pyro_vae.config import DEFAULTS, check, resolve
from pyro_vae.errors import ConfigError, PyroVAEError, TrainingDiverged
from pyro_vae.trainer import HISTORY_WINDOW, LossHistory

SMALL = {"train": {"epochs": 2, "batch_size": 128},
         "model": {"latent_dim": 2, "encoder": {"hidden": [16]}, "decoder": {"hidden": [16]}}}
NUMBERS = r"[-+0-9.e]+ nats per data point against a median of [-+0-9.e]+ over the last \d+ checked step"


def checkpoint_names(run_dir):
    return [p.name for p in CheckpointDir(run_dir / "checkpoints").paths()]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------
# The rule itself
# ---------------------------------------------------------------------------------------


def test_rule_fires_above_median_plus_factor_times_its_scale_and_records_only_good_losses():
    history = LossHistory(100)
    assert not history.exploded(45.0)  # no history yet: never
    assert history.limit() == 45.0 + 100 * 45.0
    assert history.exploded(4545.5)
    assert list(history.values) == [45.0]  # an exploded loss does not enter the history
    assert not history.exploded(4545.0)  # at the limit is still fine
    assert history.median() == (45.0 + 4545.0) / 2


def test_rule_uses_the_median_of_a_window_and_a_scale_of_at_least_one():
    history = LossHistory(10, window=5)
    for value in [1e6, 2.0, 2.0, 2.0, 2.0, 2.0]:  # the big first value leaves the window
        history.exploded(value)
    assert len(history.values) == 5 and history.median() == 2.0
    assert history.limit() == 2.0 + 10 * 2.0
    near_zero = LossHistory(10)
    for value in [0.01, -0.02, 0.0]:
        assert not near_zero.exploded(value)
    assert near_zero.limit() == 0.0 + 10 * 1.0  # max(|m|, 1): a loss near 0 still has a scale
    negative = LossHistory(100)
    negative.exploded(-500.0)  # continuous likelihoods: losses below zero, scale |m|
    assert negative.limit() == -500.0 + 100 * 500.0
    assert negative.exploded(49_501.0) and not negative.exploded(49_499.0)
    assert HISTORY_WINDOW == 50 and LossHistory(1).values.maxlen == 50


def test_rule_tolerates_steady_growth_and_is_off_with_no_factor():
    growing = LossHistory(100)
    assert not any(growing.exploded(40.0 * 1.3 ** t) for t in range(12))  # ×1.3 per step for 12 steps
    off = LossHistory(None)
    assert not off.exploded(1.0) and not off.exploded(1e30) and off.limit() == math.inf


# ---------------------------------------------------------------------------------------
# The config key
# ---------------------------------------------------------------------------------------


def test_divergence_factor_key_defaults_to_100_and_is_checked():
    assert DEFAULTS["train"]["divergence_factor"] == 100
    assert check(resolve({"train": {"divergence_factor": None}}))["train"]["divergence_factor"] is None
    assert check(resolve({"train": {"divergence_factor": 5}}))["train"]["divergence_factor"] == 5
    for bad in [0, -1, math.nan, math.inf, "big", True]:
        with pytest.raises(ConfigError, match="train.divergence_factor"):
            check(resolve({"train": {"divergence_factor": bad}}))


def test_training_diverged_is_not_bad_input():
    assert issubclass(TrainingDiverged, Exception)
    assert not issubclass(TrainingDiverged, (PyroVAEError, ValueError))
    assert "status 3" in TrainingDiverged.__doc__


# ---------------------------------------------------------------------------------------
# Fresh runs with a learning rate that explodes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", ["10", "1e3"])
def test_exploding_learning_rate_stops_a_fresh_run_and_blames_the_lr(tmp_path, lr):
    with pytest.raises(TrainingDiverged) as caught:
        pyro_vae.train(SMALL, tmp_path / "run", overrides=[f"optim.lr={lr}"], progress=False)
    message = str(caught.value)
    assert message.startswith("The loss exploded at epoch 1, step 2: "), message
    assert re.search(NUMBERS, message), message
    assert f"Likely cause: the learning rate (optim.lr = {float(lr):.3g})" in message
    assert "optim.clip_norm" in message
    assert "No checkpoint was written before the divergence." in message
    assert not (tmp_path / "run").exists()  # nothing was kept: no checkpoint of a diverged epoch


def test_losses_read_in_groups_are_checked_in_step_order(tmp_path, monkeypatch):
    """On an accelerator the losses come back SYNC_EVERY at a time: the step is still exact."""
    monkeypatch.setattr(importlib.import_module("pyro_vae.trainer"), "_sync_every", lambda device: 4)
    with pytest.raises(TrainingDiverged, match=r"exploded at epoch 1, step 2: .*the learning rate"):
        pyro_vae.train(SMALL, tmp_path / "run", overrides=["optim.lr=10"], progress=False)


def test_null_factor_turns_the_check_off(tmp_path):
    config = {**SMALL, "train": {**SMALL["train"], "divergence_factor": None}}
    pyro_vae.train(config, tmp_path / "run", overrides=["optim.lr=10"], progress=False)
    assert checkpoint_names(tmp_path / "run") == ["epoch-0002.pt", "epoch-0001.pt"]
    assert all(record["train_loss"] > 1e5 for record in metrics(tmp_path / "run"))  # diverged, unstopped


# ---------------------------------------------------------------------------------------
# Resuming a good run with a bad setting
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A good 2-epoch run and its final parameters."""
    path = tmp_path_factory.mktemp("good") / "run"
    run = pyro_vae.train(SMALL, path, progress=False)
    return path, {k: v.detach().clone() for k, v in run.vae.state_dict().items()}


def resume_diverges(good_run, tmp_path, override):
    path, params = good_run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    with pytest.raises(TrainingDiverged) as caught:
        pyro_vae.train(None, copy, overrides=[override, "train.epochs=4"], resume=True, progress=False)
    message = str(caught.value)
    assert "at epoch 3, step" in message, message
    newest = CheckpointDir(copy / "checkpoints").paths()[0]
    assert checkpoint_names(copy) == ["epoch-0002.pt", "epoch-0001.pt"]  # the good epochs are kept
    assert f"The last good checkpoint, '{newest}' (epoch 2, written before the divergence), is kept." \
        in message
    state = load_checkpoint(newest)["model"]
    assert state.keys() == params.keys() and all(torch.equal(state[k], params[k]) for k in params)
    return message


def test_resuming_with_a_huge_lr_is_caught_and_keeps_the_good_checkpoint(good_run, tmp_path):
    message = resume_diverges(good_run, tmp_path, "optim.lr=1e8")
    assert "Likely cause: the learning rate (optim.lr = 1e+08)" in message, message


@pytest.mark.parametrize("beta, how", [("1e10", "exploded"), ("1e38", "became NaN or infinite")])
def test_resuming_with_an_extreme_beta_blames_beta(good_run, tmp_path, beta, how):
    message = resume_diverges(good_run, tmp_path, f"beta_schedule.beta={beta}")
    assert f"The loss {how} at epoch 3, step 1" in message, message  # seeded history: the first step
    assert f"Likely cause: β (beta_schedule: β = {float(beta):.3g}" in message, message
    assert "optim.lr" not in message
    if how == "exploded":
        assert re.search(NUMBERS, message), message


# ---------------------------------------------------------------------------------------
# No false alarms
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"beta_schedule": {"name": "linear", "warmup_epochs": 2}},
                                   {"beta_schedule": {"name": "cyclical", "cycle_epochs": 2}}],
                         ids=["default", "linear-warm-up", "cyclical"])
def test_ordinary_digits_runs_do_not_trigger(tmp_path, extra):
    pyro_vae.train({"train": {"epochs": 5}, **extra}, tmp_path / "run", progress=False)
    assert [record["epoch"] for record in metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]
