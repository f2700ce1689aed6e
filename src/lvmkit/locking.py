"""Directory locks: one writer per run directory and per bank directory.

    with lock_dir(run_dir, "training"):      # raises LockedError naming the holder if another writer has it
        ...

The lock is the file ``DIR/.lvmkit.lock``. Its content is a JSON line naming the holder (pid, host, start
time, command, purpose), for messages and for ``lvmkit runs status``. Mutual exclusion itself comes from
``fcntl.flock`` on that file, which the kernel drops when the holder dies however it dies (kill -9 included),
so a lock left by a dead process is stale by construction and is taken over; the takeover is noted in
``Lock.took_over``. A lock file written on another host whose flock is free (a crash on a shared file
system, or one without working locks) cannot be checked from here and is refused, with the file to remove.

Release removes the file before unlocking it. An acquirer that locked the old (now unlinked) file notices
that the path no longer names its inode and tries again, so two writers never both believe they hold it.
Locks are advisory: they keep lvmkit writers apart, nothing else. On a file system without flock (some NFS or
Lustre mounts) the lock file's pid decides alone: a live holder on this host refuses, a dead one is taken over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvmkit.errors import LvmkitError

LOCK_FILE = ".lvmkit.lock"


class LockedError(LvmkitError):
    """The directory is being written by another process (the message names it and what to do)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, as written in the lock file."""

    pid: int
    host: str
    since: str
    command: str
    purpose: str

    @classmethod
    def from_text(cls, text: str) -> Holder | None:
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), str(d["host"]), str(d["since"]), str(d["command"]), str(d["purpose"]))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        """``pid 4242 on host gpu1 since 2026-12-03T08:00:00+00:00 (training: lvmkit train ...)``."""
        return f"pid {self.pid} on host {self.host} since {self.since} ({self.purpose}: {self.command})"

    def alive(self) -> bool | None:
        """True/False for a holder on this host (pid alive and started no later than the lock);
        None for another host (cannot be checked from here)."""
        if self.host != socket.gethostname():
            return None
        return _pid_alive_since(self.pid, self.since)


@dataclass
class Lock:
    """A held lock; ``release()`` (or leaving ``lock_dir``'s block) gives it up."""

    path: Path
    holder: Holder
    took_over: Holder | None  # the stale holder whose lock this one replaced, if any
    _fd: int | None
    _created_dir: bool = False

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if self._created_dir:  # a directory made only to hold the lock: leave nothing behind
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # fails (kept) unless empty

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire(directory: str | os.PathLike, purpose: str, what: str = "directory", hint: str = "") -> Lock:
    """Lock ``directory`` (created if missing) for writing, or raise ``LockedError`` naming the holder.

    ``purpose`` says what the holder does ("training", "ingest", "index build"); ``what`` names the
    directory in messages ("run", "bank"); ``hint`` is a sentence added to the refusal (how to follow it).
    """
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    me = Holder(os.getpid(), socket.gethostname(), _now(), _command(), purpose)
    for _ in range(100):  # retried only when a holder released between our open and our flock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            previous = _read(fd)
            os.close(fd)
            raise LockedError(_held_message(directory, what, previous, hint)) from None
        except OSError:  # a file system without flock (some NFS / Lustre mounts): the pid in the file decides
            previous = _read(fd)
            if previous is not None and previous.pid != me.pid and previous.alive():
                os.close(fd)
                raise LockedError(_held_message(directory, what, previous, hint)) from None
        if not _same_file(fd, path):  # we locked a file its holder has just removed: try the new one
            os.close(fd)
            continue
        previous = _read(fd)
        if previous is not None and previous.pid != me.pid and previous.alive() is None:
            os.close(fd)
            raise LockedError(_foreign_message(directory, what, previous, path))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me.__dict__) + "\n").encode(), 0)
        os.fsync(fd)
        return Lock(path, me, previous, fd, created)
    raise LockedError(f"could not lock {path}: it kept changing under us; try again")  # pragma: no cover


@contextlib.contextmanager
def lock_dir(
    directory: str | os.PathLike, purpose: str, what: str = "directory", hint: str = ""
) -> Iterator[Lock]:
    """``with lock_dir(path, "ingest", "bank"):`` the block runs holding the lock (see ``acquire``)."""
    lock = acquire(directory, purpose, what, hint)
    try:
        yield lock
    finally:
        lock.release()


def holder(directory: str | os.PathLike) -> tuple[Holder | None, str]:
    """Who holds ``directory``'s lock, without taking it: (holder or None, state), state one of
    "free" (no lock file), "held" (the holder is alive), "stale" (its process is gone; the next writer takes
    it over) or "unknown" (written on another host)."""
    path = Path(directory) / LOCK_FILE
    try:
        h = Holder.from_text(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None, "free"
    if h is None:  # an empty file: its writer died between creating and filling it
        return None, "stale"
    alive = h.alive()
    return h, {True: "held", False: "stale", None: "unknown"}[alive]


# ------------------------------------------------------------------------------------------- helpers
def _held_message(directory: Path, what: str, h: Holder | None, hint: str) -> str:
    who = h.describe() if h else "another process (its lock file is being written)"
    return (
        f"{what} {directory} is locked by {who}. Only one process may write it at a time. "
        + (f"{hint} " if hint else "")
        + f"Wait for that process to finish, or stop it (kill {h.pid if h else 'PID'}) and run your command again."
    )


def _foreign_message(directory: Path, what: str, h: Holder, path: Path) -> str:
    return (
        f"{what} {directory} has a lock written on another host: {h.describe()}. lvmkit cannot check from "
        f"{socket.gethostname()} whether that process still runs. If it does not, remove {path} and run your "
        "command again."
    )


def _read(fd: int) -> Holder | None:
    size = os.fstat(fd).st_size
    return Holder.from_text(os.pread(fd, size, 0).decode("utf-8", "replace")) if size else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _pid_alive_since(pid: int, since: str) -> bool:
    """The process exists, is not a zombie, and was started no later than ``since`` (not a reused pid)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = _dt.datetime.fromtimestamp(proc.create_time(), _dt.timezone.utc)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    try:
        return started <= _dt.datetime.fromisoformat(since) + _dt.timedelta(seconds=2)
    except ValueError:
        return True


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:199] + "…"
