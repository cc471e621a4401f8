"""invoke setup[.postgres|.redis|.airflow|.constraints]: install and configure, idempotently."""

from __future__ import annotations

import ipaddress

from invoke import Context, task

from .. import (
    airflow_config,
    airflow_db,
    airflow_install,
    lifecycle,
    lines,
    memcached_server,
    netutil,
    objects,
    platform,
    postgres,
    project,
    redis_server,
    registry,
    secrets,
    supervisor,
)
from .. import tls as tls_mod
from ..errors import StackError
from ..settings import LOOPBACK
from ._common import Timer, exclusive, load, one_line_errors, say


def _report(what: str, changes: list[str], seconds: float, nothing: str) -> None:
    if changes:
        say(*(f"{what}: {change}" for change in changes), f"{what}: done in {seconds:.1f} s")
    else:
        say(f"{what}: {nothing} ({seconds:.1f} s)")


@task(name="postgres", help={
    "host": "use an existing server at this host (nothing is installed or started)",
    "port": "PostgreSQL port (default 5432, STACK_PG_PORT)",
    "sslmode": "libpq sslmode for the Airflow role's connections (STACK_PG_SSLMODE)",
    "listen": "opt in: also listen on these addresses, e.g. '*' (for Celery workers on other machines)",
    "allow_from": "opt in: admit the Airflow role from this network with scram, e.g. 10.0.0.0/24",
    "new_database": "create the database empty although this stack had migrated it (it is gone from the server)",
    "tls": "serve TLS with the stack's certificate and admit other machines over TLS only (STACK_TLS=true)",
})
@one_line_errors
@exclusive("invoke setup.postgres")
def postgres_(c: Context, host: str | None = None, port: int | None = None, sslmode: str | None = None,
              listen: str | None = None, allow_from: str | None = None, new_database: bool = False,
              tls: bool = False) -> None:
    """Install and start PostgreSQL if needed; create Airflow's role and database (PG15-safe)."""
    with Timer() as t:
        settings, added = secrets.ensure_env_file(load(pg_host=host, pg_port=port, pg_sslmode=sslmode))
        changes = [f"generated {name} into {settings.env_file}" for name in added]
        changes += keep_tls_choice(settings, tls)
        settings = load(pg_host=host, pg_port=port, pg_sslmode=sslmode)
        plat = platform.detect() if settings.pg_is_local else None
        if plat is not None:
            changes += postgres.ensure_server(c, plat, settings)
        admin = postgres.admin_for(c, plat, settings)
        if listen or allow_from:
            if admin is None or plat is None:
                raise StackError("--listen/--allow-from configure a server this machine runs; for another "
                                 "server change its listen_addresses and pg_hba.conf there")
            changes += postgres.allow_remote(c, plat, admin, settings, listen, allow_from)
        if settings.pg_tls_ours and admin is not None and plat is not None:
            # before the role's first login: with STACK_TLS it verifies the server's certificate
            changes += postgres.ensure_tls(c, plat, admin, settings)
        if new_database:
            airflow_db.forget_migration(settings)
        clusters = plat.clusters(c) if isinstance(plat, platform.Apt) else []
        changes += postgres.bootstrap(admin, settings, airflow_db.migrated_here(settings), clusters)
        # a server chosen with a flag is the stack's from now on: the next `invoke up` uses it too
        for key, value in (("STACK_PG_HOST", host), ("STACK_PG_PORT", port), ("STACK_PG_SSLMODE", sslmode)):
            if value is not None and secrets.set_env_value(settings.env_file, key, str(value)):
                changes.append(f"{key}={value} kept in {settings.env_file.name}")
    _report("postgres", changes, t.seconds,
            f"already set up: role {settings.pg_user} owns {settings.pg_database} on "
            f"{settings.pg_host}:{settings.pg_port}")


def keep_tls_choice(settings, tls: bool) -> list[str]:
    """--tls on a setup task: kept in .env, so every later task (and a worker's copy of .env) uses it."""
    if not (tls and secrets.set_env_value(settings.env_file, "STACK_TLS", "true")):
        return []
    said = [f"STACK_TLS=true kept in {settings.env_file.name}"]
    if registry.running(settings):  # they were started with plain-text URLs, which TLS-only Redis refuses
        said.append("the running Airflow processes connect in plain text until restarted: invoke stop && invoke up")
    return said


def check_bind(bind: str) -> None:
    """Redis must be able to listen on every address given (Redis skips a "-address" it cannot use):
    otherwise it stops at its restart, and the whole stack loses its broker and rate limits."""
    example = "e.g. '127.0.0.1 10.0.0.5' (this machine's own addresses)"
    if not bind.strip():
        raise StackError(f"--bind {bind!r}: give space-separated IP addresses, {example}")
    for address in bind.split():
        host = address.removeprefix("-")
        if host in ("*", "::*"):
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise StackError(f"--bind {bind!r}: {host!r} is not an IP address; give space-separated IP addresses, "
                             f"{example}") from None
        if not address.startswith("-") and not netutil.port_bindable(0, host):
            raise StackError(f"--bind {bind!r}: {host} is not an address of this machine, Redis could not listen "
                             f"there; give {example}")


@task(help={"port": "port of our Redis (default 6380, STACK_REDIS_PORT)",
            "bind": "opt in: interfaces to listen on, e.g. '0.0.0.0 ::' for Celery workers on other machines "
                    "(kept in .env as STACK_REDIS_BIND; the password still applies)",
            "tls": "speak only TLS, with the stack's certificate (STACK_TLS=true; for workers on other machines)"})
@one_line_errors
@exclusive("invoke setup.redis")
def redis(c: Context, port: int | None = None, bind: str | None = None, tls: bool = False) -> None:
    """Install redis-server if needed and run our own password-protected Redis on loopback."""
    if bind is not None:
        check_bind(bind)
    with Timer() as t:
        settings, added = secrets.ensure_env_file(load(redis_port=port))
        changes = [f"generated {name} into {settings.env_file}" for name in added]
        switched = keep_tls_choice(settings, tls)
        changes += switched
        if bind is not None and secrets.set_env_value(settings.env_file, "STACK_REDIS_BIND", bind):
            changes.append(f"STACK_REDIS_BIND={bind} kept in {settings.env_file}")
            remote = [a.removeprefix("-") for a in bind.split() if a.removeprefix("-") not in LOOPBACK]
            if remote:
                changes.append(tls_mod.reachability(load(redis_port=port), f"our Redis (port {settings.redis_port}, "
                                                     f"password required)", ", ".join(remote)))
        settings = load(redis_port=port)
        before = supervisor.running(settings, redis_server.NAME)
        changes += redis_server.ensure(c, platform.detect(), settings)
        if supervisor.running(settings, redis_server.NAME) != before and not switched:  # (re)started: clients
            changes += lifecycle.wait_workers_reconnected(settings)  # lost it (after a switch to TLS they cannot)
    _report("redis", changes, t.seconds, f"already running on 127.0.0.1:{settings.redis_port}")


@task
@one_line_errors
@exclusive("invoke setup.memcached")
def memcached(c: Context) -> None:
    """Run our memcached for the login limiter, when STACK_RATELIMIT_STORAGE_URI names one on this machine."""
    with Timer() as t:
        settings = load()
        if not memcached_server.managed(settings):
            say("memcached: not used (STACK_RATELIMIT_STORAGE_URI names no memcached on this machine)")
            return
        changes = memcached_server.ensure(c, platform.detect(), settings)
    _report("memcached", changes, t.seconds, f"already running at {settings.limiter_storage_uri}")


@task(help={"line": f"{lines.HELP} (STACK_AIRFLOW_LINE)"})
@one_line_errors
@exclusive("invoke setup.airflow")
def airflow(c: Context, line: str | None = None) -> None:
    """Install Airflow (and the project's requirements.txt, packages.txt) in its own venv, write its config,
    migrate the schema, create the admin, apply the project's airflow_settings.yaml."""
    with Timer() as t:
        settings = load(airflow_line=line)
        settings.line.check_python()
        project.get(settings).check()
        objects.load(settings)  # a broken airflow_settings.yaml or a missing ${NAME}: before anything changes
        # before anything is installed or written: never down onto a schema a newer release migrated
        airflow_db.refuse_older_release(settings, settings.airflow_release)
        settings, added = secrets.ensure_env_file(settings)
        settings = load(airflow_line=line)
        changes = [f"generated {name} into {settings.env_file}" for name in added]
        say(*(f"airflow: {note}" for note in project_note(settings)))  # now: a later step may fail
        changes += project.ensure_os_packages(c, platform.detect(), settings)
        changes += airflow_install.ensure(c, settings)
        env = airflow_config.environment(settings)
        changes += [f"wrote {name}" for name in airflow_config.write_config(settings, env)]
        changes += airflow_db.migrate(c, settings, env)
        changes += airflow_db.ensure_admin(c, settings, env)
        changes += objects.apply(c, settings)
    version = airflow_install.installed_version(settings)
    _report("airflow", changes, t.seconds, f"Airflow {version} already installed, migrated, admin present")


def project_note(settings) -> list[str]:
    """What the project's Dockerfile implies, said once per Dockerfile image (it is not used)."""
    note = project.dockerfile_note(project.get(settings), settings.airflow_release)
    said = settings.state_dir / "project-dockerfile-note"
    if note is None or (said.exists() and said.read_text() == note):
        return []
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    said.write_text(note)
    return [note]


@task(help={
    "line": f"Airflow line to resolve: {' or '.join(lines.NAMES)} (default: every line)",
    "version": f"Airflow release to pin, e.g. {lines.LINES[lines.DEFAULT].default_version} "
               "(default: the line's current pin)",
})
@one_line_errors
def constraints(c: Context, line: str | None = None, version: str | None = None) -> None:
    """Regenerate config/constraints/airflow-<line>.txt (our own pins; celery<5.7)."""
    for one in [lines.get(line).name] if line else lines.NAMES:
        path = airflow_install.regenerate_constraints(c, one, version)
        say(f"constraints: wrote {path} (apache-airflow=={airflow_install.pinned_version(one)})")


@task
@one_line_errors
@exclusive("invoke setup.browser")
def browser(c: Context) -> None:
    """Install a headless browser and its WebDriver for the UI tests and screenshots (Debian's chromium)."""
    with Timer() as t:
        plat = platform.detect()
        found, changes = plat.ensure_installed(c, "a browser and its WebDriver", plat.browser, plat.browser_install)
    _report("browser", changes, t.seconds, f"{found[0]} with {found[1]}")


@task(name="all", default=True, help={"line": lines.HELP})
@exclusive("invoke setup")
def all_(c: Context, line: str | None = None) -> None:
    """Set up everything: PostgreSQL, our Redis (and memcached, when the limiter uses it), and Airflow."""
    postgres_(c)
    redis(c)
    if memcached_server.managed(load()):
        memcached(c)
    airflow(c, line=line)
