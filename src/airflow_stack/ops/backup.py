"""Backups of the metadata database (pg_dump custom format) and their restore, as the Airflow role.

The role owns its database, so it can dump and restore all of it without superuser access; its
password travels in PGPASSWORD (the environment of that one command), never on a command line.
A backup is verified (a restore that gives back every row) by ops/backup_service.py.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import time
from pathlib import Path

import psycopg
from invoke import Context

from ..errors import StackError
from ..services.host import Platform
from ..settings import Settings, redact

MAGIC = b"PGDMP"  # the first bytes of every pg_dump custom-format archive
NOT_FOUND = 127  # the shell's exit code for a command it cannot find
INSTALL_CLIENT = ("install the PostgreSQL client tools (Debian/Ubuntu: apt-get install postgresql-client; "
                  "macOS: brew install libpq)")


def backup_dir(settings: Settings) -> Path:
    return settings.paths.backups


# libpq's environment variable for each keyword of settings.pg_ssl_params
LIBPQ_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "require_auth": "PGREQUIREAUTH"}


def _libpq_env(settings: Settings) -> dict[str, str]:
    return {"PGPASSWORD": settings.pg_password or ""} | {
        LIBPQ_ENV[key]: value for key, value in settings.pg_ssl_params().items()}


def _target(settings: Settings) -> str:
    return (f"-h {shlex.quote(settings.pg_host)} -p {settings.pg_port} -U {shlex.quote(settings.pg_user)} "
            f"-d {shlex.quote(settings.pg_database)}")


def _tool(c: Context, platform: Platform | None, settings: Settings, name: str) -> str:
    return platform.pg_bin(c, name, settings.pg_version) if platform else name


def check_folder(folder: Path) -> None:
    """One line when backups cannot be written into ``folder`` (it, or the folder it would be made in, is a
    file or not writable); nothing is created."""
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise StackError(f"cannot write a backup into {folder}: {where} is a file, not a folder; move that file away")
    if not os.access(where, os.W_OK | os.X_OK):
        raise StackError(f"cannot write a backup into {folder}: {where} is not writable for this user; fix its "
                         f"permissions")


def database_size(settings: Settings) -> int:
    """Bytes the Airflow database takes on its server."""
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def check_room(settings: Settings, folder: Path) -> None:
    """Refuse a backup before anything is written when ``folder``'s disk has less free space than the
    database takes (a dump is smaller, but a disk that full would stop the stack's own logs and PostgreSQL)."""
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    need, free = database_size(settings), shutil.disk_usage(where).free
    if free < need:
        raise StackError(f"not enough space for a backup in {folder}: {free >> 20} MiB free, database "
                         f"{settings.pg_database} takes {need >> 20} MiB; free space there, or move "
                         f"STACK_STATE_DIR to a larger disk")


def backup(c: Context, platform: Platform | None, settings: Settings, output: Path | None = None,
           snapshot: str = "") -> Path:
    """pg_dump into ``output`` (default: STATE/backups/DB-UTCTIME.dump), 0600; ``snapshot``: dump exactly
    that exported snapshot (pg_export_snapshot of a transaction the caller holds open)."""
    def named_now() -> Path:
        return backup_dir(settings) / f"{settings.pg_database}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.dump"

    path = output or named_now()
    check_folder(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    while output is None and path.exists():  # another one this second (a scheduled one, one by hand)
        time.sleep(0.1)
        path = named_now()
    if path.exists():
        raise StackError(f"{path} exists already; choose another --output")
    # created 0600 before pg_dump writes into it: a dump holds connections and variables
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    cmd = f"{_tool(c, platform, settings, 'pg_dump')} -Fc {_target(settings)} -f {shlex.quote(str(path))}"
    if snapshot:
        cmd += f" --snapshot={shlex.quote(snapshot)}"
    try:
        result = c.run(cmd, env=_libpq_env(settings), hide=True, warn=True, in_stream=False)
    except BaseException:  # stopped half-way (SIGTERM): no partial dump stays behind
        path.unlink(missing_ok=True)
        raise
    if result.failed:
        path.unlink(missing_ok=True)
        _missing_tool(result.exited, "pg_dump")
        raise StackError(f"pg_dump failed: {_last_line(result.stderr, settings)}; check invoke status")
    return path


def _missing_tool(exited: int, name: str) -> None:
    if exited == NOT_FOUND:
        raise StackError(f"{name} is not installed here (not on PATH); {INSTALL_CLIENT}")


def check_archive(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            head = fh.read(len(MAGIC))
    except FileNotFoundError:
        raise StackError(f"no backup at {path}; list them: ls {path.parent}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise StackError(f"cannot read {path} ({exc.__class__.__name__}); give a backup file") from None
    if head != MAGIC:
        raise StackError(f"{path} is not a pg_dump custom-format backup (made by invoke db.backup)")


def check_readable(c: Context, platform: Platform | None, settings: Settings, path: Path) -> None:
    """A backup pg_restore can read (its table of contents), before anyone stops Airflow for it."""
    check_archive(path)
    cmd = f"{_tool(c, platform, settings, 'pg_restore')} --list {shlex.quote(str(path))}"
    result = c.run(cmd, hide=True, warn=True, in_stream=False)
    if result.failed:
        _missing_tool(result.exited, "pg_restore")
        raise StackError(f"{path} is not a readable backup ({_last_line(result.stderr, settings)}); "
                         f"give a file made by invoke db.backup")


# Everything the role owns in the schema public, dropped before the archive is loaded: what a newer release's
# migration added too (pg_restore --clean drops only what the archive names, and cannot drop a constraint that a
# newer table's foreign key depends on). The statements are collected first: a CASCADE may remove later ones.
RESET_SCHEMA = """DO $reset$
DECLARE
  stmts text[];
  stmt text;
BEGIN
  SELECT coalesce(array_agg(s), '{}') INTO stmts FROM (
    SELECT format('DROP %s IF EXISTS public.%I CASCADE',
                  CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                                 WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.relname) AS s
      FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT c.relispartition AND pg_get_userbyid(c.relowner) = current_user
    UNION ALL
    SELECT format('DROP FUNCTION IF EXISTS %s CASCADE', p.oid::regprocedure)
      FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND pg_get_userbyid(p.proowner) = current_user
    UNION ALL
    SELECT format('DROP TYPE IF EXISTS public.%I CASCADE', t.typname)
      FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'r', 'm')
       AND pg_get_userbyid(t.typowner) = current_user) AS drops;
  FOREACH stmt IN ARRAY stmts LOOP
    EXECUTE stmt;
  END LOOP;
END
$reset$;
"""


def restore(c: Context, platform: Platform | None, settings: Settings, path: Path) -> None:
    """Replace the database's content with the archive's, in one transaction: what the role owns in it is
    dropped (RESET_SCHEMA), the archive loaded, and only then committed; any error leaves it as it was.

    COMMIT is sent only when pg_restore read the whole archive: a restore cut short ends the session
    without it, which rolls everything back."""
    check_archive(path)
    archive = shlex.quote(str(path))
    begin = shlex.quote("BEGIN;\n" + RESET_SCHEMA)
    cmd = (f"set -o pipefail; {{ printf '%s' {begin}; "
           f"{_tool(c, platform, settings, 'pg_restore')} --no-owner -f - {archive} && printf 'COMMIT;\\n'; }} | "
           f"{_tool(c, platform, settings, 'psql')} -X -q -v ON_ERROR_STOP=1 {_target(settings)}")
    # the reset's NOTICEs ("does not exist, skipping") are not what a failure should be told by
    quiet = {"PGOPTIONS": "-c client_min_messages=warning"}
    result = c.run(cmd, env=_libpq_env(settings) | quiet, hide=True, warn=True, in_stream=False)
    if result.failed:
        _missing_tool(result.exited, "pg_restore or psql")
        raise StackError(f"the restore failed, nothing was changed (one transaction): "
                         f"{_last_line(result.stderr, settings)}")


# The awk program that counts the rows of each table's COPY block in a plain-text dump: "TABLE COUNT" lines
COUNT_COPY_ROWS = (r'/^COPY .* FROM stdin;$/ {t = $0; sub(/^COPY /, "", t); sub(/ \(.*$/, "", t); '
                   r'sub(/ +FROM stdin;$/, "", t); n = 0; inside = 1; next} '
                   r'inside && /^\\\.$/ {print t, n; inside = 0; next} inside {n++}')


def archive_rows(c: Context, platform: Platform | None, settings: Settings, path: Path) -> dict[str, int]:
    """Every table's rows as a restore would load them, read back from the archive (streamed, never held
    in memory): table (as pg_dump names it, schema.table) -> rows."""
    check_archive(path)
    cmd = (f"set -o pipefail; {_tool(c, platform, settings, 'pg_restore')} --data-only -f - "
           f"{shlex.quote(str(path))} | awk {shlex.quote(COUNT_COPY_ROWS)}")
    result = c.run(cmd, hide=True, warn=True, in_stream=False)
    if result.failed:
        _missing_tool(result.exited, "pg_restore")
        raise StackError(f"pg_restore cannot read {path.name} back: {_last_line(result.stderr, settings)}")
    found = {}
    for line in result.stdout.splitlines():
        table, _, rows = line.rpartition(" ")
        if table and rows.isdigit():
            found[table] = int(rows)
    return found


def _last_line(text: str, settings: Settings) -> str:
    """What a PostgreSQL tool said went wrong: its first error line (the lines after it quote the command),
    else its last line; never a secret."""
    lines = [line.strip() for line in redact(text, settings).strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    return (errors or lines or ["no message"])[0 if errors else -1]
