"""What the resident supervisor (launcher.py) does for its children besides restarting them: it caps the
size of their logs, and it stops one that is hung (its health URL fails while it runs) so that it is
started again like one that crashed.

The standard library only, loaded by the launcher by its path (it runs on Airflow's own Python).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import ssl
import time
import urllib.request
from typing import Any


def rotate(path: str, max_bytes: int, keep: int) -> bool:
    """Copy a log that grew past ``max_bytes`` to .1 (older ones shift to .2 ... .keep) and empty it.
    The children write with O_APPEND, so they go on at the start of the emptied file."""
    try:
        if max_bytes <= 0 or os.path.getsize(path) <= max_bytes:
            return False
        for n in range(keep - 1, 0, -1):
            if os.path.exists(f"{path}.{n}"):
                os.replace(f"{path}.{n}", f"{path}.{n + 1}")
        with open(path, "rb") as src, open(f"{path}.1", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.truncate(path, 0)
    except OSError:
        return False
    return True


LIVENESS_EVERY = 10.0  # seconds between GETs of each child's liveness URL
KILL_AFTER = 15.0  # a hung child that ignores SIGTERM this long gets SIGKILL


@functools.lru_cache(maxsize=4)
def _opener(ca_file: str) -> urllib.request.OpenerDirector:
    """The stack's own addresses: never through a proxy the environment names; HTTPS verified with
    ``ca_file`` (the stack's CA: the API server serves HTTPS with STACK_TLS for workers elsewhere)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ca_file:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)))
    return urllib.request.build_opener(*handlers)


def answers(url: str, timeout: float = 5.0, ca_file: str = "") -> bool:
    """The URL answers 200 (a health endpoint: the process behind it is not hung)."""
    try:
        with _opener(ca_file).open(url, timeout=timeout) as resp:
            return resp.status == 200
    except Exception:  # refused, timed out, HTTP 503, a certificate it cannot verify ...: not alive
        return False


def watch_liveness(children: list[Any], after: float, now: float) -> None:
    """A child (the launcher's Child) whose liveness URL has failed for ``after`` seconds in a row, while its
    process runs, is hung (Airflow's scheduler can hang in its executor's shutdown after losing its
    database): SIGTERM to its process group, SIGKILL if that is ignored; the restart then goes as for a
    crash. Startup (the first ``after`` seconds) does not count."""
    for child in children:
        url = child.proc.get("liveness")
        if not url or after <= 0 or time.time() - child.started < after:
            continue
        if child.stopped_hung:
            if now - child.stopped_hung >= KILL_AFTER:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
            continue
        if answers(url, ca_file=child.proc.get("liveness_ca", "")):
            child.failing_since = None
            continue
        child.failing_since = child.failing_since or now
        if now - child.failing_since >= after:
            with open(child.proc["log"], "a") as log:
                log.write(f"\n==== airflow-stack: {child.proc['name']} has not answered {url} for "
                          f"{now - child.failing_since:.0f} s: stopping it to start it again ====\n")
            child.stopped_hung = now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
