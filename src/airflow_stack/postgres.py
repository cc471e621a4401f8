"""PostgreSQL: install and start it through the platform, wait until ready, bootstrap role + DB.

Every SQL statement is composed with ``psycopg.sql`` (identifiers and literals quoted by psycopg,
never by f-strings). A superuser runs them either over a psycopg connection (``STACK_PG_ADMIN_DSN``,
for a server we do not run) or through ``psql`` as the local superuser: Debian's only superuser is
the ``postgres`` OS account over peer authentication, which a psycopg connection from this user
cannot be, and Homebrew's is the login user.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from invoke import Context
from psycopg import sql

from . import netutil, oplock, tls
from . import settings as settings_mod
from .errors import StackError
from .platform import Cluster, Platform, WholeStdin
from .secrets import redact
from .settings import Settings

# The comment on a database this stack set up: which checkout (STACK_CHECKOUT_ID) owns it
OWNER_MARK = "airflow-stack checkout "
# Settings the Airflow docs recommend for its role; applied with ALTER ROLE ... SET
ROLE_SETTINGS = {"client_encoding": "utf8", "default_transaction_isolation": "read committed", "timezone": "UTC"}
READY_TIMEOUT = 30.0


# ---- the server ----------------------------------------------------------------------------
def _pg_isready(c: Context, platform: Platform, settings: Settings) -> int:
    """pg_isready's exit code: 0 accepting, 1 rejecting (starting up or shutting down), 2 no answer."""
    pg_isready = platform.pg_bin(c, "pg_isready", settings.pg_version)
    return c.run(f"{pg_isready} -q -h {shlex.quote(settings.pg_host)} -p {settings.pg_port} -t 2",
                 hide=True, warn=True).exited


def is_ready(c: Context, platform: Platform, settings: Settings) -> bool:
    return _pg_isready(c, platform, settings) == 0


def is_starting(c: Context, platform: Platform, settings: Settings) -> bool:
    """A PostgreSQL answers but rejects connections: it is starting up (or shutting down)."""
    return _pg_isready(c, platform, settings) == 1


def ensure_server(c: Context, platform: Platform, settings: Settings) -> list[str]:
    """Install and start the local server when needed; return what was done."""
    done: list[str] = []
    if not settings.pg_is_local:
        return done  # a server we do not run: never install or start anything
    if platform.pg_installed(c, settings.pg_version) and is_ready(c, platform, settings):
        return done  # the usual case: nothing to do, so no other checkout to wait for
    # one checkout at a time installs or starts the server every checkout shares (and looks again
    # once it holds the lock: the one before it may have done it)
    with oplock.machine_wide(f"postgresql-{settings.pg_port}", "installing or starting PostgreSQL"):
        if not platform.pg_installed(c, settings.pg_version):
            platform.pg_install(c, settings.pg_version)
            done.append(f"installed PostgreSQL ({platform.name})")
        if is_ready(c, platform, settings):
            return done
        if netutil.port_open(settings.pg_port):
            # started by someone else a moment ago (a boot, the platform's service manager)
            if is_starting(c, platform, settings) and netutil.wait_until(
                    lambda: is_ready(c, platform, settings), READY_TIMEOUT):
                return done
            raise StackError(f"port {settings.pg_port} is taken by a program that is not a ready PostgreSQL; "
                             f"free it or set STACK_PG_PORT to the port of your PostgreSQL")
        platform.pg_start(c, settings.pg_port, settings.pg_version)
        if not netutil.wait_until(lambda: is_ready(c, platform, settings), READY_TIMEOUT):
            raise StackError(f"PostgreSQL did not accept connections on {settings.pg_host}:{settings.pg_port} "
                             f"within {READY_TIMEOUT:.0f} s; see its log (pg_lsclusters / brew services info)")
    done.append(f"started PostgreSQL on port {settings.pg_port}")
    return done


# ---- running SQL as a superuser ------------------------------------------------------------
class Admin:
    """Runs composed SQL as a superuser, against the ``postgres`` database or a named one."""

    def rows(self, query: sql.Composable, dbname: str = "postgres") -> list[tuple[str, ...]]:
        raise NotImplementedError

    def execute(self, statements: list[sql.Composable], dbname: str = "postgres") -> None:
        raise NotImplementedError

    def value(self, query: sql.Composable, dbname: str = "postgres") -> str:
        """One value, kept whole (it may span lines, e.g. a file's content)."""
        raise NotImplementedError


@dataclass
class PsqlAdmin(Admin):
    """The local superuser through psql; SQL goes on stdin, so no secret reaches argv."""

    c: Context
    psql: str
    settings: Settings
    calls: list[str] = field(default_factory=list)

    def _psql(self, script: str, dbname: str, on_stdin: bool = True) -> str:
        cmd = f"{self.psql} -d {shlex.quote(dbname)}"
        if on_stdin:  # statements may carry a password: never on a command line
            result = self.c.run(cmd, in_stream=WholeStdin(script), hide=True, warn=True)
        else:  # a query without secrets: -c spares invoke's stdin thread (~1 s per call)
            cmd += f" -c {shlex.quote(script)}"
            result = self.c.run(cmd, hide=True, warn=True)
        self.calls.append(cmd)
        if result.failed:
            lines = redact(result.stderr or result.stdout, self.settings).strip().splitlines()
            reason = lines[-1] if lines else f"exit {result.exited}"
            raise StackError(f"PostgreSQL superuser access failed ({reason}); "
                             f"check that the local server runs (invoke setup.postgres) and that you are "
                             f"root or have sudo rights")
        return result.stdout

    def rows(self, query: sql.Composable, dbname: str = "postgres") -> list[tuple[str, ...]]:
        out = self._psql(query.as_string(), dbname, on_stdin=False)
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def execute(self, statements: list[sql.Composable], dbname: str = "postgres") -> None:
        self._psql("".join(s.as_string() + ";\n" for s in statements), dbname)

    def value(self, query: sql.Composable, dbname: str = "postgres") -> str:
        out = self._psql(query.as_string(), dbname, on_stdin=False)
        return out[:-1] if out.endswith("\n") else out


@dataclass
class DsnAdmin(Admin):
    """A superuser DSN for a server we do not run (``STACK_PG_ADMIN_DSN``)."""

    dsn: str

    def _connect(self, dbname: str) -> psycopg.Connection:
        try:
            return psycopg.connect(self.dsn, dbname=dbname, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
            raise StackError(f"cannot connect with STACK_PG_ADMIN_DSN ({reason}); "
                             f"check that DSN's host, user and password") from None

    def rows(self, query: sql.Composable, dbname: str = "postgres") -> list[tuple[str, ...]]:
        with self._connect(dbname) as conn:
            return [tuple("" if v is None else str(v) for v in row) for row in conn.execute(query).fetchall()]

    def value(self, query: sql.Composable, dbname: str = "postgres") -> str:
        with self._connect(dbname) as conn:
            row = conn.execute(query).fetchone()
            return "" if row is None or row[0] is None else str(row[0])

    def execute(self, statements: list[sql.Composable], dbname: str = "postgres") -> None:
        with self._connect(dbname) as conn:
            for statement in statements:
                try:
                    conn.execute(statement)
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise StackError(f"the STACK_PG_ADMIN_DSN role may not do this ({exc.diag.message_primary}); "
                                     f"use a role with CREATEROLE and CREATEDB") from None


def admin_for(c: Context, platform: Platform | None, settings: Settings) -> Admin | None:
    """The superuser access this setup has, or None (a managed server with no admin DSN)."""
    if settings.pg_admin_dsn:
        return DsnAdmin(settings.pg_admin_dsn)
    if settings.pg_is_local and platform is not None:
        return PsqlAdmin(c, platform.pg_admin_psql(c, settings.pg_port, settings.pg_version), settings)
    return None


# ---- the role and the database -------------------------------------------------------------
def _no_password_logging() -> sql.Composable:
    # a server with log_statement=ddl would otherwise write the password to its log
    return sql.SQL("SET log_statement = 'none'")


def role_can_login(settings: Settings) -> tuple[bool, str]:
    try:
        with psycopg.connect(**settings.pg_conninfo()):
            return True, ""
    except psycopg.Error as exc:
        return False, describe_error(exc, settings)


def describe_error(exc: Exception, settings: Settings) -> str:
    """libpq's multi-line, tab-indented message as one sentence a user can act on (no secret in it)."""
    text = " ".join(str(exc).split())
    where = f"{settings.pg_host}:{settings.pg_port}"
    known = (
        ("password authentication failed", f"the server refused the password of role {settings.pg_user}"),
        ("Connection refused", f"nothing accepts connections at {where}"),
        ("timeout expired", f"no answer from {where} within the connect timeout"),
        (f'database "{settings.pg_database}" does not exist', f"database {settings.pg_database} does not exist"),
        (f'role "{settings.pg_user}" does not exist', f"role {settings.pg_user} does not exist"),
        ("no pg_hba.conf entry", f"the server's pg_hba.conf does not admit role {settings.pg_user} from here"),
        ("could not translate host name", f"host name {settings.pg_host} does not resolve"),
    )
    for needle, sentence in known:
        if needle in text:
            return sentence
    text = text.removeprefix("connection failed: ")
    return redact(text[:200] or exc.__class__.__name__, settings)


def check_role_can_create(settings: Settings) -> None:
    """The PG15 trap: the role must be able to CREATE in its database's public schema."""
    try:
        with psycopg.connect(**settings.pg_conninfo()) as conn:
            conn.execute("CREATE TABLE public.airflow_stack_probe (x int)")
            conn.rollback()  # nothing is left behind
    except psycopg.errors.InsufficientPrivilege:
        raise StackError(f"role {settings.pg_user} cannot create tables in {settings.pg_database}.public "
                         f"(PostgreSQL 15+ revoked that); run invoke setup.postgres with superuser access, "
                         f"or: GRANT CREATE, USAGE ON SCHEMA public TO {settings.pg_user} (in that DB)") from None
    except psycopg.OperationalError as exc:
        raise StackError(f"cannot connect to {settings.pg_host}:{settings.pg_port}/{settings.pg_database} "
                         f"as {settings.pg_user} ({_reason(exc, settings)}); run: invoke setup.postgres") from None


def _reason(exc: Exception, settings: Settings) -> str:
    lines = str(exc).strip().splitlines()
    return redact(lines[-1] if lines else exc.__class__.__name__, settings)


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
    try:
        values = settings_mod.read_env_file(Path(env_file))
    except StackError:
        return False  # there, but unreadable to us: somebody's
    return values.get("STACK_CHECKOUT_ID") != marked_id(marker)


def check_owner(settings: Settings, marker: str | None) -> bool:
    """Refuse a database that another, living checkout of airflow-stack set up: taking it over would
    reset its role's password and lock that checkout's stack out. True when the database was marked
    by a checkout that is gone (a deleted clone): this one may take it over."""
    if not marker or not marker.startswith(OWNER_MARK) or marked_id(marker) == settings.checkout_id:
        return False
    if owner_gone(marker):
        return True
    raise StackError(f"database {settings.pg_database} on {settings.pg_host}:{settings.pg_port} belongs to "
                     f"another airflow-stack checkout (its STACK_CHECKOUT_ID differs); give this one its own: "
                     f"set STACK_PG_DATABASE and STACK_PG_USER in {settings.env_file.name} to new names "
                     f"(e.g. airflow_{settings.env_file.parent.name.replace('-', '_')}), then run this again")


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
        ok, reason = role_can_login(settings)
        if not ok:
            raise StackError(f"cannot connect to {settings.pg_host}:{settings.pg_port}/{settings.pg_database} as "
                             f"{settings.pg_user} ({reason}); create that role and database on the server, "
                             f"or set STACK_PG_ADMIN_DSN to a superuser DSN")
        take_over = check_owner(settings, database_marker(settings))
        check_role_can_create(settings)
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
        if not role_can_login(settings)[0]:
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
    check_role_can_create(settings)
    if mark_database(settings, take_over) and not take_over:
        changes.append(f"marked database {db} as this checkout's")
    return changes


def drop(admin: Admin, settings: Settings) -> None:
    """Drop the database and the role (tests, and `invoke db.drop --yes`); never another checkout's."""
    check_owner(settings, _owner_and_marker(admin, settings.pg_database)[1])
    admin.execute([sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(settings.pg_database))])
    admin.execute([sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(settings.pg_user))])


def ping(settings: Settings) -> tuple[bool, str]:
    """Can the Airflow role reach its database? (status, doctor, run preconditions)"""
    return role_can_login(settings)


# ---- letting workers on other machines in (opt-in) -------------------------------------------
def hba_marker(settings: Settings) -> str:
    return f"# airflow-stack {settings.pg_database} {settings.pg_user}"


def _merge_addresses(current: str, wanted: str) -> str:
    have = [a.strip() for a in current.split(",") if a.strip()]
    if "*" in have:
        return current
    add = [a.strip() for a in wanted.split(",") if a.strip()]
    if "*" in add:
        return "*"
    return ",".join(have + [a for a in add if a not in have])


def _read_hba(admin: Admin) -> tuple[str, str]:
    """(path, text) of the server's pg_hba.conf, read through the server itself."""
    hba = admin.value(sql.SQL("SHOW hba_file"))
    return hba, admin.value(sql.SQL("SELECT pg_read_file({})").format(hba))


def _hba_line(settings: Settings, network: str) -> str:
    # with STACK_TLS only TLS connections match (hostssl): a plain-text client from there finds no entry
    kind = "hostssl" if settings.tls else "host"
    return f"{kind} {settings.pg_database} {settings.pg_user} {network} scram-sha-256 {hba_marker(settings)}"


def allow_remote(c: Context, platform: Platform, admin: Admin, settings: Settings, listen: str | None,
                 allow_from: str | None) -> list[str]:
    """Let PostgreSQL listen on more addresses and admit the Airflow role from a network (scram)."""
    changes: list[str] = []
    if allow_from:
        try:
            network = ipaddress.ip_network(allow_from, strict=False)
        except ValueError:
            raise StackError(f"--allow-from {allow_from!r} is not a network; give e.g. 10.0.0.0/24 or "
                             f"192.168.1.7/32") from None
        hba, text = _read_hba(admin)
        line = _hba_line(settings, str(network))
        if line not in text.splitlines():
            platform.append_line(c, hba, line)
            admin.execute([sql.SQL("SELECT pg_reload_conf()")])
            changes.append(f"admitted {settings.pg_user} to {settings.pg_database} from {network} (pg_hba, scram)")
            changes.append(tls.reachability(settings, f"database {settings.pg_database} (role {settings.pg_user}, "
                                                  f"port {settings.pg_port})", str(network)))
    if listen:
        current = admin.value(sql.SQL("SHOW listen_addresses"))
        merged = _merge_addresses(current, listen)
        if merged != current:
            admin.execute([sql.SQL("ALTER SYSTEM SET listen_addresses = {}").format(merged)])
            platform.pg_restart(c, settings.pg_port, settings.pg_version)  # only a restart applies it
            if not netutil.wait_until(lambda: is_ready(c, platform, settings), READY_TIMEOUT):
                raise StackError(f"PostgreSQL did not come back within {READY_TIMEOUT:.0f} s after the restart "
                                 f"for listen_addresses; see its log")
            changes.append(f"PostgreSQL now listens on {merged} (restarted once to apply it)")
    return changes


# ---- TLS (STACK_TLS) ----------------------------------------------------------------------------
# the server certificate and key the stack installs in the data directory (the server's own files)
TLS_CERT_NAME = "airflow-stack-server.crt"
TLS_KEY_NAME = "airflow-stack-server.key"
# Debian's default cluster serves TLS with the machine's self-signed snakeoil certificate: nobody can verify
# it, so replacing it with ours takes nothing from anyone
REPLACEABLE_CERTS = ("/etc/ssl/certs/ssl-cert-snakeoil.pem",)


def ensure_tls(c: Context, platform: Platform, admin: Admin, settings: Settings) -> list[str]:
    """Serve TLS with the stack's server certificate, and admit remote clients over TLS only."""
    done = tls.ensure(settings, admin.value(sql.SQL("SHOW listen_addresses")))
    data_dir = admin.value(sql.SQL("SHOW data_directory"))
    cert_path, key_path = f"{data_dir}/{TLS_CERT_NAME}", f"{data_dir}/{TLS_KEY_NAME}"
    current = admin.value(sql.SQL("SHOW ssl_cert_file"))
    current_abs = current if current.startswith("/") else f"{data_dir}/{current}"
    served = admin.value(sql.SQL("SELECT pg_read_file({}, 0, 65536, true)").format(current_abs)) \
        if admin.value(sql.SQL("SHOW ssl")) == "on" else ""
    files = tls.Files.of(settings)
    wanted = files.cert.read_text()
    foreign = served and current_abs not in REPLACEABLE_CERTS and not tls.signed_by(served.encode(), files.ca)
    if foreign:  # another stack's (or the admin's) certificate: taking it over would break their verified clients
        raise StackError(f"PostgreSQL on port {settings.pg_port} already serves TLS with {current_abs}, which "
                         f"the stack's CA did not sign; set STACK_PG_SSLROOTCERT to the CA that signed it")
    if served != wanted or current_abs != cert_path:
        platform.write_private_file(c, cert_path, wanted)
        platform.write_private_file(c, key_path, files.key.read_text())
        admin.execute([sql.SQL("ALTER SYSTEM SET ssl_cert_file = {}").format(cert_path),
                       sql.SQL("ALTER SYSTEM SET ssl_key_file = {}").format(key_path),
                       sql.SQL("ALTER SYSTEM SET ssl = on"), sql.SQL("SELECT pg_reload_conf()")])
        done.append(f"PostgreSQL serves TLS with the stack's certificate ({cert_path})")
    # pg_hba lines from an opt-in made before STACK_TLS: TLS only from now on
    hba, text = _read_hba(admin)
    lines = text.splitlines()
    secured = [("hostssl " + line.removeprefix("host ")) if line.endswith(hba_marker(settings))
               and line.startswith("host ") else line for line in lines]
    if secured != lines:
        platform.write_file(c, hba, "\n".join(secured) + "\n")
        admin.execute([sql.SQL("SELECT pg_reload_conf()")])
        done.append(f"admits {settings.pg_user} from other machines over TLS only (pg_hba hostssl)")
    return done


def forget_remote(c: Context, platform: Platform, admin: Admin, settings: Settings) -> bool:
    """Remove the pg_hba lines allow_remote added for this role and database."""
    hba, text = _read_hba(admin)
    kept = [line for line in text.splitlines() if not line.endswith(hba_marker(settings))]
    if len(kept) == len(text.splitlines()):
        return False
    platform.write_file(c, hba, "\n".join(kept) + "\n")
    admin.execute([sql.SQL("SELECT pg_reload_conf()")])
    return True
