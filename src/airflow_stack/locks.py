"""One operation at a time per state dir: up, stop, run.*, setup.*, db.*, clean.

Two `invoke up` at once on a stopped stack would each see nothing running and each start a set of
processes. An exclusive lock (flock on run/operation.lock) makes the second caller wait, with a
line saying for whom, and then find the stack running. The kernel drops the lock when its holder
exits, however it exits, so a killed `invoke` never leaves the state dir locked. Reentrant within
one process: `invoke up` runs the setup tasks, which take the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StackError
from .settings import Settings

WAIT_SECONDS = 900.0  # a first `invoke up` installs Airflow: minutes
_held: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth) held by this process


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        pid, _, what = os.read(fd, 200).decode().strip().partition(" ")
        if pid.isdigit():
            return f"{what or 'an operation'} (pid {pid})"
    return "another invoke"


@contextlib.contextmanager
def exclusive(settings: Settings, what: str, wait: float = WAIT_SECONDS, path: Path | None = None) -> Iterator[None]:
    """Hold the state dir's operation lock (or another lock file of the state dir, ``path``) for ``what`` (e.g.
    "invoke up"); wait for another holder."""
    path = path or settings.paths.operation_lock
    if path in _held:  # this process holds it already (a task that runs other tasks)
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
        try:
            yield
        finally:
            _held[path] = (fd, _held[path][1] - 1)
        return
    settings.paths.make_private()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, f"in {settings.state_dir}", what, wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        _held[path] = (fd, 1)
        try:
            yield
        finally:
            del _held[path]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def machine_wide(settings: Settings, resource: str, what: str, wait: float = WAIT_SECONDS) -> Iterator[None]:
    """Hold a lock that every checkout of this user shares, for a resource they share.

    Two stacks (two checkouts, or the test lanes) that both find the local PostgreSQL down would
    each start it; the second then sees a server that is still starting and no stack's lock
    orders them. This lock does, across state dirs. It lives in the user's own state folder
    (STACK_USER_STATE_DIR), never in a shared /tmp where another user could plant the folder or a
    link in it: the folder must be a real folder of this user's that no one else may enter, and the
    lock file is opened without following a link.
    """
    settings.user_paths.make_private()
    path = settings.user_paths.locks / f"{resource}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:  # ELOOP: a link planted in its place
        raise StackError(f"{path} cannot be opened as a lock file of ours ({exc.strerror}); remove it "
                         f"(a link or another user's file there is not ours to follow)") from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
            raise StackError(f"{path} is not a file of yours; remove it, then run this again")
        _acquire(fd, f"on this machine ({resource})", what, wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, where: str, what: str, wait: float) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = _holder(fd)
    print(f"{what}: waiting for {holder} to finish {where} (one operation at a time)",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            continue
    raise StackError(f"{holder} still runs {where} after {wait:.0f} s; wait for it to end, "
                     f"then run {what} again")
