"""Atomic file writes, and write failures told in one line.

Readers (and a crash) see the old file or the new one, never half of one. Any failure while
writing -- OSError (ENOSPC, EDQUOT, EFBIG under ``ulimit -f``), torch's "[enforce fail at
inline_container.cc] unexpected pos" RuntimeError, SafetensorError, numpy's errors -- becomes
a ``WriteError`` whose message says what could not be written, how much space is free there,
and what is still intact. Memmaps written in place are preallocated first (``preallocate``),
so a full disk is an OSError before any page is touched instead of a SIGBUS ("Bus error").
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

resource: ModuleType | None
try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

TMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """Something could not be written; the message is one line and says what is intact."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return str(self.strerror)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = (str(e).strip().splitlines() or [""])[0].strip()
    if "unexpected pos" in text or "file write failed" in text:
        text += " (the file was cut short)"
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _space(path: Path) -> str:
    """'1.2 GiB free on DIR' for the nearest existing folder above ``path``, plus a file size limit if one is set."""
    where = Path(path)
    while not where.is_dir() and where != where.parent:
        where = where.parent
    try:
        free = f"{_size(shutil.disk_usage(where).free)} free on {where}"
    except OSError:
        free = f"free space on {where} unknown"
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else -1
    if resource and soft != resource.RLIM_INFINITY:
        free += f", file size limit (ulimit -f) {_size(soft)}"
    return free


def write_failure(what: str, path: Path, error: BaseException, intact: str) -> WriteError:
    """The one-line WriteError for ``error`` raised while writing ``what`` to ``path``."""
    code = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
    return WriteError(code, f"could not write {what} to {path} ({_reason(error)}); {_space(path)}; {intact}")


@contextmanager
def reporting_write_failure(what: str, path: Path, intact: str | Callable[[], str]) -> Iterator[None]:
    """Turn any exception raised inside the block into a one-line ``WriteError`` (Ctrl-C passes through).

    ``what`` names the thing written ("the checkpoint of step 60"), ``intact`` what a reader
    still has ("the previous checkpoint (step 50) is intact"), or a function that says it once
    the write failed (what exists then, never a claim about files that never were).
    """
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        raise write_failure(what, path, e, intact() if callable(intact) else intact) from e


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, folder: bool = False) -> None:
    """Give ``path`` the mode a plain open() / mkdir() would under the umask: tempfile's mkstemp
    and mkdtemp make 0600 files and 0700 folders, which collaborators could not read."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path`` (mode as the umask gives)."""
    path = Path(path)

    def intact() -> str:  # after the failure: a first write has no previous file to keep
        return f"the previous {path.name} is intact" if path.exists() else f"there was no {path.name} before"

    with reporting_write_failure(path.name, path, intact):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        try:
            follow_umask(Path(tmp))
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def preallocate(path: Path, nbytes: int, *, fresh: bool, what: str | None = None, intact: str = "") -> Path:
    """Give ``path`` ``nbytes`` of allocated disk blocks before it is memory-mapped; return ``path``.

    A page of a shared file mapping that the filesystem cannot back is a SIGBUS on first
    touch, which kills the process without a word; allocating every block up front turns a
    full disk into a ``WriteError`` here. ``fresh`` truncates first (a new file of zeros);
    otherwise the existing bytes are kept and only missing blocks are allocated. Copy-on-write
    filesystems (btrfs, ZFS) may still run out on a later write.
    """
    path = Path(path)
    with reporting_write_failure(what or path.name, path, intact or "nothing else was changed"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0), 0o644)
        try:
            if nbytes > 0:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, nbytes)
                else:  # pragma: no cover - macOS: write the zeros ourselves
                    _fill_zeros(fd, os.fstat(fd).st_size, nbytes)
        except BaseException:
            if fresh:  # give back what was allocated: the file held nothing yet
                path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
    return path


def _fill_zeros(fd: int, start: int, end: int) -> None:  # pragma: no cover - platforms without posix_fallocate
    chunk = bytes(1 << 20)
    os.lseek(fd, start, os.SEEK_SET)
    while start < end:
        start += os.write(fd, chunk[: min(len(chunk), end - start)])


def clean_temporaries(folder: Path, dir_prefix: str) -> list[str]:
    """Delete what a killed writer left in ``folder``: hidden ``{dir_prefix}*`` folders and ``.*.tmp`` files.

    Call only while holding the folder's run lock (a live writer's temporaries look the same).
    Returns the names removed.
    """
    removed = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if p.is_dir() and not p.is_symlink() and p.name.startswith(dir_prefix):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.startswith(".") and p.name.endswith(TMP_SUFFIX):
            p.unlink(missing_ok=True)
        else:
            continue
        removed.append(p.name)
    return sorted(removed)
