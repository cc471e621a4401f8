"""What every Airflow process must agree on: one environment, built from Settings.

Every component, the admin-user step, ``scripts/airflow`` and a Celery worker on another machine
get exactly this environment; secrets travel in it (from .env), never in files Airflow writes.
airflow.cfg is rendered from the same values minus the secrets, so that what a user reads there
is what runs.
"""

from __future__ import annotations

import shlex
from urllib.parse import quote

from .errors import StackError
from .settings import PROJECT_DIR, Settings

EXECUTOR_CLASSES = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
WEBSERVER_CONFIG_TEMPLATE = PROJECT_DIR / "config" / "webserver_config.py.tmpl"
# a new DAG file is listed within this many seconds (Airflow's default, 300, makes users wait 5 min)
DAG_DIR_REFRESH_SECONDS = 5

# keys whose values are secrets: they stay in the environment and out of airflow.cfg
SECRET_KEYS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY", "AIRFLOW__WEBSERVER__SECRET_KEY", "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND", "STACK_RATELIMIT_STORAGE_URI",
}


def result_backend(settings: Settings) -> str:
    # Celery's SQLAlchemy backend wants db+postgresql://; postgresql+psycopg2:// kills the scheduler
    return (f"db+postgresql://{quote(settings.pg_user, safe='')}:{quote(settings.pg_password or '', safe='')}"
            f"@{settings.pg_host}:{settings.pg_port}/{quote(settings.pg_database, safe='')}")


def environment(settings: Settings, executor: str | None = None) -> dict[str, str]:
    """The AIRFLOW__* environment (and the limiter URI) shared by every Airflow process."""
    missing = [name for name in ("pg_password", "redis_password", "fernet_key", "jwt_secret", "api_secret_key")
               if not getattr(settings, name)]
    if missing:
        raise StackError(f"{settings.env_file} lacks {', '.join(missing)}; run: invoke setup")
    executor = executor or settings.executor
    env = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.sql_alchemy_conn,
        "AIRFLOW__CORE__EXECUTOR": EXECUTOR_CLASSES[executor],
        "AIRFLOW__CORE__FERNET_KEY": settings.fernet_key,
        "AIRFLOW__CORE__LOAD_EXAMPLES": str(settings.load_examples),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
        "AIRFLOW__CORE__PARALLELISM": str(settings.parallelism),
        # every component would load Alembic's ~150 migration scripts at start to compare heads:
        # CPU and memory on each; `invoke run.*` checks the schema once before starting any
        # (airflow_db.needs_migration) and refuses to start on an old one
        "AIRFLOW__DATABASE__CHECK_MIGRATIONS": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.log_dir / "airflow"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.trigger_log_port),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(settings.scheduler_health_port),
        "AIRFLOW__CELERY__BROKER_URL": settings.redis_url(0),
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend(settings),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.worker_concurrency),
        # a task is acknowledged when it ends, one at a time per slot: a killed worker's task goes back
        # to the queue instead of being lost, and no worker hoards tasks another could run
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        # with late acks Redis re-delivers a task still running after this long: keep it above the longest
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(settings.celery_visibility_timeout),
        "AIRFLOW__CELERY__FLOWER_HOST": "127.0.0.1",
        "AIRFLOW__CELERY__FLOWER_PORT": str(settings.flower_port),
        # read by webserver_config.py: login rate limits live in Redis, shared by every web worker
        "STACK_RATELIMIT_STORAGE_URI": settings.limiter_storage_uri,
    }
    webserver_config = str(settings.airflow_home / "webserver_config.py")
    if settings.airflow_line == "2.11":
        env |= {
            "AIRFLOW__WEBSERVER__WEB_SERVER_HOST": settings.api_host,
            "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(settings.api_port),
            "AIRFLOW__WEBSERVER__BASE_URL": settings.api_url,
            "AIRFLOW__WEBSERVER__SECRET_KEY": settings.api_secret_key,
            "AIRFLOW__WEBSERVER__CONFIG_FILE": webserver_config,
            "AIRFLOW__WEBSERVER__WORKERS": "2",
            # the REST API with user/password (basic auth) as well as browser sessions
            "AIRFLOW__API__AUTH_BACKENDS": ("airflow.providers.fab.auth_manager.api.auth.backend.basic_auth,"
                                            "airflow.providers.fab.auth_manager.api.auth.backend.session"),
            "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": str(DAG_DIR_REFRESH_SECONDS),
            # no forked health server (it shares the scheduler's DB connection on 2.11): components.py
            # probes the scheduler's heartbeat in the job table instead
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # gunicorn >= 24 opens a control socket in ~/.gunicorn by default: two stacks would share it
            "GUNICORN_CMD_ARGS": f"--control-socket {shlex.quote(str(settings.run_dir / 'gunicorn.ctl'))}",
        }
    else:
        env |= {
            "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
            "AIRFLOW__API__HOST": settings.api_host,
            "AIRFLOW__API__PORT": str(settings.api_port),
            "AIRFLOW__API__SECRET_KEY": settings.api_secret_key,
            "AIRFLOW__API_AUTH__JWT_SECRET": settings.jwt_secret,
            # tasks report back over HTTP; without this they dial :8080 and fail with ConnectError
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.api_url}/execution/",
            "AIRFLOW__FAB__CONFIG_FILE": webserver_config,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(DAG_DIR_REFRESH_SECONDS),
        }
    return env


def render_airflow_cfg(env: dict[str, str]) -> str:
    """airflow.cfg from the environment, secrets left out (they come from .env at run time)."""
    sections: dict[str, list[str]] = {}
    for key in sorted(env):
        if not key.startswith("AIRFLOW__") or key in SECRET_KEYS:
            continue
        _, section, option = key.split("__", 2)
        sections.setdefault(section.lower(), []).append(f"{option.lower()} = {env[key]}")
    lines = ["# Rendered by airflow-stack (invoke setup.airflow); edits are overwritten.",
             "# The same values reach every process through its environment, together with the",
             "# secrets from .env (database URL, keys), which are never written here.", ""]
    for section, options in sections.items():
        lines += [f"[{section}]", *options, ""]
    return "\n".join(lines)


def render_webserver_config() -> str:
    return WEBSERVER_CONFIG_TEMPLATE.read_text()


def write_config(settings: Settings, env: dict[str, str]) -> list[str]:
    """Write airflow.cfg and webserver_config.py into AIRFLOW_HOME when they differ."""
    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("airflow.cfg", render_airflow_cfg(env)), ("webserver_config.py", render_webserver_config())):
        path = home / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(name)
    return written
