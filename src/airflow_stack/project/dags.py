"""The project's DAGs checked before the scheduler sees them: parse (dags.check), run one in-process
(dags.test, Airflow's `dags test`), and the project's own tests/dags with pytest (dags.pytest) — the
astro CLI's `dev parse`, `run` and `dev pytest`, with the stack's own Airflow and environment.
"""

from __future__ import annotations

import difflib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from invoke import Context

from ..apache_airflow import commands, config, install
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


def test(c: Context, settings: Settings, dag_id: str, conf: str | None = None) -> None:
    """Run one DAG in this process with Airflow's `dags test`: its tasks' states and logs stream to the
    terminal; a failed run is an error (exit 1)."""
    if conf is not None:
        try:
            if not isinstance(json.loads(conf), dict):
                raise ValueError
        except ValueError:
            raise StackError(f"--conf {conf!r} is not a JSON object; give e.g. --conf '{{\"key\": \"value\"}}'") \
                from None
    parsed = check(c, settings)  # a wrong name gets one line, not Airflow's traceback
    if dag_id not in parsed.dags:
        broken = f"; {len(parsed.errors)} file(s) do not import (invoke dags.check)" if parsed.errors else ""
        close = difflib.get_close_matches(dag_id, parsed.dags, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"DAGs: {', '.join(parsed.dags[:10]) or 'none'}"
        raise StackError(f"dags.test: no DAG {dag_id!r} in {settings.dags_folder}{broken}; {hint}")
    env = config.process_environment(settings, config.environment(settings))
    cmd = f"{shlex.quote(str(install.airflow_bin(settings)))} dags test {shlex.quote(dag_id)}"
    if conf is not None:
        cmd += f" --conf {shlex.quote(conf)}"
    result = c.run(cmd, env=env, replace_env=True, warn=True, in_stream=False, pty=False)
    if result.failed:
        raise StackError(f"dags.test: the run of {dag_id} failed (task states and logs above)")


def run_pytest(c: Context, settings: Settings, args: list[str]) -> None:
    """pytest over the project's tests/dags with the stack's Airflow venv and environment."""
    proj = folder.get(settings)
    proj.check()
    if not proj.tests.is_dir():
        raise StackError(f"{proj.tests} does not exist; put the project's DAG tests there (as in an astro project)")
    python = install.airflow_python(settings)
    if c.run(f"{shlex.quote(str(python))} -c 'import pytest'", hide=True, warn=True).failed:
        # the astro runtime image carries pytest too; it stays out of what components import
        c.run(f"{shlex.quote(install.uv_bin())} pip install -q --python {shlex.quote(str(python))} pytest",
              hide=True, in_stream=False)
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
