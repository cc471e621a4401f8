"""Backups that happen: the backups component takes a verified backup on its schedule while the stack
runs (each restored into a scratch database, every table's rows compared), removes the oldest beyond
STACK_BACKUP_KEEP; a backup that does not restore, or a verified one damaged since, is named by status
and doctor with its fix.

The session's stack runs it with the default interval (1d: its first backup is taken when it comes up);
the tests that need it sooner run it every 20 s for this module (`invoke up` with the setting in the
environment restarts only the backups component), and the default is back after them.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from airflow_stack.netutil import wait_until
from airflow_stack.runtime import backup_schedule

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]
EVERY, KEEP = "20s", 2


def record(stack) -> backup_schedule.Record | None:
    return backup_schedule.read(stack.settings())


def wait_for_record(stack, check, timeout: float) -> backup_schedule.Record:
    found: list[backup_schedule.Record] = []

    def seen() -> bool:
        rec = record(stack)
        if rec is not None and check(rec):
            found.append(rec)
            return True
        return False

    assert wait_until(seen, timeout, 1.0), (record(stack), stack.settings().paths.log_file("backups").read_text())
    return found[0]


def backups_row(stack) -> tuple[int, dict]:
    proc = stack.inv("status", "--json", check=False)
    return proc.returncode, {row["name"]: row for row in json.loads(proc.stdout)}["backups"]


def doctor_backups(stack) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = stack.inv("doctor", "--json", check=False)
    checks = json.loads(proc.stdout[: proc.stdout.rindex("]") + 1])
    return proc, {c["name"]: c for c in checks}["backups"]


def scratch_databases(settings) -> list[str]:
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        return [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                               (f"{settings.pg_database}_scratch_%",))]


def as_superuser(settings, statement: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-p",
                    str(settings.pg_port), "-d", settings.pg_database, "-c", statement],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)


def test_a_verified_backup_damaged_since_is_named_by_status_and_doctor(stack, airflow_up):
    """Runs first, with the session's daily schedule: the backup taken when the stack came up is the newest
    verified one; truncated on disk, it is named until a new one is taken (here: by hand, the fix doctor
    names)."""
    settings = stack.settings()
    rec = wait_for_record(stack, lambda r: r.verified is not None, 120)  # the one taken at `invoke up`
    path = Path(rec.verified.file)
    content = path.read_bytes()
    assert path.parent == settings.paths.backups and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert content.startswith(b"PGDMP") and len(content) == rec.verified.size
    code, row = backups_row(stack)
    assert code == 0 and row["up"] and row["healthy"] and row["detail"].startswith("last backup "), row
    assert ", verified (" in row["detail"], row
    path.write_bytes(content[: len(content) // 2])
    try:
        code, row = backups_row(stack)
        damaged = (f"the newest verified backup {path.name} changed since it was verified ({len(content) // 2} "
                   f"bytes, {len(content)} when verified)")
        assert code == 1 and row["up"] and not row["healthy"] and row["detail"] == damaged, row
        assert stack.inv("status", check=False).stderr.strip() == "status: backups is unhealthy"
        proc, check = doctor_backups(stack)
        assert proc.returncode == 1 and not check["ok"] and check["detail"] == damaged, check
        assert check["fix"] == f"take a new one: invoke db.backup (and do not restore {path.name})"
        out = stack.inv("db.backup").stdout
        assert "restored into a scratch database" in out and "rows, as in the database when it was taken" in out
        code, row = backups_row(stack)
        assert code == 0 and row["healthy"] and re.match(r"last backup \d+ s ago, verified", row["detail"]), row
        assert doctor_backups(stack)[1]["ok"]
    finally:
        path.write_bytes(content)


@pytest.fixture(scope="module")
def every_20s(stack, airflow_up):
    """The backups component of the session's stack every 20 s, the 2 newest kept; as it was after."""
    out = stack.inv("up", env={"STACK_BACKUP_EVERY": EVERY, "STACK_BACKUP_KEEP": str(KEEP)}).stdout
    assert f"backups: started again: a verified backup every {EVERY} into " in out, out
    for line in out.strip().splitlines():  # nothing else was started again
        assert "already" in line or line.startswith(("run: Airflow UI", "backups: ")), out
    yield
    assert "backups: started again: a verified backup every 1d" in stack.inv("up").stdout


def test_a_scheduled_backup_appears_verifies_and_the_oldest_go(stack, every_20s):
    settings = stack.settings()
    began = time.time()
    first = wait_for_record(stack, lambda r: r.last.time > began, 90).last
    assert first.verified, first.reason
    second = wait_for_record(stack, lambda r: r.last.time > first.time, 90).last
    assert second.verified, second.reason
    print(f"\n[figure] scheduled backups every {EVERY}: {second.time - first.time:.1f} s apart; one backup of the "
          f"test database ({backup_schedule.size_text(second.size)}, {second.tables} tables, {second.rows} rows): "
          f"dumped in {second.dump_seconds:.1f} s, verified (restored into a scratch database, rows counted) in "
          f"{second.verify_seconds:.1f} s")
    assert second.time - first.time >= 19  # on its schedule, not back to back
    assert second.how == "restored into a scratch database" and second.tables > 20 and second.rows > 0
    path = Path(second.file)
    assert path.parent == settings.paths.backups and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size == second.size
    # the oldest beyond STACK_BACKUP_KEEP went (the newest always stays)
    dumps = lambda: sorted(settings.paths.backups.glob(f"{settings.pg_database}-*.dump"))  # noqa: E731
    assert wait_until(lambda: len(dumps()) == KEEP, 30), dumps()
    assert path in dumps()
    code, row = backups_row(stack)
    assert code == 0 and row["healthy"] and ", verified (" in row["detail"], row
    assert doctor_backups(stack)[1]["ok"]
    log = settings.paths.log_file("backups").read_text()
    assert f"{path.name}: " in log and "restored into a scratch database" in log and "removed " in log


@pytest.mark.skipif(os.geteuid() != 0, reason="a superuser's event trigger needs root (runuser postgres)")
def test_a_backup_that_does_not_restore_is_named_by_status_and_doctor_until_one_does(stack, every_20s):
    """A superuser added an event trigger to Airflow's database: pg_dump (as the stack's role) dumps it,
    but a restore as that role cannot create it. The verification fails; status and doctor say so; once
    it is gone, the next scheduled backup verifies again by itself."""
    settings = stack.settings()
    as_superuser(settings, "CREATE FUNCTION stack_test_noop() RETURNS event_trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN END $$; CREATE EVENT TRIGGER stack_test_trigger ON ddl_command_end "
                           "EXECUTE FUNCTION stack_test_noop()")
    began = time.time()
    try:
        failed = wait_for_record(stack, lambda r: r.last.time > began, 90).last
        assert not failed.verified and failed.reason.startswith("verification failed: the restore failed"), failed
        assert "permission denied to create event trigger" in failed.reason, failed
        code, row = backups_row(stack)
        assert code == 1 and row["up"] and not row["healthy"], row
        assert row["detail"].startswith("the last backup failed ") and "event trigger" in row["detail"], row
        assert "; the newest verified one is " in row["detail"], row
        proc, check = doctor_backups(stack)
        assert proc.returncode == 1 and not check["ok"] and "event trigger" in check["detail"], check
        assert "invoke logs -c backups" in check["fix"] and "invoke db.backup" in check["fix"], check
        assert "backup failed: verification failed" in stack.inv("logs", "-c", "backups").stdout
        assert scratch_databases(settings) in ([], [f"{settings.pg_database}_scratch_verify"])  # dropped (or the next)
    finally:
        as_superuser(settings, "DROP EVENT TRIGGER IF EXISTS stack_test_trigger; "
                               "DROP FUNCTION IF EXISTS stack_test_noop()")
    fixed = time.time()
    healed = wait_for_record(stack, lambda r: r.last.time > fixed and r.last.verified, 90).last
    print(f"\n[figure] a backup that does not restore: named by status and doctor; verified again by the next "
          f"scheduled one {healed.time - fixed:.0f} s after the cause went")
    assert backups_row(stack)[1]["healthy"]
