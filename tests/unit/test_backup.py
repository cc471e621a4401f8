from __future__ import annotations

import stat

import pytest
from invoke import MockContext, Result

from airflow_stack.errors import StackError
from airflow_stack.ops import backup


def test_backup_runs_pg_dump_as_the_role_with_the_password_in_its_environment(settings, tmp_path):
    c = MockContext(run=Result(""), repeat=True)
    path = backup.backup(c, None, settings, tmp_path / "b.dump")
    cmd, kwargs = c.run.call_args.args[0], c.run.call_args.kwargs
    assert cmd.startswith("pg_dump -Fc -h 127.0.0.1 -p 5432 -U airflow -d airflow -f ")
    assert settings.pg_password not in cmd and kwargs["env"]["PGPASSWORD"] == settings.pg_password
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_backup_leaves_no_file_and_no_secret(settings, tmp_path):
    failing = Result("", stderr=f"pg_dump: error: password {settings.pg_password} rejected\n", exited=1)
    with pytest.raises(StackError) as err:
        backup.backup(MockContext(run=failing), None, settings, tmp_path / "b.dump")
    assert settings.pg_password not in str(err.value) and not (tmp_path / "b.dump").exists()


def test_an_existing_file_is_never_overwritten(settings, tmp_path):
    (tmp_path / "b.dump").write_text("precious")
    with pytest.raises(StackError, match="exists already"):
        backup.backup(MockContext(), None, settings, tmp_path / "b.dump")
    assert (tmp_path / "b.dump").read_text() == "precious"


def test_restore_checks_the_archive_first(settings, tmp_path):
    (tmp_path / "junk.dump").write_text("not a dump")
    with pytest.raises(StackError, match="not a pg_dump custom-format backup"):
        backup.check_archive(tmp_path / "junk.dump")
    with pytest.raises(StackError, match="no backup at"):
        backup.check_archive(tmp_path / "missing.dump")
    (tmp_path / "good.dump").write_bytes(backup.MAGIC + b"\x01")
    c = MockContext(run=Result(""), repeat=True)
    backup.restore(c, None, settings, tmp_path / "good.dump")
    cmd = c.run.call_args.args[0]
    # one transaction that commits only after pg_restore read the whole archive, and stops at the first error
    assert cmd.startswith("set -o pipefail; { printf '%s' 'BEGIN;") and "DROP %s IF EXISTS public.%I CASCADE" in cmd
    assert "pg_restore --no-owner -f - " in cmd and "&& printf 'COMMIT;\\n'; } | psql -X -q -v ON_ERROR_STOP=1" in cmd
    assert settings.pg_password not in cmd and c.run.call_args.kwargs["env"]["PGPASSWORD"] == settings.pg_password


def test_a_missing_client_tool_says_what_to_install(settings, tmp_path):
    not_found = Result("", stderr="bash: line 1: pg_dump: command not found\n", exited=127)
    with pytest.raises(StackError, match=r"pg_dump is not installed here .*apt-get install postgresql-client"):
        backup.backup(MockContext(run=not_found), None, settings, tmp_path / "b.dump")
    assert not (tmp_path / "b.dump").exists()


def test_an_unreadable_backup_is_refused_before_anything_else(settings, tmp_path):
    (tmp_path / "corrupt.dump").write_bytes(backup.MAGIC + b"garbage")
    bad = Result("", stderr="pg_restore: error: unsupported version (103.97) in file header\n", exited=1)
    with pytest.raises(StackError, match=r"is not a readable backup \(pg_restore: error: unsupported version"):
        backup.check_readable(MockContext(run=bad), None, settings, tmp_path / "corrupt.dump")
    c = MockContext(run=Result(""), repeat=True)
    backup.check_readable(c, None, settings, tmp_path / "corrupt.dump")
    assert c.run.call_args.args[0].startswith("pg_restore --list ")
