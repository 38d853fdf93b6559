"""Kill training with SIGKILL at random moments, resume, and compare with an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyro_vae.checkpoints import CheckpointDir

OVERRIDES = [
    "model.latent_dim=3", "model.encoder.hidden=[32]", "model.decoder.hidden=[32]",
    "train.epochs=8", "train.batch_size=64",
]
KILLS = 3


def cli(out, *extra):
    return [sys.executable, "-m", "pyro_vae.cli", "train", "--out", str(out), "--no-progress",
            *[arg for o in OVERRIDES for arg in ("--set", o)], *extra]


def final_parameters(run_dir):
    return CheckpointDir(run_dir / "checkpoints").load_latest()["model"]


def wait_for_new_checkpoint(checkpoints, seen, process, timeout=300):
    """Block until a checkpoint newer than ``seen`` exists or the process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        paths = checkpoints.paths()
        if paths and paths[0].name != seen:
            return paths[0].name
        time.sleep(0.05)
    return seen


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    subprocess.run(cli(tmp_path / "full"), check=True, capture_output=True)
    reference = final_parameters(tmp_path / "full")

    run_dir, rng = tmp_path / "killed", random.Random(0)
    checkpoints = CheckpointDir(run_dir / "checkpoints")
    process = subprocess.Popen(cli(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, kills = None, 0
    while kills < KILLS:
        seen = wait_for_new_checkpoint(checkpoints, seen, process)
        time.sleep(rng.uniform(0.0, 0.3))  # a random moment within the next epoch
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
        process = subprocess.Popen(cli(run_dir, "--resume"), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    assert process.wait() == 0
    assert kills >= 1
    resumed = final_parameters(run_dir)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    epochs = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert len(epochs) == 8
