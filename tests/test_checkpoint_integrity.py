"""Checkpoint integrity: checksums, finite weights, best-keeping rotation, stderr fallback notices."""

import io
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from pyro_vae import train
from pyro_vae.checkpoints import CheckpointDir, CheckpointError, load_checkpoint, save_checkpoint

CONFIG = {"train": {"epochs": 3, "batch_size": 256},
          "model": {"latent_dim": 2, "encoder": {"hidden": [16]}, "decoder": {"hidden": [16]}}}
WEIGHT = "decoder.net.3.weight"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("integrity") / "run"
    train(CONFIG, run, progress=False)
    return run


@pytest.fixture
def checkpoints(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return CheckpointDir(tmp_path / "run" / "checkpoints")


def flip_inside(path, tensor, count=16):
    """Flip ``count`` bytes in the middle of ``tensor``'s bytes as stored in ``path``."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().cpu().contiguous().numpy().tobytes()
    start = data.find(raw)
    assert start > 0 and data.find(raw, start + 1) == -1, "the tensor's bytes must occur once"
    middle = start + (len(raw) - count) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def fake_state(epoch):
    return {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}, "optimizer": {},
            "scheduler": {}, "rng": torch.get_rng_state(), "cuda_rng": []}


def names(directory):
    return sorted(p.name for p in directory.paths())


def test_flipped_weight_bytes_fail_the_checksum_and_load_latest_falls_back(checkpoints, capsys):
    newest, previous = checkpoints.paths()
    before = load_checkpoint(newest)
    flip_inside(newest, before["model"][WEIGHT])
    # Without the checksum the damage is silent: torch loads other weights without complaint.
    payload = newest.read_bytes()
    silent = torch.load(io.BytesIO(payload), weights_only=True)
    assert not torch.equal(silent["model"][WEIGHT], before["model"][WEIGHT])
    with pytest.raises(CheckpointError, match="checksum mismatch") as error:
        load_checkpoint(newest)
    assert str(newest) in str(error.value)
    capsys.readouterr()
    state = checkpoints.load_latest()
    assert state["epoch"] == 2 and checkpoints.loaded_path == previous
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pyro-vae: Checkpoint ")
    assert all(s in lines[0] for s in (str(newest), str(previous), "checksum mismatch", "Falling back"))


def test_flipped_optimizer_bytes_are_detected(checkpoints):
    newest, _ = checkpoints.paths()
    moments = [v for s in load_checkpoint(newest)["optimizer"]["state"].values() for v in s.values()
               if torch.is_tensor(v) and v.numel() > 64]
    flip_inside(newest, max(moments, key=torch.Tensor.numel))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(newest)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_in_a_valid_file_names_the_parameter(checkpoints, capsys, value):
    newest, previous = checkpoints.paths()
    state = load_checkpoint(newest)
    state["model"][WEIGHT][3, 2] = value
    save_checkpoint(state, newest)  # CheckpointDir.save's writer: the checksum is valid
    with pytest.raises(CheckpointError, match=f"'{WEIGHT}' holds NaN or infinite") as error:
        load_checkpoint(newest)
    assert str(newest) in str(error.value)
    assert checkpoints.load_latest()["epoch"] == 2 and checkpoints.loaded_path == previous
    err = capsys.readouterr().err
    assert WEIGHT in err and str(previous) in err


def test_checkpoint_written_before_checksums_still_loads(checkpoints):
    newest, _ = checkpoints.paths()
    state = load_checkpoint(newest)
    torch.save(state, newest)  # the previous format: a plain torch zip file, no footer
    assert b"PYROVAE-CHECKPOINT" not in newest.read_bytes()
    loaded = load_checkpoint(newest)
    assert loaded["epoch"] == 3
    assert all(torch.equal(loaded["model"][k], state["model"][k]) for k in state["model"])
    assert checkpoints.load_latest()["epoch"] == 3 and checkpoints.loaded_path == newest
    # Such a file has no SHA-256, but the zip's CRC-32s still catch flipped bytes.
    flip_inside(newest, state["model"][WEIGHT])
    with pytest.raises(CheckpointError, match="CRC-32 mismatch"):
        load_checkpoint(newest)


def test_damaged_checksum_footer_is_refused(checkpoints):
    newest, _ = checkpoints.paths()
    data = newest.read_bytes()
    newest.write_bytes(data[:-40] + b"zz" + data[-38:])  # inside the hex digest
    with pytest.raises(CheckpointError, match="checksum footer is damaged"):
        load_checkpoint(newest)


def test_rotation_keeps_the_newest_two_and_the_best(tmp_path):
    directory = CheckpointDir(tmp_path / "checkpoints")
    expected = [["epoch-0001.pt"], ["epoch-0001.pt", "epoch-0002.pt"],
                ["epoch-0002.pt", "epoch-0003.pt"], ["epoch-0002.pt", "epoch-0003.pt", "epoch-0004.pt"],
                ["epoch-0002.pt", "epoch-0004.pt", "epoch-0005.pt"],
                ["epoch-0002.pt", "epoch-0005.pt", "epoch-0006.pt"]]
    for epoch, (score, kept) in enumerate(zip([1, 5, 2, 3, 1, 0], expected), start=1):
        directory.save(fake_state(epoch), epoch, score=score)
        assert names(directory) == kept, epoch
    assert directory.best_path() == directory.path(2)
    assert json.loads((tmp_path / "checkpoints" / "best.json").read_text()) == {
        "epoch": 2, "score": 5.0, "file": "epoch-0002.pt"}
    assert load_checkpoint(directory.best_path())["epoch"] == 2
    assert directory.load_latest()["epoch"] == 6


def test_unscored_epochs_keep_only_the_newest(tmp_path):
    directory = CheckpointDir(tmp_path / "checkpoints")
    for epoch in range(1, 5):
        directory.save(fake_state(epoch), epoch, score=float("nan") if epoch == 2 else None)
    assert names(directory) == ["epoch-0003.pt", "epoch-0004.pt"]
    assert directory.best_path() is None


def test_damaged_best_file_or_record_does_not_stop_rotation(tmp_path):
    directory = CheckpointDir(tmp_path / "checkpoints")
    for epoch, score in enumerate([1, 5, 2], start=1):
        directory.save(fake_state(epoch), epoch, score=score)
    directory.path(2).write_bytes(b"damaged")
    directory.save(fake_state(4), 4, score=3)
    directory.save(fake_state(5), 5, score=1)
    assert names(directory) == ["epoch-0002.pt", "epoch-0004.pt", "epoch-0005.pt"]
    (tmp_path / "checkpoints" / "best.json").write_text("{not json")
    assert directory.best_path() is None
    directory.save(fake_state(6), 6, score=0)  # an unreadable record counts as none: 6 is the best
    assert names(directory) == ["epoch-0005.pt", "epoch-0006.pt"]
    assert directory.best_path() == directory.path(6)


def test_save_after_falling_back_drops_the_skipped_newer_files_and_their_best(tmp_path):
    directory = CheckpointDir(tmp_path / "checkpoints")
    for epoch, score in enumerate([1, 2, 9], start=1):
        directory.save(fake_state(epoch), epoch, score=score)
    directory.path(3).write_bytes(b"damaged")  # the resumed run continues from epoch 2
    directory.save(fake_state(3), 3, score=4)
    assert directory.best_path() == directory.path(3) and directory.best()["score"] == 4
    assert load_checkpoint(directory.path(3))["epoch"] == 3
    directory.save(fake_state(4), 4, score=9)
    directory.path(5).write_bytes(b"damaged")  # skipped by a resume from epoch 4
    directory.save(fake_state(5), 5)  # rewrites 5 and drops the record of the old run's best
    directory.path(6).write_bytes(b"damaged")
    directory.path(7).write_bytes(b"damaged")  # both skipped by a resume from epoch 5
    directory.save(fake_state(6), 6)
    assert names(directory) == ["epoch-0004.pt", "epoch-0005.pt", "epoch-0006.pt"]
    assert directory.best_path() == directory.path(4)


def test_none_loading_raises_naming_every_file_and_prints_nothing(checkpoints, capsys):
    for path in checkpoints.paths():
        path.write_bytes(path.read_bytes()[:-300])
    reports = []
    capsys.readouterr()
    with pytest.raises(CheckpointError, match="no loadable checkpoint is left") as error:
        checkpoints.load_latest(report=reports.append)
    assert all(str(p) in str(error.value) for p in checkpoints.paths())
    assert reports == [] and capsys.readouterr().err == "" and checkpoints.loaded_path is None
    assert CheckpointDir(checkpoints.directory / "absent").load_latest() is None


def test_custom_report_receives_each_skipped_file(checkpoints, capsys):
    newest, previous = checkpoints.paths()
    newest.write_bytes(b"damaged")
    reports = []
    capsys.readouterr()
    assert checkpoints.load_latest(report=reports.append)["epoch"] == 2
    assert len(reports) == 1 and str(newest) in reports[0] and str(previous) in reports[0]
    assert capsys.readouterr().err == ""


def test_fallback_notice_is_on_stderr_even_with_warnings_ignored(checkpoints, capsys):
    newest, previous = checkpoints.paths()
    newest.write_bytes(newest.read_bytes()[:-1000])
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert checkpoints.load_latest()["epoch"] == 2
    err = capsys.readouterr().err
    assert str(newest) in err and str(previous) in err and "Falling back" in err


@pytest.mark.parametrize("pythonwarnings", [None, "ignore"])
def test_fallback_notice_in_a_fresh_process_is_one_stderr_line(checkpoints, pythonwarnings):
    newest, previous = checkpoints.paths()
    newest.write_bytes(newest.read_bytes()[:-1000])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    if pythonwarnings:
        env["PYTHONWARNINGS"] = pythonwarnings
    code = ("import sys; from pyro_vae.checkpoints import CheckpointDir; "
            "print(CheckpointDir(sys.argv[1]).load_latest()['epoch'])")
    done = subprocess.run([sys.executable, "-c", code, str(checkpoints.directory)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
    lines = [line for line in done.stderr.splitlines() if str(newest) in line]
    assert len(lines) == 1 and str(previous) in lines[0], done.stderr  # no duplicate warning line
    assert "Warning" not in done.stderr, done.stderr


def test_training_keeps_the_checkpoint_of_the_best_validation_elbo(trained):
    checkpoints = CheckpointDir(trained / "checkpoints")
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["val_elbo"])
    assert checkpoints.best() == {"epoch": best["epoch"], "score": best["val_elbo"],
                                  "file": checkpoints.path(best["epoch"]).name}
    assert load_checkpoint(checkpoints.best_path())["epoch"] == best["epoch"]
