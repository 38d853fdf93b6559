"""The command line's surface: --version/--help, train's per-epoch lines and summary, encode,
interpolate, export, disentangle, and the rough edges of issue 21 (each test fails before its fix)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.encoding import encode
from pyro_vae.figures import FIGURES, TRAINING_FIGURE
from pyro_vae.runs import EVAL_SEED, load_model, load_run

SMALL = ["--set", "model.encoder.hidden=[8]", "--set", "model.decoder.hidden=[8]",
         "--set", "train.batch_size=256", "--set", "model.latent_dim=2"]


def cli(capsys, *argv):
    """Run ``pyro-vae *argv`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A two-epoch run of the default digits data, trained once for the module."""
    out = tmp_path_factory.mktemp("surface") / "run"
    pyro.clear_param_store()
    assert main(["train", "--out", str(out), "--no-progress", "--set", "train.epochs=2", *SMALL]) == 0
    return out


def _python(code, cwd=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout


def test_version_prints_the_package_version_without_importing_torch():
    from pyro_vae import __version__

    out = _python("import sys\nfrom pyro_vae.cli import main\n"
                  "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
                  "print('torch' in sys.modules, 'numpy' in sys.modules)")
    assert out.splitlines() == [f"pyro-vae {__version__}", "False False"]


def test_help_lists_every_command_without_importing_torch():
    out = _python("import sys, contextlib, io\nfrom pyro_vae.cli import main\nbuf = io.StringIO()\n"
                  "with contextlib.redirect_stdout(buf):\n    try:\n        main(['--help'])\n"
                  "    except SystemExit:\n        pass\nprint(buf.getvalue())\n"
                  "print('torch' in sys.modules)")
    for command in ("train", "evaluate", "list", "plot", "sample", "encode", "interpolate", "export",
                    "disentangle"):
        assert command in out
    assert out.rstrip().endswith("False")


def test_train_prints_one_line_per_epoch_and_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, stderr = cli(capsys, "train", "--out", out, "--set", "train.epochs=3", *SMALL)
    assert status == 0
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("epoch ")]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    for line, record in zip(lines, records):
        assert f"loss {record['train_loss']:.2f}" in line and f"val ELBO {record['val_elbo']:.2f}" in line
    best = max(records, key=lambda r: r["val_elbo"])
    assert f"Best validation ELBO {best['val_elbo']:.2f} nats per point at epoch {best['epoch']}" in stdout
    assert "Trained 3 epochs in" in stdout and f"Run directory: {out}" in stdout
    assert f"Figures: {out / 'figures' / (TRAINING_FIGURE + '.png')}" in stdout
    assert f"Next: pyro-vae evaluate {out}" in stdout


def test_epoch_lines_thin_out_on_long_runs():
    from pyro_vae.trainer import log_interval

    assert [log_interval(n) for n in (1, 30, 60, 300, 3280)] == [1, 1, 2, 10, 109]


def test_evaluate_bar_is_labelled(run_dir, capsys):
    status, _, stderr = cli(capsys, "evaluate", run_dir, "--num-samples", "4")
    assert status == 0 and "evaluate:" in stderr


def test_plot_never_replaces_the_training_figure_with_another_layout(run_dir, tmp_path, capsys):
    trained = run_dir / "figures" / f"{TRAINING_FIGURE}.png"
    assert trained.is_file() and not (run_dir / "figures" / "reconstructions.png").exists()
    assert len(set(FIGURES)) == len(FIGURES)
    status, stdout, _ = cli(capsys, "plot", run_dir, "--out-dir", tmp_path / "figs")
    assert status == 0
    written = {Path(line).name for line in stdout.split()}
    assert {"reconstructions.png", f"{TRAINING_FIGURE}.png"} <= written  # two layouts, two names


def test_sample_prints_the_file_it_wrote(run_dir, tmp_path, capsys):
    status, stdout, _ = cli(capsys, "sample", run_dir, "-n", "4", "--out", tmp_path / "xnoext")
    assert status == 0
    assert stdout.strip() == str(tmp_path / "xnoext.png") and (tmp_path / "xnoext.png").is_file()


@pytest.mark.parametrize("content", ["pickle", "dict", "json"])
def test_plot_refuses_damaged_evaluation_results_with_exit_2(run_dir, tmp_path, capsys, content):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["evaluate", str(copy), "--num-samples", "4", "--no-progress"]) == 0
    if content == "pickle":  # a crafted file: refused by weights_only, no code runs
        import pickle

        (copy / "eval_points.pt").write_bytes(pickle.dumps(np.zeros(3)))
    elif content == "dict":
        torch.save({"unexpected": torch.zeros(2)}, copy / "eval_points.pt")
    else:
        (copy / "eval.json").write_text("{not json")
    before = sorted(p.name for p in (copy / "figures").iterdir())
    status, _, stderr = cli(capsys, "plot", copy)
    assert status == 2 and "pyro-vae plot: error:" in stderr and "Traceback" not in stderr
    assert "pyro-vae evaluate" in stderr  # says how to mend it
    assert sorted(p.name for p in (copy / "figures").iterdir()) == before  # nothing drawn first


def test_encode_writes_the_codes_of_the_split(run_dir, tmp_path, capsys):
    status, stdout, _ = cli(capsys, "encode", run_dir, "--split", "val", "--out", tmp_path / "codes")
    assert status == 0 and stdout.strip() == str(tmp_path / "codes.npz")
    codes = np.load(tmp_path / "codes.npz")
    run, _ = load_run(run_dir)
    mean, logvar = run.vae.encode(run.val)  # the run's fixed evaluation view of val
    np.testing.assert_allclose(codes["z_mean"], mean.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(codes["z_logvar"], logvar.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(codes["labels"], run.splits.val_labels.numpy())


def test_encode_another_data_set_of_the_same_shape(run_dir, tmp_path, capsys):
    x = (np.random.default_rng(0).random((30, 1, 8, 8)) > 0.5).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    spec = f"{{name: array, path: {tmp_path / 'x.npy'}, val_fraction: 0, test_fraction: 0}}"
    status, _, _ = cli(capsys, "encode", run_dir, "--data", spec, "--split", "train",
                       "--out", tmp_path / "c.npz")
    assert status == 0
    vae, _ = load_model(run_dir)
    expected = vae.encode(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "c.npz")["z_mean"], expected, rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "wide.npy", np.zeros((5, 10), np.float32))
    wide = f"{{name: array, path: {tmp_path / 'wide.npy'}}}"
    status, _, stderr = cli(capsys, "encode", run_dir, "--data", wide, "--out", tmp_path / "d.npz")
    assert status == 2 and "shape (10,)" in stderr and not (tmp_path / "d.npz").exists()


def test_interpolate_writes_a_figure(run_dir, tmp_path, capsys):
    status, stdout, _ = cli(capsys, "interpolate", run_dir, "--from", "0", "--to", "3", "--steps", "5",
                            "--out", tmp_path / "path")
    assert status == 0 and stdout.strip() == str(tmp_path / "path.png")
    assert (tmp_path / "path.png").stat().st_size > 1000
    status, _, stderr = cli(capsys, "interpolate", run_dir, "--to", "100000")
    assert status == 2 and "--to" in stderr


def test_export_torch_programs_reproduce_the_model(run_dir, tmp_path, capsys):
    status, stdout, _ = cli(capsys, "export", run_dir, "--torch", tmp_path)
    assert status == 0 and {Path(p).name for p in stdout.split()} == {"encoder.pt2", "decoder.pt2"}
    vae, _ = load_model(run_dir, map_location="cpu")
    x = torch.bernoulli(torch.full((7, 1, 8, 8), 0.4), generator=torch.Generator().manual_seed(0))
    encoder = torch.export.load(str(tmp_path / "encoder.pt2")).module()
    for got, want in zip(encoder(x), vae.encode(x)):
        torch.testing.assert_close(got, want)


def test_export_arviz_writes_the_draws_that_log_likelihood_weighs(run_dir, tmp_path, capsys):
    pytest.importorskip("arviz")
    from pyro_vae.arviz_export import load_inference_data, log_px_from

    status, stdout, _ = cli(capsys, "export", run_dir, "--arviz", tmp_path / "d.nc", "--points", "6",
                            "--num-samples", "8")
    assert status == 0 and stdout.strip() == str(tmp_path / "d.nc")
    idata = load_inference_data(tmp_path / "d.nc")
    assert idata.posterior["z"].shape == (1, 8, 6, 2) and np.isfinite(log_px_from(idata)).all()


def test_the_documented_psislw_call_runs_on_an_export(run_dir, tmp_path, monkeypatch):
    """docs/guide/trained-models.md: psislw needs chain and draw stacked into __sample__."""
    az = pytest.importorskip("arviz")
    import re

    if not hasattr(az, "psislw"):
        pytest.skip("ArviZ >= 1 has no arviz.psislw")
    assert main(["export", str(run_dir), "--arviz", str(tmp_path / "draws.nc"), "--points", "5",
                 "--num-samples", "20"]) == 0
    page = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "trained-models.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL) if "psislw" in b]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(block, namespace)
    assert namespace["khat"].dims == ("point",) and namespace["posterior_mean"].shape == (5, 2)
    np.testing.assert_allclose(namespace["weights"].sum("__sample__"), 1.0)
    with pytest.raises(ValueError):  # the call the docs used to suggest
        az.psislw(az.from_netcdf("draws.nc").sample_stats["log_weight"])


def test_readme_quick_start_and_python_example_say_what_they_do():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme.split("## Python")[0]
    assert "mean, stderr = result.mean()" in readme
    assert "a β-VAE from the next step on" not in readme


def test_export_needs_a_target(run_dir, capsys):
    status, _, stderr = cli(capsys, "export", run_dir)
    assert status == 2 and "--torch" in stderr


def test_disentangle_needs_factors(run_dir, capsys):
    status, _, stderr = cli(capsys, "disentangle", run_dir)
    assert status == 2 and "generative factors" in stderr


def test_disentangle_on_sprites_matches_the_library(tmp_path, capsys):
    from pyro_vae.disentanglement import score_run

    out = tmp_path / "sprites"
    data = "data={name: sprites, num_train: 300, num_val: 0, num_test: 200}"
    assert main(["train", "--out", str(out), "--no-progress", "--set", data, "--set", "train.epochs=1",
                 *SMALL]) == 0
    status, stdout, _ = cli(capsys, "disentangle", out, "--metric", "mig", "--metric", "sap",
                            "--out", tmp_path / "scores.json")
    assert status == 0
    expected = score_run(out, metrics=("mig", "sap"))
    assert json.loads(stdout) == json.loads((tmp_path / "scores.json").read_text()) == expected
    assert {"mig", "sap"} <= set(expected) and "dci_disentanglement" not in expected
    status, _, stderr = cli(capsys, "disentangle", out, "--metric", "mgi")
    assert status == 2 and "choose from mig" in stderr


def test_relative_data_path_is_stored_absolute(tmp_path, capsys, monkeypatch):
    x = (np.random.default_rng(1).random((60, 4)) > 0.5).astype(np.float32)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "u.npy", x)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", "run", "--no-progress", "--set", "data={name: array, path: data/u.npy}",
                 "--set", "train.epochs=1", *SMALL]) == 0
    from pyro_vae.rundir import RunDir

    assert RunDir(tmp_path / "run").config["data"]["path"] == str(tmp_path / "data" / "u.npy")
    monkeypatch.chdir("/")
    status, _, stderr = cli(capsys, "evaluate", tmp_path / "run", "--num-samples", "2", "--no-progress")
    assert status == 0, stderr


def test_encode_uses_the_fixed_evaluation_view(run_dir):
    run, _ = load_run(run_dir)
    x = run.splits.eval_split("test", EVAL_SEED)
    assert torch.equal(x, run.test)  # the view encode_run reads is the one evaluate scores
    codes = encode(run.vae, x)
    assert codes["z_mean"].shape == (len(x), 2)


def test_evaluate_reports_bits_per_dimension_of_dequantised_data(tmp_path, capsys):
    import math

    out = tmp_path / "dq"
    data = "data={name: digits, binarize: none, dequantize: true}"
    assert main(["train", "--out", str(out), "--no-progress", "--set", data, "--set", "model.likelihood=beta",
                 "--set", "train.epochs=1", *SMALL]) == 0
    status, stdout, stderr = cli(capsys, "evaluate", out, "--num-samples", "4", "--no-progress")
    assert status == 0
    log_px = json.loads(stdout)["log_px_mean"]
    bits = -log_px / (64 * math.log(2)) + math.log2(17)
    assert f"= {bits:.4f} bits per dimension." in stderr


def test_resume_marks_only_a_new_best_and_says_it_continued(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", "--set", "train.epochs=2", *SMALL]) == 0
    best = out / "checkpoints" / "best.json"  # a best score no later epoch can beat
    best.write_text(json.dumps({**json.loads(best.read_text()), "score": 1e9}))
    status, stdout, stderr = cli(capsys, "train", "--out", out, "--resume", "--set", "train.epochs=3")
    assert status == 0 and "Continued to epoch 3 in" in stdout
    (line,) = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("epoch ")]
    assert line.startswith("epoch 3/3") and " * " not in line

