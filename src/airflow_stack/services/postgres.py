"""PostgreSQL: the server installed and started through the host, ready or not, the superuser's channels,
and whether Airflow's role can log in (the role and database: pg_database.py; who may connect from where,
and TLS: pg_access.py).

Every SQL statement is composed with ``psycopg.sql`` (identifiers and literals quoted by psycopg,
never by f-strings). A superuser runs them either over a psycopg connection (``STACK_PG_ADMIN_DSN``,
for a server we do not run) or through ``psql`` as the local superuser: Debian's only superuser is
the ``postgres`` OS account over peer authentication, which a psycopg connection from this user
cannot be, and Homebrew's is the login user.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

import psycopg
from invoke import Context
from psycopg import sql

from .. import locks, netutil
from ..errors import StackError
from ..settings import Settings, redact
from .host import Platform, WholeStdin

READY_TIMEOUT = 30.0
RACE_WAIT = 10.0  # how long another starter's server may stay silent before it answers


# ---- the server ----------------------------------------------------------------------------

def _pg_isready(c: Context, platform: Platform, settings: Settings) -> int:
    """pg_isready's exit code: 0 accepting, 1 rejecting (starting up or shutting down), 2 no answer."""
    pg_isready = platform.pg_bin(c, "pg_isready", settings.pg_version)
    return c.run(f"{pg_isready} -q -h {shlex.quote(settings.pg_host)} -p {settings.pg_port} -t 2",
                 hide=True, warn=True).exited


def is_ready(c: Context, platform: Platform, settings: Settings) -> bool:
    return _pg_isready(c, platform, settings) == 0


def started_by_another(c: Context, platform: Platform, settings: Settings) -> bool:
    """Whether a server someone else is starting (a boot's service manager, a stack whose machine-wide lock lives
    apart) comes up within READY_TIMEOUT. A postmaster that has just bound the port is silent for a moment
    (seconds on a loaded machine, CI 2026-12-07): a port that stays silent for RACE_WAIT is another program's."""
    began = time.monotonic()
    if not netutil.wait_until(lambda: _pg_isready(c, platform, settings) != 2, RACE_WAIT):
        return False
    left = READY_TIMEOUT - (time.monotonic() - began)
    return netutil.wait_until(lambda: is_ready(c, platform, settings), left)


def ensure_server(c: Context, platform: Platform, settings: Settings) -> list[str]:
    """Install and start the local server when needed; return what was done."""
    done: list[str] = []
    if not settings.pg_is_local:
        return done  # a server we do not run: never install or start anything
    if platform.pg_installed(c, settings.pg_version) and is_ready(c, platform, settings):
        return done  # the usual case: nothing to do, so no other checkout to wait for
    # one checkout at a time installs or starts the server every checkout shares (and looks again
    # once it holds the lock: the one before it may have done it)
    with locks.machine_wide(settings, f"postgresql-{settings.pg_port}", "installing or starting PostgreSQL"):
        if not platform.pg_installed(c, settings.pg_version):
            platform.pg_install(c, settings.pg_version)
            done.append(f"installed PostgreSQL ({platform.name})")
        if is_ready(c, platform, settings):
            return done
        if netutil.port_open(settings.pg_port):
            if started_by_another(c, platform, settings):
                return done
            raise StackError(f"port {settings.pg_port} is taken by a program that is not a ready PostgreSQL; "
                             f"free it or set STACK_PG_PORT to the port of your PostgreSQL")
        try:
            platform.pg_start(c, settings.pg_port, settings.pg_version)
        except StackError:
            # a starter the lock does not order may have won the race: pg_ctlcluster then fails on the winner's
            # postmaster.pid, and the winner's server answers a moment later. Anything else is the start's own error
            if started_by_another(c, platform, settings):
                return done
            raise
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


def ping(settings: Settings) -> tuple[bool, str]:
    """Can the Airflow role reach its database? (status, doctor, run preconditions)"""
    return role_can_login(settings)
