"""Supervised background processes: start (pid file + log file), is-alive, stop.

A process is ours when its pid file names a live PID whose start time matches the one recorded
at launch, so a recycled PID is never mistaken for (or signalled as) one of ours. Processes are
only ever signalled by PID: the one we started, then its process group (the same number).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from invoke import Context

from .airflow_config import SECRET_KEYS
from .errors import StackError
from .netutil import wait_until
from .settings import Settings

STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Running:
    pid: int
    started: float
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # fingerprint() of its launch env


def pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.log_dir / f"{name}.log"


def _alive(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        # a zombie has exited (nobody reaped it yet); another create time means a recycled PID
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 5
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def running(settings: Settings, name: str) -> Running | None:
    """The live process of ``name``, or None (a stale pid file is removed)."""
    path = pid_file(settings, name)
    try:
        data = json.loads(path.read_text())
        info = Running(int(data["pid"]), float(data["started"]), tuple(data.get("argv", ())), data.get("env", {}))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if _alive(info.pid, info.started):
        return info
    # the leader died (killed, crashed): keep its id, its children may still hold ports
    path.replace(path.with_suffix(".stale"))
    return None


def reap_orphans(settings: Settings, name: str, timeout: float = 10.0, whole_session: bool = False) -> int:
    """Stop what a dead ``name`` left behind in its process group; return how many there were.

    The group gets SIGTERM (its members may stop what they supervise), SIGKILL after ``timeout``.
    ``whole_session``: then what is still in the leader's session, having left the group for one of
    its own (a task process whose supervisor was just stopped), is killed at once.
    Safe by construction: a process-group or session id is never reused while any member lives,
    so every process still in the dead leader's group or session is one of ours.
    """
    stale = pid_file(settings, name).with_suffix(".stale")
    try:
        pgid = int(json.loads(stale.read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0
    orphans = _group_alive(pgid)
    for proc in orphans:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(orphans, timeout=timeout)
    stragglers = _session_alive(pgid) if whole_session else []
    for proc in [*alive, *stragglers]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(stragglers, timeout=timeout)
    stale.unlink(missing_ok=True)
    return len(orphans) + len(stragglers)


LAUNCHER = Path(__file__).with_name("launcher.py")


@dataclass(frozen=True)
class Launch:
    """One process to start: its supervised name, its argv, and modules to import before forking it."""

    name: str
    argv: list[str]
    preload: tuple[str, ...] = ()


def start(c: Context, settings: Settings, name: str, argv: list[str], env: Mapping[str, str]) -> int:
    """Launch ``argv`` detached, logging to logs/<name>.log; return its PID."""
    return start_many(c, settings, [Launch(name, argv)], env)[name]


def start_many(c: Context, settings: Settings, launches: list[Launch], env: Mapping[str, str],
               python: str = sys.executable, preload: tuple[str, ...] | None = None) -> dict[str, int]:
    """Launch processes detached through launcher.py; return name -> PID.

    With ``preload`` (Airflow's components, ``python`` from Airflow's venv) the launcher imports
    those modules once and forks every process from there (see launcher.py); without, each execs.
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    launched_env = fingerprint(dict(os.environ) | dict(env))
    processes = []
    for launch in launches:
        running(settings, launch.name)  # notices a dead leader
        reap_orphans(settings, launch.name)  # its children would hold its ports
        log = log_file(settings, launch.name)
        with log.open("a") as fh:
            fh.write(f"\n==== airflow-stack: starting {launch.name} at {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
        processes.append({"name": launch.name, "argv": launch.argv, "log": str(log), "preload": list(launch.preload),
                          "pidfile": str(pid_file(settings, launch.name)), "env": launched_env})
    spec = settings.run_dir / f"launch-{os.getpid()}.json"
    spec.write_text(json.dumps({"preload": None if preload is None else list(preload), "processes": processes}))
    try:
        result = c.run(f"{shlex.quote(python)} {shlex.quote(str(LAUNCHER))} {shlex.quote(str(spec))}",
                       env=dict(env), hide=True, warn=True, in_stream=False)
    finally:
        spec.unlink(missing_ok=True)
    names = ", ".join(launch.name for launch in launches)
    try:
        pids = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pids = {}
    if result.failed or set(pids) != {launch.name for launch in launches}:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise StackError(f"could not start {names}: {detail[-1][:200] if detail else f'exit {result.exited}'}")
    return {name: int(pid) for name, pid in pids.items()}


def fingerprint(environ: dict[str, str]) -> dict[str, str]:
    """The settings a process was started with, for doctor: secrets as a hash (and URL scheme) only."""
    kept = {}
    for key, value in environ.items():
        if not key.startswith(("AIRFLOW__", "STACK_", "AIRFLOW_HOME")):
            continue
        if key in SECRET_KEYS or key.endswith(("PASSWORD", "_DSN")):
            digest = hashlib.sha256(value.encode()).hexdigest()[:16]
            scheme = value.split("://", 1)[0] + "://" if "://" in value else ""
            kept[key] = f"{scheme}sha256:{digest}"
        else:
            kept[key] = value
    return kept


def _group_alive(pgid: int) -> list[psutil.Process]:
    return _members(pgid, os.getpgid)


def _session_alive(sid: int) -> list[psutil.Process]:
    return _members(sid, os.getsid)


def _members(ident: int, of: Callable[[int], int]) -> list[psutil.Process]:
    """Live (not zombie) processes whose group or session id (``of``) is ``ident``."""
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if of(proc.pid) == ident and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def stop(settings: Settings, name: str, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM,
         whole_session: bool = False) -> str:
    """Stop ``name``: ``sig`` to its PID, wait up to ``timeout``, then SIGKILL its process group.
    ``whole_session``: what a dead ``name`` left is reaped in its whole session (see reap_orphans)."""
    info = running(settings, name)
    if info is None:
        reaped = reap_orphans(settings, name, whole_session=whole_session)
        return f"not running (stopped {reaped} processes it left behind)" if reaped else "not running"
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, sig)
    graceful = wait_until(lambda: not _alive(info.pid, info.started), timeout)
    # children the main process left behind (task runners, server workers) share its group id
    leftovers = _group_alive(info.pid)
    for proc in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    if leftovers:
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    if not graceful:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(info.pid, signal.SIGKILL)
        wait_until(lambda: not _alive(info.pid, info.started), 10)
    pid_file(settings, name).unlink(missing_ok=True)
    return "stopped" if graceful else f"killed after {timeout:.0f} s"


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log yet)"
    return "\n".join(text.splitlines()[-lines:])
