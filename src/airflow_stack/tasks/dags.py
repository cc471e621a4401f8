"""invoke dags.*: the project's DAGs checked before the scheduler sees them (dags.py)."""

from __future__ import annotations

import time

from invoke import Context, task

from ..errors import StackError
from ..project import dags as dags_mod
from ..runtime import registry
from ..settings import Settings
from ._common import one_line_errors, say, stack


def _ready(c: Context) -> Settings:
    """The settings, with the venv the stack would run (requirements.txt included) in place."""
    return stack(c).ensure_airflow()


@task(name="check")
@one_line_errors
def check(c: Context) -> None:
    """Parse the project's DAGs with the stack's Airflow; exit 1 on an import error, duplicate or cycle.

    Each error as file:line: message. No running stack needed (astro's `dev parse`)."""
    settings = _ready(c)
    began = time.monotonic()
    result = dags_mod.check(c, settings)
    say(*result.errors)
    took = time.monotonic() - began
    if result.errors:
        raise StackError(f"dags.check: {len(result.errors)} DAG file(s) with errors, {len(result.dags)} DAGs "
                         f"imported ({took:.1f} s)")
    say(f"dags.check: {len(result.dags)} DAGs import without errors from {settings.dags_folder} ({took:.1f} s)")


@task(name="test", positional=["dag_id"], help={
    "dag_id": "the DAG to run",
    "conf": "the run's conf, a JSON object, e.g. '{\"day\": \"2026-01-01\"}'",
})
@one_line_errors
def test(c: Context, dag_id: str, conf: str | None = None) -> None:
    """Run one DAG in-process against the stack's database (Airflow's `dags test`); exit 1 if a task fails.

    Task states and logs in the terminal; the stack's connections and variables (astro's `run`)."""
    settings = _ready(c)
    began = time.monotonic()
    dags_mod.test(c, settings, dag_id, conf, registry.executor(settings), bool(registry.running(settings)))
    say(f"dags.test: {dag_id} succeeded ({time.monotonic() - began:.1f} s)")


@task(name="pytest", help={"args": "more pytest arguments, e.g. '-k integrity -x'"})
@one_line_errors
def pytest_(c: Context, args: str = "") -> None:
    """Run the project's tests/dags with pytest in the stack's Airflow venv (astro's `dev pytest`)."""
    import shlex

    dags_mod.run_pytest(c, _ready(c), shlex.split(args))
