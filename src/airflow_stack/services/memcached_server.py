"""memcached as the login limiter's storage, when chosen with one setting:

    STACK_RATELIMIT_STORAGE_URI=memcached://127.0.0.1:11212

An address of this machine means ours: installed through the host (Debian's and Homebrew's
``memcached``), run on that loopback address and port only (no UDP), a component of the running stack
like our Redis (pid file, log, restarted when it dies, stopped by `invoke stop`). memcached has no passwords, which is
why it only ever listens on loopback. A memcached elsewhere is used as it is. The distribution's own
memcached (port 11211, started by its package) is never touched.
"""

from __future__ import annotations

import os
import socket
import urllib.parse

from invoke import Context

from .. import netutil
from ..errors import StackError
from ..settings import Settings
from . import limiter
from .host import Platform
from .redis_server import Prepared

NAME = "memcached"
SCHEME = "memcached"
DEFAULT_PORT = limiter.DEFAULT_PORTS[SCHEME]
READY_TIMEOUT = 20.0


def address(settings: Settings) -> tuple[str, int] | None:
    """(host, port) of the memcached the limiter uses, when the limiter uses one."""
    found = limiter.storage(settings)
    return (found.host, found.port) if found is not None and found.scheme == SCHEME else None


def managed(settings: Settings) -> bool:
    """The limiter uses a memcached on this machine: the stack runs it."""
    found = limiter.storage(settings)
    return found is not None and found.scheme == SCHEME and found.on_this_machine


def _command(settings: Settings, line: bytes, end: bytes) -> bytes:
    host, port = address(settings) or ("127.0.0.1", DEFAULT_PORT)
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(line)
        data = b""
        while not data.endswith(end):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def ping(settings: Settings) -> tuple[bool, str]:
    try:
        answer = _command(settings, b"version\r\n", b"\r\n")
    except OSError as exc:
        return False, f"memcached is not answering ({exc.__class__.__name__})"
    return (answer.startswith(b"VERSION"), answer.decode(errors="replace").strip())


def keys(settings: Settings) -> list[str]:
    """The keys memcached holds now (its LRU crawler's metadump; 1.4.31 and later)."""
    answer = _command(settings, b"lru_crawler metadump all\r\n", b"END\r\n")
    found = []
    for line in answer.decode(errors="replace").splitlines():
        if line.startswith("key="):
            found.append(urllib.parse.unquote(line.split()[0][4:]))
    return found


def counter(settings: Settings, key: str) -> int:
    """The number memcached holds under ``key`` (a limiter's counter); 0 when it holds none."""
    lines = _command(settings, f"get {key}\r\n".encode(), b"END\r\n").decode(errors="replace").split("\r\n")
    try:
        return int(lines[1]) if lines[0].startswith("VALUE ") else 0
    except (IndexError, ValueError):
        return 0


def argv(server: str, settings: Settings) -> list[str]:
    host, port = address(settings) or ("127.0.0.1", DEFAULT_PORT)
    found = [server, "-l", host, "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:  # memcached refuses to run as root: it drops to an unprivileged user after binding
        found += ["-u", "nobody"]
    return found


def prepare(c: Context, platform: Platform, settings: Settings, running_argv: tuple[str, ...] | None) -> Prepared:
    """Install memcached when missing; its command line for the limiter's loopback address and port.
    ``running_argv``: how ours runs now (another one means it moves); a port another program holds is
    refused."""
    host, port = address(settings)  # type: ignore[misc]
    server, done = platform.ensure_installed(c, "memcached", platform.memcached_bin, platform.memcached_install)
    wanted = argv(server, settings)
    moved = running_argv is not None and list(running_argv) != wanted
    if running_argv is None and netutil.port_open(port, host):
        raise StackError(f"port {port} is in use by another program; choose a free port in "
                         f"STACK_RATELIMIT_STORAGE_URI (memcached://{host}:PORT)")
    return Prepared(wanted, moved, done, f"memcached on {host}:{port} (the login limiter's storage)")
