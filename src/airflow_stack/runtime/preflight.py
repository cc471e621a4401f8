"""What a start needs, checked before anything starts; each gap named with the task that fills it."""

from __future__ import annotations

from .. import netutil
from .. import settings as settings_mod
from ..apache_airflow import install, schema
from ..components import Component, listen_hosts
from ..errors import StackError
from ..project import folder
from ..services import limiter, pg_database, postgres, redis_server
from ..settings import Settings

# invoke setup.redis alone would restart our Redis with the new password, under running Airflow processes
# that keep the one they were started with
REDIS_PASSWORD_FIX = ("use the password our Redis runs with (requirepass in its redis.conf), or apply a new one: "
                      "invoke setup.redis && invoke stop && invoke up")


def require_services(settings: Settings, pg_fix: str, redis_fix: str, password_fix: str = "",
                     as_airflow: bool = False) -> None:
    """PostgreSQL (as Airflow's role) and our Redis (as its default user, or as Airflow's: ``as_airflow``) must
    answer; else say what fixes it."""
    ok, reason = postgres.ping(settings)
    if not ok:
        raise StackError(f"cannot reach PostgreSQL at {settings.pg_host}:{settings.pg_port} as {settings.pg_user} "
                         f"({reason}); {pg_fix}")
    ok, reason = redis_server.ping(settings, as_airflow)
    if not ok:
        refused = "refused the password" in reason
        raise StackError(f"{reason}; {password_fix if refused and password_fix else redis_fix}")


def check_start(settings: Settings) -> None:
    """Everything a start of the stack needs."""
    folder.get(settings).check()
    require_services(settings, "run: invoke setup.postgres", "run: invoke setup.redis", REDIS_PASSWORD_FIX)
    pg_database.check_owner(settings, pg_database.database_marker(settings))
    limiter.check_reachable(settings)
    if not install.is_current(settings):
        raise StackError(f"Airflow {settings.airflow_line} is not installed (or its constraints changed); "
                         f"run: invoke setup.airflow")
    if schema.needs_migration(settings):
        raise StackError(f"the metadata DB {settings.pg_database} needs `airflow db migrate`; "
                         f"run: invoke setup.airflow")


def check_worker_machine(settings: Settings) -> None:
    """What a worker needs from the stack's machine, each gap named with what to copy or run."""
    missing = settings_mod.missing_shared_secrets(settings)
    if missing:
        raise StackError(f"this machine lacks {', '.join(missing)}: on the stack's machine run invoke worker.env "
                         f"--host ADDRESS and copy the file it writes here as .env (every Airflow process must "
                         f"share them)")
    require_services(settings,
                     "allow this machine there: invoke setup.postgres --listen ... --allow-from ...",
                     "on the stack's machine run invoke setup.redis (with --bind for other machines), "
                     "and check STACK_REDIS_HOST / STACK_REDIS_AIRFLOW_PASSWORD here", as_airflow=True)


def check_ports(settings: Settings, to_start: list[Component], executor: str) -> None:
    for comp in to_start:
        for setting, port in comp.listen_ports(settings, executor):
            if not netutil.port_free(port, listen_hosts(settings, setting)):
                holder = netutil.port_holder(port) or "another program"
                raise StackError(f"port {port} ({comp.name}) is held by {holder}; stop that, "
                                 f"or set STACK_{setting.upper()} to a free port")
