"""Start a program as a detached, supervised background process.

``python -m airflow_stack.detach LOG PIDFILE -- PROGRAM ARGS...`` forks; the child starts a new
session (so its PID is also its process-group id: stop can reach its children by that PID alone),
sends stdout and stderr to LOG, and execs PROGRAM. The parent writes the child's PID and start time
to PIDFILE and exits at once, so the caller (``c.run``) returns. Airflow's own ``-D`` daemon mode
is not used: it has open bugs around pid files and logs (#50038, #36541, #38108).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from .airflow_config import SECRET_KEYS


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


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m airflow_stack.detach LOG PIDFILE -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    log, pidfile, program = argv[0], argv[1], argv[3:]
    pid = os.fork()
    if pid == 0:  # child
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(devnull)
        os.close(out)
        try:
            os.execvp(program[0], program)
        except OSError as exc:
            os.write(2, f"airflow-stack: cannot start {program[0]}: {exc}\n".encode())
            os._exit(127)
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"pid": pid, "started": time.time(), "argv": program, "env": fingerprint(dict(os.environ))}, fh)
    os.replace(tmp, pidfile)
    print(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
