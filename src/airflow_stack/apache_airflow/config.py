"""What every Airflow process must agree on: one environment, built from Settings.

Every component, the admin-user step, ``scripts/airflow`` and a Celery worker on another machine
get exactly this environment; secrets travel in it (from .env), never in files Airflow writes.
airflow.cfg is rendered from the same values minus the secrets, so that what a user reads there
is what runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .. import settings as settings_mod
from .. import statedir
from ..errors import StackError
from ..project import folder
from ..settings import PROJECT_DIR, Settings
from . import profiles

EXECUTOR_CLASSES = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
# where webserver_config.py (config/webserver_config.py.tmpl) finds the login limiter's storage
LIMITER_VAR = "STACK_RATELIMIT_STORAGE_URI"
WEBSERVER_CONFIG_TEMPLATE = PROJECT_DIR / "config" / "webserver_config.py.tmpl"
# the stack's modules that Airflow imports by name (the line profiles name them: the auth manager, the API's
# auth backend), on every Airflow process's PYTHONPATH after the project's root
AIRFLOW_MODULES = Path(__file__).resolve().parent / "airflow_side" / "on_path"
OBJC_FORK_SAFETY_VAR = "OBJC_DISABLE_INITIALIZE_FORK_SAFETY"  # macOS, for releases that fork without exec


def secret_keys(env: dict[str, str], settings: Settings) -> set[str]:
    """The keys of ``env`` that hold a secret (settings.is_secret): they stay in the environment and out of
    airflow.cfg, and are fingerprinted, never recorded."""
    return {key for key, value in env.items() if settings_mod.is_secret(settings, key, value)}


SQL_CONN_VAR = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"


def sql_alchemy_conn(settings: Settings, migrating: bool = False) -> str:
    """``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``, with the line's driver (``migrating``: the one its
    migrations need)."""
    profile = profiles.of(settings)
    return settings.pg_url(f"postgresql+{(migrating and profile.migrate_sql_driver) or profile.sql_driver}")


def result_backend(settings: Settings) -> str:
    # Celery's SQLAlchemy backend wants db+postgresql://; postgresql+psycopg2:// kills the scheduler
    return settings.pg_url("db+postgresql")


def _as_airflow(value: Any) -> str:
    """A setting's value as Airflow reads it from its environment."""
    if isinstance(value, bool):
        return str(value)  # True / False
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def from_settings(settings: Settings) -> dict[str, str]:
    """The settings that reach Airflow as they are, under the names the running line reads them by
    (each Spec's ``airflow`` name, and the line profile's own)."""
    profile = profiles.of(settings)
    names = {name: spec.airflow for name, spec in settings_mod.specs().items() if spec.airflow}
    names |= dict(profile.reads)
    return {variable: _as_airflow(getattr(settings, name)) for name, variable in names.items()}


def environment(settings: Settings, executor: str | None = None) -> dict[str, str]:
    """The AIRFLOW__* environment (and the limiter URI) shared by every Airflow process."""
    missing = settings_mod.missing_shared_secrets(settings)
    if missing:
        raise StackError(f"{settings.env_file} lacks {', '.join(missing)}; run: invoke setup")
    executor = executor or settings.executor
    env = from_settings(settings) | {
        "AIRFLOW_HOME": str(settings.paths.airflow_home),
        SQL_CONN_VAR: sql_alchemy_conn(settings),
        "AIRFLOW__CORE__EXECUTOR": EXECUTOR_CLASSES[executor],
        # the user's project (astro layout): its dags/ and plugins/, and its root on PYTHONPATH, so that DAG
        # code imports `include.*` (and anything else the project holds) in every process, workers included;
        # then the stack's own modules for Airflow (AIRFLOW_MODULES)
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.plugins_folder),
        "PYTHONPATH": os.pathsep.join([str(settings.project_dir), str(AIRFLOW_MODULES)]),
        # every component would load Alembic's ~150 migration scripts at start to compare heads:
        # CPU and memory on each; `invoke run.*` checks the schema once before starting any
        # (schema.needs_migration) and refuses to start on an old one
        "AIRFLOW__DATABASE__CHECK_MIGRATIONS": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.paths.task_logs),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        # as the Redis ACL user that cannot run CONFIG, DEBUG, SHUTDOWN, FLUSHALL, ACL ... (a DAG can read this)
        "AIRFLOW__CELERY__BROKER_URL": settings.airflow_redis_url(0),
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend(settings),
        # a task is acknowledged when it ends, one at a time per slot: a killed worker's task goes back
        # to the queue instead of being lost, and no worker hoards tasks another could run
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CELERY__FLOWER_HOST": "127.0.0.1",
        # read by webserver_config.py: login rate limits live in Redis, shared by every web worker
        LIMITER_VAR: settings.limiter_storage_uri,
    }
    profile = profiles.of(settings)
    env |= profile.environment(settings, profile)
    if sys.platform == "darwin" and profile.needs_objc_fork_workaround(profile.release):
        # the release forks without exec (profiles: darwin_fork_exec_from): macOS's Objective-C runtime would
        # kill a forked child that touches Apple's frameworks
        env[OBJC_FORK_SAFETY_VAR] = "YES"
    # a proxy the user's shell sets (http_proxy, usual on company machines) must not carry the stack's
    # own traffic: Airflow 3's task supervisor calls the execution API with httpx, which honours it
    bypass = no_proxy(settings)
    env |= {"NO_PROXY": bypass, "no_proxy": bypass}
    return env


# What of the caller's environment reaches the Airflow processes, and so DAG code: what any program
# needs, the proxies and CA bundles of its network, Airflow's own configuration, connection and
# variable variables, and the names the user lists in STACK_PASSTHROUGH. Everything else stays out,
# above all what .env holds for the tooling (the admin password, a superuser DSN, the bare database
# and Redis passwords), which a shell with direnv exports.
PASSED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "PYTHONPATH",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
})
PASSED_PREFIXES = ("LC_", "AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")


def project_environment(settings: Settings, airflow_env: dict[str, str]) -> dict[str, str]:
    """The project's own .env (astro passes it into every Airflow container): every name in it reaches every
    Airflow process and task. The stack's own settings and secrets never come from it: a name that is one of
    the stack's settings, or that the stack sets for Airflow to another value, is refused in one line (its
    value never printed). The stack's .env, when it is the same file (the project is this repo), is not the
    project's."""
    path = folder.get(settings).env_file
    if not path.exists() or path.resolve() == settings.env_file.resolve():
        return {}
    values = statedir.read_env_file(path)
    ours = {spec.env for spec in settings_mod.specs().values()}
    for name, value in values.items():
        if name in ours or (name in airflow_env and name != "PYTHONPATH" and airflow_env[name] != value):
            raise StackError(f"{path} sets {name}, which is the stack's own (its settings and secrets come from "
                             f"{settings.env_file}); remove it from the project's .env, or set it in "
                             f"{settings.env_file.name} if it is a setting of the stack's")
    return values


def project_digest(settings: Settings, airflow_env: dict[str, str]) -> str:
    """A short digest of the project's .env, for the processes' records: a change restarts them."""
    values = project_environment(settings, airflow_env)
    return hashlib.sha256(json.dumps(sorted(values.items())).encode()).hexdigest()[:12] if values else ""


def process_environment(settings: Settings, airflow_env: dict[str, str], environ: dict[str, str] | None = None,
                        project: bool = True) -> dict[str, str]:
    """The whole environment of a process the stack starts: the allowed part of the caller's, then (for
    Airflow's processes, ``project``) the project's .env, then ``airflow_env`` (environment()) on top."""
    environ = dict(os.environ if environ is None else environ)
    extra = {name.strip() for name in settings.passthrough.split(",") if name.strip()}
    base = {key: value for key, value in environ.items()
            if key in PASSED_NAMES or key.startswith(PASSED_PREFIXES) or key in extra}
    if project:
        base |= project_environment(settings, airflow_env)
    merged = base | airflow_env
    if base.get("PYTHONPATH") and "PYTHONPATH" in airflow_env:  # the project and ours first, then the user's own
        merged["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
            [*airflow_env["PYTHONPATH"].split(os.pathsep), *base["PYTHONPATH"].split(os.pathsep)]))
    return merged


def no_proxy(settings: Settings, environ: dict[str, str] | None = None) -> str:
    """The user's NO_PROXY list plus loopback and every host the stack's processes dial."""
    environ = dict(os.environ if environ is None else environ)
    have = [h.strip() for h in (environ.get("NO_PROXY") or environ.get("no_proxy") or "").split(",") if h.strip()]
    ours = ["localhost", "127.0.0.1", "::1", settings.api_host, settings.pg_host, settings.redis_host]
    return ",".join(dict.fromkeys(h for h in [*have, *ours] if h and h not in ("0.0.0.0", "::")))


def render_airflow_cfg(env: dict[str, str], settings: Settings) -> str:
    """airflow.cfg from the environment, secrets left out (they come from .env at run time)."""
    secret = secret_keys(env, settings)
    sections: dict[str, list[str]] = {}
    for key in sorted(env):
        if not key.startswith("AIRFLOW__") or key in secret:
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
    home = settings.paths.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("airflow.cfg", render_airflow_cfg(env, settings)),
                       ("webserver_config.py", render_webserver_config())):
        path = home / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(name)
    return written
