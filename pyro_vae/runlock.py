"""One writer per run directory: an exclusive lock held by the process that trains it.

Two ``pyro-vae train --out S`` at once would interleave two models' records in
``metrics.jsonl`` and leave the config and checkpoints of whichever wrote last.
:class:`RunLock` prevents that with ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``S/.lock``:

- The kernel releases a flock when its holder dies, even by ``kill -9``, so a dead
  process never blocks a new writer and no lock needs breaking by hand.
- The holder writes one JSON line into the file (pid, host, command line, start time), so
  a second writer's :class:`~pyro_vae.errors.RunError` names the process in the way.
- A file whose pid is no longer alive on this host was left by a killed holder; the new
  holder takes it over and says so in one line.
- :meth:`RunLock.release` empties the file and leaves it in place: removing it could race
  with a process that has just opened it and would then lock a file no longer in the folder.

The lock belongs to the open file, so processes forked while it is held share it until
:meth:`RunLock.release` or until every copy of the descriptor is closed. Where ``fcntl``
does not exist (Windows) nothing is locked: the folder is checked and the run proceeds.
"""

import contextlib
import datetime
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from .errors import RunError

try:
    import fcntl
except ImportError:  # Windows: no flock, no locking
    fcntl = None


def _print_to_stderr(line):
    print(line, file=sys.stderr)


class RunLock:
    """An exclusive lock on ``run_dir`` (a folder that must exist), as a context manager
    or with :meth:`acquire`/:meth:`release`. ``report`` receives the one-line notice of a
    taken-over stale lock (by default printed on stderr)."""

    FILE = ".lock"

    def __init__(self, run_dir, report=_print_to_stderr):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.FILE
        self.report = report
        self._fd = None

    def acquire(self):
        """Take the lock and record this process in it; :class:`RunError` if the folder is
        missing or another live process holds the lock. Returns ``self``."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this RunLock.")
        if not self.run_dir.is_dir():
            raise RunError(f"Cannot lock run directory '{self.run_dir}': it does not exist "
                           "or is not a folder.")
        if fcntl is None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # no permission, a folder named .lock, ...
            raise self._cannot_lock(error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_record(fd))
            os.close(fd)
            raise RunError(f"Run directory '{self.run_dir}' is being written by {holder}; wait for it "
                           "to finish or stop it, or choose another --out.") from None
        except OSError as error:  # a file system without flock
            os.close(fd)
            raise self._cannot_lock(error) from None
        self._fd = fd
        try:
            self._take_over(_read_record(fd))
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_this_process()) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            self.release()
            raise
        return self

    def release(self):
        """Empty the lock file, unlock and close it; the file stays. Harmless if not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _cannot_lock(self, error):
        return RunError(f"Cannot lock run directory '{self.run_dir}': {error.strerror or error}.")

    def _take_over(self, previous):
        """Report a lock left by a process of this host that is no longer running."""
        pid = previous.get("pid") if isinstance(previous, dict) else None
        if _is_pid(pid) and previous.get("hostname") == socket.gethostname() and not _alive(pid):
            self.report(f"pyro-vae: taking over the lock of process {pid}, which is no longer running.")

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def _this_process():
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "argv": sys.argv,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _read_record(fd):
    """The JSON record in the lock file, or ``None`` where it is empty or garbled."""
    with contextlib.suppress(ValueError, OSError):
        return json.loads(os.pread(fd, 1 << 16, 0).decode())
    return None


def _describe(record):
    """'process P on host H (started T, command: C)' from a holder's record, or 'another process'."""
    if not isinstance(record, dict) or not _is_pid(record.get("pid")):
        return "another process"
    argv = record.get("argv")
    command = "?"
    if isinstance(argv, list) and argv:
        command = shlex.join([os.path.basename(str(argv[0])), *map(str, argv[1:])])
    return (f"process {record['pid']} on host {record.get('hostname', '?')} "
            f"(started {record.get('started', '?')}, command: {command})")


def _is_pid(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _alive(pid):
    """Whether ``pid`` is a running process of this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
