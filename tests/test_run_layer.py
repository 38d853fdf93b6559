"""The run layer: no import cycles, lazy imports, runs loaded without their data, one owner
of the run directory, the estimator registry and parts built with a context."""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checks import write_fake_mnist

import pyro_vae
from pyro_vae import atomic
from pyro_vae.cli import main
from pyro_vae.estimators import ESTIMATORS, ImportanceSampling
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.registry import BuildContext, Registry
from pyro_vae.rundir import RunDir
from pyro_vae.runs import load_model, load_run

PACKAGE = Path(pyro_vae.__file__).parent
TINY = {"train": {"epochs": 1, "batch_size": 128},
        "model": {"latent_dim": 2, "encoder": {"hidden": [16]}, "decoder": {"hidden": [16]}}}


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, name):
    """The pyro_vae modules that the file ``path`` (module ``name``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import x`
    return found


def import_graph():
    """``{module: modules it imports}`` over pyro_vae, function-level imports included. An
    import of ``a.b.c`` also imports the packages ``a.b`` (unless it is the importer's own
    ancestor, already being imported)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports(path, name):
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                candidate = ".".join(parts[:depth])
                if candidate in modules and candidate != name and not name.startswith(candidate + "."):
                    edges.add(candidate)
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or ``None``."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_of_the_package_has_no_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the checker finds one
    graph = import_graph()
    assert {"pyro_vae.trainer", "pyro_vae.plots", "pyro_vae.data.sprites"} <= set(graph)
    assert "pyro_vae.runs" in graph["pyro_vae.disentanglement"]
    assert find_cycle(graph) is None


def _python(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_and_help_load_neither_torch_nor_matplotlib():
    loaded = _python(
        "import sys, contextlib, io\n"
        "import pyro_vae\n"
        "from pyro_vae.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'matplotlib', 'pyro') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_a_users_matplotlib_backend_survives_the_library():
    backend = _python(
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import torch, pyro_vae, pyro_vae.plots, pyro_vae.figures, pyro_vae.training\n"
        "vae = pyro_vae.VAE(data_shape=(1, 8, 8), latent_dim=2)\n"
        "figure = pyro_vae.plots.plot_samples(vae, 4)\n"
        "print(matplotlib.get_backend(), type(figure).__name__)"
    )
    assert backend == "svg Figure"


def test_top_level_names_are_functions_and_modules_do_not_shadow_them():
    import pyro_vae.evaluation
    import pyro_vae.training

    assert callable(pyro_vae.train) and callable(pyro_vae.evaluate)
    assert pyro_vae.train is pyro_vae.training.train and pyro_vae.evaluate is pyro_vae.evaluation.evaluate
    assert set(pyro_vae.__all__) <= set(dir(pyro_vae))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        pyro_vae.trian  # noqa: B018


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A tiny run on a fake MNIST in torchvision's layout."""
    root = write_fake_mnist(tmp_path_factory.mktemp("data"))
    run_dir = tmp_path_factory.mktemp("runs") / "mnist"
    config = {**TINY, "data": {"name": "mnist", "root": str(root), "val_size": 20},
              "eval": {"num_samples": 20, "batch_size": 20}}
    pyro_vae.train(config, run_dir, progress=False)
    return run_dir, root / "MNIST" / "raw"


@pytest.mark.filterwarnings("ignore::pyro_vae.errors.EstimatorWarning")
def test_sample_and_evaluate_work_after_the_training_files_moved(mnist_run, tmp_path, capsys):
    run_dir, raw = mnist_run
    before = pyro_vae.evaluate(run_dir, progress=False)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.move(raw / name, moved / name)
    try:
        assert main(["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
        assert (tmp_path / "s.png").stat().st_size > 0
        assert main(["evaluate", str(run_dir), "--no-progress"]) == 0
        after = json.loads((run_dir / "eval.json").read_text())
        timing = {"seconds", "estimated_seconds"}
        same = {k: v for k, v in after.items() if k not in timing} == {
            k: v for k, v in before.items() if k not in timing}
        assert same  # the same numbers, the baseline included, without the training files
        assert after["baseline_log_px_mean"] is not None and after["num_points"] == 40
        assert main(["plot", str(run_dir)]) == 2  # plotting needs the validation split: a clear error
        assert "train-images-idx3-ubyte" in capsys.readouterr().err
    finally:
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            shutil.move(moved / name, raw / name)


def test_sample_needs_no_data_file_and_evaluate_names_the_missing_one(tmp_path, capsys):
    import numpy as np

    data = tmp_path / "x.npy"
    np.save(data, (np.random.default_rng(0).random((200, 16)) > 0.5).astype(np.float32))
    config = {**TINY, "data": {"name": "array", "path": str(data)}, "model": {**TINY["model"]}}
    pyro_vae.train(config, tmp_path / "run", progress=False)
    data.unlink()
    assert main(["sample", str(tmp_path / "run"), "-n", "3"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    assert f"{data} does not exist" in capsys.readouterr().err


def test_load_model_reads_no_data_and_leaves_the_global_rng_alone(mnist_run, monkeypatch):
    run_dir, _ = mnist_run
    monkeypatch.setattr("pyro_vae.runs.load_dataset", lambda *a, **k: pytest.fail("data were read"))
    state = torch.get_rng_state()
    vae, checkpoint = load_model(run_dir)
    assert torch.equal(torch.get_rng_state(), state)
    assert checkpoint["epoch"] == 1 and vae.data_shape == (1, 28, 28)
    trained = torch.load(sorted((run_dir / "checkpoints").iterdir())[-1], weights_only=True)["model"]
    assert all(torch.equal(value, trained[name]) for name, value in vae.state_dict().items())


def test_load_run_reads_only_the_splits_asked_for(mnist_run):
    run, _ = load_run(mnist_run[0], splits=("test",))
    assert run.splits.loaded == ("test",)
    assert len(run.splits.train) == len(run.val) == 0 and len(run.test) == 40
    full, _ = load_run(mnist_run[0])
    assert torch.equal(full.test, run.test)  # the same fixed evaluation view


def test_rundir_reads_config_once_and_writes_atomically(mnist_run, tmp_path, monkeypatch):
    rundir = RunDir(mnist_run[0])
    reads = []
    real = pyro_vae.config.load_yaml
    monkeypatch.setattr(pyro_vae.config, "load_yaml", lambda path: reads.append(path) or real(path))
    assert rundir.config == rundir.config and rundir.data_shape == (1, 28, 28)
    assert len(reads) == 1
    target = tmp_path / "eval.json"
    atomic.write_json(target, {"old": 1})
    with pytest.raises(RuntimeError), atomic.atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"old": 1} and not list(tmp_path.glob("*.tmp"))


def test_missing_run_directory_is_a_run_error(tmp_path):
    with pytest.raises(pyro_vae.errors.RunError, match="does not exist"):
        load_model(tmp_path / "nothing")


class HalfImportance(ImportanceSampling):
    """A toy estimator: importance sampling with half of ``num_samples``."""

    def __init__(self, num_samples=1000):
        super().__init__(max(1, num_samples // 2))


@pytest.mark.filterwarnings("ignore::pyro_vae.errors.EstimatorWarning")
def test_evaluate_uses_the_estimator_the_registry_names(mnist_run, monkeypatch):
    monkeypatch.setitem(ESTIMATORS._entries, "half-importance", HalfImportance)
    summary = pyro_vae.evaluate(mnist_run[0], progress=False, estimator="half-importance", num_samples=40)
    assert summary["estimator"] == "half-importance" and summary["num_samples"] == 20
    naive = pyro_vae.evaluate(mnist_run[0], progress=False, estimator="prior", num_samples=40)
    assert naive["estimator"] == "prior" and naive["log_px_mean"] != summary["log_px_mean"]
    points = torch.load(mnist_run[0] / "eval_points.pt", weights_only=True)  # the prior's, written last
    assert torch.all(points["log_px"] >= points["elbo"])  # log mean exp w >= mean w, point by point
    with pytest.raises(pyro_vae.ConfigError, match="Unknown estimator 'importanse'. Did you mean"):
        pyro_vae.evaluate(mnist_run[0], progress=False, estimator="importanse")


def test_parts_get_the_context_only_when_they_ask_for_it(tmp_path, monkeypatch):
    registry = Registry("thing")
    registry.register("plain", lambda size=1: ("plain", size))
    registry.register("aware", lambda context, size=1: ("aware", context.num_train, size))
    context = BuildContext(num_train=300)
    assert registry.build({"name": "plain", "size": 2}, context) == ("plain", 2)
    assert registry.build({"name": "aware", "size": 2}, context) == ("aware", 300, 2)
    with pytest.raises(pyro_vae.ConfigError, match="set by the library"):
        registry.build({"name": "aware", "context": 3}, context)
    seen = []

    def recording_elbo(context, num_particles=1):
        seen.append(context)
        return OBJECTIVES.get("elbo")(num_particles)

    monkeypatch.setitem(OBJECTIVES._entries, "recording", recording_elbo)
    run = pyro_vae.train({**TINY, "objective": "recording"}, tmp_path / "run", progress=False)
    assert seen[0].num_train == len(run.splits.train) == 1257 and seen[0].data_shape == (1, 8, 8)


def test_a_run_stored_before_an_option_existed_reads_with_its_old_behaviour(tmp_path):
    """Stored configs hold every key; one written before latent-network batch normalisation
    and zero-initialised heads existed lacks the keys and must read as off (as it was
    trained), one without ``inference`` and ``conditional_variance`` as the former
    defaults (bottom-up, learned); a new one keeps its values."""
    import yaml

    from pyro_vae import train
    from pyro_vae.rundir import RunDir

    run_dir = tmp_path / "run"
    train({"model": {"latent_dim": [4, 2]}, "train": {"epochs": 1}}, run_dir, progress=False)
    for option in ("batch_norm", "zero_init_head"):
        assert RunDir(run_dir).config["model"]["latent_network"][option] is True
    path = run_dir / "config.yaml"
    stored = yaml.safe_load(path.read_text())
    assert stored["model"]["inference"] == "residual" and stored["model"]["conditional_variance"] == "unit"
    for option in ("batch_norm", "zero_init_head"):
        del stored["model"]["latent_network"][option]
    del stored["model"]["inference"], stored["model"]["conditional_variance"]
    path.write_text(yaml.safe_dump(stored))
    for option in ("batch_norm", "zero_init_head"):
        assert RunDir(run_dir).config["model"]["latent_network"][option] is False
    old = RunDir(run_dir).config["model"]
    assert (old["inference"], old["conditional_variance"]) == ("bottom-up", "learned")
