"""`invoke upgrade` between two patches of the line, on a stack of its own: the previous patch (the
pinned one minus one, chosen with STACK_AIRFLOW_VERSION in .env, its constraints resolved into the
state dir), a failed upgrade that goes back to it, a rehearsal of the upgrade (and one refused with no
backup and a full disk), then the upgrade that succeeds. Asserted in PostgreSQL and on the running
processes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from airflow_stack.apache_airflow import install
from airflow_stack.ops import scratch
from tests.support.api_client import AirflowAPI, verify_for

from .conftest import LINE, TEST_DAGS, Stack
from .test_bad_input import assert_one_line_error

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
    return {name: row for name, row in stack.status().items() if name not in ("postgresql", "redis", "backups")}


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


def untouched(stack) -> dict[str, object]:
    """What a rehearsal must leave as it was: the live database's schema (revision and mark) and every
    table's rows, the running processes, .env, airflow.cfg, the running release's venv, the state dir's
    folders; and no scratch database."""
    settings = stack.settings()
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        scratches = [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                    (f"{settings.pg_database}_scratch_%",))]

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return {"revision": revision, "mark": schema_mark(stack), "rows": scratch.rows_of(settings),
            "pids": {name: row["pid"] for name, row in stack.status().items()}, "env": digest(settings.env_file),
            "airflow.cfg": digest(settings.paths.airflow_home / "airflow.cfg"),
            "venv": (install.installed_version(settings), install.installed_build(settings)),
            "state dir": sorted(p.name for p in settings.state_dir.iterdir()), "scratch databases": scratches}


def test_a_rehearsed_upgrade_reports_success_and_its_time_and_changes_nothing_that_runs(old):
    older, pinned = releases()
    before = untouched(old)
    assert before["scratch databases"] == [] and before["revision"]
    began = time.monotonic()
    out = old.inv("upgrade", "--rehearse").stdout
    seconds = time.monotonic() - began
    lines = [line for line in out.strip().splitlines() if line.startswith("rehearse: ")]  # (and progress lines)
    print(f"\n[figure] invoke upgrade --rehearse {older} -> {pinned} (the new release's venv built already by the "
          f"failed upgrade): {seconds:.1f} s; it said: {lines[-1]}")
    assert lines[0].startswith(f"rehearse: Airflow {older} -> {pinned} on a copy of {old.settings().pg_database}-")
    assert "the newest verified backup" in lines[0] and "the running stack is not touched" in lines[0], out
    assert any(line.startswith(f"rehearse: migrated the copy from schema revision {before['revision']} to ")
               and f"DAGs parse with Airflow {pinned}" in line for line in lines), out
    assert lines[-1].startswith("rehearse: success in ") and "migrate " in lines[-1] and "dags.check " in lines[-1]
    assert lines[-1].endswith("; the scratch database was dropped"), out
    assert untouched(old) == before
    assert old.settings().paths.log_file("upgrade-rehearsal").exists()  # what `airflow db migrate` printed


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a full disk is a tmpfs of 64 KiB mounted in a mount namespace of the task's own (root)")
def test_a_rehearsal_with_no_backup_and_a_full_disk_is_refused_and_changes_nothing(old):
    """The task runs in a mount namespace where the backups folder is a 64 KiB tmpfs (a full disk, holding no
    backup) and the record of the last backup is empty: no backup to restore, no room for a fresh one."""
    settings = old.settings()
    backups, record = settings.paths.backups, settings.paths.backup_record
    assert backups.is_dir() and record.exists()
    script = ('mount -t tmpfs -o size=64k tmpfs "$1" && mount --bind /dev/null "$2" && shift 2 && exec "$@"')
    full = Stack(old.state_dir, old.env, wrapper=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                                  script, "sh", str(backups), str(record)])
    before = untouched(old)
    files = sorted(p.name for p in backups.iterdir())
    proc = full.inv("upgrade", "--rehearse", check=False)
    line = assert_one_line_error(proc, "nothing to rehearse with: there is no verified backup, and a fresh one "
                                       f"cannot be taken (not enough space for a backup in {backups}: 0 MiB free",
                                 "nothing was changed")
    print(f"\n[figure] upgrade --rehearse with no backup and a full disk: {line}")
    assert untouched(old) == before and sorted(p.name for p in backups.iterdir()) == files
    assert subprocess.run(["findmnt", str(backups)], capture_output=True).returncode != 0  # the mount went with it


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
