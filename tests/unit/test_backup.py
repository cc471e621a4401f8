from __future__ import annotations

import contextlib
import shlex
import stat
from pathlib import Path

import pytest
from invoke import Context, MockContext, Result

from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.errors import StackError
from airflow_stack.ops import backup, backup_service, rehearsal, scratch, upgrade
from airflow_stack.runtime import backup_schedule


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


# ---- verified backups (ops/backup_service.py, ops/scratch.py) ----------------------------------------------

LIVE = {"public.dag_run": 3, 'public."Weird Name"': 1, "public.log": 40}


class Server:
    """What the verification meets: the live counts in the dump's snapshot, a scratch database's life, and
    what a restore into it gives back."""

    def __init__(self, monkeypatch, restored: dict[str, int] | None = None) -> None:
        self.statements: list[str] = []
        self.restored = dict(LIVE if restored is None else restored)
        self.scratch_counted: list[str] = []

        @contextlib.contextmanager
        def snapshot(settings):
            yield "00000003-0000001B-1", dict(LIVE)

        def rows_of(settings):
            self.scratch_counted.append(settings.pg_database)
            return self.restored

        monkeypatch.setattr(scratch, "snapshot", snapshot)
        monkeypatch.setattr(scratch, "rows_of", rows_of)
        monkeypatch.setattr(scratch, "maker", lambda c, p, s: self.execute)
        monkeypatch.setattr(backup, "database_size", lambda settings: 1 << 20)

    def execute(self, statements) -> None:
        self.statements += [s.as_string() for s in statements]


class FakeTools:
    """An invoke Context whose pg_dump writes a small archive and whose pg_restore succeeds, or fails with
    ``fail_restore`` on stderr; the commands it ran, in order."""

    def __init__(self, fail_restore: str = "", stdout: str = "") -> None:
        self.fail_restore, self.stdout, self.commands = fail_restore, stdout, []

    def run(self, cmd: str, **kwargs) -> Result:
        self.commands.append(cmd)
        if cmd.startswith("pg_dump"):
            Path(shlex.split(cmd.split(" -f ", 1)[1])[0]).write_bytes(backup.MAGIC + b"\x01" * 100)
            return Result("")
        return Result(self.stdout, stderr=self.fail_restore, exited=1 if self.fail_restore else 0)


def test_a_backup_is_dumped_in_the_snapshot_it_was_counted_in_and_verified_in_a_scratch_database(settings,
                                                                                                monkeypatch):
    server = Server(monkeypatch)
    c = FakeTools()
    attempt = backup_service.take(c, None, settings)
    assert attempt.verified, attempt.reason
    dump, restore = c.commands
    assert dump.startswith("pg_dump -Fc ") and dump.endswith(" --snapshot=00000003-0000001B-1")
    scratch_db = f"{settings.pg_database}_scratch_verify"
    assert restore.endswith(f"-d {scratch_db}") and "pg_restore --no-owner -f - " in restore
    assert server.statements == [
        f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)', f'CREATE DATABASE "{scratch_db}" OWNER "airflow"',
        f'REVOKE CONNECT, TEMPORARY ON DATABASE "{scratch_db}" FROM PUBLIC',
        f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)']
    assert server.scratch_counted == [scratch_db]
    path = Path(attempt.file)
    assert path.parent == settings.paths.backups and attempt.size == path.stat().st_size
    assert (attempt.tables, attempt.rows, attempt.how) == (3, 44, scratch.RESTORED)
    assert "dumped in" in backup_service.describe(attempt) and "44 rows" in backup_service.describe(attempt)


def test_a_restore_that_gives_back_other_rows_fails_the_verification_and_the_dump_stays(settings, monkeypatch):
    server = Server(monkeypatch, restored={"public.dag_run": 3, "public.log": 39})
    attempt = backup_service.take(FakeTools(), None, settings)
    assert not attempt.verified and Path(attempt.file).exists()
    assert attempt.reason.startswith("verification failed: 2 table(s) differ after the restore "
                                     "(public.\"Weird Name\": no table restored, 1 in the database; public.log: 39 "
                                     "restored, 40 in the database)")
    assert server.statements[-1].startswith("DROP DATABASE")  # the scratch database goes whatever happens


def test_a_restore_that_fails_is_a_failed_verification_with_pg_restores_error_and_no_secret(settings, monkeypatch):
    Server(monkeypatch)
    failing = ("pg_restore: error: could not execute query: ERROR:  permission denied to create event trigger "
               f"\"evt\" (password {settings.pg_password})\nCommand was: CREATE EVENT TRIGGER evt ON "
               "ddl_command_end\n   EXECUTE FUNCTION public.noop();\n")
    attempt = backup_service.take(FakeTools(failing), None, settings)
    assert not attempt.verified and "permission denied to create event trigger" in attempt.reason
    assert settings.pg_password not in attempt.reason and "EXECUTE FUNCTION" not in attempt.reason


def test_a_backup_with_no_room_or_no_folder_writes_nothing(settings, monkeypatch):
    Server(monkeypatch)
    monkeypatch.setattr(backup, "database_size", lambda settings: 1 << 60)
    c = FakeTools()
    attempt = backup_service.take(c, None, settings)
    assert not attempt.verified and attempt.reason.startswith(
        f"not enough space for a backup in {settings.paths.backups}:") and c.commands == []
    monkeypatch.setattr(backup, "database_size", lambda settings: 1)
    settings.paths.make_private()
    settings.paths.backups.write_text("a file where the backups go")
    attempt = backup_service.take(c, None, settings)
    assert "is a file, not a folder" in attempt.reason and c.commands == []


def test_run_once_records_the_backup_and_prunes_only_after_a_verified_one(settings, monkeypatch):
    Server(monkeypatch)
    settings.paths.backups.mkdir(parents=True)
    old = [settings.paths.backups / f"airflow-2024010{i}T000000Z.dump" for i in (1, 2, 3)]
    for path in old:
        path.write_bytes(backup.MAGIC)
    record, pruned = backup_service.run_once(FakeTools(), None, settings, 2)
    assert record.last.verified and backup_schedule.read(settings) == record
    assert pruned == old[:2] and old[2].exists() and Path(record.last.file).exists()
    failing = backup_service.run_once(FakeTools("pg_restore: error: boom"), None, settings, 1)
    assert failing[1] == [] and old[2].exists()  # a failed one removes nothing
    assert backup_schedule.read(settings).verified == record.last


def test_where_no_scratch_database_can_be_made_the_archive_is_read_back(settings, monkeypatch):
    Server(monkeypatch)
    monkeypatch.setattr(scratch, "maker", lambda c, p, s: None)
    c = FakeTools(stdout="\n".join(f"{name} {rows}" for name, rows in LIVE.items()) + "\n")
    attempt = backup_service.take(c, None, settings)
    assert attempt.verified and attempt.how == scratch.READ_BACK
    assert c.commands[1].startswith("set -o pipefail; pg_restore --data-only -f - ") and "| awk " in c.commands[1]


def test_the_awk_program_counts_each_tables_copy_rows(tmp_path):
    plain = tmp_path / "data.sql"
    plain.write_text('SET x = 1;\nCOPY public."Weird Name" (x) FROM stdin;\n1\n\\.\n\n'
                     "COPY public.t1 (x, y) FROM stdin;\n1\ta\n2\tb\n3\t\\\\.\n\\.\n\n"
                     "COPY public.empty (x) FROM stdin;\n\\.\n")
    out = Context().run(f"awk {shlex.quote(backup.COUNT_COPY_ROWS)} {shlex.quote(str(plain))}", hide=True,
                        in_stream=False).stdout
    assert out.splitlines() == ['public."Weird Name" 1', "public.t1 3", "public.empty 0"]


def test_the_scratch_database_names_stay_within_postgresqls_63_bytes(settings):
    from airflow_stack.services import pg_database

    assert pg_database.scratch_name(settings, "verify") == "airflow_scratch_verify"
    long = settings.replace(pg_database="d" * 63)
    assert all(len(pg_database.scratch_name(long, p).encode()) <= 63 for p in pg_database.SCRATCH_PURPOSES)


# ---- upgrade --rehearse: what is refused before anything changes -------------------------------------------
def test_a_rehearsal_where_no_scratch_database_can_be_made_is_refused(settings, monkeypatch):
    monkeypatch.setattr(upgrade, "target_of", lambda c, current, line, version: current)
    monkeypatch.setattr(scratch, "maker", lambda c, p, s: None)
    with pytest.raises(StackError, match=r"a rehearsal needs a scratch database: role airflow may not create "
                                         r"databases \(NOCREATEDB\).*STACK_PG_ADMIN_DSN"):
        rehearsal.prepare(MockContext(), None, settings, None, None)


def test_a_rehearsal_with_no_backup_and_no_room_for_one_changes_nothing(settings, monkeypatch):
    Server(monkeypatch)
    monkeypatch.setattr(upgrade, "target_of", lambda c, current, line, version: current)
    monkeypatch.setattr(backup, "database_size", lambda settings: 1 << 60)
    with pytest.raises(StackError, match=r"^nothing to rehearse with: there is no verified backup, and a fresh "
                                         r"one cannot be taken \(not enough space for a backup in .*; nothing was "
                                         r"changed$"):
        rehearsal.prepare(MockContext(), None, settings, None, None)
    assert not settings.paths.backups.exists()
    # a verified backup whose file is intact is what it restores
    path = settings.paths.backups / "airflow-20240101T000000Z.dump"
    path.parent.mkdir(parents=True)
    path.write_bytes(backup.MAGIC)
    ok = backup_schedule.Attempt(1.0, str(path), path.stat().st_size, path.stat().st_mtime_ns, verified=True)
    backup_schedule.write(settings, ok)
    assert rehearsal.prepare(MockContext(), None, settings, None, None) == (settings, ok)
    path.write_bytes(b"")  # truncated since: a fresh one is needed, and there is no room for it
    with pytest.raises(StackError, match=r"nothing to rehearse with: the newest verified backup .* changed since"):
        rehearsal.prepare(MockContext(), None, settings, None, None)


def test_a_backup_by_hand_that_fails_is_one_line_and_leaves_the_schedules_record_alone(settings, monkeypatch):
    Server(monkeypatch)
    ok, _ = backup_service.take_by_hand(FakeTools(), None, settings)  # recorded: it counts as a scheduled one
    assert backup_schedule.read(settings).verified == ok
    with pytest.raises(StackError, match=r"^verification failed: the restore failed.*boom"):
        backup_service.take_by_hand(FakeTools("pg_restore: error: boom"), None, settings)
    assert backup_schedule.read(settings).last == ok  # status and doctor judge the scheduled backups as before
    elsewhere, pruned = backup_service.take_by_hand(FakeTools(), None, settings, settings.state_dir / "copy.dump")
    assert elsewhere.verified and pruned == [] and backup_schedule.read(settings).last == ok  # a copy: not kept


class Copy:
    """The rehearsal's scratch database and the steps on it, each faked; what happened, in order."""

    def __init__(self, monkeypatch, settings, migrate_fails: str = "", dag_errors: tuple[str, ...] = ()) -> None:
        from airflow_stack.apache_airflow import commands, install, schema
        from airflow_stack.project import dags

        self.events: list[str] = []
        self.homes: list[Path] = []
        self.urls: list[bool] = []  # the migration ran with the URL (and driver) the upgrade migrates with
        revisions = iter(["rev_old", "rev_new" if not migrate_fails else "rev_old"])

        @contextlib.contextmanager
        def database(c, platform, current, purpose):
            self.events.append(f"create {purpose}")
            try:
                yield current.replace(pg_database=f"{current.pg_database}_scratch_{purpose}")
            finally:
                self.events.append(f"drop {purpose}")

        def run_cli(c, s, env, args, log):
            self.homes.append(Path(env["AIRFLOW_HOME"]))
            self.urls.append(env[airflow_config.SQL_CONN_VAR] == airflow_config.sql_alchemy_conn(s, migrating=True))
            self.events.append(f"{args} on {s.pg_database} with {s.airflow_version or 'the pinned release'}")
            if migrate_fails:
                raise StackError(migrate_fails)

        monkeypatch.setattr(scratch, "database", database)
        monkeypatch.setattr(install, "ensure", lambda c, s: [])
        monkeypatch.setattr(install, "installed_version", lambda s: "3.3.1")
        monkeypatch.setattr(backup, "restore", lambda c, p, s, path: self.events.append(
            f"restore {Path(path).name} into {s.pg_database}"))
        monkeypatch.setattr(schema, "schema_revision", lambda s: next(revisions))
        monkeypatch.setattr(commands, "run_cli", run_cli)
        monkeypatch.setattr(dags, "check", lambda c, s: type("Parsed", (), {
            "dags": ["a", "b"], "errors": list(dag_errors)})())


def source_backup(settings) -> backup_schedule.Attempt:
    return backup_schedule.Attempt(1.0, str(settings.paths.backups / "airflow-20240101T000000Z.dump"), 10,
                                   verified=True, rows=572)


def test_a_rehearsal_migrates_a_copy_with_the_new_release_and_drops_it(settings, monkeypatch):
    copy = Copy(monkeypatch, settings)
    target = settings.replace(airflow_version="3.3.2")
    report = rehearsal.rehearse(MockContext(), None, settings, target, source_backup(settings))
    assert copy.events == ["create rehearsal",
                           "restore airflow-20240101T000000Z.dump into airflow_scratch_rehearsal",
                           "db migrate on airflow_scratch_rehearsal with 3.3.2", "drop rehearsal"]
    assert copy.homes and copy.homes[0].parent == settings.state_dir and not copy.homes[0].exists()
    assert copy.urls == [True]
    assert report.ok and report.revisions == ("rev_old", "rev_new") and report.dags == ["a", "b"]
    said = rehearsal.lines(report)
    assert said[0].startswith("rehearse: Airflow 3.3.1 -> 3.3.2 on a copy of airflow-20240101T000000Z.dump (the "
                              "newest verified backup, ")
    assert said[1] == ("rehearse: migrated the copy from schema revision rev_old to rev_new; 2 DAGs parse with "
                       "Airflow 3.3.2")
    assert said[-1].startswith("rehearse: success in ") and "restore " in said[-1] and "migrate " in said[-1]


def test_a_rehearsal_whose_migration_fails_says_why_and_still_drops_the_copy(settings, monkeypatch):
    copy = Copy(monkeypatch, settings, migrate_fails="airflow db migrate failed (exit 1): boom — full log: x.log")
    report = rehearsal.rehearse(MockContext(), None, settings, settings.replace(airflow_version="3.3.2"),
                                source_backup(settings))
    assert copy.events[-1] == "drop rehearsal" and not copy.homes[0].exists()
    assert not report.ok and "boom" in report.failure
    said = rehearsal.lines(report)
    assert said[1] == "rehearse: the migration failed: airflow db migrate failed (exit 1): boom — full log: x.log"
    assert said[-1].startswith("rehearse: FAILED in ")
    errors = Copy(monkeypatch, settings, dag_errors=("dags/x.py:3: ModuleNotFoundError: No module named 'y'",))
    report = rehearsal.rehearse(MockContext(), None, settings, settings.replace(airflow_version="3.3.2"),
                                source_backup(settings))
    assert not report.ok and errors.events[-1] == "drop rehearsal"
    assert "rehearse: does not import: dags/x.py:3: ModuleNotFoundError: No module named 'y'" in rehearsal.lines(report)
