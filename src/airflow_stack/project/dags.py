"""The project's DAGs checked before the scheduler sees them: parse (dags.check), run one in-process
(dags.test, Airflow's `dags test`), and the project's own tests/dags with pytest (dags.pytest) — the
astro CLI's `dev parse`, `run` and `dev pytest`, with the stack's own Airflow and environment.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
from invoke import Context

from .. import locks, statedir
from ..apache_airflow import commands, config, install, profiles
from ..errors import StackError
from ..settings import Settings
from . import folder


@dataclass
class CheckResult:
    dags: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "file:line: message"


def check(c: Context, settings: Settings) -> CheckResult:
    """Parse every DAG file of the project with the stack's Airflow (import errors, duplicate dag_ids
    and cycles, as the DAG processor would report them). Needs the venv, not a running stack."""
    proj = folder.get(settings)
    proj.check()
    found = commands.run_helper(c, settings, "check-dags", str(proj.dags), what="parsing the DAGs")
    result = CheckResult(dags=list(found["dags"]))
    for error in found["errors"]:
        path = Path(error["file"])
        shown = path.relative_to(proj.root) if path.is_relative_to(proj.root) else path
        where = f"{shown}:{error['line']}" if error.get("line") else f"{shown}"
        result.errors.append(f"{where}: {error['message']}")
    return result


def _in_database(settings: Settings, dag_id: str) -> tuple[Path | None, bool | None]:
    """(its file, whether it is paused) as the stack's database has the DAG; (None, None): not there (not parsed
    yet, or no database to ask)."""
    try:
        with psycopg.connect(**settings.pg_conninfo(connect_timeout=3)) as conn:
            row = conn.execute("SELECT fileloc, is_paused FROM dag WHERE dag_id = %s", (dag_id,)).fetchone()
    except psycopg.Error:
        return None, None
    return (Path(row[0]) if row[0] else None, bool(row[1])) if row else (None, None)


def _set_paused(settings: Settings, dag_id: str, paused: bool) -> None:
    with psycopg.connect(**settings.pg_conninfo(connect_timeout=5), autocommit=True) as conn:
        conn.execute("UPDATE dag SET is_paused = %s WHERE dag_id = %s", (paused, dag_id))


def restore_paused_flags(settings: Settings) -> list[str]:
    """The DAGs a `dags.test` paused and could not unpause (it was killed): their flags as they were."""
    restored = []
    for note in settings.paths.run.glob("dags-test-*.json") if settings.paths.run.is_dir() else []:
        try:
            found = json.loads(note.read_text())
            if psutil.pid_exists(int(found["pid"])):
                continue  # that dags.test still runs
            _set_paused(settings, str(found["dag_id"]), bool(found["was_paused"]))
        except (ValueError, KeyError, TypeError, psycopg.Error):
            continue
        note.unlink(missing_ok=True)
        restored.append(str(found["dag_id"]))
    return restored


@contextlib.contextmanager
def scheduler_kept_off(settings: Settings, dag_id: str, paused: bool | None, stack_runs: bool) -> Iterator[None]:
    """`dags test` runs the DAG in this process, but its run is in the stack's database: a running stack's
    scheduler would start its tasks too (seen: "Cannot start Task Instance in invalid state"). While it runs,
    the DAG is paused (a paused DAG's runs are never examined by the scheduler), then its flag is put back;
    a note in the state dir lets the next dags.test put it back if this one is killed in between."""
    if paused is not False or not stack_runs:
        yield  # paused already, or no scheduler: nothing to keep off
        return
    note = settings.paths.dags_test_note(dag_id)
    statedir.write_private(note, json.dumps({"dag_id": dag_id, "was_paused": False, "pid": os.getpid()}))
    _set_paused(settings, dag_id, True)
    try:
        yield
    finally:
        _set_paused(settings, dag_id, False)
        note.unlink(missing_ok=True)


def test(c: Context, settings: Settings, dag_id: str, conf: str | None = None, executor: str = "",
         stack_runs: bool = False) -> None:
    """Run one DAG in this process with Airflow's `dags test`: its tasks' states and logs stream to the
    terminal; a failed run is an error (exit 1). On a running stack (``stack_runs``, with ``executor``), never
    raced by its scheduler."""
    if conf is not None:
        try:
            if not isinstance(json.loads(conf), dict):
                raise ValueError
        except ValueError:
            raise StackError(f"--conf {conf!r} is not a JSON object; give e.g. --conf '{{\"key\": \"value\"}}'") \
                from None
    with locks.exclusive(settings, f"invoke dags.test {dag_id}", path=settings.paths.dags_test_lock(dag_id)):
        restore_paused_flags(settings)
        dag_file, paused = _in_database(settings, dag_id)
        if dag_file is None or not dag_file.exists():
            parsed = check(c, settings)  # a wrong name gets one line, not Airflow's traceback
            if dag_id not in parsed.dags:
                broken = f"; {len(parsed.errors)} file(s) do not import (invoke dags.check)" if parsed.errors else ""
                close = difflib.get_close_matches(dag_id, parsed.dags, n=3)
                hint = (f"did you mean {', '.join(close)}?" if close
                        else f"DAGs: {', '.join(parsed.dags[:10]) or 'none'}")
                raise StackError(f"dags.test: no DAG {dag_id!r} in {settings.dags_folder}{broken}; {hint}")
        env = config.process_environment(settings, config.environment(settings, executor or None))
        # Airflow's `dags test`, through the helper: it builds the in-process execution API once per run
        cmd = (f"{shlex.quote(str(install.airflow_python(settings)))} {shlex.quote(str(commands.HELPER))} "
               f"dags-test {shlex.quote(dag_id)}")
        if dag_file is not None and dag_file.exists():  # parse that file alone, not the whole folder
            cmd += f" {profiles.of(settings).dag_file_option} {shlex.quote(str(dag_file))}"
        if conf is not None:
            cmd += f" --conf {shlex.quote(conf)}"
        with scheduler_kept_off(settings, dag_id, paused, stack_runs):
            result = c.run(cmd, env=env, replace_env=True, warn=True, in_stream=False, pty=False)
    if result.failed:
        raise StackError(f"dags.test: the run of {dag_id} failed (task states and logs above)")


def run_pytest(c: Context, settings: Settings, args: list[str]) -> None:
    """pytest over the project's tests/dags with the stack's Airflow venv and environment."""
    proj = folder.get(settings)
    proj.check()
    if not proj.tests.is_dir():
        raise StackError(f"{proj.tests} does not exist; put the project's DAG tests there (as in an astro project)")
    python = install.airflow_python(settings)  # pytest is in its lock (as in the astro runtime image)
    env = config.process_environment(settings, config.environment(settings))
    # the project's folder is the test root: conftest.py files above it (this repo's, when the project is
    # the repo itself) are not the project's and must not load into Airflow's venv
    cmd = (f"{shlex.quote(str(python))} -m pytest -p no:cacheprovider --rootdir {shlex.quote(str(proj.tests))} "
           f"--confcutdir {shlex.quote(str(proj.tests))} {shlex.quote(str(proj.tests))} "
           f"{' '.join(map(shlex.quote, args))}")
    with c.cd(str(proj.root)):
        result = c.run(cmd, env=env, replace_env=True, warn=True, in_stream=False)
    if result.failed:
        raise StackError(f"dags.pytest: the project's tests failed (exit {result.exited}; output above)",
                         code=result.exited or 1)
