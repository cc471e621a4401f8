"""Start supervised background processes; Airflow's from one process that imported Airflow once.

    python launcher.py SPEC.json

SPEC: ``{"preload": [module, ...] | null, "processes": [{"name", "argv", "log", "pidfile", "env",
"preload"}, ...]}``.

Every process is forked into a session of its own (so its PID is also its process-group id, and
``supervisor.stop`` reaches its children through that one number), with stdin on /dev/null and
stdout + stderr appended to its log. The launcher writes each pid file (PID, start time, argv and
the launching environment's fingerprint, which ``doctor`` compares), prints ``{name: pid}`` and
exits; the processes run on, detached. Airflow's own ``-D`` daemon mode is not used: it has open
bugs around pid files and logs (#50038, #36541, #38108).

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

Standard library only: it runs on whichever Python starts it, with nothing of ours installed there.
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts this file's folder first on sys.path, where our platform.py and
# secrets.py would shadow the standard library's: take it off before importing anything else.
if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import gc
import importlib
import json
import stat
import threading
import time


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
    """Import ``modules`` (Airflow's CLI first); return '' while forking is safe, else the reason."""
    if not sys.platform.startswith("linux"):
        return f"no preload on {sys.platform}"
    if "airflow.cli.cli_parser" not in sys.modules:
        from airflow.cli import cli_parser

        cli_parser.get_parser()  # the argument tree, with every provider's commands
    for module in modules:
        importlib.import_module(module)
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


def launch(spec: dict) -> dict[str, int]:
    """Start ``spec``'s processes in order; with a preload, each one's own modules are imported just
    before it is forked (so the first can get going on the other core while the rest load theirs)."""
    unsafe = preload(spec["preload"]) if spec.get("preload") is not None else "exec"
    pids: dict[str, int] = {}
    for proc in spec["processes"]:
        if not unsafe and proc.get("preload"):
            unsafe = preload(proc["preload"])
        if unsafe not in ("", "exec"):
            print(f"airflow-stack launcher: {proc['name']} starts on its own ({unsafe})", file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered may be written twice
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            _redirect(proc["log"])
            if unsafe:
                _exec(proc["argv"])
            _run_airflow(proc["argv"])
        started = time.time()
        tmp = proc["pidfile"] + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"pid": pid, "started": started, "argv": proc["argv"], "env": proc.get("env", {})}, fh)
        os.replace(tmp, proc["pidfile"])
        pids[proc["name"]] = pid
    return pids


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python launcher.py SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        spec = json.load(fh)
    print(json.dumps(launch(spec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
