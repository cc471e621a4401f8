"""invoke db.*: the metadata database."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from .. import airflow_db, platform, postgres, registry, supervisor
from .. import backup as backup_mod
from ..errors import StackError
from ._common import exclusive, load, number, one_line_errors, say


def _local_platform(settings):
    return platform.detect() if settings.pg_is_local else None


@task(help={"output": "file to write (default: <state dir>/backups/<db>-<UTC time>.dump)"})
@one_line_errors
@exclusive("invoke db.backup")
def backup(c: Context, output: str | None = None) -> None:
    """Back up Airflow's database (pg_dump custom format, mode 0600), safe while Airflow runs."""
    settings = load()
    path = backup_mod.backup(c, _local_platform(settings), settings, Path(output).resolve() if output else None)
    say(f"db: backup of {settings.pg_database} written to {path} ({path.stat().st_size / 1024:.0f} KiB)")


@task(positional=["file"], help={"file": "a backup made by invoke db.backup",
                                 "yes": "really replace the database's content (required)"})
@one_line_errors
@exclusive("invoke db.restore")
def restore(c: Context, file: str, yes: bool = False) -> None:
    """Restore a backup into Airflow's database (refuses while Airflow runs, and without --yes)."""
    settings = load()
    path = Path(file).resolve()
    backup_mod.check_readable(c, _local_platform(settings), settings, path)  # before asking for a stop
    running = registry.running(settings)
    if running:
        raise StackError(f"Airflow is running ({', '.join(running)}); stop it first: invoke stop")
    if not yes:
        raise StackError(f"this replaces everything in database {settings.pg_database} with {path.name}; "
                         f"re-run with --yes to do it")
    backup_mod.restore(c, _local_platform(settings), settings, path)
    # the schema revision may differ from the one stamped: let setup decide whether to migrate
    (settings.airflow_home / ".airflow-stack-migrated.json").unlink(missing_ok=True)
    say(f"db: restored {path.name} into {settings.pg_database}; start with: invoke up")


@task(help={"days": "keep this many days (default STACK_RETENTION_DAYS, 30)",
            "dry_run": "only say what would be removed"})
@one_line_errors
@exclusive("invoke db.clean")
def clean(c: Context, days: str | None = None, dry_run: bool = False) -> None:
    """Remove task logs and metadata rows (airflow db clean) older than the retention; safe while running."""
    from .. import retention

    settings = load()
    keep = number(days, "--days", settings.retention_days, int, example=30)
    pruned = retention.prune_task_logs(settings, keep, dry_run)
    verb = "would remove" if dry_run else "removed"
    say(f"db: {verb} {pruned.files} task log files older than {keep} days ({pruned.bytes / 1024:.0f} KiB)")
    before = retention.clean_metadata(c, settings, keep, dry_run)
    say(f"db: {'would clean' if dry_run else 'cleaned'} metadata rows from before {before} "
        f"(airflow db clean; log: {settings.log_dir / 'db-clean.log'})")


def processes_using_the_database(settings) -> list[str]:
    """The running Airflow processes of this state dir that were started on the configured database (by the
    keyed digest of their database URL; a process without one counts as using it)."""
    key = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    ours = supervisor.fingerprint(settings, {key: settings.sql_alchemy_conn}).get(key)
    return [name for name, proc in registry.running(settings).items() if proc.env.get(key) in (None, ours)]


@task(help={"yes": "really drop it (required: this deletes every DAG run and connection)"})
@one_line_errors
@exclusive("invoke db.drop")
def drop(c: Context, yes: bool = False) -> None:
    """Drop Airflow's database and role (refuses while Airflow runs, and without --yes)."""
    settings = load()
    if not yes:
        raise StackError(f"this deletes database {settings.pg_database} and role {settings.pg_user}; "
                         f"re-run with --yes to do it")
    using = processes_using_the_database(settings)
    if using:
        raise StackError(f"Airflow is running on this database ({', '.join(using)}); stop it first: invoke stop")
    plat = _local_platform(settings)
    admin = postgres.admin_for(c, plat, settings)
    if admin is None:
        raise StackError("no superuser access to this server; set STACK_PG_ADMIN_DSN")
    postgres.drop(admin, settings)
    if plat is not None and postgres.forget_remote(c, plat, admin, settings):
        say(f"db: removed the pg_hba entries for {settings.pg_user}")
    airflow_db.forget_migration(settings)  # its schema stamp described a database that no longer exists
    say(f"db: dropped database {settings.pg_database} and role {settings.pg_user}")



@task(name="import-sqlite", positional=["path"], help={
    "path": "the old Airflow's SQLite database (airflow.db); it is only read",
    "fernet_key_file": "a file holding the old installation's fernet key (or set STACK_IMPORT_FERNET_KEY; "
                       "default: the airflow.cfg beside the DB)",
    "dry_run": "only report what would be imported",
})
@one_line_errors
@exclusive("invoke db.import-sqlite")
def import_sqlite(c: Context, path: str, fernet_key_file: str | None = None, dry_run: bool = False) -> None:
    """Carry connections, variables and pools over from a SQLite Airflow (re-run safe)."""
    from .. import carryover

    settings = load()
    key_file = Path(fernet_key_file).expanduser() if fernet_key_file else None
    report = carryover.carry_over(c, settings, Path(path).expanduser().resolve(), key_file, dry_run)
    verb = "would import" if dry_run else "imported"
    for kind in carryover.KINDS:
        new, kept = report.new.get(kind, []), report.kept.get(kind, [])
        say(f"import: {kind}: {verb} {len(new)}{' (' + ', '.join(new) + ')' if new else ''}; "
            f"{len(kept)} already in the stack, kept as they are")
    if report.to_check:
        say(f"import: check these connections, they pointed at the old machine: {', '.join(report.to_check)}")
    say("import: dry run, nothing written" if dry_run else "import: done")
