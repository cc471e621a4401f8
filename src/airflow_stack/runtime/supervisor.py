"""Supervised background processes: start (pid file + log file), is-alive, stop.

A process is ours when its pid file names a live PID whose start time matches the one recorded
at launch, so a recycled PID is never mistaken for (or signalled as) one of ours. Processes are
only ever signalled by PID: the one we started, then its process group (the same number).

``run/NAME.pid`` holds the PID alone (``kill $(cat .stack/run/scheduler.pid)`` works);
``run/NAME.json`` beside it (0600) records the start time, the boot it happened in, the argv and
the launch environment's fingerprint. Reading (``running``) never changes a file: the operations
that start or stop collect what a dead process left (``collect``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from invoke import Context

from .. import settings as settings_mod
from ..apache_airflow.airflow_side import procgroup
from ..errors import StackError
from ..netutil import wait_until
from ..settings import Settings
from ..statedir import write_private

STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Running:
    pid: int
    started: float
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # fingerprint() of its launch env
    restarts: int = 0  # how often its supervisor started it again after it died
    last_exit: int | None = None  # the exit code it died with last (negative: killed by that signal)
    supervisor: int | None = None  # the PID of the launcher that watches it (restarts it when it dies)
    version: str | None = None  # the Airflow release it runs (what was installed when it started)
    build: str | None = None  # install.installed_build() when it started: the venv's content


def _alive(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        # a zombie has exited (nobody reaped it yet); another create time means a recycled PID
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 5
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _boot_time() -> float:
    return psutil.boot_time()


def _record(settings: Settings, name: str) -> tuple[int, dict] | None:
    """(PID, metadata) from the pid file and its record; None when there is none or it is unreadable."""
    try:
        text = settings.paths.pid_file(name).read_text().strip()
    except FileNotFoundError:
        return None
    if text.startswith("{"):  # written by an earlier airflow-stack: the record was inside the pid file
        try:
            legacy = json.loads(text)
            return int(legacy["pid"]), legacy
        except (ValueError, KeyError, TypeError):
            return None
    try:
        pid = int(text)
    except ValueError:
        return None
    try:
        meta = json.loads(settings.paths.meta_file(name).read_text())
        if not isinstance(meta, dict):
            meta = {}
    except (FileNotFoundError, ValueError):
        meta = {}
    return pid, meta


def running(settings: Settings, name: str) -> Running | None:
    """The live process of ``name``, or None. Reads only."""
    record = _record(settings, name)
    if record is None:
        return None
    pid, meta = record
    try:
        info = Running(pid, float(meta["started"]), tuple(meta.get("argv", ())), dict(meta.get("env", {})),
                       int(meta.get("restarts") or 0), meta.get("last_exit"), meta.get("supervisor"),
                       meta.get("version"), meta.get("build"))
    except (KeyError, TypeError, ValueError):
        return None
    return info if _alive(info.pid, info.started) else None


def restarting(settings: Settings, name: str) -> int | None:
    """When ``name`` died and its supervisor is about to start it again: the exit code it died with."""
    record = _record(settings, name)
    if record is None:
        return None
    pid, meta = record
    sup = meta.get("supervisor")
    if "started" not in meta or _alive(pid, float(meta["started"])) or not isinstance(sup, int):
        return None
    try:
        alive = psutil.Process(sup).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return None
    exit_code = meta.get("last_exit")
    return int(exit_code) if alive and isinstance(exit_code, int) else (-1 if alive else None)


# the longest a supervisor takes to start a dead child again: its leftovers reaped, the back-off (at most
# launcher.BACKOFF_MAX), the fork
RESTART_WAIT = procgroup.REAP_GRACE + 30.0 + 10.0


def await_restarts(settings: Settings, names: list[str]) -> list[str]:
    """Of ``names``, those that died and whose supervisor is starting them again: waited for (up to
    RESTART_WAIT) rather than started a second time, which would find their ports taken and leave the
    supervisor's restart unwanted. Returns the names waited for."""
    pending = [name for name in names if running(settings, name) is None and restarting(settings, name) is not None]
    if pending:
        wait_until(lambda: all(running(settings, name) is not None or restarting(settings, name) is None
                               for name in pending), RESTART_WAIT)
    return pending


def collect(settings: Settings, name: str, timeout: float = procgroup.REAP_GRACE, whole_session: bool = False) -> int:
    """Forget a dead ``name`` and stop what it left behind; return how many processes that was.

    Its process group gets SIGTERM (its members may stop what they supervise), SIGKILL after
    ``timeout``. ``whole_session``: what is still in the dead leader's session, having left the
    group for one of its own (a task process whose supervisor was just stopped), is killed too.
    A group or session id is never reused while any member lives, so within one boot every process
    still in the dead leader's group or session is one of ours; a record from another boot (PIDs
    start over) is only forgotten, nothing is signalled.
    """
    record = _record(settings, name)
    if record is None:
        return 0
    pid, meta = record
    if "started" in meta and _alive(pid, float(meta["started"])):
        return 0  # alive: not ours to collect
    reaped = 0
    same_boot = abs(float(meta.get("boot", -1)) - _boot_time()) < 2
    if same_boot and "started" in meta:
        reaped = procgroup.reap(pid, whole_session, timeout)
    settings.paths.pid_file(name).unlink(missing_ok=True)
    settings.paths.meta_file(name).unlink(missing_ok=True)
    return reaped


LAUNCHER = Path(procgroup.__file__).with_name("launcher.py")


@dataclass(frozen=True)
class Launch:
    """One process to start: its supervised name, its argv, and modules to import before forking it."""

    name: str
    argv: list[str]
    preload: tuple[str, ...] = ()
    reap_session: bool = False  # when it dies, what it left in its whole session goes too (see collect)
    version: str | None = None  # the Airflow release it runs, kept in its record
    build: str | None = None  # what its venv held (release, constraints, project requirements), kept too
    liveness: str = ""  # a URL the resident launcher GETs: failing for STACK_LIVENESS_SECONDS, it is restarted
    liveness_ca: str = ""  # the CA an https liveness URL is verified with


def start_many(c: Context, settings: Settings, launches: list[Launch], environ: Mapping[str, str],
               python: str = sys.executable, preload: tuple[str, ...] | None = None,
               resident: bool = True) -> dict[str, int]:
    """Launch processes detached through launcher.py, each with the whole environment ``environ``; return
    name -> PID.

    With ``preload`` (Airflow's components, ``python`` from Airflow's venv) the launcher imports
    those modules once and forks every process from there (see launcher.py); without, each execs.
    ``resident``: the launcher stays, as their supervisor: it starts again whatever dies, with
    back-off, and caps the size of their logs; it exits once all were stopped.
    """
    settings.paths.make_private()
    environ = dict(environ)
    launched_env = fingerprint(settings, environ, create_key=True)
    processes = []
    for launch in launches:
        collect(settings, launch.name)  # what a dead predecessor left would hold its ports
        log = settings.paths.log_file(launch.name)
        with log.open("a") as fh:
            fh.write(f"\n==== airflow-stack: starting {launch.name} at {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
        processes.append({"name": launch.name, "argv": launch.argv, "log": str(log), "preload": list(launch.preload),
                          "pidfile": str(settings.paths.pid_file(launch.name)),
                          "metafile": str(settings.paths.meta_file(launch.name)), "env": launched_env,
                          "boot": _boot_time(), "reap_session": launch.reap_session, "liveness": launch.liveness,
                          "liveness_ca": launch.liveness_ca,
                          "record": {key: value for key, value in (("version", launch.version),
                                                                    ("build", launch.build)) if value}})
    spec = settings.paths.launch_spec(os.getpid())
    spec.write_text(json.dumps({"preload": None if preload is None else list(preload), "processes": processes,
                                "resident": resident, "log": str(settings.paths.log_file("supervisor")),
                                "log_max_bytes": settings.log_max_mb << 20, "log_keep": settings.log_keep,
                                "liveness_seconds": settings.liveness_seconds}))
    try:
        result = c.run(f"{shlex.quote(python)} {shlex.quote(str(LAUNCHER))} {shlex.quote(str(spec))}",
                       env=environ, replace_env=True, hide=True, warn=True, in_stream=False)
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


def _fingerprint_key(settings: Settings, create: bool) -> bytes | None:
    """A random key of this state dir's (0600): the recorded digests of secrets are keyed with it,
    so a copy of the records alone cannot be used to guess a secret offline."""
    path = settings.paths.fingerprint_key
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        if not create:
            return None
    key = secrets.token_bytes(32)
    settings.paths.make_private()
    write_private(path, key.hex())
    return key


def fingerprint(settings: Settings, environ: Mapping[str, str], create_key: bool = False) -> dict[str, str]:
    """The settings a process was started with, for doctor: a secret as a keyed digest (and URL scheme) only."""
    key = _fingerprint_key(settings, create_key) or b""
    kept = {}
    for name, value in environ.items():
        if not name.startswith(("AIRFLOW__", "STACK_", "AIRFLOW_HOME", "_AIRFLOW")):
            continue
        if settings_mod.is_secret(settings, name, value):
            digest = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]
            scheme = value.split("://", 1)[0] + "://" if "://" in value else ""
            kept[name] = f"{scheme}hmac:{digest}"
        else:
            kept[name] = value
    return kept


def supervisors(settings: Settings, names: list[str]) -> set[int]:
    """The PIDs of the live launchers that supervise ``names`` (read before they are stopped)."""
    found = set()
    for name in names:
        record = _record(settings, name)
        pid = record[1].get("supervisor") if record else None
        if isinstance(pid, int) and psutil.pid_exists(pid):
            found.add(pid)
    return found


def wait_gone(pids: set[int], timeout: float = 5.0) -> None:
    """Wait for processes to exit (a supervisor whose last child was stopped exits within a second)."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    psutil.wait_procs(procs, timeout=timeout)


def stop(settings: Settings, name: str, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM,
         whole_session: bool = False) -> str:
    """Stop ``name``: ``sig`` to its PID, wait up to ``timeout``, then SIGKILL its process group.
    ``whole_session``: what a dead ``name`` left is reaped in its whole session (see collect)."""
    info = running(settings, name)
    if info is None:
        reaped = collect(settings, name, whole_session=whole_session)
        return f"not running (stopped {reaped} processes it left behind)" if reaped else "not running"
    # the pid file goes first: it is the intent its supervisor reads, so this exit is not restarted
    settings.paths.pid_file(name).unlink(missing_ok=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, sig)
    graceful = wait_until(lambda: not _alive(info.pid, info.started), timeout)
    # children the main process left behind (task runners, server workers) share its group id
    leftovers = procgroup.members(info.pid)
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
    settings.paths.pid_file(name).unlink(missing_ok=True)
    settings.paths.meta_file(name).unlink(missing_ok=True)
    return "stopped" if graceful else f"killed after {timeout:.0f} s"
