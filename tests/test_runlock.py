"""One writer per run folder: a live holder is named, a dead one's lock is taken over by exactly one process."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptvariants.store.runlock import LOCK_NAME, RunLock, RunLocked

HOLD = """
import sys, time
from gptvariants.store.runlock import RunLock
lock = RunLock(sys.argv[1]); lock.acquire(); print("locked", flush=True); time.sleep(60)
"""


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_live_holder_is_named_and_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
    # killed but not yet reaped (a zombie), then reaped: the lock is stale either way. SIGKILL is
    # delivered asynchronously: wait until the process has become a zombie
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{holder.pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.01)
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.took_over["pid"] == holder.pid
    holder.wait()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(RunLocked, match=r"another machine \(pid 1 on host elsewhere.*delete .*train.lock"):
        RunLock(tmp_path).acquire()


def test_reused_pid_is_stale(tmp_path):
    # our own pid, but a different process start time: the pid was reused by a later process
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": 1}))
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("no /proc")
    with RunLock(tmp_path) as lock:
        assert lock.took_over["pid"] == os.getpid()


RACE = """
import sys, time
from gptvariants.store.runlock import RunLock, RunLocked
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    RunLock(sys.argv[1]).acquire()
    print("WIN", flush=True)
    time.sleep(3)
except RunLocked:
    print("LOST", flush=True)
"""


def test_stale_take_over_has_one_winner(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    start = str(time.time() + 2.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), start], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["LOST", "LOST", "LOST", "WIN"], outs


def test_the_winners_cleanup_leaves_a_losers_lock_candidate(tmp_path, monkeypatch):
    """Two writers at once: the winner's start-up cleanup of temporaries runs while the loser's
    candidate is written; the loser must still get the clear refusal, not a raw ENOENT."""
    from gptvariants.store import runlock
    from gptvariants.store.checkpoint import clean_leftovers

    winner = RunLock(tmp_path)
    winner.acquire()
    real_link = os.link

    def link_after_cleanup(src, dst):
        clean_leftovers(tmp_path)  # the winner cleaning up between the loser's write and link
        return real_link(src, dst)

    monkeypatch.setattr(runlock.os, "link", link_after_cleanup)
    with pytest.raises(RunLocked, match="is being written by another training process"):
        RunLock(tmp_path).acquire()
    winner.release()


def test_candidates_of_killed_writers_are_removed_by_the_winner(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{LOCK_NAME}.{int(dead.stdout)}.abc.candidate"
    alive = tmp_path / f".{LOCK_NAME}.{os.getppid()}.abc.candidate"
    stale.write_text("{}")
    alive.write_text("{}")
    with RunLock(tmp_path):
        assert not stale.exists() and alive.exists()
