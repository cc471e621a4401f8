"""memcached as the login limiter's storage, when chosen with one setting:

    STACK_RATELIMIT_STORAGE_URI=memcached://127.0.0.1:11212

An address of this machine means ours: installed through the platform (Debian's and Homebrew's
``memcached``), run on that loopback address and port only (no UDP), supervised like our Redis (pid
file, log, restarted when it dies, stopped by `invoke stop`). memcached has no passwords, which is
why it only ever listens on loopback. A memcached elsewhere is used as it is. The distribution's own
memcached (port 11211, started by its package) is never touched.
"""

from __future__ import annotations

import os
import socket
import urllib.parse

from invoke import Context

from . import netutil, supervisor
from .errors import StackError
from .platform import Platform
from .settings import LOOPBACK, Settings

NAME = "memcached"
SCHEME = "memcached"
DEFAULT_PORT = 11211
READY_TIMEOUT = 20.0


def address(settings: Settings) -> tuple[str, int] | None:
    """(host, port) of the memcached the limiter uses, when the limiter uses one."""
    uri = settings.limiter_storage_uri
    if uri.split("://", 1)[0].lower() != SCHEME:
        return None
    netloc = uri.split("://", 1)[1].split("/", 1)[0].split(",")[0]
    parsed = urllib.parse.urlsplit("//" + netloc)
    try:
        return parsed.hostname or "127.0.0.1", parsed.port or DEFAULT_PORT
    except ValueError:
        raise StackError("STACK_RATELIMIT_STORAGE_URI names a port that is not a number; fix the URI") from None


def managed(settings: Settings) -> bool:
    """The limiter uses a memcached on this machine: the stack runs it."""
    found = address(settings)
    return found is not None and found[0] in LOOPBACK


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


def ensure(c: Context, platform: Platform, settings: Settings) -> list[str]:
    """Install memcached when missing and start ours on the limiter's loopback address and port."""
    if not managed(settings):
        return []
    host, port = address(settings)  # type: ignore[misc]
    server, done = platform.ensure_installed(c, "memcached", platform.memcached_bin, platform.memcached_install)
    proc = supervisor.running(settings, NAME)
    argv = [server, "-l", host, "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:  # memcached refuses to run as root: it drops to an unprivileged user after binding
        argv += ["-u", "nobody"]
    if proc is not None and list(proc.argv) == argv and ping(settings)[0]:
        return done
    if proc is not None:  # another address or port than configured now
        supervisor.stop(settings, NAME)
        done.append("stopped our memcached to move it to the configured address")
    elif netutil.port_open(port, host):
        raise StackError(f"port {port} is in use by another program; choose a free port in "
                         f"STACK_RATELIMIT_STORAGE_URI (memcached://{host}:PORT)")
    supervisor.start(c, settings, NAME, argv, env={})
    if not netutil.wait_until(lambda: ping(settings)[0], READY_TIMEOUT):
        log = supervisor.log_file(settings, NAME)
        raise StackError(f"memcached did not answer on {host}:{port} within {READY_TIMEOUT:.0f} s; "
                         f"see {log}: {supervisor.tail(log, 1)}")
    done.append(f"started memcached on {host}:{port} (the login limiter's storage)")
    return done
