"""invoke setup[.postgres|.redis|.memcached|.airflow|.constraints|.browser]: install and configure,
idempotently. Each is a doorway onto one step of the stack facade (stack/)."""

from __future__ import annotations

from invoke import Context, task

from ..apache_airflow import profiles
from ..settings import AIRFLOW_LINES, AIRFLOW_LINES_HELP, help_for
from ._common import one_line_errors, say, stack


@task(name="postgres", help={
    "host": "use an existing server at this host (nothing is installed or started)",
    "port": help_for("pg_port"),
    "sslmode": help_for("pg_sslmode", "libpq sslmode for the Airflow role's connections"),
    "listen": "opt in: also listen on these addresses, e.g. '*' (for Celery workers on other machines)",
    "allow_from": "opt in: admit the Airflow role from this network with scram, e.g. 10.0.0.0/24",
    "new_database": "create the database empty although this stack had migrated it (it is gone from the server)",
    "tls": "serve TLS with the stack's certificate and admit other machines over TLS only (STACK_TLS=true)",
})
@one_line_errors
def postgres_(c: Context, host: str | None = None, port: int | None = None, sslmode: str | None = None,
              listen: str | None = None, allow_from: str | None = None, new_database: bool = False,
              tls: bool = False) -> None:
    """Install and start PostgreSQL if needed; create Airflow's role and database (PG15-safe)."""
    stack(c, pg_host=host, pg_port=port, pg_sslmode=sslmode).setup_postgres(
        {"pg_host": host, "pg_port": port, "pg_sslmode": sslmode}, listen, allow_from, new_database, tls)


@task(help={"port": help_for("redis_port"),
            "bind": "opt in: interfaces to listen on over TCP, e.g. '0.0.0.0 ::' for Celery workers on other "
                    "machines (kept in .env as STACK_REDIS_BIND; the password still applies; this machine's own "
                    "processes keep using the Unix socket)",
            "tls": "speak only TLS, with the stack's certificate (STACK_TLS=true; for workers on other machines)"})
@one_line_errors
def redis(c: Context, port: int | None = None, bind: str | None = None, tls: bool = False) -> None:
    """Install redis-server if needed and run our own password-protected Redis (a Unix socket; TCP opt-in)."""
    stack(c, redis_port=port).setup_redis(bind, tls)


@task
@one_line_errors
def memcached(c: Context) -> None:
    """Run our memcached for the login limiter, when STACK_RATELIMIT_STORAGE_URI names one on this machine."""
    stack(c).setup_memcached()


@task(help={"line": f"{AIRFLOW_LINES_HELP} (STACK_AIRFLOW_LINE)"})
@one_line_errors
def airflow(c: Context, line: str | None = None) -> None:
    """Install Airflow (and the project's requirements.txt, packages.txt) in its own venv, write its config,
    migrate the schema, create the admin, apply the project's airflow_settings.yaml."""
    stack(c, airflow_line=line).setup_airflow()


@task(help={
    "line": f"the minor whose pinned constraints to resolve again ({', '.join(AIRFLOW_LINES)}; default: the "
            f"minors the repo pins)",
    "version": "a release to resolve (its constraints are written to config/constraints/airflow-<minor>.txt)",
})
@one_line_errors
def constraints(c: Context, line: str | None = None, version: str | None = None) -> None:
    """Resolve pinned constraints again, with hashes, as of each release's own date (celery<5.7)."""
    from ..apache_airflow import install

    if version:
        targets = [version]
    else:
        minors = [line] if line else [name for name in AIRFLOW_LINES if profiles.get(name).pinned_version()]
        targets = [profiles.get(name).pinned_version() or profiles.get(name).default_version for name in minors]
    for release in targets:
        path = install.regenerate_constraints(c, release, profiles.for_release(release).constraints_file)
        say(f"constraints: wrote {path} (apache-airflow=={release})")


@task
@one_line_errors
def browser(c: Context) -> None:
    """Install a headless browser and its WebDriver for the UI tests and screenshots (Debian's chromium)."""
    stack(c).setup_browser()


@task(name="all", default=True, help={"line": AIRFLOW_LINES_HELP})
@one_line_errors
def all_(c: Context, line: str | None = None) -> None:
    """Set up everything: PostgreSQL, our Redis (and memcached, when the limiter uses it), and Airflow."""
    stack(c, airflow_line=line).setup()
