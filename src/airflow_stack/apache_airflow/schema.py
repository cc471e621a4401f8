"""Airflow's schema and admin user: migrated and created once, checked cheaply with psycopg.

``airflow db migrate`` runs only when the schema is absent or the installed Airflow differs from the
one that last migrated it (a stamp in AIRFLOW_HOME); the admin user is looked up in ``ab_user``
before ``airflow users create`` is started, so a re-run starts no ``airflow`` process at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import time
from pathlib import Path

import psycopg
from invoke import Context
from psycopg import sql

from ..errors import StackError
from ..settings import Settings, redact
from ..statedir import write_private
from . import commands, config, install, profiles


def _stamp_path(settings: Settings) -> Path:
    return settings.paths.schema_stamp


def _db_identity(settings: Settings) -> str:
    return f"{settings.pg_host}:{settings.pg_port}/{settings.pg_database}"


def migrated_here(settings: Settings) -> str | None:
    """The Airflow release this state dir migrated the configured database with (None: it did not)."""
    try:
        stamp = json.loads(_stamp_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return (stamp.get("airflow") or "unknown") if stamp.get("db") == _db_identity(settings) else None


def forget_migration(settings: Settings) -> None:
    """The database was dropped: its schema stamp goes (a stamp of another database stays)."""
    try:
        stamp = json.loads(_stamp_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return
    if stamp.get("db") == _db_identity(settings):
        _stamp_path(settings).unlink(missing_ok=True)


def schema_revision(settings: Settings) -> str | None:
    """The alembic revision of the metadata DB (None: no Airflow schema there)."""
    try:
        with psycopg.connect(**settings.pg_conninfo()) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else None
    except psycopg.errors.UndefinedTable:
        return None
    except psycopg.OperationalError as exc:
        reason = redact(str(exc).strip().splitlines()[-1], settings)
        raise StackError(f"cannot reach the metadata DB {_db_identity(settings)} ({reason}); "
                         f"run: invoke setup.postgres") from None


def needs_migration(settings: Settings) -> bool:
    revision = schema_revision(settings)
    if revision is None:
        return True
    try:
        stamp = json.loads(_stamp_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return True
    return stamp != {"airflow": install.installed_version(settings), "db": _db_identity(settings),
                     "revision": revision}


# The comment on the schema's alembic_version table: which Airflow release migrated it last. It goes
# with the database (a backup and its restore too), so any checkout can tell an older release apart.
SCHEMA_MARK = "airflow-stack: migrated by Airflow "


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _schema_mark(settings: Settings) -> tuple[str | None, str | None]:
    """(the release in the schema's mark, the schema revision); Nones when there is no schema or the
    database cannot be read (the steps after this say so)."""
    try:
        with psycopg.connect(**settings.pg_conninfo()) as conn:
            row = conn.execute("SELECT obj_description('alembic_version'::regclass, 'pg_class'), "
                               "(SELECT version_num FROM alembic_version LIMIT 1)").fetchone()
    except psycopg.Error:
        return None, None
    comment, revision = row if row else (None, None)
    marked = comment.removeprefix(SCHEMA_MARK) if comment and comment.startswith(SCHEMA_MARK) else None
    return marked, revision


def schema_migrated_by(settings: Settings) -> tuple[str | None, str | None]:
    """(the Airflow release that last migrated the metadata DB, its schema revision)."""
    marked, revision = _schema_mark(settings)
    if marked:
        return marked, revision
    try:  # migrated before the mark existed: this checkout's own stamp may know
        stamp = json.loads(_stamp_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None, revision
    found = stamp.get("airflow") if stamp.get("db") == _db_identity(settings) else None
    return found, revision


def refuse_older_release(settings: Settings, target: str) -> None:
    """Airflow cannot run on a schema a newer release migrated, and `db migrate` of an older one
    against it may fail half-way: refuse before anything is installed or written."""
    found, revision = schema_migrated_by(settings)
    if found and _release(target) < _release(found):
        raise StackError(f"the metadata DB {settings.pg_database} was migrated by Airflow {found} (schema revision "
                         f"{revision}); Airflow {target} cannot run on it, so nothing was installed or changed: keep "
                         f"a line and release >= {found}, or go back to a backup taken before with "
                         f"invoke db.restore FILE --yes")


def refuse_another_release(settings: Settings, target: str, source: str) -> None:
    """What a setup may run on the metadata DB: the release that migrated it (or any, on a new database).
    An older one cannot run there (refuse_older_release); a newer one would migrate it in place, which is
    what `invoke upgrade` does with a backup first and a way back: it is named instead."""
    refuse_older_release(settings, target)
    found, _ = schema_migrated_by(settings)
    if found and _release(target) > _release(found):
        raise StackError(f"the metadata DB {settings.pg_database} was migrated by Airflow {found}; {source} names "
                         f"Airflow {target}: run invoke upgrade (it backs the database up, migrates it and goes back "
                         f"if anything fails); nothing was installed or changed")


def _mark_schema(settings: Settings, version: str | None) -> None:
    if not version:
        return
    with contextlib.suppress(psycopg.Error), psycopg.connect(**settings.pg_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON TABLE alembic_version IS {}").format(SCHEMA_MARK + version))


def migrate(c: Context, settings: Settings, env: dict[str, str]) -> list[str]:
    version = install.installed_version(settings)
    if not needs_migration(settings):
        if _schema_mark(settings)[0] is None:
            _mark_schema(settings, version)  # a schema migrated before the mark existed
        return []
    started = time.monotonic()
    env = env | {config.SQL_CONN_VAR: config.sql_alchemy_conn(settings, migrating=True)}
    commands.run_cli(c, settings, env, "db migrate", "setup-airflow")
    _stamp_path(settings).write_text(json.dumps({
        "airflow": version, "db": _db_identity(settings), "revision": schema_revision(settings)}))
    _mark_schema(settings, version)
    return [f"migrated the Airflow schema in {settings.pg_database} ({time.monotonic() - started:.0f} s)"]


def _admin_hash(settings: Settings) -> str | None:
    """The admin's password hash as the database holds it (None: no such user yet)."""
    try:
        with psycopg.connect(**settings.pg_conninfo()) as conn:
            row = conn.execute("SELECT password FROM ab_user WHERE username = %s", (settings.admin_user,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return (row[0] or "") if row else None


def admin_exists(settings: Settings) -> bool:
    return _admin_hash(settings) is not None


def _admin_stamp_path(settings: Settings) -> Path:
    return settings.paths.admin_stamp


def _password_digest(settings: Settings, salt: bytes) -> str:
    # salted and slow: the stamp must not make a user-chosen password easier to guess
    key = f"{_db_identity(settings)}|{settings.admin_user}|{settings.admin_password}".encode()
    return hashlib.pbkdf2_hmac("sha256", key, salt, 200_000).hex()


def _in_db(settings: Settings) -> str:
    # what the database holds now: another checkout that set the password, or a database re-created
    # under the same name, changes it, and this stamp no longer speaks for it
    return hashlib.sha256((_admin_hash(settings) or "").encode()).hexdigest()


def _admin_in_sync(settings: Settings) -> bool:
    try:
        stamp = json.loads(_admin_stamp_path(settings).read_text())
        return (stamp["digest"] == _password_digest(settings, bytes.fromhex(stamp["salt"]))
                and stamp.get("in_db") == _in_db(settings))
    except (FileNotFoundError, ValueError, KeyError):
        return False


def _stamp_admin(settings: Settings) -> None:
    salt = os.urandom(16)
    write_private(_admin_stamp_path(settings), json.dumps(
        {"salt": salt.hex(), "digest": _password_digest(settings, salt), "in_db": _in_db(settings)}))


def ensure_admin(c: Context, settings: Settings, env: dict[str, str]) -> list[str]:
    """Create the admin once; when it exists with a password other than .env's, reset it to .env's."""
    exists = admin_exists(settings)
    if exists and _admin_in_sync(settings):
        return []
    env = env | {"_AIRFLOW_WWW_USER_PASSWORD": settings.admin_password}
    user = shlex.quote(settings.admin_user)
    create = (f"users create --role Admin --username {user} --firstname Airflow --lastname Admin "
              f"--email {user}@example.invalid")
    secret = "_AIRFLOW_WWW_USER_PASSWORD"
    if exists:
        # e.g. a new password in .env
        if profiles.of(settings).admin_reset_password:
            commands.run_cli(c, settings, env, f"users reset-password --username {user}", "setup-airflow", secret)
        else:  # the line cannot reset a password (see its profile): re-create the user instead
            commands.run_cli(c, settings, env, f"users delete --username {user}", "setup-airflow")
            commands.run_cli(c, settings, env, create, "setup-airflow", secret)
        change = f"set the password of Airflow user {settings.admin_user} to the one in {settings.env_file}"
    else:
        commands.run_cli(c, settings, env, create, "setup-airflow", secret)
        change = (f"created the admin user {settings.admin_user} (password: _AIRFLOW_WWW_USER_PASSWORD in "
                  f"{settings.env_file})")
    _stamp_admin(settings)
    return [change]
