"""`invoke restart`: everything that runs gets new processes with the same executor (extra workers with the
same queues), all healthy; `restart -c scheduler` gives the scheduler alone a new process; a component
that does not run is one line. Both executors, the default release."""

from __future__ import annotations

import json
import time

import pytest

from airflow_stack.apache_airflow import profiles
from airflow_stack.runtime import registry, supervisor

from .conftest import EXECUTOR

pytestmark = pytest.mark.integration


def running(stack) -> dict[str, dict]:
    """name -> its status row, for what runs (PostgreSQL is not the stack's to restart)."""
    rows = json.loads(stack.inv("status", "--json", check=False).stdout)
    return {row["name"]: row for row in rows if row["up"] and row["name"] != "postgresql"}


def test_restart_gives_everything_new_processes_with_the_same_choices(stack, airflow_up):
    settings = stack.settings()
    try:
        check_restart(stack, settings)
    finally:  # the extra processes go whether it passed or not: the tests after this one count what runs
        if EXECUTOR == "celery":
            stack.inv("stop", "-c", "flower", check=False)
            stack.inv("stop", "-c", "worker-again", check=False)


def check_restart(stack, settings) -> None:
    if EXECUTOR == "celery":  # Flower and an extra worker with queues and slots of its own come back as they ran
        stack.inv("run.celery", "--flower")
        stack.inv("run.worker", "--name", "again", "--queues", "again,default", "--concurrency", "2")
    before, recorded = running(stack), registry.recorded(settings)
    argv = {name: supervisor.running(settings, name).argv for name in before}
    began = time.monotonic()
    out = stack.inv("restart").stdout
    seconds = time.monotonic() - began
    stack.inv("status")  # exit 0: every component up and healthy
    after = running(stack)
    assert set(after) == set(before) and "redis" in after, out
    assert all(after[name]["pid"] != row["pid"] for name, row in before.items()), (before, after)
    assert registry.recorded(settings) == recorded == {"executor": EXECUTOR, "line": settings.airflow_line,
                                                       "release": profiles.release(settings)}
    executors = {supervisor.running(settings, name).env.get("AIRFLOW__CORE__EXECUTOR")
                 for name, row in after.items() if name not in ("redis", "memcached", "backups")}
    assert executors == {"CeleryExecutor" if EXECUTOR == "celery" else "LocalExecutor"}
    # extra Celery workers (run.worker) and Redis come back with the argv they ran with: queues, slots, config
    assert {name: supervisor.running(settings, name).argv for name in after
            if name.startswith("worker-") or name == "redis"} == {
        name: args for name, args in argv.items() if name.startswith("worker-") or name == "redis"}
    print(f"\n[figure] invoke restart ({settings.airflow_line}, {EXECUTOR}, {len(before)} processes: "
          f"{', '.join(before)}): {seconds:.1f} s to all healthy again")
    if EXECUTOR == "celery":
        assert {"flower", "worker-again"} <= set(after)


def test_restart_of_one_component_restarts_only_it(stack, airflow_up):
    before = running(stack)
    out = stack.inv("restart", "-c", "scheduler").stdout
    after = running(stack)
    assert after["scheduler"]["pid"] != before["scheduler"]["pid"] and after["scheduler"]["healthy"], out
    assert {name: row["pid"] for name, row in after.items() if name != "scheduler"} == {
        name: row["pid"] for name, row in before.items() if name != "scheduler"}
    assert out.splitlines()[0] == "restart: scheduler: stopped" and "started scheduler again" in out


def test_restart_of_a_component_that_does_not_run_is_one_line(stack, airflow_up):
    before = {name: row["pid"] for name, row in running(stack).items()}
    assert "flower" not in before
    proc = stack.inv("restart", "-c", "flower", check=False)
    said = "start it: invoke run.celery --flower" if EXECUTOR == "celery" else "the local executor does not run it"
    assert proc.returncode == 1 and proc.stderr.strip() == f"flower is not running; {said}"
    assert {name: row["pid"] for name, row in running(stack).items()} == before  # nothing stopped
