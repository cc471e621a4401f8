"""A scratch database beside the stack's, and row counts: what verifies a backup and what an upgrade
rehearsal migrates. The stack's own database is only read.

Who makes the scratch database: the superuser access the stack has (the local server's superuser through
psql, or ``STACK_PG_ADMIN_DSN``) creates it owned by the stack's role, closed to other roles, and drops it
after; without that, the role itself when it may create databases (CREATEDB: some managed servers grant it;
the role the stack makes is NOCREATEDB). A managed server with neither cannot hold a scratch database: a
backup is then verified by reading every table's rows back from its archive (as pg_restore would load
them, ops/backup.archive_rows), and a rehearsal is refused, naming both ways to allow it.

Rows are counted per table, every ordinary table outside the system schemas: in the live database within
the snapshot pg_dump dumps (``snapshot``: Airflow writing meanwhile changes neither side), and in what was
restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from invoke import Context
from psycopg import sql

from ..errors import StackError
from ..services import pg_database, postgres
from ..services.host import Platform
from ..settings import Settings
from . import backup

# every ordinary table outside the system schemas, named as pg_dump names it (quoted where needed)
TABLES = ("SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname, c.relname "
          "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
          "WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1")
RESTORED = "restored into a scratch database"
READ_BACK = "read back from the archive (no scratch database on this server)"


def count_rows(conn: psycopg.Connection) -> dict[str, int]:
    """Table -> rows, in the connection's current transaction (its snapshot)."""
    counts = {}
    for name, schema, table in conn.execute(TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        counts[name] = int(conn.execute(query).fetchone()[0])
    return counts


def rows_of(settings: Settings) -> dict[str, int]:
    """Table -> rows of the settings' database, now."""
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        return count_rows(conn)


@contextlib.contextmanager
def snapshot(settings: Settings) -> Iterator[tuple[str, dict[str, int]]]:
    """(an exported snapshot, every table's rows in it): one REPEATABLE READ transaction, held open while the
    caller runs pg_dump --snapshot with it, so the counts and the dump see the same instant."""
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        exported = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        yield exported, count_rows(conn)
        conn.rollback()


def differences(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    """The tables whose rows differ, one phrase each."""
    return [f"{name}: {found.get(name, 'no table')} restored, {expected.get(name, 'no table')} in the database"
            for name in sorted(set(expected) | set(found)) if expected.get(name) != found.get(name)]


# ---- the scratch database ------------------------------------------------------------------------
def _role_may_create(settings: Settings) -> bool:
    try:
        with psycopg.connect(**settings.pg_conninfo()) as conn:
            return bool(conn.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()[0])
    except psycopg.Error:
        return False


def _as_role(settings: Settings) -> Callable[[list[sql.Composable]], None]:
    def execute(statements: list[sql.Composable]) -> None:
        with psycopg.connect(**settings.pg_conninfo(), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    return execute


def maker(c: Context, platform: Platform | None, settings: Settings) -> Callable[[list[sql.Composable]], None] | None:
    """What runs CREATE and DROP DATABASE for a scratch database here, or None: nothing may."""
    admin = postgres.admin_for(c, platform, settings)
    if admin is not None:
        return admin.execute
    return _as_role(settings) if _role_may_create(settings) else None


def cannot_make(settings: Settings) -> str:
    return (f"role {settings.pg_user} may not create databases (NOCREATEDB) and no superuser access is set: set "
            f"STACK_PG_ADMIN_DSN to a role with CREATEDB, or have the server's admin run ALTER ROLE "
            f"{settings.pg_user} CREATEDB")


@contextlib.contextmanager
def database(c: Context, platform: Platform | None, settings: Settings, purpose: str,
             execute: Callable[[list[sql.Composable]], None] | None = None) -> Iterator[Settings]:
    """A new, empty database owned by the stack's role, closed to other roles, dropped afterwards (also when
    the caller fails); yields the settings pointing at it. One left by a killed run is dropped first."""
    execute = execute or maker(c, platform, settings)
    if execute is None:
        raise StackError(f"no scratch database can be made on {settings.pg_host}:{settings.pg_port}: "
                         f"{cannot_make(settings)}")
    name = pg_database.scratch_name(settings, purpose)
    ident = sql.Identifier(name)
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident)
    execute([drop, sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, sql.Identifier(settings.pg_user)),
             sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident)])
    try:
        yield settings.replace(pg_database=name)
    finally:
        execute([drop])


def verify(c: Context, platform: Platform | None, settings: Settings, path: Path, expected: dict[str, int]) -> str:
    """Restore the backup at ``path`` into a scratch database (or, where none can be made, read it back) and
    compare every table's rows with ``expected``; how it was verified, or StackError saying what differs."""
    execute = maker(c, platform, settings)
    if execute is None:
        found, how = backup.archive_rows(c, platform, settings, path), READ_BACK
    else:
        with database(c, platform, settings, "verify", execute) as scratch:
            backup.restore(c, platform, scratch, path)
            found, how = rows_of(scratch), RESTORED
    wrong = differences(expected, found)
    if wrong:
        raise StackError(f"{len(wrong)} table(s) differ after the restore ({'; '.join(wrong[:3])})")
    return how
