"""Atomic, verified checkpoints of a training run.

Each epoch's state is written to a temporary file, flushed to disk and renamed, so a
kill mid-write never leaves a half-written checkpoint under its final name. Files are
read with ``torch.load(weights_only=True)``: only tensors and plain containers load,
never pickled code. The newest file that loads is used; a corrupt one is reported by
name and skipped.
"""

import os
import re
import warnings
from pathlib import Path

import torch

from .errors import PyroVAEError

PATTERN = re.compile(r"epoch-(\d+)\.pt$")


class CheckpointError(PyroVAEError):
    """A checkpoint file that cannot be read."""


def save_atomic(state, path):
    """``torch.save(state, path)`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """Load one checkpoint safely; a truncated, corrupt or unsafe file raises CheckpointError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise CheckpointError(f"Checkpoint '{path}' cannot be loaded ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'no detail'}).") from None


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
        self.directory.mkdir(parents=True, exist_ok=True)
        save_atomic(state, self.directory / f"epoch-{epoch:04d}.pt")
        for old in self.paths()[self.keep:]:
            old.unlink()

    def load_latest(self, map_location="cpu"):
        """The newest checkpoint that loads, or ``None`` when there is none."""
        for path in self.paths():
            try:
                return load_checkpoint(path, map_location)
            except CheckpointError as error:
                warnings.warn(f"{error} Falling back to the previous checkpoint.", stacklevel=2)
        return None
