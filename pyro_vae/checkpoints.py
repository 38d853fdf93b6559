"""Atomic, checksummed checkpoints of a training run.

File format (format version 1). An ``epoch-NNNN.pt`` file is the ``torch.save`` bytes of
the state (the *payload*, a torch zip archive) followed by one footer line::

    <payload>\\nPYROVAE-CHECKPOINT 1 sha256 <64 hex digits of SHA-256(payload)>\\n

The footer comes after the payload, not before it, so ``torch.load(path)`` still reads a
checkpoint directly (torch ignores bytes after the archive). :func:`load_checkpoint`
verifies the digest before it unpickles anything, then loads the payload with
``torch.load(weights_only=True)``: only tensors and plain containers load, never pickled
code. Files written before the footer existed (a plain torch zip file) still load; they
have no SHA-256 to verify, only the CRC-32 that the zip archive keeps per record, which
:func:`load_checkpoint` checks.

Every file is written with :func:`pyro_vae.atomic.atomic_write` (a temporary file,
flushed to disk and renamed), so a kill mid-write never leaves a half-written checkpoint
under its final name.

:class:`CheckpointDir` keeps the newest ``keep`` files and the one with the best
validation score so far, recorded in ``best.json``. :meth:`CheckpointDir.load_latest`
uses the newest file that loads and says on stderr which damaged files it skipped.
"""

import hashlib
import io
import json
import math
import re
import sys
import zipfile
from pathlib import Path

import torch

from .atomic import atomic_write, write_json
from .errors import CheckpointError

PATTERN = re.compile(r"epoch-(\d+)\.pt$")
MAGIC = b"PYROVAE-CHECKPOINT"
FORMAT_VERSION = 1
FOOTER = re.compile(rb"\n" + MAGIC + rb" (\d+) sha256 ([0-9a-f]{64})\n\Z")
BEST_FILE = "best.json"


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically, in the checksummed format; returns the path."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    footer = b"\n%s %d sha256 %s\n" % (MAGIC, FORMAT_VERSION, hashlib.sha256(payload).hexdigest().encode())
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
        handle.write(footer)
    return Path(path)


def _payload(path, data):
    """The torch bytes of a checkpoint file's content ``data``, verified where a checksum exists."""
    found = FOOTER.search(data, max(0, len(data) - 200))
    if found:
        version, digest = int(found.group(1)), found.group(2).decode()
        if version != FORMAT_VERSION:
            raise CheckpointError(f"Checkpoint '{path}' cannot be loaded (format version {version}; this "
                                  f"pyro-vae reads version {FORMAT_VERSION}).")
        payload = data[:found.start()]
        actual = hashlib.sha256(payload).hexdigest()
        if actual != digest:
            raise CheckpointError(f"Checkpoint '{path}' cannot be loaded (checksum mismatch: the file is "
                                  f"damaged; SHA-256 {actual[:12]}…, recorded {digest[:12]}…).")
        return payload
    if MAGIC in data[-200:]:
        raise CheckpointError(f"Checkpoint '{path}' cannot be loaded (its checksum footer is damaged).")
    if not data.startswith(b"PK\x03\x04"):
        what = "it is empty" if not data else "it holds neither a checksum footer nor a torch archive"
        raise CheckpointError(f"Checkpoint '{path}' cannot be loaded ({what}: the file is damaged).")
    _check_zip_crcs(path, data)  # a file from before the footer: no SHA-256 to verify
    return data


def _check_zip_crcs(path, data):
    """Check the CRC-32 of each record of an unchecksummed torch zip file."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return  # not a readable zip archive: torch.load says why
    if bad is not None:
        raise CheckpointError(f"Checkpoint '{path}' cannot be loaded (CRC-32 mismatch in record "
                              f"'{bad}': the file is damaged).")


def load_checkpoint(path, map_location="cpu"):
    """Load one checkpoint safely.

    Raises CheckpointError, naming the file, when it is truncated or damaged (SHA-256
    checksum mismatch; for a file written before checksums, a zip CRC-32 mismatch or an
    unreadable archive), unsafe (pickled code), does not hold what the trainer writes
    (:data:`REQUIRED`), or holds a NaN or infinite value in a floating tensor of
    ``state["model"]``. Files without the checksum footer (written by pyro-vae before it
    had one) load with no SHA-256 to verify. The optimiser state is covered by the checksum.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(f"Checkpoint '{path}' cannot be loaded ({error.strerror or error}).") from None
    payload = _payload(path, data)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise CheckpointError(f"Checkpoint '{path}' cannot be loaded ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'no detail'}).") from None
    problem = _malformed(state)
    if problem:
        raise CheckpointError(f"Checkpoint '{path}' is not a pyro-vae training checkpoint ({problem}).")
    bad = _first_non_finite(state["model"])
    if bad:
        raise CheckpointError(f"Checkpoint '{path}' cannot be used: model parameter {bad!r} holds NaN or "
                              "infinite values.")
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


def _first_non_finite(tensors):
    """The name of the first floating (or complex) tensor with a NaN or infinity, or ``None``."""
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _to_stderr(message):
    print(f"pyro-vae: {message}", file=sys.stderr, flush=True)


class CheckpointDir:
    """The ``checkpoints/`` folder of a run.

    ``epoch-NNNN.pt`` files (see the module docstring for the format): :meth:`save` keeps
    the newest ``keep`` and the one with the best score so far. The best is recorded in
    ``best.json`` (``{"epoch": N, "score": S, "file": "epoch-NNNN.pt"}``, written
    atomically); an unreadable ``best.json`` counts as no record and is replaced at the
    next scored epoch.
    """

    def __init__(self, directory, keep=2):
        self.directory = Path(directory)
        self.keep = keep
        self.loaded_path = None  # the file the last load_latest loaded

    def path(self, epoch):
        """The file of ``epoch``'s checkpoint (which may not exist)."""
        return self.directory / f"epoch-{epoch:04d}.pt"

    def _epochs(self):
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := PATTERN.search(p.name))]
        return sorted(found, reverse=True)

    def paths(self):
        """Checkpoint files, newest first."""
        return [p for _, p in self._epochs()]

    def best(self):
        """The record of ``best.json`` (``epoch``, ``score``, ``file``), or ``None`` when there is
        none or it cannot be read."""
        try:
            record = json.loads((self.directory / BEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (not isinstance(record, dict) or not isinstance(record.get("epoch"), int)
                or not isinstance(record.get("score"), (int, float)) or record.get("file") != self.path(
                    record["epoch"]).name):
            return None
        return record

    def best_path(self):
        """The file of the best-scored checkpoint kept, or ``None`` (no score recorded yet, or the
        file is gone). The file is not read: it may be damaged, like any other."""
        record = self.best()
        if record is None:
            return None
        path = self.path(record["epoch"])
        return path if path.is_file() else None

    def save(self, state, epoch, score=None):
        """Write ``state`` as ``epoch``'s checkpoint and rotate.

        ``score`` is the epoch's validation ELBO (higher is better; ``None`` when it was not
        validated; NaN counts as no score). Kept: the newest ``keep`` files and the best-scored
        one. Files of epochs after ``epoch`` are removed: they belong to a run that was resumed
        from an older checkpoint, so they are the damaged ones it skipped (a best record among
        them is dropped too). Rotation reads no checkpoint, so a damaged file never stops it.
        """
        save_checkpoint(state, self.path(epoch))
        record = self.best()
        if record is not None and record["epoch"] >= epoch:  # overwritten or abandoned: stale
            record = None
            (self.directory / BEST_FILE).unlink(missing_ok=True)
        if score is not None and math.isfinite(score) and (record is None or score > record["score"]):
            record = {"epoch": epoch, "score": float(score), "file": self.path(epoch).name}
            write_json(self.directory / BEST_FILE, record)
        best = self.path(record["epoch"]) if record else None
        epochs = self._epochs()
        newest = [p for e, p in epochs if e <= epoch][:self.keep]
        for number, old in epochs:
            if number > epoch or (old not in newest and old != best):
                old.unlink(missing_ok=True)

    def load_latest(self, map_location="cpu", report=None):
        """The newest checkpoint that loads, or ``None`` when there is no checkpoint file.

        Each file skipped because it does not load is reported with ``report(message)``
        (default: one line on stderr), naming it, why, and the file used instead; the file
        loaded is kept in :attr:`loaded_path`. When files exist but none loads, raises
        CheckpointError naming each file and its problem.
        """
        report = _to_stderr if report is None else report
        self.loaded_path = None
        skipped = []
        for path in self.paths():
            try:
                state = load_checkpoint(path, map_location)
            except CheckpointError as error:
                skipped.append(str(error))
                continue
            self.loaded_path = path
            for problem in skipped:
                report(f"{problem} Falling back to '{path}' (epoch {state['epoch']}).")
            return state
        if not skipped:
            return None
        count = f"{len(skipped)} checkpoint{'s' if len(skipped) > 1 else ''}"
        raise CheckpointError(f"None of the {count} in '{self.directory}' loads, so no loadable checkpoint "
                              f"is left: {' '.join(skipped)}")
