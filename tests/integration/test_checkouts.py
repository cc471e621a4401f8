"""Two checkouts of the repo on one machine and one PostgreSQL server: side by side on other ports, and
one after the other on the same ports. Each keeps its own role, database (marked with its checkout id),
admin password and DAGs; neither can log in to the other's UI, and neither changes what the other set up.

The session's stack is checkout A; B and C are further checkouts with their own state dirs, .env files
and small projects, each with a DAG only it has."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psycopg
import pytest

from airflow_stack.services import pg_database

from .conftest import LINE, Stack, airflow_api
from .test_bad_input import running_pids

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]

DAG = '''import pendulum
try:
    from airflow.sdk import DAG
except ImportError:
    from airflow import DAG

with DAG("{dag_id}", start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False):
    pass
'''


def checkout(root: Path, label: str, ports_of: Stack | None = None) -> Stack:
    """Another checkout: its own state dir, .env and project (one DAG, ``only_in_LABEL``), its own role and
    database; on the ports of ``ports_of`` when given, else on free ones."""
    (root / "project" / "dags").mkdir(parents=True)
    (root / "project" / "dags" / f"only_in_{label}.py").write_text(DAG.format(dag_id=f"only_in_{label}"))
    extra = {name: value for name, value in ports_of.env.items() if name.endswith("_PORT")} if ports_of else {}
    return Stack.create(root / "state", LINE, "local", root / "project", f"ast_{label}_{os.getpid()}", extra)


def logs_in(server: Stack, password: str) -> bool:
    """Whether the UI's API at ``server`` accepts its admin user with ``password``."""
    settings = server.settings()
    try:
        api = airflow_api(settings.replace(admin_password=password))
    except httpx.HTTPStatusError as exc:  # the token endpoint refused it
        assert exc.response.status_code in (401, 403), exc.response.status_code
        return False
    status = api.client.get(f"{api.prefix}/dags").status_code
    api.close()
    assert status in (200, 401, 403), status
    return status == 200


def dag_ids(server: Stack) -> set[str]:
    api = airflow_api(server.settings())
    resp = api.client.get(f"{api.prefix}/dags", params={"limit": 100})
    api.close()
    assert resp.status_code == 200, resp.status_code
    return {dag["dag_id"] for dag in resp.json()["dags"]}


def owner(stack: Stack) -> str | None:
    """The checkout id the stack's database is marked with, read in PostgreSQL."""
    marker = pg_database.database_marker(stack.settings())
    return pg_database.marked_id(marker) if marker else None


def test_two_checkouts_side_by_side_then_one_after_the_other_keep_their_own_database_and_password(
        stack, airflow_up, tmp_path_factory):
    a = stack
    b = checkout(tmp_path_factory.mktemp("checkout b"), "b")
    c = checkout(tmp_path_factory.mktemp("checkout c"), "c", ports_of=b)
    try:
        b.inv("up", timeout=900)
        sa, sb = a.settings(), b.settings()
        assert {sa.checkout_id, sb.checkout_id} == {owner(a), owner(b)} and sa.checkout_id != sb.checkout_id
        assert sa.admin_password != sb.admin_password and sa.pg_password != sb.pg_password
        # side by side: each UI takes its own admin password and refuses the other's
        assert logs_in(a, sa.admin_password) and not logs_in(a, sb.admin_password)
        assert logs_in(b, sb.admin_password) and not logs_in(b, sa.admin_password)
        assert "only_in_b" in dag_ids(b) and "only_in_b" not in dag_ids(a)
        # neither role reaches the other's database
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**sb.pg_conninfo(dbname=sa.pg_database)).close()
        a_pids = running_pids(sa)

        # one after the other on the same ports: B stops, C comes up where B ran, then B again
        b.inv("stop")
        c.inv("up", timeout=900)
        sc = c.settings()
        assert (sc.api_port, owner(c)) == (sb.api_port, sc.checkout_id)
        assert logs_in(c, sc.admin_password) and not logs_in(c, sb.admin_password)
        assert "only_in_c" in dag_ids(c) and "only_in_b" not in dag_ids(c)
        c.inv("stop")
        b.inv("up", timeout=900)
        assert logs_in(b, sb.admin_password) and not logs_in(b, sc.admin_password)
        assert "only_in_b" in dag_ids(b) and "only_in_c" not in dag_ids(b)
        assert (owner(a), owner(b), owner(c)) == (sa.checkout_id, sb.checkout_id, sc.checkout_id)
        # checkout A ran on through all of it: same processes, same password
        assert running_pids(sa) == a_pids and logs_in(a, sa.admin_password)
    finally:
        survivors = b.teardown() + c.teardown()
        assert not survivors, f"processes survived invoke stop: {survivors}"
