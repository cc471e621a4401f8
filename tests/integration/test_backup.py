"""Backups: pg_dump custom format, restore refused while Airflow runs, and clean's confirmation."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import psycopg
import pytest

from .test_bad_input import assert_one_line_error, env_digest

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]


def variable(stack, key: str) -> str:
    return stack.inv("airflow", "--args", f"variables get {key}").stdout.strip().splitlines()[-1]


# what a user keeps in Airflow's database: connections (encrypted as stored), variables, pools, DAG history
SNAPSHOT = {
    "connection": "SELECT conn_id, conn_type, host, login, port, password, extra FROM connection ORDER BY 1",
    "variable": "SELECT key, val FROM variable ORDER BY 1",
    "slot_pool": "SELECT pool, slots, description FROM slot_pool ORDER BY 1",
    "dag_run": "SELECT dag_id, run_id, state FROM dag_run ORDER BY 1, 2",
    "task_instance": "SELECT dag_id, run_id, task_id, map_index, state, try_number FROM task_instance "
                     "ORDER BY 1, 2, 3, 4",
}


def snapshot(settings) -> dict[str, list]:
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        return {table: conn.execute(query).fetchall() for table, query in SNAPSHOT.items()}


def test_backup_and_restore_round_trip(stack, api):
    settings = stack.settings()
    stack.inv("airflow", "--args", "variables set stack_test_kept before")
    # history of its own, whichever tests ran before (run alone, nothing else has run a DAG)
    api.wait_for_dag("noop_forty")
    api.unpause("noop_forty")
    assert api.wait_for_run("noop_forty", api.trigger("noop_forty")) == "success"
    before = snapshot(settings)
    # (counts only: a failure must not print the connection's stored, encrypted password)
    assert {table: len(rows) for table, rows in before.items() if not rows} == {}  # each holds history to lose
    out = stack.inv("db.backup").stdout
    path = Path(re.search(r"written to (.+) \(\d+ KiB\)", out).group(1))  # a path may hold spaces
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    # after the backup: a variable changed, a pool added, a DAG's whole history deleted
    stack.inv("airflow", "--args", "variables set stack_test_kept after")
    stack.inv("airflow", "--args", "pools set after_the_backup 2 added-after-the-backup")
    lost = before["dag_run"][0][0]
    with psycopg.connect(**settings.pg_conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM task_instance WHERE dag_id = %s", (lost,))
        conn.execute("DELETE FROM dag_run WHERE dag_id = %s", (lost,))
        # what a newer release's migration adds: a table whose foreign key needs a backed-up primary key (a
        # failed upgrade's rollback restores over it), and a type of its own
        conn.execute("CREATE TYPE stack_test_newer_state AS ENUM ('new')")
        conn.execute("CREATE TABLE stack_test_newer (run integer REFERENCES dag_run (id), "
                     "state stack_test_newer_state)")
    assert snapshot(settings) != before
    assert_one_line_error(stack.inv("db.restore", str(path), "--yes", check=False), "stop it first")
    stack.inv("stop")
    assert_one_line_error(stack.inv("db.restore", str(path), check=False), "--yes")
    assert "restored" in stack.inv("db.restore", str(path), "--yes").stdout
    assert snapshot(settings) == before  # exactly what was backed up, before anything runs on it
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        assert conn.execute("SELECT to_regclass('stack_test_newer'), to_regtype('stack_test_newer_state')"
                            ).fetchone() == (None, None)  # nothing the backup did not hold
    # a backup cut short (a full disk, a copy interrupted): the restore fails and changes nothing
    cut = path.with_name("cut short.dump")
    cut.write_bytes(path.read_bytes()[:-4096])
    with psycopg.connect(**settings.pg_conninfo(), autocommit=True) as conn:
        # (is_encrypted: Airflow 3.3's column is NOT NULL, its default is only SQLAlchemy's)
        conn.execute("INSERT INTO variable (key, val, is_encrypted) VALUES ('stack_test_after_restore', 'kept', "
                     "false)")
    kept = snapshot(settings)
    assert_one_line_error(stack.inv("db.restore", str(cut), "--yes", check=False), "nothing was changed")
    assert snapshot(settings) == kept
    cut.unlink()
    with psycopg.connect(**settings.pg_conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM variable WHERE key = 'stack_test_after_restore'")
    stack.inv("up")
    assert variable(stack, "stack_test_kept") == "before"
    after = snapshot(settings)
    assert {t: after[t] for t in ("connection", "variable", "slot_pool")} == \
        {t: before[t] for t in ("connection", "variable", "slot_pool")}  # invoke up's apply changed nothing


def test_restore_refuses_what_is_not_a_backup(stack, airflow_up, tmp_path):
    junk = tmp_path / "junk.dump"
    junk.write_text("SELECT 1;\n")
    assert_one_line_error(stack.inv("db.restore", str(junk), "--yes", check=False), "not a pg_dump")
    assert_one_line_error(stack.inv("db.restore", str(tmp_path / "none.dump"), "--yes", check=False),
                          "no backup at")


def test_clean_refuses_while_running_and_without_yes_when_nobody_can_confirm(stack, airflow_up, tmp_path):
    before = env_digest(stack)
    assert_one_line_error(stack.inv("clean", "--yes", check=False), "stop it first")
    (tmp_path / "logs").mkdir()
    assert_one_line_error(stack.inv("clean", check=False, env={"STACK_STATE_DIR": str(tmp_path)}), "--yes")
    assert (tmp_path / "logs").exists()
    assert env_digest(stack) == before and stack.settings().paths.airflow_home.exists()


def test_retention_removes_only_what_is_older_than_it(stack, airflow_up):
    """`invoke db.clean`: task logs not written for longer than the retention go, fresh ones stay;
    Airflow's `db clean` runs against our database and keeps the recent DAG runs, with no archive tables."""
    import os
    import time

    import psycopg

    settings = stack.settings()
    old = settings.paths.logs / "airflow" / "dag_id=gone" / "run_id=old" / "task_id=t" / "attempt=1.log"
    fresh = settings.paths.logs / "airflow" / "dag_id=kept" / "run_id=new" / "task_id=t" / "attempt=1.log"
    for path in (old, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a task's log\n")
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))

    def dag_runs() -> int:
        with psycopg.connect(**settings.pg_conninfo()) as conn:
            return conn.execute("SELECT count(*) FROM dag_run").fetchone()[0]

    before = dag_runs()
    out = stack.inv("db.clean", "--days", "30").stdout
    assert "removed 1 task log files older than 30 days" in out, out
    assert not old.exists() and not old.parent.parent.parent.exists() and fresh.exists()
    assert dag_runs() == before  # every run of this test session is recent
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        archives = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '\\_airflow\\_deleted\\_\\_%'")
        assert archives.fetchone()[0] == 0
