"""RunLock: one writer per run directory, checked with real processes holding and dying."""

import datetime
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from pyro_vae import runlock
from pyro_vae.errors import PyroVAEError, RunError
from pyro_vae.runlock import RunLock

posix_only = pytest.mark.skipif(runlock.fcntl is None, reason="flock needs fcntl (not on Windows)")

# Locks RUN_DIR (argv[1]) in a child process, says "locked", and holds it until stdin closes.
HOLDER = textwrap.dedent("""
    import sys
    from pyro_vae.runlock import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")

# Holds a bare flock on RUN_DIR/.lock without writing a record into it.
BARE_HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked", flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def start_holder():
    """Start a child running ``code`` on a folder; returns it once it says "locked"."""
    children = []

    def start(code, run_dir):
        child = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        children.append(child)
        ready, _, _ = select.select([child.stdout], [], [], 15)
        if ready and child.stdout.readline() == "locked\n":
            return child
        child.kill()
        pytest.fail(f"holder did not lock: {child.communicate(timeout=10)[1]}")

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def finish(child):
    """Let a holder leave its ``with`` block and exit; asserts it exited cleanly."""
    child.stdin.close()
    assert child.wait(timeout=10) == 0


def record(run_dir):
    return json.loads((run_dir / ".lock").read_text())


@posix_only
def test_second_process_is_refused_naming_the_holder(tmp_path, start_holder):
    holder = start_holder(HOLDER, tmp_path)
    with pytest.raises(RunError) as refused:
        RunLock(tmp_path).acquire()
    message = str(refused.value)
    assert message.startswith(f"Run directory '{tmp_path}' is being written by process {holder.pid} "
                              f"on host {socket.gethostname()} (started ")
    assert f"command: -c {tmp_path})" in message
    assert message.endswith("wait for it to finish or stop it, or choose another --out.")
    assert isinstance(refused.value, PyroVAEError)  # so the command line exits with status 2
    assert record(tmp_path)["pid"] == holder.pid  # the refused attempt left the record alone


@posix_only
def test_lock_is_free_after_the_holder_exits(tmp_path, start_holder):
    finish(start_holder(HOLDER, tmp_path))
    assert (tmp_path / ".lock").read_text() == ""  # released: emptied, left in place
    reports = []
    with RunLock(tmp_path, report=reports.append):
        assert record(tmp_path)["pid"] == os.getpid()
    assert reports == []


@posix_only
def test_lock_of_a_killed_holder_is_taken_over_and_reported(tmp_path, start_holder):
    holder = start_holder(HOLDER, tmp_path)
    with pytest.raises(RunError, match=f"process {holder.pid} "):
        RunLock(tmp_path).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=10) == -signal.SIGKILL  # reaped: the pid is gone, not a zombie
    assert record(tmp_path)["pid"] == holder.pid  # the dead holder's record is still there
    reports = []
    with RunLock(tmp_path, report=reports.append):
        assert record(tmp_path)["pid"] == os.getpid()
    assert reports == [f"pyro-vae: taking over the lock of process {holder.pid}, which is no longer running."]


@posix_only
def test_default_report_goes_to_stderr(tmp_path, start_holder, capsys):
    holder = start_holder(HOLDER, tmp_path)
    holder.kill()
    holder.wait(timeout=10)
    with RunLock(tmp_path):
        pass
    assert capsys.readouterr().err == (f"pyro-vae: taking over the lock of process {holder.pid}, "
                                       "which is no longer running.\n")


@posix_only
def test_second_lock_in_the_same_process_conflicts(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunError, match=f"process {os.getpid()} "):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # and is free again once released
        pass


@posix_only
def test_record_names_this_process(tmp_path):
    with RunLock(tmp_path):
        text = (tmp_path / ".lock").read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    held = json.loads(text)
    assert held["pid"] == os.getpid() and held["hostname"] == socket.gethostname()
    assert held["argv"] == sys.argv
    started = datetime.datetime.fromisoformat(held["started"])
    assert abs((datetime.datetime.now().astimezone() - started).total_seconds()) < 60


@posix_only
def test_garbled_lock_file_does_not_stop_a_writer(tmp_path):
    (tmp_path / ".lock").write_bytes(b'\x00\xff{"pid": not json' * 50)
    reports = []
    with RunLock(tmp_path, report=reports.append):
        assert record(tmp_path)["pid"] == os.getpid()  # truncated and rewritten: one clean line
    assert reports == []


@posix_only
def test_holder_with_garbled_record_is_another_process(tmp_path, start_holder):
    (tmp_path / ".lock").write_text("garbage\n")
    start_holder(BARE_HOLDER, tmp_path)
    with pytest.raises(RunError) as refused:
        RunLock(tmp_path).acquire()
    assert f"'{tmp_path}' is being written by another process; wait" in str(refused.value)


@posix_only
def test_stale_record_of_a_live_pid_is_taken_over_silently(tmp_path):
    left = {"pid": os.getppid(), "hostname": socket.gethostname(), "argv": ["x"], "started": "?"}
    (tmp_path / ".lock").write_text(json.dumps(left) + "\n")
    reports = []
    with RunLock(tmp_path, report=reports.append):
        assert record(tmp_path)["pid"] == os.getpid()
    assert reports == []


@posix_only
def test_release_twice_is_harmless(tmp_path):
    lock = RunLock(tmp_path).acquire()
    lock.release()
    lock.release()
    RunLock(tmp_path).release()  # never acquired
    assert (tmp_path / ".lock").read_text() == ""
    with RunLock(tmp_path):  # free again
        pass


@posix_only
def test_context_manager_releases_on_error(tmp_path):
    with pytest.raises(KeyError), RunLock(tmp_path):
        raise KeyError("boom")
    with RunLock(tmp_path):
        pass


def test_missing_folder_is_a_run_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(RunError, match="'.*nope'.*does not exist"):
        RunLock(missing).acquire()
    assert not missing.exists()  # the lock never creates the run directory


def test_without_fcntl_nothing_is_locked(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "fcntl", None)
    with RunLock(tmp_path), RunLock(tmp_path):
        pass
    assert not (tmp_path / ".lock").exists()


@posix_only
def test_unopenable_lock_file_is_a_run_error(tmp_path):
    (tmp_path / ".lock").mkdir()
    with pytest.raises(RunError, match=f"Cannot lock run directory '{tmp_path}': "):
        RunLock(tmp_path).acquire()
