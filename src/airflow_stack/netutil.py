"""Ports (and Unix sockets): is something listening, and who."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import time
from collections.abc import Callable

import psutil


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_socket_open(path: str, timeout: float = 0.5) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            return True
    except OSError:
        return False


def _bind_error(port: int, host: str) -> int | None:
    """The errno of listening on host:port (None: we could)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return exc.errno or -1
    return None


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """True when we could listen on host:port (nothing else holds it)."""
    return _bind_error(port, host) is None


def port_free(port: int, hosts: tuple[str, ...]) -> bool:
    """True when nothing holds ``port`` on any of ``hosts`` (an address this machine lacks, e.g. ::1 without
    IPv6, holds nothing)."""
    missing = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    return all(_bind_error(port, host) in (None, *missing) for host in hosts)


def port_holder(port: int) -> str:
    """Who listens on ``port``: "pid N (its command)", or "" when that cannot be told cheaply.

    Read only when a start already failed on the port: listing every socket takes tens of ms.
    """
    try:
        pids = sorted({c.pid for c in psutil.net_connections(kind="inet")
                       if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid})
    except (psutil.Error, OSError):
        return ""  # other users' sockets are not ours to list
    if not pids:
        return ""
    pid = next((p for p in pids if _parent(p) not in pids), pids[0])  # forked servers share the socket
    found = f"pid {pid}{_command(pid)}"
    # a server's worker (gunicorn, uvicorn) names only itself: its session leader names the program
    leader = pid
    with contextlib.suppress(OSError):
        leader = os.getsid(pid)
        if leader not in (pid, 0, 1) and psutil.pid_exists(leader):
            found += f", started by pid {leader}{_command(leader)}"
    # a process that set its title hides where it runs from; where its output goes (a supervised
    # component's log, in the state dir of the stack it belongs to) tells
    output = _output_file(leader) or _output_file(pid)
    return found + (f", writing to {output}" if output else "")


def _output_file(pid: int) -> str:
    """The regular file a process's stdout goes to, or "" (psutil names a file's descriptor on Linux; where
    it cannot, nothing is said)."""
    try:
        files = psutil.Process(pid).open_files()
    except (psutil.Error, OSError):
        return ""
    return next((f.path for f in files if f.fd == 1 and os.path.isfile(f.path)), "")


def _parent(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def _command(pid: int) -> str:
    """" (its first words)", URL passwords masked: it is printed in error messages."""
    try:
        words = psutil.Process(pid).cmdline()[:3]
    except psutil.Error:
        return ""
    command = re.sub(r"(://[^/:@\s]*):[^@\s]*@", r"\1:***@", " ".join(" ".join(words).split()))
    return f" ({command[:160]})" if command else ""


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass; growing sleeps, capped at 1 s."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, 1.0)
