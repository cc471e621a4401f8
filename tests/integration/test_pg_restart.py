"""PostgreSQL restarted under a running stack, with a DAG run in flight: every component comes back by
itself, no command run, and the run ends in success; and a database the stack migrated that is gone from
the server is explained, never re-made empty; and two stacks that find the server stopped both set up on it
when they start it at the same moment.

Done against a PostgreSQL cluster the test creates for itself (Debian's pg_createcluster, on a free
port) and drops afterwards: the shared server, and whatever else it serves, is never restarted."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import time

import psycopg
import pytest

from airflow_stack.apache_airflow import profiles
from airflow_stack.netutil import wait_until
from airflow_stack.runtime import supervisor

from .conftest import LINE, TEST_DAGS, Stack, airflow_api
from .test_bad_input import assert_one_line_error
from .test_faults import DAG_ID, HOLDS, run_state, task_instances

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]


@pytest.fixture(scope="module")
def cluster(clusters):
    """A cluster of the installed major version, of our own, started on a free port."""
    with clusters("r") as made:
        yield made


@pytest.fixture(scope="module")
def pg_stack(cluster, tmp_path_factory):
    port = cluster[2]
    state = tmp_path_factory.mktemp("pg-restart")
    shutil.copytree(TEST_DAGS, state / "dags")
    # a task whose process did not survive is failed after 20 s without heartbeat, not 300 s (both lines' names)
    extra = {"STACK_PG_PORT": str(port), "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
             "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": "20",
             # a restarted scheduler adopts or resets the task instances its predecessor left "running" (on 2.11
             # their `airflow tasks run` died with the database) after 30 s, not Airflow's 300 s
             "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
             # a hung component is restarted after 30 s without an answer, not the default 120 s
             "STACK_LIVENESS_SECONDS": "30"}
    stack = Stack.create(state, LINE, "local", state, f"ast_pgr_{os.getpid()}", extra)
    try:
        stack.inv("up", timeout=900)
        yield stack
    finally:
        survivors = stack.teardown()
        assert not survivors, f"processes survived invoke stop: {survivors}"


def test_every_component_and_a_run_in_flight_come_back_by_themselves_after_postgresql_restarts(pg_stack, cluster):
    version, name, _ = cluster
    settings = pg_stack.settings()
    before = pg_stack.status()
    assert all(row["healthy"] for row in before.values()), before
    api = airflow_api(settings)
    api.wait_for_dag(DAG_ID, timeout=90)
    api.unpause(DAG_ID)
    run_id = api.trigger(DAG_ID)  # three 10 s tasks at once, then one after them

    def running() -> list[str]:
        return [task for task, state, _, _ in task_instances(settings, run_id) if state == "running"]

    assert wait_until(lambda: len(running()) == HOLDS, 90), task_instances(settings, run_id)
    subprocess.run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], check=True, stdin=subprocess.DEVNULL)
    time.sleep(10)  # down long enough for every component to notice, and for the tasks to end their sleep
    down = pg_stack.status()
    subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    assert wait_until(lambda: all(row["up"] and row["healthy"] for row in pg_stack.status().values()), 120), \
        pg_stack.status()
    healed = time.monotonic() - started
    after = pg_stack.status()
    came_back = sorted(n for n in after if after[n]["pid"] != before[n]["pid"] or after[n]["restarts"])
    noticed = sorted(n for n, row in down.items() if not row["healthy"])
    # the run that was in flight ends in success, no command run, every task instance done
    assert wait_until(lambda: run_state(settings, run_id) in ("success", "failed"), 300), \
        task_instances(settings, run_id)
    ended = time.monotonic() - started
    instances = task_instances(settings, run_id)
    tries = ", ".join(f"{task} {try_number}" for task, _, try_number, _ in instances)
    print(f"\n[figure] PostgreSQL stopped 10 s under a running DAG run, then started ({settings.airflow_line}): "
          f"every component healthy {healed:.1f} s after the start, no command run; started again by their "
          f"supervisor: {came_back or 'none'}; unhealthy while it was down: {noticed}; the run ended "
          f"{run_state(settings, run_id)} {ended:.1f} s after the start; tries: {tries}")
    assert run_state(settings, run_id) == "success", instances
    assert len(instances) == HOLDS + 1 and {state for _, state, _, _ in instances} == {"success"}, instances
    # and a new run goes through as on any day
    assert api.wait_for_run(DAG_ID, api.trigger(DAG_ID)) == "success"


def hung_candidate(settings) -> str:
    """The component the hang test freezes: the scheduler where it has a health URL (3.x; the 2.11 line runs
    it without Airflow's health server, see its profile), else the web component."""
    scheduler = profiles.of(settings).component("scheduler")
    return "scheduler" if scheduler.probe.liveness_url(settings) else profiles.of(settings).web.name


def test_a_hung_component_is_stopped_and_started_again_by_its_supervisor(pg_stack):
    """A component that no longer works but does not exit (here: SIGSTOP of its process group; after a lost
    database, Airflow 3's LocalExecutor can hang the scheduler in its shutdown the same way): its health
    endpoint fails, and after STACK_LIVENESS_SECONDS its supervisor stops it (SIGTERM, then SIGKILL) and
    starts it again."""
    settings = pg_stack.settings()
    name = hung_candidate(settings)
    victim = supervisor.running(settings, name)
    os.killpg(victim.pid, signal.SIGSTOP)  # the whole group: gunicorn's workers would answer for their master
    stopped = time.monotonic()
    try:
        # the wait asks the registry (in-process), not `invoke status` (0.8 s of CPU a call, taken from the
        # components being restarted); status is asked once it is back
        assert wait_until(lambda: (p := supervisor.running(settings, name)) is not None and p.pid != victim.pid,
                          240), pg_stack.status()[name]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGCONT)
    assert wait_until(lambda: pg_stack.status()[name]["healthy"], 90), pg_stack.status()[name]
    healed = time.monotonic() - stopped
    row = pg_stack.status()[name]
    assert row["last_exit"] in (-15, -9) and row["restarts"] >= 1, row
    assert "has not answered" in settings.paths.log_file(name).read_text()
    print(f"\n[figure] a hung {name} (SIGSTOP; liveness {settings.liveness_seconds} s): working again by itself "
          f"after {healed:.0f} s, last exit {row['last_exit']}")
    api = airflow_api(settings)
    assert api.wait_for_run(DAG_ID, api.trigger(DAG_ID)) == "success"


def test_a_database_gone_from_the_server_is_explained_not_recreated_empty(pg_stack, cluster):
    """What a major upgrade on apt can look like from the stack (a new, empty cluster answers on the
    port): the database this stack migrated is missing. Here it is dropped behind the stack's back."""
    port = cluster[2]
    settings = pg_stack.settings()
    pg_stack.inv("stop")
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p", str(port), "-c",
                    f'DROP DATABASE "{settings.pg_database}" WITH (FORCE)'], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    for task in (("setup.postgres",), ("up",)):
        line = assert_one_line_error(pg_stack.inv(*task, check=False), "no empty one is created",
                                     "--new-database")
        assert settings.pg_database in line
    with psycopg.connect(host="127.0.0.1", port=port, dbname="postgres", user=settings.pg_user,
                         password=settings.pg_password) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (settings.pg_database,)).fetchone()[0] == 0  # not re-made
    out = pg_stack.inv("setup.postgres", "--new-database").stdout
    assert f"created database {settings.pg_database}" in out


def test_two_stacks_that_find_the_server_stopped_set_up_at_once(clusters, tmp_path_factory):
    """Two stacks whose machine-wide locks live apart (CI's two test lanes: each a user state folder of its own)
    both find the server stopped and start it at the same moment; the loser's pg_ctlcluster fails on the
    winner's postmaster.pid (CI, 2026-12-07: a whole session failed at its first setup). Both must set up
    on the server the winner started. A race, so a few rounds: before the fix, 3 of 3 lost one side."""
    with clusters("s") as (version, name, port):
        # nested state dirs: each sandbox's user state folder is its parent's, so the two are apart
        bases = [tmp_path_factory.mktemp(f"race{side}") for side in "ab"]
        stacks = [Stack.create(base / "state", LINE, "local", base, f"ast_race{side}_{os.getpid()}",
                               {"STACK_PG_PORT": str(port)}) for base, side in zip(bases, "ab", strict=True)]
        try:
            for _ in range(3):
                subprocess.run(["pg_ctlcluster", version, name, "stop"], check=True, capture_output=True,
                               stdin=subprocess.DEVNULL)
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    runs = list(pool.map(lambda s: s.inv("setup.postgres", check=False), stacks))
                for run in runs:
                    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
        finally:
            for stack in stacks:
                stack.teardown()
