"""Start supervised background processes; Airflow's from one process that imported Airflow once.

    python launcher.py SPEC.json

SPEC: ``{"preload": [module, ...] | null, "processes": [{"name", "argv", "log", "pidfile", "metafile",
"env", "boot", "preload"}, ...]}``.

Every process is forked into a session of its own (so its PID is also its process-group id, and
``supervisor.stop`` reaches its children through that one number), with stdin on /dev/null and
stdout + stderr appended to its log. The launcher writes each pid file (the PID alone) and the
record beside it (start time, boot, argv and the launching environment's fingerprint, which
``doctor`` compares), prints ``{name: pid}`` and exits; the processes run on, detached. Airflow's
own ``-D`` daemon mode is not used: it has open bugs around pid files and logs (#50038, #36541,
#38108).

Without ``preload`` each child execs its argv: any program (our Redis, a Celery worker).

With ``preload`` (Airflow's components, on Linux) the launcher runs on the Airflow venv's Python,
imports Airflow, its CLI and the listed modules once, freezes the garbage collector, and each child
then runs Airflow's CLI ``main()`` in-process with its argv. Every ``airflow`` command otherwise spends
~2.5 s of CPU importing Airflow before it does anything, four of them at once on a small machine;
imported once, the children also share those pages copy-on-write instead of each holding its own.
This is the preload that gunicorn (``--preload``) and Airflow itself (``mp_forkserver_preload``,
``gc.freeze`` before its own forks) use. Forking is only safe while the launcher holds no thread
but the main one and no socket (a database connection, say): if the preload left either, or this is
not Linux (macOS frameworks refuse fork after import), every child execs its argv instead.
The preload is best effort, module by module: a module that fails to import (renamed in another
Airflow release, say) costs only the component that wanted it, which then execs its argv, with one
line in its log saying why.

The standard library and psutil only (Airflow's own Python has psutil: Airflow depends on it), and our
procgroup.py and upkeep.py beside it, loaded by their paths: it runs with nothing of ours installed there. No /proc: the
same code runs on Linux and macOS.
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts this file's folder first on sys.path, and every process forked from here
# would import our helper modules by their bare names: take it off before importing anything else.
if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import gc
import importlib
import importlib.util
import json
import stat
import threading
import time


def _load(name: str):
    """A module of ours beside this file, under a name of its own (this folder is not on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"airflow_stack_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


procgroup = _load("procgroup")  # process groups and sessions, through psutil
upkeep = _load("upkeep")  # log rotation and the liveness watch


def open_sockets() -> list[int]:
    """File descriptors of this process that are sockets (a fork would share them)."""
    found = []
    for entry in os.listdir("/dev/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(entry)).st_mode):
                found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def preload(modules: list[str]) -> str:
    """Import ``modules`` (Airflow's CLI first); return '' while forking is safe, else the reason.

    A module that fails to import is reported in the reason; forking stays safe for the components
    that do not need it (see ``fork_unsafe``)."""
    if not sys.platform.startswith("linux"):
        return f"no preload on {sys.platform}"
    if "airflow.cli.cli_parser" not in sys.modules:
        try:
            from airflow.cli import cli_parser

            cli_parser.get_parser()  # the argument tree, with every provider's commands
        except Exception as exc:
            return f"cannot preload airflow.cli.cli_parser ({exc.__class__.__name__}: {exc})"
    failed = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed.append(f"cannot preload {module} ({exc.__class__.__name__}: {exc})")
    if failed:
        return "IMPORT " + "; ".join(failed)
    return fork_unsafe()


def fork_unsafe() -> str:
    """'' while this process may fork children that go on running Airflow, else the reason."""
    if threading.active_count() > 1:
        return f"the preload started {threading.active_count() - 1} thread(s)"
    if open_sockets():
        return "the preload opened a socket"
    gc.collect()
    gc.freeze()  # what is imported now stays shared: no collection writes to those pages
    return ""


def _redirect(log: str) -> None:
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(devnull)
    os.close(out)


def _exec(argv: list[str]) -> None:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"airflow-stack: cannot start {argv[0]}: {exc}\n".encode())
        os._exit(127)


def _run_airflow(argv: list[str]) -> None:
    """The child of a preloaded launcher: become ``airflow ARGS`` without a new interpreter."""
    sys.argv = list(argv)
    sys.path[0:0] = [os.path.dirname(argv[0])]  # as the ``airflow`` script itself would have it
    try:
        import setproctitle  # Airflow depends on it; ps then shows the command, not the launcher

        setproctitle.setproctitle(" ".join(argv))
    except ImportError:
        pass
    from airflow.__main__ import main

    sys.exit(main())


def _write(path: str, text: str, mode: int) -> None:
    """A new file moved over ``path``: a reader never sees it half written, and a link planted at the
    temporary name is neither followed nor written through (O_EXCL | O_NOFOLLOW)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:  # left by a process of this PID that died mid-write
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


# the resident supervisor's pipe to the process that waits for the PIDs: no child may keep it open
_report_fd: int | None = None
_in_child = False  # set in a forked child: an exit there (Airflow's CLI ends with SystemExit) is its own


class Child:
    """One supervised process: its spec, how it starts (fork or exec), and its restart history."""

    def __init__(self, proc: dict, reason: str) -> None:
        self.proc = proc
        self.reason = reason  # "": forked from the preload; else why it execs ("exec" when nothing was preloaded)
        self.pid = 0
        self.started = 0.0
        self.restarts = 0
        self.last_exit: int | None = None
        self.streak = 0  # crashes in a row, each soon after its start: the back-off grows with it
        self.due = 0.0  # monotonic time of a pending restart (0: none)
        self.failing_since: float | None = None  # monotonic time its liveness URL first failed, in a row
        self.stopped_hung = 0.0  # monotonic time it was sent SIGTERM for failing too long (0: not)

    def start(self, preloaded: bool) -> int:
        reason = self.reason if preloaded or self.reason else "exec"
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered may be written twice
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            global _in_child
            _in_child = True
            if _report_fd is not None:
                os.close(_report_fd)
            _redirect(self.proc["log"])
            if reason not in ("", "exec"):
                os.write(2, f"airflow-stack launcher: {self.proc['name']} starts on its own ({reason})\n".encode())
            if reason:
                _exec(self.proc["argv"])
            _run_airflow(self.proc["argv"])
        self.pid, self.started = pid, time.time()
        self.failing_since, self.stopped_hung = None, 0.0
        self.write_record()
        return pid

    def write_record(self) -> None:
        _write(self.proc["pidfile"], f"{self.pid}\n", 0o644)
        if self.proc.get("metafile"):
            record = {"started": self.started, "boot": self.proc.get("boot"), "argv": self.proc["argv"],
                      "env": self.proc.get("env", {}), "supervisor": os.getpid(), "restarts": self.restarts,
                      "last_exit": self.last_exit, **self.proc.get("record", {})}
            _write(self.proc["metafile"], json.dumps(record), 0o600)

    def wanted(self) -> bool:
        """Still meant to run: its pid file names it. `invoke stop` removes the pid file first, and a
        new start writes another PID there: either way this child is no longer to be restarted."""
        return _read(self.proc["pidfile"]) == str(self.pid)


def launch(spec: dict) -> list[Child]:
    """Start ``spec``'s processes in order; with a preload, each one's own modules are imported just
    before it is forked (so the first can get going on the other core while the rest load theirs)."""
    unsafe = preload(spec["preload"]) if spec.get("preload") is not None else "exec"
    children = []
    for proc in spec["processes"]:
        # this component's own reason to exec (a module of its own failed to import), or the launcher's
        reason = unsafe
        if unsafe.startswith("IMPORT "):  # a shared module failed: forking stays safe, but none is complete
            reason = unsafe.removeprefix("IMPORT ")
        elif not unsafe and proc.get("preload"):
            reason = preload(proc["preload"])
            if reason.startswith("IMPORT "):
                reason = reason.removeprefix("IMPORT ")
                unsafe = fork_unsafe()  # later components may still fork, unless the import left a thread
            else:
                unsafe = reason
        child = Child(proc, reason)
        child.start(preloaded=True)
        children.append(child)
    return children


# ---- the resident supervisor -------------------------------------------------------------------
POLL = 0.5  # seconds between looks at the children (waitpid is polled: the loop also rotates logs)
BACKOFF_MAX = 30.0  # a component that keeps crashing is tried again at most this often
STEADY = 60.0  # seconds a restarted child must live before its crash streak is forgotten
ROTATE_EVERY = 30.0


def backoff(streak: int) -> float:
    """Seconds before restart number ``streak`` of a crash streak: 1, 2, 4, 8, 16, 30, 30, ..."""
    return min(BACKOFF_MAX, 2.0 ** max(0, streak - 1))


def supervise(spec: dict, children: list[Child]) -> None:
    """Restart children that die (kill -9, out of memory, a lost database), with back-off, until
    every child was stopped on purpose; rotate their logs. Runs in the launcher, which keeps the
    preload: a restart is a fork again, not a new import."""
    by_pid = {child.pid: child for child in children}
    pending: list[Child] = []
    last_rotation = last_liveness = 0.0
    while by_pid or pending:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid and pid in by_pid:
            child = by_pid.pop(pid)
            child.last_exit = os.waitstatus_to_exitcode(status)
            if child.wanted():
                procgroup.reap(pid, child.proc.get("reap_session", False))
                child.streak = child.streak + 1 if time.time() - child.started < STEADY else 1
                child.due = time.monotonic() + backoff(child.streak)
                child.write_record()  # its last exit code, while it waits
                pending.append(child)
            continue  # look again at once: more may have exited
        now = time.monotonic()
        for child in [c for c in pending if c.due <= now]:
            pending.remove(child)
            if not child.wanted():  # stopped, or started anew by someone else, while it waited
                continue
            child.restarts += 1
            with open(child.proc["log"], "a") as log:
                log.write(f"\n==== airflow-stack: restarting {child.proc['name']} at "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')} after exit {child.last_exit} "
                          f"(restart {child.restarts}) ====\n")
            by_pid[child.start(preloaded=not fork_unsafe())] = child
        if now - last_liveness >= upkeep.LIVENESS_EVERY:
            last_liveness = now
            upkeep.watch_liveness(list(by_pid.values()), spec.get("liveness_seconds", 0), now)
        if now - last_rotation >= ROTATE_EVERY:
            last_rotation = now
            for child in [*by_pid.values(), *pending]:
                upkeep.rotate(child.proc["log"], spec.get("log_max_bytes", 0), spec.get("log_keep", 3))
        time.sleep(POLL)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python launcher.py SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        spec = json.load(fh)
    if not spec.get("resident"):
        children = launch(spec)
        print(json.dumps({child.proc["name"]: child.pid for child in children}), flush=True)
        return 0
    # Resident: a supervisor process of its own (its own session, detached) starts the children, so
    # that it is their parent and learns of their deaths; this process reports their PIDs and exits.
    global _report_fd
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(read_end)
        _redirect(spec["log"])
        _report_fd = write_end
        try:
            children = launch(spec)
            os.write(write_end, json.dumps({child.proc["name"]: child.pid for child in children}).encode())
            os.close(write_end)
            _report_fd = None
            supervise(spec, children)
        except BaseException:
            if _in_child:  # a component ending: its own exit, through the interpreter's
                raise
            import traceback  # the supervisor itself never returns into the caller's code

            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        reported = fh.read()
    if not reported:
        print(f"the supervisor exited before it started anything; see {spec['log']}", file=sys.stderr)
        return 1
    print(reported, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
