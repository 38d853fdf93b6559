"""Experiment tracking: what TensorBoard and MLflow hold is what metrics.jsonl holds, read back
with the libraries' own readers (offline: event files and a file store in the run directory)."""

import pytest

from pyro_vae import train
from pyro_vae.errors import ConfigError
from pyro_vae.rundir import RunDir
from pyro_vae.tracking import flatten

TINY = {"model": {"latent_dim": [3, 2], "encoder": {"hidden": [8]}, "decoder": {"hidden": [8]},
                  "latent_network": {"hidden": [8]}},
        "train": {"epochs": 3, "batch_size": 256}}


def _train(path, **tracking):
    train({**TINY, "tracking": {"images_every": 2, **tracking}}, path, progress=False)
    return RunDir(path).read_metrics()


def test_flatten_names_per_site_entries():
    record = {"epoch": 2, "train_loss": 3.5, "val_kl": {"z1": -1.5, "z2": 4.0}, "beta": [1.0, 0.5],
              "active_units": {"z1": 3}}
    assert flatten(record) == {"train_loss": 3.5, "val_kl/z1": -1.5, "val_kl/z2": 4.0, "beta/1": 1.0,
                               "beta/2": 0.5, "active_units/z1": 3.0}


def test_tensorboard_holds_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = _train(tmp_path / "run", tensorboard=True)
    events = EventAccumulator(str(RunDir(tmp_path / "run").tensorboard), size_guidance={"images": 0})
    events.Reload()
    expected = [flatten(r) for r in records]
    assert set(events.Tags()["scalars"]) == set(expected[0])
    for tag in ("train_loss", "val_elbo", "val_kl/z1"):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(r["epoch"], pytest.approx(v[tag], rel=1e-6)) for r, v in zip(records, expected)]
    images = events.Images("reconstructions_and_samples")
    assert [image.step for image in images] == [2, 3]  # every 2 epochs and the last
    assert images[0].encoded_image_string.startswith(b"\x89PNG")


@pytest.mark.slow  # about 25 s: MLflow creates its SQLite schema
def test_mlflow_holds_the_metrics_params_and_images(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # a store's default artifact root is ./mlartifacts
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    records = _train(tmp_path / "run", mlflow=True, mlflow_uri=uri, mlflow_experiment="tests")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == "[3, 2]"
    for key in ("train_loss", "val_elbo", "val_kl/z2"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (r["epoch"], pytest.approx(flatten(r)[key], rel=1e-6)) for r in records]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert artifacts == ["images/reconstructions_and_samples_epoch0002.png",
                         "images/reconstructions_and_samples_epoch0003.png"]


def test_mlflow_default_store_is_in_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    records = _train(tmp_path / "run", mlflow=True)
    store = RunDir(tmp_path / "run").mlruns
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pyro-vae").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(records)
    assert (store / "artifacts").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_tracking_does_not_change_the_run(tmp_path):
    pytest.importorskip("tensorboard")
    plain = _train(tmp_path / "plain")
    tracked = _train(tmp_path / "tracked", tensorboard=True, images_every=1)  # images draw samples
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in plain]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in tracked] == strip


@pytest.mark.parametrize("override, message", [
    ({"tensorboard": "yes"}, "tracking.tensorboard"),
    ({"images_every": -1}, "tracking.images_every"),
    ({"mlflow_uri": 3}, "tracking.mlflow_uri"),
])
def test_bad_tracking_settings_are_refused_before_any_write(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train({**TINY, "tracking": override}, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_missing_backend_is_named(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"pip install 'pyro-vae\[tracking\]'"):
        train({**TINY, "tracking": {"tensorboard": True}}, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
