"""Airflow 2 (2.10, 2.11; end of life): gunicorn webserver, DAG parsing inside the scheduler, FAB built in.
What differs between its minors is in ``specialize`` (found by installing and running each)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ...components import FLOWER, TRIGGERER, WORKER, Component, Probe, web_tls_options
from .. import releases
from . import AirflowLine, RestAPI, WebUI

if TYPE_CHECKING:
    from ...settings import Settings

# the REST API with user/password (basic auth) as well as browser sessions (a default install's, as
# `airflow standalone` runs for the benchmark)
FAB_API_AUTH_BACKENDS = ("airflow.providers.fab.auth_manager.api.auth.backend.basic_auth,"
                         "airflow.providers.fab.auth_manager.api.auth.backend.session")
# the stack's: FAB's basic auth with wrong passwords counted with the login form's (apache_airflow/airflow_side/
# on_path/), then browser sessions
API_AUTH_BACKENDS = "airflow_stack_basic_auth,airflow.providers.fab.auth_manager.api.auth.backend.session"


# the settings only this line reads, under its names for them
READS = {
    "api_host": "AIRFLOW__WEBSERVER__WEB_SERVER_HOST",
    "api_port": "AIRFLOW__WEBSERVER__WEB_SERVER_PORT",
    "api_secret_key": "AIRFLOW__WEBSERVER__SECRET_KEY",
    # read by webserver_config.py: gunicorn never rewrites the peer's address from X-Forwarded-For, and
    # [webserver] enable_proxy_fix believes the header from any client; its RATELIMIT_KEY_FUNC believes these only
    "trusted_proxies": "STACK_TRUSTED_PROXIES",
}


def environment(settings: Settings, profile: AirflowLine) -> dict[str, str]:
    env = profile.dag_refresh_env() | {
        "AIRFLOW__WEBSERVER__BASE_URL": settings.api_url,
        "AIRFLOW__API__AUTH_BACKENDS": API_AUTH_BACKENDS,
        "AIRFLOW__WEBSERVER__CONFIG_FILE": str(settings.paths.webserver_config),
        "AIRFLOW__WEBSERVER__WORKERS": "2",
        # no forked health server: it shares the scheduler's DB connection on this line, and the
        # scheduler hangs; the scheduler is probed through its heartbeat in the job table instead
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
    }
    if settings.api_tls:  # the webserver serves HTTPS (web_tls_options): its session cookie only over HTTPS too
        env["AIRFLOW__WEBSERVER__COOKIE_SECURE"] = "True"
    if profile.gunicorn_control_socket:
        # gunicorn >= 24 opens a control socket in ~/.gunicorn by default: two stacks would share it
        env["GUNICORN_CMD_ARGS"] = f"--control-socket {shlex.quote(str(settings.paths.gunicorn_control))}"
    return env


def web_listen_env(host: str, port: int, url: str) -> dict[str, str]:
    return {READS["api_host"]: host, READS["api_port"]: str(port),
            "AIRFLOW__WEBSERVER__BASE_URL": url, "AIRFLOW__API__AUTH_BACKENDS": FAB_API_AUTH_BACKENDS}


def standalone_password(home: Path) -> str:
    return (home / "standalone_admin_password.txt").read_text().strip()


def specialize(profile: AirflowLine, release: str) -> AirflowLine:
    """What differs between the minors of Airflow 2, found by installing and running each on PostgreSQL."""
    if releases.as_tuple(release) >= (2, 11):
        # 2.11 resolves gunicorn 25 (--control-socket); its flask-session 0.8 breaks `users reset-password`
        # outside an app context ("sqlalchemy extension was not registered")
        return dataclasses.replace(profile, gunicorn_control_socket=True, admin_reset_password=False)
    return profile  # 2.10: gunicorn 23 refuses --control-socket; flask-session 0.5 resets passwords fine


PROFILE = AirflowLine(
    major="2",
    sql_driver="psycopg2",  # SQLAlchemy 1.4 has no psycopg 3 dialect
    components=(
        # gunicorn starts the UI's workers as new processes: nothing to share with the launcher
        Component("webserver", ("webserver",),
                  Probe("http", port_setting="api_port", path="/health", json_key="metadatabase"),
                  ports=("api_port",), options=web_tls_options),
        # A task's raw process (in a process group of its own) is supervised by its `tasks run --local`
        # parent, in the scheduler's group: once that is reaped, Airflow retries the task, and a raw
        # process still there would only linger (seen in the kill -9 test) or run beside its retry.
        Component("scheduler", ("scheduler",), Probe("job", job_type="SchedulerJob"),
                  local_ports=("worker_log_port",), preload=("airflow.jobs.scheduler_job_runner",),
                  reap_session=True, runs_tasks=True),
        TRIGGERER,
        WORKER,
        FLOWER,
    ),
    preload=("airflow.models", "airflow.jobs.job"),
    # `airflow tasks run` and its task job, imported by each process that runs a task otherwise
    task_preload=("airflow.cli.commands.task_command", "airflow.jobs.local_task_job_runner",
                  "airflow.task.task_runner.standard_task_runner"),
    environment=environment,
    reads=READS,
    rest=RestAPI(prefix="/api/v1", health_path="/health", login_path="/login/", auth="basic"),
    admin_reset_password=True,
    # as on 3.3 (see there); the supervising process is the forked `airflow tasks run --local`
    task_pss_mib={"local": 72, "celery": 83},
    standalone_password=standalone_password,
    web_listen_env=web_listen_env,
    dag_refresh_setting="AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL",
    dag_file_option="--subdir",
    dag_parser="scheduler",
    ui=WebUI(dag_list_path="/home", dag_runs_path="/dagrun/list/?_flt_3_dag_id={dag_id}", trigger_dialog=False,
             production_warnings=("Do not use SQLite as metadata DB in production",
                                  "Do not use the SequentialExecutor in production")),
    specialize=specialize,
    # 2.x forks task runners and DAG-file processors without exec, on darwin too; the line is end of life
    darwin_fork_exec_from="",
)
