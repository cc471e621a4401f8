"""`invoke upgrade` between two patches of the line, on a stack of its own: the previous patch (the
pinned one minus one, chosen with STACK_AIRFLOW_VERSION in .env, its constraints resolved into the
state dir), a failed upgrade that goes back to it, then one that succeeds. Asserted in PostgreSQL and
on the running processes."""

from __future__ import annotations

import json
import os
import shutil
import time

import psycopg
import pytest

from tests.support.api_client import AirflowAPI, verify_for

from .conftest import LINE, TEST_DAGS, Stack

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]


def releases() -> tuple[str, str]:
    from airflow_stack.apache_airflow import profiles

    pinned = profiles.get(LINE).pinned_version()
    major, minor, patch = (int(part) for part in pinned.split("."))
    return (f"{major}.{minor}.{patch - 1}" if patch else ""), pinned


@pytest.fixture(scope="module")
def old(tmp_path_factory, services):
    older, _ = releases()
    if not older:
        pytest.skip(f"the pinned {LINE} release is a .0: no earlier patch of the line to upgrade from")
    state = tmp_path_factory.mktemp("upgrade")
    shutil.copytree(TEST_DAGS, state / "dags")
    stack = Stack.create(state, LINE, "local", state, f"ast_upgrade_{os.getpid()}")
    del stack.env["STACK_EXECUTOR"]  # what .env and the flags say, as for a user
    (state / ".env").write_text(f"STACK_AIRFLOW_VERSION={older}\n")
    (state / ".env").chmod(0o600)
    try:
        began = time.monotonic()
        stack.inv("up")
        print(f"\n[figure] invoke up on Airflow {older} (constraints resolved, installed, migrated, started): "
              f"{time.monotonic() - began:.1f} s")
        yield stack
    finally:
        survivors = stack.teardown()
        assert not survivors, f"processes survived invoke stop: {survivors}"


def status(stack) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(stack.inv("status", "--json", check=False).stdout)}


def schema_mark(stack) -> str:
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        return conn.execute("SELECT obj_description('alembic_version'::regclass, 'pg_class')").fetchone()[0]


def dag_runs(stack) -> int:
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        return conn.execute("SELECT count(*) FROM dag_run").fetchone()[0]


def run_noop(stack) -> None:
    settings = stack.settings()
    api = AirflowAPI(settings.api_url, settings.airflow_line, settings.admin_user, settings.admin_password,
                     verify=verify_for(settings))
    api.wait_for_dag("noop_forty")
    api.unpause("noop_forty")
    assert api.wait_for_run("noop_forty", api.trigger("noop_forty")) == "success"


def airflow_rows(stack) -> dict[str, dict]:
    return {name: row for name, row in status(stack).items() if name not in ("postgresql", "redis")}


def test_a_failed_upgrade_goes_back_to_the_previous_release(old):
    older, pinned = releases()
    run_noop(old)
    runs = dag_runs(old)
    assert {row["version"] for row in airflow_rows(old).values()} == {older}
    # the new release is given 1 s to be healthy: it cannot be, so the upgrade must undo itself
    proc = old.inv("upgrade", "--timeout", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert (f"the upgrade to Airflow {pinned} failed" in proc.stderr
            and f"went back to Airflow {older}, running again" in proc.stderr), out
    rows = airflow_rows(old)
    assert all(row["up"] and row["healthy"] for row in rows.values()), rows
    assert {row["version"] for row in rows.values()} == {older}
    assert schema_mark(old) == f"airflow-stack: migrated by Airflow {older}"
    assert dag_runs(old) == runs
    assert f"STACK_AIRFLOW_VERSION={older}" in old.settings().env_file.read_text().splitlines()


def test_an_upgrade_to_the_next_patch_keeps_the_history_and_ends_healthy(old):
    older, pinned = releases()
    runs = dag_runs(old)
    before = {name: row["pid"] for name, row in airflow_rows(old).items()}
    began = time.monotonic()
    out = old.inv("upgrade").stdout
    print(f"\n[figure] invoke upgrade {older} -> {pinned} (stack running): {time.monotonic() - began:.1f} s")
    assert f"Airflow {older} -> {pinned}; the DAGs import with it" in out and "upgrade: done" in out, out
    rows = airflow_rows(old)
    assert all(row["up"] and row["healthy"] for row in rows.values()), rows
    assert {row["version"] for row in rows.values()} == {pinned}
    assert not {row["pid"] for row in rows.values()} & set(before.values())  # no process of the old code is left
    assert schema_mark(old) == f"airflow-stack: migrated by Airflow {pinned}"
    assert dag_runs(old) == runs
    run_noop(old)
    assert dag_runs(old) == runs + 1
    # and the way back is refused, naming the release that migrated the schema
    proc = old.inv("upgrade", "--version", older, check=False)
    assert proc.returncode != 0 and f"was migrated by Airflow {pinned}" in proc.stderr, proc.stderr
