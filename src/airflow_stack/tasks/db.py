"""invoke db.*: the metadata database."""

from __future__ import annotations

from invoke import Context, task

from .. import platform, postgres, stack
from ..errors import StackError
from ._common import load, one_line_errors, say


@task(help={"yes": "really drop it (required: this deletes every DAG run and connection)"})
@one_line_errors
def drop(c: Context, yes: bool = False) -> None:
    """Drop Airflow's database and role (refuses while Airflow runs, and without --yes)."""
    settings = load()
    if not yes:
        raise StackError(f"this deletes database {settings.pg_database} and role {settings.pg_user}; "
                         f"re-run with --yes to do it")
    if stack.running_components(settings):
        raise StackError("Airflow is running on this database; stop it first: invoke stop")
    plat = platform.detect() if settings.pg_is_local else None
    admin = postgres.admin_for(c, plat, settings)
    if admin is None:
        raise StackError("no superuser access to this server; set STACK_PG_ADMIN_DSN")
    postgres.drop(admin, settings)
    if plat is not None and postgres.forget_remote(c, plat, admin, settings):
        say(f"db: removed the pg_hba entries for {settings.pg_user}")
    # the schema stamp described a database that no longer exists
    (settings.airflow_home / ".airflow-stack-migrated.json").unlink(missing_ok=True)
    say(f"db: dropped database {settings.pg_database} and role {settings.pg_user}")
