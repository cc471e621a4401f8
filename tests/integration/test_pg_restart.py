"""PostgreSQL restarted under a running stack: every component comes back by itself, no command run;
and a database the stack migrated that is gone from the server is explained, never re-made empty.

Done against a PostgreSQL cluster the test creates for itself (Debian's pg_createcluster, on a free
port) and drops afterwards: the shared server, and whatever else it serves, is never restarted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import psycopg
import pytest

from airflow_stack.netutil import wait_until

from .conftest import LINE, TEST_DAGS, Stack, airflow_api, free_ports
from .test_bad_input import assert_one_line_error

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]


def main_version() -> str:
    rows = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout.split("\n")
    return next(row.split()[0] for row in rows if row.strip())


@pytest.fixture(scope="module")
def cluster(services):
    """A cluster of the installed major version, of our own, started on a free port."""
    if os.geteuid() != 0 or not shutil.which("pg_createcluster"):
        pytest.skip("needs root and Debian's postgresql-common (pg_createcluster) for a cluster of its own")
    version, name, port = main_version(), f"ast{os.getpid()}", free_ports(1)[0]
    subprocess.run(["pg_createcluster", version, name, "--port", str(port), "--start"], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    try:
        yield version, name, port
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def pg_stack(cluster, tmp_path_factory):
    port = cluster[2]
    state = tmp_path_factory.mktemp("pg-restart")
    shutil.copytree(TEST_DAGS, state / "dags")
    stack = Stack.create(state, LINE, "local", state, f"ast_pgr_{os.getpid()}", {"STACK_PG_PORT": str(port)})
    try:
        stack.inv("up", timeout=900)
        yield stack
    finally:
        survivors = stack.teardown()
        assert not survivors, f"processes survived invoke stop: {survivors}"


def rows(stack) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(stack.inv("status", "--json", check=False).stdout)}


def test_every_component_comes_back_by_itself_after_postgresql_restarts(pg_stack, cluster):
    version, name, _ = cluster
    settings = pg_stack.settings()
    before = rows(pg_stack)
    assert all(row["healthy"] for row in before.values()), before
    subprocess.run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], check=True, stdin=subprocess.DEVNULL)
    time.sleep(10)  # down long enough for every component to notice
    down = rows(pg_stack)
    subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    assert wait_until(lambda: all(row["up"] and row["healthy"] for row in rows(pg_stack).values()), 120), \
        rows(pg_stack)
    healed = time.monotonic() - started
    after = rows(pg_stack)
    came_back = sorted(n for n in after if after[n]["pid"] != before[n]["pid"] or after[n]["restarts"])
    noticed = sorted(n for n, row in down.items() if not row["healthy"])
    print(f"\n[figure] PostgreSQL stopped 10 s, then started ({settings.airflow_line}): every component healthy "
          f"{healed:.1f} s after the start, no command run; started again by their supervisor: "
          f"{came_back or 'none'}; unhealthy while it was down: {noticed}")
    # the stack works: a DAG run to success
    api = airflow_api(settings)
    api.wait_for_dag("noop_forty", timeout=90)
    api.unpause("noop_forty")
    assert api.wait_for_run("noop_forty", api.trigger("noop_forty")) == "success"


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
