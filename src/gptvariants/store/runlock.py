"""One writer per run folder: ``RUN/train.lock`` names the process that holds it.

Acquiring links a fully written file into place (``os.link`` fails if the name exists), so the
lock appears atomically with its content: pid, host and the process's start time. A second
writer is refused with the holder's pid and host. A lock whose process is gone (same host, pid
not running, a zombie, or the pid reused by a process started later) is stale and is taken over;
take-overs are serialised by ``flock`` on the run folder, which the kernel drops when its
holder dies, and the stale file is re-read under it, so two processes can never both win.
Readers (``gptv sample``, ``gptv eval``, the API) take no lock.

A writer's lock candidate (``.train.lock.PID.XXXX.candidate``) is its own: it is not a ``.*.tmp``
file, so the winner's start-up cleanup (``checkpoint.clean_leftovers``) never deletes a loser's
candidate; the winner removes only candidates whose process is gone (killed mid-acquire).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ..common.errors import GptvError

LOCK_NAME = "train.lock"
CANDIDATE_SUFFIX = ".candidate"


class RunLocked(GptvError, RuntimeError):
    """Another live process is writing the run folder."""


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int | None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel directly
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    return start is None or int(fields[19]) == start


class RunLock:
    """``with RunLock(run_dir):`` holds the folder's lock; ``RunLocked`` names the holder otherwise."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.info: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _proc_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": uuid.uuid4().hex,
        }
        self.held = False
        self.took_over: dict[str, Any] | None = None  # the stale lock replaced, if any

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # each round either wins, refuses, or removes one stale lock
            if self._link():
                self.held = True
                return
            holder = self._read()
            if holder is not None and not self._stale(holder):
                raise RunLocked(self._refusal(holder))
            self._take_over(holder)
        raise RunLocked(f"could not lock {self.run_dir}: {self.path} keeps reappearing")  # pragma: no cover

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.held and (self._read() or {}).get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def _link(self) -> bool:
        """Link a fully written candidate to the lock's name: True when this writer won."""
        pid = self.info["pid"]
        fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=f".{LOCK_NAME}.{pid}.", suffix=CANDIDATE_SUFFIX)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        self._clean_candidates()
        return True

    def _clean_candidates(self) -> None:
        """Remove the candidates of writers killed while acquiring (their pid, in the name, is gone)."""
        for p in self.run_dir.glob(f".{LOCK_NAME}.*{CANDIDATE_SUFFIX}"):
            pid = p.name[len(LOCK_NAME) + 2 :].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid), None):
                p.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any] | None:
        """The holder's record; None when the file is gone or not a lock record (a damaged lock is stale)."""
        try:
            info = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"gone": True}
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("gone"):
            return True
        if holder.get("host") != self.info["host"]:
            return False  # cannot see processes on another machine
        return not _alive(holder["pid"], holder.get("start"))

    def _take_over(self, seen: dict[str, Any] | None) -> None:
        """Remove the lock file if, under the take-over mutex, it is still the stale one we saw."""
        if seen is not None and seen.get("gone"):
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = self._read()
            if now is not None and now.get("gone"):
                return
            if now != seen:  # replaced meanwhile: look again
                return
            self.path.unlink()
            self.took_over = seen or {}
        except OSError as e:
            if e.errno not in (errno.ENOENT,):
                raise RunLocked(
                    f"could not take over the stale lock {self.path} ({e.strerror}); delete it if no "
                    "training process uses this folder"
                ) from None
        finally:
            os.close(fd)

    def _refusal(self, holder: dict[str, Any]) -> str:
        where = f"pid {holder['pid']} on host {holder.get('host', '?')}" + (
            f", since {holder['since']}" if holder.get("since") else ""
        )
        if holder.get("host") == self.info["host"]:
            return (
                f"{self.run_dir} is being written by another training process ({where}); wait for it to finish, "
                "stop it, or choose another --out"
            )
        return (
            f"{self.run_dir} is locked by a training process on another machine ({where}); if that process is "
            f"gone, delete {self.path}"
        )
