"""Bad input gets a clear message and leaves nothing behind.

In Python a :class:`~pyro_vae.PyroVAEError` (a subclass) is raised; the command line prints one
paragraph on stderr (no traceback) and exits with status 2, without creating the run
directory. Covered: non-finite data, data outside the likelihood's support, wrong shapes and
dtypes, empty data, unknown or misspelt keys and names (with a suggestion), invalid values,
config files that are not YAML or not a mapping, run directories that do not exist or are
not runs, corrupted checkpoints and untrusted pickles.
"""

import io
import math
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
import yaml

from pyro_vae import VAE, ConfigError, DataError, PyroVAEError, log_likelihood, naive_log_likelihood
from pyro_vae.checkpoints import CheckpointDir, CheckpointError, load_checkpoint
from pyro_vae.cli import main
from pyro_vae.config import check, load_yaml, resolve
from pyro_vae.schedules import BETA_SCHEDULES

TINY = ["--no-progress", "--set", "train.epochs=1", "--set", "model.encoder.hidden=[8]",
        "--set", "model.decoder.hidden=[8]", "--set", "train.batch_size=256"]


def cli(capsys, *argv):
    """Run ``pyro-vae *argv`` in-process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    return status, capsys.readouterr().err


def assert_refused(status, err, command, *fragments):
    """Exit status 2 and one paragraph ``pyro-vae COMMAND: error: ...`` naming the fragments."""
    assert status == 2, err
    assert err.startswith(f"pyro-vae {command}: error: "), err
    assert "Traceback" not in err and "\n\n" not in err.strip(), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def train_refused(capsys, tmp_path, *args, fragments=()):
    out = tmp_path / "run"
    status, err = cli(capsys, "train", "--out", out, *TINY, *args)
    assert_refused(status, err, "train", *fragments)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def files(directory):
    paths = sorted(Path(directory).rglob("*"))
    return {p.relative_to(directory): p.read_bytes() for p in paths if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-epoch run (two checkpoints), trained once for the module."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    pyro.clear_param_store()
    assert main(["train", "--out", str(out), *TINY, "--set", "train.epochs=2"]) == 0
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    return copy


# --------------------------------------------------------------------------------------
# Unknown or misspelt keys and names: refused with a suggestion
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, suggestion", [
    ("train.epohcs=1", "Did you mean 'epochs'?"),
    ("modle.latent_dim=2", "Did you mean 'model'?"),
    ("model.encoder.hiden=[8]", "Did you mean 'hidden'?"),
    ("model.encoder.activation=rleu", "Did you mean 'relu'?"),
    ("model.likelihood=bernouli", "Did you mean 'bernoulli'?"),
    ("model.prior=standard_normal", "Did you mean 'standard-normal'?"),
    ("data.name=digts", "Did you mean 'digits'?"),
    ("data.binarise=static", "Did you mean 'binarize'?"),
    ("objective.name=elob", "Did you mean 'elbo'?"),
    ("beta_schedule.name=linaer", "Did you mean 'linear'?"),
])
def test_cli_misspelt_keys_and_names_exit_2_with_a_suggestion(capsys, tmp_path, override, suggestion):
    train_refused(capsys, tmp_path, "--set", override, fragments=[suggestion])


def test_misspelt_inference_gets_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'top-down'"):
        VAE(data_shape=4, latent_dim=[2, 2], inference="topdown")


# --------------------------------------------------------------------------------------
# Invalid values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, fragment", [
    ("beta_schedule.beta=-1", "beta"),
    ("model.latent_dim=0", "latent_dim"),
    ("model.latent_dim=-2", "latent_dim"),
    ("model.latent_dim=[4, 0]", "latent_dim"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.batch_size=-5", "train.batch_size"),
    ("model.encoder.hidden=[-8]", "Hidden widths"),
    ("data.val_size=-1", "val_size"),
    ("optim.lr=abc", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-1e-3", "optim.lr"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.lr_decay=0", "optim.lr_decay"),
    ("optim.lr_milestones=[4, 1]", "optim.lr_milestones"),
    ("optim.lr_milestones=[]", "optim.lr_milestones"),
    ("optim.lr_milestones=3", "optim.lr_milestones"),
    ("train.mixed_precision=fp16", "train.mixed_precision"),
    ("seed=-1", "seed"),
    ("seed=4294967296", "seed"),
    ("objective.num_particles=0", "num_particles"),
    ("eval.num_samples=0", "eval.num_samples"),
    ("device=gpu0", "device"),
    ("model=3", "must be a mapping"),
    ("data.name=array", "needs the option 'path'"),
    ("model.likelihood={name: gaussian, scale: -1}", "scale"),
    ("train.epochs", "key=value"),
])
def test_cli_invalid_values_exit_2_and_write_nothing(capsys, tmp_path, override, fragment):
    train_refused(capsys, tmp_path, "--set", override, fragments=[fragment])


def test_scientific_notation_is_a_number_in_overrides_and_files(tmp_path):
    assert check(resolve(None, ["optim.lr=1e-4"]))["optim"]["lr"] == 1e-4
    config_file = tmp_path / "config.yaml"
    config_file.write_text("optim:\n  lr: 3e-3\n  clip_norm: 1E+1\n")
    assert load_yaml(config_file) == {"optim": {"lr": 3e-3, "clip_norm": 10.0}}


@pytest.mark.parametrize("kwargs", [
    {"latent_dim": 0}, {"latent_dim": -1}, {"latent_dim": [2, 0]}, {"latent_dim": "8"}, {"data_shape": 0},
    {"data_shape": (1, -8)}, {"data_shape": ()}, {"data_shape": True}, {"beta": -0.5}, {"beta": math.nan},
    {"prior": "gausian"}, {"likelihood": {"name": "gaussian", "scale": 0}}, {"encoder": {"hidden": [8]}},
])
def test_vae_invalid_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        VAE(**{"data_shape": 4, "latent_dim": 2, **kwargs})


@pytest.mark.parametrize("kwargs", [{"data_shape": 1.5}, {"data_shape": None}, {"latent_dim": 3.0},
                                    {"latent_dim": None}, {"latent_dim": math.nan}])
def test_vae_rejects_non_integer_shapes(kwargs):
    with pytest.raises(ConfigError, match="must be a positive int"):
        VAE(**{"data_shape": 4, "latent_dim": 2, **kwargs})


@pytest.mark.parametrize("value", ["1.5", "null"])
def test_cli_non_integer_latent_dim_exits_2(capsys, tmp_path, value):
    train_refused(capsys, tmp_path, "--set", f"model.latent_dim={value}", fragments=["latent_dim"])


@pytest.mark.parametrize("kwargs", [
    {"decoder": {"name": "mlp", "activation": ["relu"]}},
    {"encoder": {"name": "mlp", "activation": {"a": 1}}},
    {"prior": {"name": "flow", "transform": ["spline-coupling"]}},
])
def test_unhashable_activation_or_flow_transform_raises_config_error(kwargs):
    with pytest.raises(ConfigError):
        VAE(**{"data_shape": 4, "latent_dim": 2, **kwargs})


@pytest.mark.parametrize("hidden", [2.5, None, True, [True, 4]])
def test_hidden_widths_that_are_not_integers_raise_config_error(hidden):
    with pytest.raises(ConfigError, match="Hidden widths"):
        VAE(data_shape=4, latent_dim=2, encoder={"name": "mlp", "hidden": hidden})


def test_cli_part_named_by_a_list_or_mapping_exits_2(capsys, tmp_path):
    train_refused(capsys, tmp_path, "--set", "model.decoder={name: [1, x]}", fragments=["must be a string"])
    train_refused(capsys, tmp_path, "--set", "data.name={a: 1}", fragments=["must be a string"])


def test_vae_rejects_a_non_string_name():
    with pytest.raises(ConfigError):
        VAE(data_shape=4, latent_dim=2, name=3)


@pytest.mark.parametrize("override", [
    "beta_schedule.beta=.inf", "beta_schedule.beta=.nan", "beta_schedule.beta=[1, 2]",
    "beta_schedule={name: linear, start: .inf}",
])
def test_cli_bad_beta_schedule_leaves_no_run_dir(capsys, tmp_path, override):
    train_refused(capsys, tmp_path, "--set", override, fragments=["beta"])


@pytest.mark.parametrize("spec", [
    {"name": "linear", "warmup_epochs": math.nan}, {"name": "cyclical", "cycle_epochs": math.inf},
    {"name": "cyclical", "ratio": math.nan},
])
def test_beta_schedules_reject_non_finite_options(spec):
    with pytest.raises(ConfigError):
        BETA_SCHEDULES.build(spec)


def test_divergence_in_the_first_epoch_exits_3_and_leaves_no_run_dir(capsys, tmp_path):
    out = tmp_path / "run"
    status, err = cli(capsys, "train", "--out", out, *TINY, "--set", "optim.lr=1.0e+300")
    assert status == 3 and err.startswith("pyro-vae train: training diverged: "), err  # 2 means bad input
    assert "NaN or infinite" in err and "Traceback" not in err and "\n\n" not in err.strip()
    assert not out.exists()


# --------------------------------------------------------------------------------------
# Config files that are not YAML, not a mapping, not there
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, fragment", [
    ("model: [unclosed", "not valid YAML"),
    ("a:\n\tb: 1", "not valid YAML"),
    ("- 1\n- 2", "must hold a mapping"),
    ("42", "must hold a mapping"),
    ("!!python/object/apply:os.system ['echo unsafe']", "not valid YAML"),
    (b"\x00\xff\xfe\x89PNG", "not a text"),
    ("modle: {latent_dim: 2}", "Did you mean 'model'?"),
    ("train: 3", "must be a mapping"),
])
def test_cli_bad_config_file_exits_2(capsys, tmp_path, content, fragment):
    path = tmp_path / "config.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    train_refused(capsys, tmp_path, "--config", path, fragments=[fragment])


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "missing.yaml", "does not exist"),
    (lambda tmp: tmp, "is a directory"),
])
def test_cli_config_path_that_is_not_a_file_exits_2(capsys, tmp_path, make, fragment):
    train_refused(capsys, tmp_path, "--config", make(tmp_path), fragments=[fragment])


def test_cli_entry_point_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_bytes(b"\xff\xfe not text")
    done = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--config", str(bad), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("pyro-vae train: error: Config file")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------
# Data: non-finite, outside the support, wrong shape or dtype, empty, untrusted pickles
# --------------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this would create the file ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _binary(n=40, width=6):
    return (np.random.default_rng(0).random((n, width)) < 0.5).astype(np.float32)


@pytest.mark.parametrize("name, make, fragment", [
    ("nan.npy", lambda: np.where(_binary() > 0, np.nan, 0.0), "NaN or infinite"),
    ("inf.npy", lambda: np.full((40, 6), -np.inf, np.float32), "NaN or infinite"),
    ("empty.npy", lambda: np.zeros((0, 6), np.float32), "N >= 1"),
    ("vector.npy", lambda: np.ones(40, np.float32), "shape (N, *shape)"),
    ("no-width.npy", lambda: np.ones((40, 0), np.float32), "data_shape"),
    ("text.npy", lambda: np.array([["a", "b"]] * 40), "not numbers"),
    ("complex.npy", lambda: np.ones((40, 6), np.complex64), "not numbers"),
    ("grey.npy", lambda: np.random.default_rng(0).random((40, 6)).astype(np.float32), "binary data"),
    ("negative.npy", lambda: -_binary(), "binary data"),
])
def test_cli_bad_array_data_exit_2(capsys, tmp_path, name, make, fragment):
    path = tmp_path / name
    np.save(path, make())
    train_refused(capsys, tmp_path, "--set", f"data={{name: array, path: '{path}'}}", fragments=[fragment])


def test_cli_counts_likelihood_on_grey_data_exits_2(capsys, tmp_path):
    train_refused(capsys, tmp_path, "--set", "data.binarize=none", "--set", "model.likelihood=poisson",
                  fragments=["counts"])


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_cli_data_file_with_a_pickle_is_refused_and_never_run(capsys, tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    if suffix == ".pt":
        torch.save({"x": _Exploit(marker)}, path, pickle_module=pickle)
    else:
        np.save(path, np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    train_refused(capsys, tmp_path, "--set", f"data={{name: array, path: '{path}'}}", fragments=["evil"])
    assert not marker.exists()


@pytest.fixture(scope="module")
def vae():
    pyro.set_rng_seed(0)
    return VAE(data_shape=4, latent_dim=2, encoder={"name": "mlp", "hidden": [8]},
               decoder={"name": "mlp", "hidden": [8]}, name="bad-input-vae")


@pytest.mark.parametrize("x, fragment", [
    (torch.tensor([[0.0, 1.0, math.nan, 0.0]]), "NaN or infinite"),
    (torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, math.inf, 1.0, 0.0]]), "NaN or infinite"),
    (torch.zeros(0, 4), "empty"),
    (torch.zeros(3, 0), "empty"),
    (torch.tensor(1.0), "leading data dimension"),
    ([[0.0, 1.0, 0.0, 1.0]], "torch.Tensor"),
    (np.ones((2, 4), np.float32), "torch.Tensor"),
])
@pytest.mark.parametrize("naive", [False, True])
def test_log_likelihood_rejects_non_finite_empty_and_non_tensor_x(vae, x, fragment, naive):
    with pytest.raises(DataError, match=fragment.replace("(", r"\(")):
        if naive:
            naive_log_likelihood(vae.model, x, num_samples=3)
        else:
            log_likelihood(vae.model, vae.guide, x, num_samples=3)


@pytest.mark.parametrize("option, value", [("num_samples", 0), ("num_samples", -5), ("num_samples", 2.5),
                                           ("num_samples", True), ("chunk_size", 0), ("batch_size", -1)])
def test_log_likelihood_rejects_bad_sizes(vae, option, value):
    with pytest.raises(PyroVAEError, match=option):
        log_likelihood(vae.model, vae.guide, torch.ones(2, 4), **{"num_samples": 3, option: value})


BAD_X = {
    "wrong-width": torch.ones(3, 5),
    "extra-dim": torch.ones(3, 1, 4),
    "one-dim": torch.ones(4),  # silently read as 4 points of shape ()
    "int": torch.ones(3, 4, dtype=torch.int64),
    "bool": torch.ones(3, 4, dtype=torch.bool),
    "float64": torch.ones(3, 4, dtype=torch.float64),
    "out-of-support": torch.full((3, 4), 0.5),
}


@pytest.mark.parametrize("kind", sorted(BAD_X))
def test_log_likelihood_of_a_vae_rejects_bad_x(vae, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError):
            log_likelihood(vae.model, vae.guide, BAD_X[kind], num_samples=3)


def test_cli_empty_test_split_trains_or_exits_2(capsys, tmp_path):
    out = tmp_path / "run"
    status, err = cli(capsys, "train", "--out", out, *TINY, "--set", "data.test_size=0")
    if status == 2:
        assert_refused(status, err, "train")
        assert not out.exists()
    else:  # trained; the reconstruction figure needs test points and may be left out
        assert status == 0 and (out / "checkpoints" / "epoch-0001.pt").is_file(), err
        assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").read_text().count("\n") == 1


# --------------------------------------------------------------------------------------
# Run directories that do not exist, are not runs, or cannot be written
# --------------------------------------------------------------------------------------


def test_cli_run_dirs_that_do_not_exist_or_are_not_runs_exit_2(capsys, tmp_path):
    not_a_run = tmp_path / "folder"
    not_a_run.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for command in ("evaluate", "plot", "sample"):
        assert_refused(*cli(capsys, command, tmp_path / "missing"), command, "does not exist")
        assert_refused(*cli(capsys, command, not_a_run), command, "is not a pyro-vae run")
        assert_refused(*cli(capsys, command, a_file), command, "is not a pyro-vae run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]
    assert not any(not_a_run.iterdir())
    status, err = cli(capsys, "train", "--resume", "--out", tmp_path / "nothing", *TINY)
    assert_refused(status, err, "train", "holds no run")
    assert not (tmp_path / "nothing").exists()
    assert_refused(*cli(capsys, "train", "--resume", *TINY), "train", "--resume needs --out")


def test_cli_existing_run_is_not_overwritten(capsys, run_copy):
    before = files(run_copy)
    assert_refused(*cli(capsys, "train", "--out", run_copy, *TINY), "train", "already holds a run")
    assert files(run_copy) == before


@pytest.mark.parametrize("below", [False, True])
def test_cli_out_that_is_a_file_exits_2(capsys, tmp_path, below):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    out = a_file / "run" if below else a_file
    assert_refused(*cli(capsys, "train", "--out", out, *TINY), "train")
    assert a_file.read_text() == "keep me"


def test_cli_evaluate_invalid_sizes_exit_2_and_write_nothing(capsys, run_copy):
    before = files(run_copy)
    for args in (["--num-samples", "0"], ["--num-samples", "-3"], ["--batch-size", "0"]):
        assert_refused(*cli(capsys, "evaluate", run_copy, "--no-progress", *args), "evaluate", "positive")
    assert_refused(*cli(capsys, "sample", run_copy, "-n", "0"), "sample", "positive")
    status, err = cli(capsys, "evaluate", run_copy, "--num-samples", "many")
    assert status == 2 and "invalid int value" in err and "Traceback" not in err  # argparse
    assert files(run_copy) == before


def test_cli_evaluate_empty_test_split_exits_2(capsys, run_copy):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["data"]["test_size"] = 0
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    before = files(run_copy)
    assert_refused(*cli(capsys, "evaluate", run_copy, "--no-progress"), "evaluate", "test split", "empty")
    assert files(run_copy) == before


# --------------------------------------------------------------------------------------
# Corrupted checkpoints and untrusted pickles
# --------------------------------------------------------------------------------------


def _state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_cli_evaluate_with_only_corrupt_checkpoints_exits_2(capsys, run_copy, damage):
    for path in CheckpointDir(run_copy / "checkpoints").paths():
        data = path.read_bytes()
        damaged = {"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint", "empty": b""}
        path.write_bytes(damaged[damage])
    before = files(run_copy)
    status, err = cli(capsys, "evaluate", run_copy, "--no-progress")
    assert_refused(status, err, "evaluate", "cannot be loaded", "no loadable checkpoint")
    assert files(run_copy) == before


@pytest.mark.parametrize("content, problem", [
    ([1, 2, 3], "not a dict"),
    ({"epoch": 1}, "missing"),
    ({"epoch": "one"}, "missing"),
    (lambda state: {**state, "model": [torch.ones(2)]}, "'model' is a list"),
    (lambda state: {**state, "epoch": -1}, "negative epoch"),
    (lambda state: {**state, "epoch": True}, "'epoch'"),
    (lambda state: {**state, "model": {"w": 1.0}}, "mapping of parameter names to tensors"),
    (lambda state: {k: v for k, v in state.items() if k != "optimizer"}, "missing 'optimizer'"),
])
def test_checkpoint_that_is_not_a_training_state_is_refused(capsys, run_copy, content, problem):
    paths = CheckpointDir(run_copy / "checkpoints").paths()
    state = _state(paths[0])
    for path in paths:
        torch.save(content(state) if callable(content) else content, path)
    with pytest.raises(CheckpointError, match="not a pyro-vae training checkpoint") as error:
        load_checkpoint(paths[0])
    assert problem in str(error.value)
    assert_refused(*cli(capsys, "evaluate", run_copy, "--no-progress"), "evaluate",
                   "not a pyro-vae training checkpoint", "no loadable")


def test_newest_checkpoint_not_a_training_state_falls_back_to_previous(run_copy, capsys):
    newest, previous = CheckpointDir(run_copy / "checkpoints").paths()
    torch.save({"epoch": 2}, newest)
    assert CheckpointDir(run_copy / "checkpoints").load_latest()["epoch"] == 1
    assert f"Falling back to '{previous}'" in capsys.readouterr().err


def test_checkpoint_with_a_pickle_is_refused_and_never_run(capsys, run_copy, tmp_path):
    marker = tmp_path / "pwned"
    state = _state(CheckpointDir(run_copy / "checkpoints").paths()[0])
    for path in CheckpointDir(run_copy / "checkpoints").paths():
        buffer = io.BytesIO()
        torch.save({**state, "extra": _Exploit(marker)}, buffer, pickle_module=pickle)
        path.write_bytes(buffer.getvalue())
    assert_refused(*cli(capsys, "evaluate", run_copy, "--no-progress"), "evaluate", "cannot be loaded",
                   "no loadable")
    assert not marker.exists()


def test_cli_evaluate_checkpoint_that_does_not_fit_the_config_exits_2(capsys, run_copy):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["model"]["latent_dim"] = 5
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert_refused(*cli(capsys, "evaluate", run_copy, "--no-progress"), "evaluate", "checkpoint",
                   "size mismatch for encoder")  # the detail, not only its first line


def test_cli_resume_with_only_corrupt_checkpoints_exits_2(capsys, run_copy):
    for path in CheckpointDir(run_copy / "checkpoints").paths():
        path.write_bytes(b"damaged")
    before = files(run_copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status, err = cli(capsys, "train", "--resume", "--out", run_copy, *TINY, "--set", "train.epochs=3")
    assert_refused(status, err, "train", "checkpoint")
    assert files(run_copy) == before
