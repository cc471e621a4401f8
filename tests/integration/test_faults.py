"""Failure recovery: a DAG run in flight when any component (scheduler, web, dag-processor, triggerer) is
killed with `kill -9` finishes after the component came back by itself (its supervisor, the resident launcher,
starts it again), with no task instance lost or stuck and the try numbers the kill explains. Both
executors, both lines (a killed Celery worker is test_celery's). Each test prints how long the
component took to be healthy again; the scheduler's also prints the PSS of one running task, the
figure the line profile holds (task_pss_mib)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil
import psycopg
import pytest

from airflow_stack.apache_airflow import profiles
from airflow_stack.apache_airflow.airflow_side import procgroup
from airflow_stack.netutil import wait_until
from airflow_stack.runtime import supervisor

from .conftest import EXECUTOR, LINE

pytestmark = pytest.mark.integration
DAG_ID = "fault_recovery"  # tests/integration/dags: three 10 s tasks at once, then one after them
HOLDS = 3
NOT_DONE = {"scheduled", "queued", "running", "up_for_retry", "up_for_reschedule", "restarting", "deferred"}


def task_instances(settings, run_id: str) -> list[tuple[str, str | None, int, int | None]]:
    """(task_id, state, try_number, pid) of every task instance of the run, read in PostgreSQL."""
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        return conn.execute("SELECT task_id, state, try_number, pid FROM task_instance WHERE dag_id = %s "
                            "AND run_id = %s ORDER BY task_id", (DAG_ID, run_id)).fetchall()


def run_state(settings, run_id: str) -> str:
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        return conn.execute("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s",
                            (DAG_ID, run_id)).fetchone()[0]


def pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Pss:")) / 1024


def print_task_memory(settings, pids: list[int]) -> None:
    """PSS of each running task: its task runner (the task instance's pid) and the process above it
    that supervises it (3.3 Local: the executor worker; Celery: the pool child or its fork)."""
    found = []
    for pid in pids:
        with contextlib.suppress(OSError, psutil.Error, StopIteration):
            found.append((pss_mib(pid), pss_mib(psutil.Process(pid).ppid())))
    if not found:
        return
    runner = sum(r for r, _ in found) / len(found)
    parent = sum(p for _, p in found) / len(found)
    print(f"\n[figure] one running task ({settings.airflow_line}, {EXECUTOR}, {len(found)} running): PSS task "
          f"runner {runner:.0f} + its supervisor {parent:.0f} = {runner + parent:.0f} MiB (doctor assumes "
          f"{profiles.of(settings).task_pss_mib[EXECUTOR]})")


def session_members(sid: int) -> list[int]:
    """Processes still in the session of a killed leader: task runners leave its process group, not this."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


# every Airflow component the line runs under both executors (a killed Celery worker is test_celery's)
KILLED = [comp.name for comp in profiles.get(LINE).components
          if not comp.optional and comp.executors == ("local", "celery")]


@pytest.mark.parametrize("name", KILLED)
def test_a_run_in_flight_finishes_after_its_killed_component_came_back_by_itself(stack, api, name):
    settings = stack.settings()
    component = profiles.of(settings).component(name)
    api.wait_for_dag(DAG_ID, timeout=90)
    api.unpause(DAG_ID)
    run_id = api.trigger(DAG_ID)

    def running_pids() -> list[int]:
        return [pid for _, state, _, pid in task_instances(settings, run_id) if state == "running" and pid]

    assert wait_until(lambda: len(running_pids()) == HOLDS, 90), task_instances(settings, run_id)
    time.sleep(1)  # in flight: each has most of its 10 s still to go
    assert len(running_pids()) == HOLDS  # the kill lands while all of them run
    if name == "scheduler":
        print_task_memory(settings, running_pids())

    victim = supervisor.running(settings, name)
    os.kill(victim.pid, signal.SIGKILL)  # the main process only, as when it crashes; its children live on
    killed = time.monotonic()

    def back() -> bool:  # started again by its supervisor, no command run, and healthy
        if (proc := supervisor.running(settings, name)) is None or proc.pid == victim.pid:
            return False  # not started again yet: asked in-process, `invoke status` costs 0.8 s of CPU a call
        row = stack.status()[name]
        return row["healthy"] and row["pid"] not in (None, victim.pid)

    assert wait_until(back, 60), stack.status()[name]
    healed = time.monotonic() - killed
    row = stack.status()[name]
    assert (row["restarts"], row["last_exit"]) == (1, -9), row
    assert procgroup.members(victim.pid) == []  # what it left in its process group was reaped

    assert wait_until(lambda: run_state(settings, run_id) in ("success", "failed"), 240), \
        task_instances(settings, run_id)
    ended = time.monotonic() - killed
    state, rows = run_state(settings, run_id), task_instances(settings, run_id)
    tries = ", ".join(f"{task_id} {try_number}" for task_id, _, try_number, _ in rows)
    print(f"\n[figure] kill -9 {name} ({settings.airflow_line}, {EXECUTOR}) under a running DAG run: "
          f"healthy again by itself after {healed:.1f} s; the run ended {state} {ended:.1f} s after the kill; "
          f"tries: {tries}")
    assert state == "success"
    assert len(rows) == HOLDS + 1 and {row[1] for row in rows} == {"success"}, rows
    assert not [row for row in rows if row[1] in NOT_DONE]
    # The tasks survive the kill (try 1) unless they ran inside the killed component's session and went
    # with it: a LocalExecutor scheduler whose task processes are reaped with it (reap_session); those
    # are failed by the heartbeat check and retried (try 2). The task after them runs once.
    went_with_it = component.reap_session and component.runs_tasks and EXECUTOR == "local"
    holds = {task_id: try_number for task_id, _, try_number, _ in rows if task_id != "after"}
    assert set(holds.values()) == {2 if went_with_it else 1}, rows
    assert [try_number for task_id, _, try_number, _ in rows if task_id == "after"] == [1], rows
    # task runners leave the killed leader's process group, but not its session: none is left behind
    assert wait_until(lambda: not session_members(victim.pid), 15), session_members(victim.pid)
