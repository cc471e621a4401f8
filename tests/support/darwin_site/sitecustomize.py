"""Makes a Python process look like macOS to airflow-stack's code: ``sys.platform`` is "darwin" and /proc does
not exist (an open, listdir, scandir or stat of a /proc path fails with ENOENT, as on a Mac, and is recorded).

psutil is the portable path (it has a macOS backend of its own) and keeps working: it is imported first, with the
real platform, and its own reads of /proc pass. Only the code that would run on a Mac sees the difference.

Used by the `darwin` test session (noxfile.py; tests/support/darwin.py): the pytest process applies ``guards()``
itself; a process the code under test starts (the launcher, what it execs) gets this folder on PYTHONPATH and
FORCE_VAR set, and Python's ``site`` imports this module at its start.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys

FORCE_VAR = "STACK_TEST_FORCE_DARWIN"  # its value: the file where forbidden /proc reads are recorded
_open = builtins.open
GUARDED = ((builtins, "open"), (io, "open"), (os, "open"), (os, "listdir"), (os, "scandir"), (os, "stat"),
           (os, "lstat"))


def _is_proc(path: object) -> bool:
    if isinstance(path, int):  # a file descriptor
        return False
    try:
        text = os.fsdecode(os.fspath(path))  # type: ignore[arg-type]
    except TypeError:
        return False
    return text == "/proc" or text.startswith("/proc/")


def _psutil_asks() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if name == "psutil" or name.startswith("psutil."):
            return True
        frame = frame.f_back
    return False


def _where() -> str:
    """The first frame outside this file and the standard library's file functions: who asked."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith("<frozen")
                                 or os.path.basename(frame.f_code.co_filename) in ("pathlib.py", "genericpath.py")):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


def _guard(func, record: str):
    def guarded(*args, **kwargs):
        path = args[0] if args else kwargs.get("path", kwargs.get("file", "."))
        if _is_proc(path) and not _psutil_asks():
            with _open(record, "a") as fh:
                fh.write(f"{os.getpid()} {os.fsdecode(os.fspath(path))} {_where()}\n")
            raise FileNotFoundError(errno.ENOENT, "No such file or directory (no /proc on darwin)",
                                    os.fsdecode(os.fspath(path)))
        return func(*args, **kwargs)

    guarded.__wrapped__ = func
    return guarded


def guards(record: str) -> list[tuple[object, str, object]]:
    """(module, name, guarded function) for each file function that could read /proc."""
    return [(module, name, _guard(getattr(module, name), record)) for module, name in GUARDED]


def install(record: str) -> None:
    # Imported first, with the real platform: psutil picks its backend when imported; the standard library's
    # urllib.request and uuid import a macOS-only C module (_scproxy) when sys.platform is darwin, which this
    # Linux Python lacks. What is forced is the code under test, not the interpreter.
    import urllib.request  # noqa: F401
    import uuid  # noqa: F401

    import psutil  # noqa: F401

    for module, name, guarded in guards(record):
        setattr(module, name, guarded)
    sys.platform = "darwin"


if os.environ.get(FORCE_VAR):
    install(os.environ[FORCE_VAR])
