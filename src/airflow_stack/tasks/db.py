"""invoke db.*: the metadata database (backups, restore, retention, drop, carrying objects over)."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from ..errors import StackError
from ..ops import backup as backup_mod
from ..runtime import registry
from ..settings import help_for
from ._common import number, one_line_errors, say, stack


@task(help={"output": "file to write (default: <state dir>/backups/<db>-<UTC time>.dump, recorded as the last backup "
                      "when verified; the oldest there beyond STACK_BACKUP_KEEP are removed)",
            "verify": "restore it into a scratch database and compare every table's rows with the database's when "
                      "it was taken (default; --no-verify: pg_dump only)"})
@one_line_errors
def backup(c: Context, output: str | None = None, verify: bool = True) -> None:
    """Back up Airflow's database (pg_dump custom format, mode 0600) and verify it, safe while Airflow runs."""
    from ..ops import backup_service

    the_stack = stack(c)
    settings = the_stack.settings
    target = Path(output).resolve() if output else None
    with the_stack.lock("invoke db.backup"):
        if not verify:
            path = backup_mod.backup(c, the_stack.local_host, settings, target)
        else:  # into the state dir: recorded and pruned as the scheduled ones; a copy elsewhere: verified only
            attempt, pruned = backup_service.take_by_hand(c, the_stack.local_host, settings, target)
            path = Path(attempt.file)
    say(f"db: backup of {settings.pg_database} written to {path} ({path.stat().st_size / 1024:.0f} KiB)")
    if verify:
        say(f"db: {backup_service.describe(attempt, pruned)}")


@task(positional=["file"], help={"file": "a backup made by invoke db.backup",
                                 "yes": "really replace the database's content (required)"})
@one_line_errors
def restore(c: Context, file: str, yes: bool = False) -> None:
    """Restore a backup into Airflow's database (refuses while Airflow runs, and without --yes)."""
    the_stack = stack(c)
    settings = the_stack.settings
    path = Path(file).resolve()
    with the_stack.lock("invoke db.restore"):
        backup_mod.check_readable(c, the_stack.local_host, settings, path)  # before asking for a stop
        running = registry.running(settings)
        if running:
            raise StackError(f"Airflow is running ({', '.join(running)}); stop it first: invoke stop")
        if not yes:
            raise StackError(f"this replaces everything in database {settings.pg_database} with {path.name}; "
                             f"re-run with --yes to do it")
        backup_mod.restore(c, the_stack.local_host, settings, path)
        # the schema revision may differ from the one stamped: let setup decide whether to migrate
        settings.paths.schema_stamp.unlink(missing_ok=True)
    say(f"db: restored {path.name} into {settings.pg_database}; start with: invoke up")


@task(help={"days": help_for("retention_days", "keep this many days"),
            "dry_run": "only say what would be removed"})
@one_line_errors
def clean(c: Context, days: str | None = None, dry_run: bool = False) -> None:
    """Remove task logs and metadata rows (airflow db clean) older than the retention; safe while running."""
    from ..ops import retention

    the_stack = stack(c)
    settings = the_stack.settings
    keep = number(days, "--days", settings.retention_days, int, example=30)
    with the_stack.lock("invoke db.clean"):
        pruned = retention.prune_task_logs(settings, keep, dry_run)
        verb = "would remove" if dry_run else "removed"
        say(f"db: {verb} {pruned.files} task log files older than {keep} days ({pruned.bytes / 1024:.0f} KiB)")
        before = retention.clean_metadata(c, settings, keep, dry_run)
    say(f"db: {'would clean' if dry_run else 'cleaned'} metadata rows from before {before} "
        f"(airflow db clean; log: {settings.paths.log_file('db-clean')})")


@task(help={"yes": "really drop it (required: this deletes every DAG run and connection)"})
@one_line_errors
def drop(c: Context, yes: bool = False) -> None:
    """Drop Airflow's database and role (refuses while Airflow runs, and without --yes)."""
    the_stack = stack(c)
    settings = the_stack.settings
    if not yes:
        raise StackError(f"this deletes database {settings.pg_database} and role {settings.pg_user}; "
                         f"re-run with --yes to do it")
    the_stack.drop_database()


@task(name="import-sqlite", positional=["path"], help={
    "path": "the old Airflow's SQLite database (airflow.db); it is only read",
    "fernet_key_file": "a file holding the old installation's fernet key (or set STACK_IMPORT_FERNET_KEY; "
                       "default: the airflow.cfg beside the DB)",
    "dry_run": "only report what would be imported",
})
@one_line_errors
def import_sqlite(c: Context, path: str, fernet_key_file: str | None = None, dry_run: bool = False) -> None:
    """Carry connections, variables and pools over from a SQLite Airflow (re-run safe)."""
    from ..ops import carryover

    the_stack = stack(c)
    key_file = Path(fernet_key_file).expanduser() if fernet_key_file else None
    with the_stack.lock("invoke db.import-sqlite"):
        report = carryover.carry_over(c, the_stack.settings, Path(path).expanduser().resolve(), key_file, dry_run)
    verb = "would import" if dry_run else "imported"
    for kind in carryover.KINDS:
        new, kept = report.new.get(kind, []), report.kept.get(kind, [])
        say(f"import: {kind}: {verb} {len(new)}{' (' + ', '.join(new) + ')' if new else ''}; "
            f"{len(kept)} already in the stack, kept as they are")
    if report.to_check:
        say(f"import: check these connections, they pointed at the old machine: {', '.join(report.to_check)}")
    say("import: dry run, nothing written" if dry_run else "import: done")
