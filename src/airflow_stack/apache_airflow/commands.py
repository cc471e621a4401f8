"""The Airflow CLI and the stack's helper, run with the stack's Airflow and environment.

``run_cli``: ``airflow ARGS`` for a setup step (db migrate, users create, db clean ...), its output in
logs/NAME.log and a one-line error naming that log. ``run_helper``: airflow_side/airflow_helper.py on
Airflow's own Python for what only Airflow's code can answer (parse DAGs, read and write objects through
its models); its answer comes back as JSON in a private file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from invoke import Context

from .. import progress
from ..errors import StackError
from ..settings import Settings, redact
from ..statedir import write_private
from . import config, install

HELPER = Path(__file__).parent / "airflow_side" / "airflow_helper.py"


# A process's argv is readable by every local user (ps, /proc/PID/cmdline): a password must not be
# there. This runs Airflow's CLI in-process and appends `--password VALUE` from the environment to
# its sys.argv, which ps does not show.
PASSWORD_FROM_ENV = ("import os, sys; from airflow.__main__ import main; var = sys.argv.pop(); "
                     "sys.argv = ['airflow', *sys.argv[1:], '--password', os.environ[var]]; sys.exit(main())")


def run_cli(c: Context, settings: Settings, env: dict[str, str], args: str, log_name: str,
            password_var: str = "") -> None:
    """Run ``airflow ARGS`` with the stack's environment, its output appended to logs/<log_name>.log.
    ``password_var``: append ``--password`` with that environment variable's value, never on argv."""
    settings.paths.logs.mkdir(parents=True, exist_ok=True)
    log = settings.paths.log_file(log_name)
    if password_var:
        program = (f"{shlex.quote(str(install.airflow_python(settings)))} -c "
                   f"{shlex.quote(PASSWORD_FROM_ENV)} {args} {shlex.quote(password_var)}")
    else:
        program = f"{shlex.quote(str(install.airflow_bin(settings)))} {args}"
    cmd = f"{program} >> {shlex.quote(str(log))} 2>&1"
    began = log.stat().st_size if log.exists() else 0
    with progress.step(f"airflow {' '.join(args.split()[:2])}", progress.last_line(log)):
        result = c.run(cmd, env=env, hide=True, warn=True)
    if result.failed:
        reason = redact(failure_reason(log, began), settings)
        raise StackError(f"airflow {args.split()[0]} {args.split()[1] if len(args.split()) > 1 else ''} failed "
                         f"(exit {result.exited}): {reason} — full log: {log}")


# the line a Python traceback ends with: "sqlalchemy.exc.ProgrammingError: (...) could not ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b.*")


def failure_reason(log: Path, offset: int) -> str:
    """What a failed command wrote that says why: the last exception line of its traceback (SQLAlchemy's
    "Background on this error" link and other trailers come after it), else its last line."""
    with log.open("rb") as fh:
        fh.seek(max(offset, log.stat().st_size - 256 * 1024))  # its own output, at most the last 256 KiB
        lines = [line.strip() for line in fh.read().decode(errors="replace").splitlines() if line.strip()]
    found = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (found or lines or ["no output"])[-1][:500]


def run_helper(c: Context, settings: Settings, *args: str, payload: Any = None, what: str) -> Any:
    """Run airflow_helper.py with the stack's Airflow and environment; its JSON result."""
    env = config.process_environment(settings, config.environment(settings))
    settings.paths.make_private()
    input_file, result_file = settings.paths.helper_files(os.getpid())
    stdin = ""
    if payload is not None:  # values (passwords) travel in a private file, never on a command line
        write_private(input_file, json.dumps(payload))
        stdin = f" < {shlex.quote(str(input_file))}"
    python = shlex.quote(str(install.airflow_python(settings)))
    cmd = f"{python} {shlex.quote(str(HELPER))} {' '.join(map(shlex.quote, args))} {shlex.quote(str(result_file))}"
    try:
        result = c.run(cmd + stdin, env=env, replace_env=True, hide=True, warn=True, in_stream=False)
        if result.failed:
            lines = [ln for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
            last = redact(lines[-1], settings) if lines else f"exit {result.exited}"
            raise StackError(f"{what} failed: {last}")
        return json.loads(result_file.read_text())
    finally:
        input_file.unlink(missing_ok=True)
        result_file.unlink(missing_ok=True)
