"""Atomic, verified checkpoints of a training run.

Each epoch's state is written with :func:`pyro_vae.atomic.atomic_write` (a temporary
file, flushed to disk and renamed), so a kill mid-write never leaves a half-written
checkpoint under its final name. Files are
read with ``torch.load(weights_only=True)``: only tensors and plain containers load,
never pickled code. The newest file that loads is used; a corrupt one is reported by
name and skipped.
"""

import re
import warnings
from pathlib import Path

import torch

from .atomic import save_torch
from .errors import CheckpointError

PATTERN = re.compile(r"epoch-(\d+)\.pt$")


def load_checkpoint(path, map_location="cpu"):
    """Load one checkpoint safely; a truncated, corrupt or unsafe file, or one that does not
    hold what the trainer writes (:data:`REQUIRED`), raises CheckpointError."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise CheckpointError(f"Checkpoint '{path}' cannot be loaded ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'no detail'}).") from None
    problem = _malformed(state)
    if problem:
        raise CheckpointError(f"Checkpoint '{path}' is not a pyro-vae training checkpoint ({problem}).")
    return state


# What the trainer writes (Trainer.state) and what loading a run reads back.
REQUIRED = {"epoch": int, "model": dict, "optimizer": dict, "scheduler": dict, "rng": torch.Tensor,
            "cuda_rng": list}


def _malformed(state):
    """Why ``state`` is not a checkpoint written by the trainer, or ``None``."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        return f"missing {', '.join(map(repr, missing))}"
    for key, kind in REQUIRED.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"{key!r} is a {type(state[key]).__name__}, not a {kind.__name__}"
    if state["epoch"] < 0:
        return f"negative epoch {state['epoch']}"
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state["model"].items()):
        return "'model' is not a mapping of parameter names to tensors"
    return None


class CheckpointDir:
    """The ``checkpoints/`` folder of a run: ``epoch-NNNN.pt`` files, the newest ``keep`` kept."""

    def __init__(self, directory, keep=2):
        self.directory = Path(directory)
        self.keep = keep

    def paths(self):
        """Checkpoint files, newest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := PATTERN.search(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state, epoch):
        save_torch(state, self.directory / f"epoch-{epoch:04d}.pt")
        for old in self.paths()[self.keep:]:
            old.unlink()

    def load_latest(self, map_location="cpu"):
        """The newest checkpoint that loads, or ``None`` when there is none."""
        paths = self.paths()
        for index, path in enumerate(paths):
            try:
                return load_checkpoint(path, map_location)
            except CheckpointError as error:
                then = "Falling back to the previous checkpoint." if index + 1 < len(paths) else (
                    "No older checkpoint is left.")
                warnings.warn(f"{error} {then}", stacklevel=2)
        return None
