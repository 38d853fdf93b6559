"""Atomic file writes: a file appears under its name complete, or not at all.

Every file the library writes into a run directory (config, metrics, checkpoints,
evaluation results, NetCDF exports) goes through :func:`atomic_write`: the content is
written to ``<name>.tmp`` beside the target, flushed to disk and renamed over the target
with ``os.replace``, so a kill at any moment leaves either the old file or the new one.
"""

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    Whatever writes the file (``torch.save``, ``open``, a NetCDF writer) writes to the
    yielded path; the file is then fsynced and renamed into place. On an exception the
    temporary file is removed and ``path`` is untouched. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path, value):
    """Write ``value`` as indented JSON to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


def save_torch(value, path):
    """``torch.save(value, path)``, atomically; returns the path."""
    import torch

    with atomic_write(path) as tmp:
        torch.save(value, tmp)
    return Path(path)
