"""Airflow's role and database on the server, created idempotently (PostgreSQL 15+ safe: the role owns
its database), one database per checkout (a comment marks whose it is), and dropped on request.

Every SQL statement is composed with ``psycopg.sql`` (identifiers and literals quoted by psycopg, never
by f-strings).
"""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
from psycopg import sql

from .. import statedir
from ..errors import StackError
from ..settings import Settings
from . import postgres
from .host import Cluster
from .postgres import Admin

# The comment on a database this stack set up: which checkout (STACK_CHECKOUT_ID) owns it
OWNER_MARK = "airflow-stack checkout "
# Settings the Airflow docs recommend for its role; applied with ALTER ROLE ... SET
ROLE_SETTINGS = {"client_encoding": "utf8", "default_transaction_isolation": "read committed", "timezone": "UTC"}


def _no_password_logging() -> sql.Composable:
    # a server with log_statement=ddl would otherwise write the password to its log
    return sql.SQL("SET log_statement = 'none'")


# ---- one database per checkout --------------------------------------------------------------
def owner_mark(settings: Settings) -> str:
    """"airflow-stack checkout ID HOST:ENV_FILE": who set the database up, and where that checkout lives."""
    return f"{OWNER_MARK}{settings.checkout_id or ''} {socket.gethostname()}:{settings.env_file.resolve()}"


def marked_id(marker: str) -> str:
    return marker[len(OWNER_MARK):].split(" ", 1)[0]


def owner_gone(marker: str) -> bool:
    """The checkout that marked the database was on this machine and is gone (its .env no longer
    exists or names another checkout): a deleted clone, whose database a new clone may take over."""
    location = marker[len(OWNER_MARK):].partition(" ")[2]
    host, _, env_file = location.partition(":")
    if not env_file or host != socket.gethostname():
        return False  # another machine's, or no location: cannot tell, so it may be alive
    return not statedir.checkout_lives(Path(env_file), marked_id(marker))


def _another_checkouts(settings: Settings, marker: str | None) -> bool:
    """The database was marked by another checkout than this one (living or gone)."""
    return bool(marker) and marker.startswith(OWNER_MARK) and marked_id(marker) != settings.checkout_id


def check_owner(settings: Settings, marker: str | None) -> bool:
    """Refuse a database that another, living checkout of airflow-stack set up: taking it over would
    reset its role's password and lock that checkout's stack out. True when the database was marked
    by a checkout that is gone (a deleted clone): this one may take it over."""
    if not _another_checkouts(settings, marker):
        return False
    if owner_gone(marker):
        return True
    raise StackError(f"database {settings.pg_database} on {settings.pg_host}:{settings.pg_port} belongs to "
                     f"another airflow-stack checkout (its STACK_CHECKOUT_ID differs); give this one its own: "
                     f"set STACK_PG_DATABASE and STACK_PG_USER in {settings.env_file.name} to new names "
                     f"(e.g. airflow_{settings.env_file.parent.name.replace('-', '_')}), then run this again")


def owned_elsewhere(admin: Admin, settings: Settings, db: str) -> str:
    """Where the other, living checkout that set up database ``db`` on the server lives ("HOST:ENV_FILE"), or ""
    (no such database, unmarked, this checkout's, or its checkout is gone)."""
    marker = _owner_and_marker(admin, db)[1]
    if not _another_checkouts(settings, marker) or owner_gone(marker or ""):
        return ""
    return (marker or "")[len(OWNER_MARK):].partition(" ")[2] or "another checkout"


def database_marker(settings: Settings) -> str | None:
    """The comment on the Airflow database, read as the Airflow role (None: cannot tell)."""
    try:
        with psycopg.connect(**settings.pg_conninfo()) as conn:
            row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                               "WHERE datname = current_database()").fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None


def mark_database(settings: Settings, take_over: bool = False) -> bool:
    """Mark the Airflow database as this checkout's, as its owner (the Airflow role); True when written:
    unmarked, marked by this checkout from another place (it moved), or ``take_over``. A database the
    role does not own, or one with a comment of the user's, is left as it is."""
    if not settings.checkout_id:
        return False
    try:
        with psycopg.connect(**settings.pg_conninfo(), autocommit=True) as conn:
            row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                               "WHERE datname = current_database()").fetchone()
            current = row[0] if row else None
            ours = bool(current) and current.startswith(OWNER_MARK) and marked_id(current) == settings.checkout_id
            if current == owner_mark(settings) or (current and not take_over and not ours):
                return False
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(settings.pg_database), owner_mark(settings)))
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def _owner_and_marker(admin: Admin, db: str) -> tuple[str | None, str | None]:
    """(owner, comment) of database ``db``; (None, None) when there is no such database."""
    found = admin.rows(sql.SQL("SELECT pg_get_userbyid(datdba), coalesce(shobj_description(oid, 'pg_database'), '') "
                               "FROM pg_database WHERE datname = {}").format(db))
    return (found[0][0], found[0][1] if len(found[0]) > 1 else "") if found else (None, None)


def vanished_database_error(settings: Settings, migrated_by: str, clusters: list[Cluster]) -> StackError:
    """The database this stack migrated is not on the server any more: say why that may be (a major
    upgrade on apt leaves the data in the old cluster) and what to do, instead of an empty one."""
    where = f"{settings.pg_host}:{settings.pg_port}"
    here = next((k for k in clusters if k.port == settings.pg_port), None)
    older = [k for k in clusters if k is not here and (here is None or _major(k.version) < _major(here.version))]
    lead = (f"database {settings.pg_database} is not on the PostgreSQL at {where}, yet this stack migrated it there "
            f"(Airflow {migrated_by}); no empty one is created in its place")
    if older:
        old = older[0]
        state = "online" if old.online else "down"
        return StackError(f"{lead}: the older cluster {old.version}/{old.name} (port {old.port}, {state}) may hold it "
                          f"after a major upgrade: move it with pg_upgradecluster {old.version} {old.name} (first "
                          f"pg_dropcluster the new, empty {here.version + '/' + here.name if here else 'cluster'}), "
                          f"or set STACK_PG_PORT={old.port}; to start empty: invoke setup.postgres --new-database")
    return StackError(f"{lead}: restore a backup (invoke setup.postgres --new-database, then invoke db.restore FILE "
                      f"--yes), or to start empty: invoke setup.postgres --new-database")


def _major(version: str) -> float:
    try:
        return float(version)
    except ValueError:
        return 0.0


def bootstrap(admin: Admin | None, settings: Settings, migrated_by: str | None = None,
              clusters: list[Cluster] | None = None) -> list[str]:
    """Create the role and its database, idempotently; return what changed (empty: nothing).

    ``migrated_by``: the Airflow release that migrated this very database, when this state dir did (a
    missing database is then an accident to explain, not a first setup); ``clusters``: apt's clusters."""
    if admin is None:
        ok, reason = postgres.role_can_login(settings)
        if not ok:
            raise StackError(f"cannot connect to {settings.pg_host}:{settings.pg_port}/{settings.pg_database} as "
                             f"{settings.pg_user} ({reason}); create that role and database on the server, "
                             f"or set STACK_PG_ADMIN_DSN to a superuser DSN")
        take_over = check_owner(settings, database_marker(settings))
        postgres.check_role_can_create(settings)
        marked = mark_database(settings, take_over)
        return [f"marked database {settings.pg_database} as this checkout's"] if marked else []

    role, db = settings.pg_user, settings.pg_database
    changes: list[str] = []
    # before anything changes (a role's password above all): is it another checkout's database?
    owner, marker = _owner_and_marker(admin, db)
    take_over = check_owner(settings, marker)
    if owner is None and migrated_by:  # before anything changes: a missing database is explained, not re-made
        raise vanished_database_error(settings, migrated_by, clusters or [])
    if take_over:
        gone = (marker or "").partition(":")[2]
        changes.append(f"took over database {db} from a checkout that no longer exists ({gone})")
    found = admin.rows(sql.SQL("SELECT rolsuper, coalesce(array_to_string(rolconfig, ','), '') "
                               "FROM pg_roles WHERE rolname = {}").format(role))
    if found and found[0][0] in ("t", "True"):
        raise StackError(f"role {role} is a superuser; Airflow should not run as one: "
                         f"set STACK_PG_USER to another role name")
    if not found:
        admin.execute([_no_password_logging(),
                       sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                           sql.Identifier(role), settings.pg_password)])
        changes.append(f"created role {role}")
        current = ""
    else:
        current = found[0][1]
        if not postgres.role_can_login(settings)[0]:
            # .env is the source of truth: bring the role's password back in line with it
            admin.execute([_no_password_logging(),
                           sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                               sql.Identifier(role), settings.pg_password)])
            changes.append(f"reset the password of role {role} to the one in {settings.env_file.name}")
    # PostgreSQL stores some names canonically (timezone -> TimeZone): compare case-insensitively
    have = dict(item.split("=", 1) for item in current.split(",") if "=" in item)
    have = {key.lower(): value for key, value in have.items()}
    missing = [key for key, value in ROLE_SETTINGS.items() if have.get(key) != value]
    if missing:
        admin.execute([sql.SQL("ALTER ROLE {} SET {} TO {}").format(
            sql.Identifier(role), sql.Identifier(key), ROLE_SETTINGS[key]) for key in missing])
        changes.append(f"set {', '.join(missing)} on role {role}")

    # a new database lets every role connect (PUBLIC): another checkout's role, or any other on the server,
    # must not even connect to this one (its owner keeps CONNECT and TEMPORARY as owner)
    private = sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db))
    if owner is None:
        # OWNER, not GRANT ALL: PostgreSQL 15 no longer lets ordinary roles CREATE in public
        admin.execute([sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(role)),
                       private])
        changes.append(f"created database {db} owned by {role}, closed to other roles")
    elif owner == role and admin.value(sql.SQL("SELECT has_database_privilege('public', {}, 'CONNECT')")
                                       .format(db)) in ("t", "True"):
        admin.execute([private])  # set up before this rule: closed now
        changes.append(f"closed database {db} to other roles (CONNECT revoked from PUBLIC)")
    elif owner != role:
        # someone else's database: grant what Airflow needs, connected to that database itself
        admin.execute([sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                           sql.Identifier(db), sql.Identifier(role)),
                       sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(role))],
                      dbname=db)
        changes.append(f"granted {role} CREATE on {db}.public (database owned by {owner})")
    postgres.check_role_can_create(settings)
    if mark_database(settings, take_over) and not take_over:
        changes.append(f"marked database {db} as this checkout's")
    return changes


# what the stack's scratch databases are for (ops/scratch.py): verifying a backup, rehearsing an upgrade
SCRATCH_PURPOSES = ("verify", "rehearsal")


def scratch_name(settings: Settings, purpose: str) -> str:
    """The name of the stack's scratch database for ``purpose``: its database's name and a suffix, within
    PostgreSQL's 63 bytes (one per stack and purpose: a run killed half-way leaves it to the next to drop)."""
    suffix = f"_scratch_{purpose}"
    return settings.pg_database.encode()[:63 - len(suffix)].decode(errors="ignore") + suffix


def drop(admin: Admin, settings: Settings) -> None:
    """Drop the database, any scratch database a killed run left, and the role (tests, and `invoke db.drop
    --yes`); never another checkout's."""
    check_owner(settings, _owner_and_marker(admin, settings.pg_database)[1])
    admin.execute([sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                   for name in (settings.pg_database, *(scratch_name(settings, p) for p in SCRATCH_PURPOSES))])
    admin.execute([sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(settings.pg_user))])
