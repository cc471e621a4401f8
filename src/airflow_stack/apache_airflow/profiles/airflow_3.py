"""Airflow 3 (3.0 to 3.3): API server, scheduler, a separate DAG processor, triggerer; FAB for users and
limits. What differs between its minors is in ``specialize`` (found by installing and running each)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ...components import FLOWER, TRIGGERER, WORKER, Component, Probe, web_tls_options
from .. import releases
from . import AirflowLine, RestAPI, WebUI

if TYPE_CHECKING:
    from ...settings import Settings

# users, login and Flask-Limiter come with the FAB auth manager (the default SimpleAuthManager has none); ours
# (apache_airflow/airflow_side/on_path/) also counts wrong passwords on POST /auth/token and /auth/token/cli
# with the login form's, which FAB's own leaves unlimited
AUTH_MANAGER = "airflow_stack_auth_manager.RateLimitedFabAuthManager"


# the settings only this line reads, under its names for them
READS = {
    "api_host": "AIRFLOW__API__HOST",
    "api_port": "AIRFLOW__API__PORT",
    "api_secret_key": "AIRFLOW__API__SECRET_KEY",
    "jwt_secret": "AIRFLOW__API_AUTH__JWT_SECRET",
    "task_heartbeat_seconds": "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL",
    # uvicorn believes X-Forwarded-For from these peers only, and only with --proxy-headers (api_server_options);
    # never [fab] enable_proxy_fix: it believes the header from any client
    "trusted_proxies": "FORWARDED_ALLOW_IPS",
}


def environment(settings: Settings, profile: AirflowLine) -> dict[str, str]:
    env = profile.dag_refresh_env() | {
        "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
        # tasks report back over HTTP; without this they dial :8080 and fail with ConnectError
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.api_url}/execution/",
        "AIRFLOW__FAB__CONFIG_FILE": str(settings.paths.webserver_config),
        # one API server process: 3.0 starts 4 by default (3.1 and later 1), each loading the whole app
        "AIRFLOW__API__WORKERS": "1",
    }
    if settings.api_tls:
        # The API server serves HTTPS with its certificate and key from its command line (web_tls_options).
        # Task processes verify it with the CA the Task SDK's client loads: on every 3.x it adds the file
        # [api] ssl_cert names to its trust (3.0-3.2 know no [api] ssl_ca_file, and pass certifi's bundle as the
        # CA file, so SSL_CERT_FILE is ignored; SSL_CERT_FILE would also replace the trust of every HTTPS call
        # of DAG code). ca.pem is on every machine that runs tasks; a non-empty ssl_cert also marks the login
        # cookies Secure.
        env["AIRFLOW__API__SSL_CERT"] = str(settings.tls_ca_file)
    return env


def api_server_options(settings: Settings) -> tuple[str, ...]:
    # behind a reverse proxy the stack was told of: the client it names is the one the login limit counts;
    # HTTPS with the stack's certificate where other machines connect (web_tls_options)
    return (("--proxy-headers",) if settings.trusted_proxies else ()) + web_tls_options(settings)


def web_listen_env(host: str, port: int, url: str) -> dict[str, str]:
    return {READS["api_host"]: host, READS["api_port"]: str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/"}


def standalone_password(home: Path) -> str:
    # standalone forces the simple auth manager, which writes its generated passwords here
    return json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]


def specialize(profile: AirflowLine, release: str) -> AirflowLine:
    """What differs between the minors of Airflow 3, found by installing and running each on PostgreSQL."""
    if releases.as_tuple(release) < (3, 3):
        # 3.0 resolves SQLAlchemy 1.4, which has no psycopg 3 dialect; 3.1 and 3.2 have the dialect but not
        # psycopg 3 itself (their postgres provider brings it only with an extra); psycopg2 works on all
        return dataclasses.replace(profile, sql_driver="psycopg2")
    return profile


PROFILE = AirflowLine(
    major="3",
    sql_driver="psycopg",  # psycopg 3 (3.3's postgres provider requires it)
    # Migration 0094 (3.2.0: deadline callbacks into their own table) binds a parameter inside json_build_object,
    # whose type psycopg 3's server-side binding cannot infer ("could not determine data type of parameter $8"):
    # with psycopg 3 an upgrade from 3.0 or 3.1 to 3.3 stops there (a new database is created from the models,
    # not migrated, so it never meets it). psycopg2 interpolates on the client; every 3.x venv has it (3.3's
    # postgres provider brings psycopg2-binary too).
    migrate_sql_driver="psycopg2",
    # The order is the start order: the web component first, since it has the longest way to healthy
    # (it builds the whole API app after its imports) and so starts on the second core while the
    # launcher loads the others' modules; stop goes in reverse, so the API server, which tasks report
    # to, stops last.
    components=(
        # The execution API, which every task calls, builds its versioned routes (Cadwyn) on its first
        # request: ~2 s of CPU that blocked the server under the first DAG run's eight task starts
        # (seen with py-spy). The warm-up requests it within the start instead.
        Component("api-server", ("api-server",),
                  Probe("http", port_setting="api_port", path="/api/v2/monitor/health", json_key="metadatabase",
                        warmup="/execution/health"),
                  ports=("api_port",), options=api_server_options),
        # with the LocalExecutor the scheduler's task processes run here, so the scheduler serves their logs
        Component("scheduler", ("scheduler",), Probe("http", port_setting="scheduler_health_port", path="/health"),
                  ports=("scheduler_health_port",), local_ports=("worker_log_port",),
                  preload=("airflow.jobs.scheduler_job_runner",), runs_tasks=True),
        Component("dag-processor", ("dag-processor",), Probe("job", job_type="DagProcessorJob"),
                  preload=("airflow.dag_processing.manager",)),
        TRIGGERER,
        WORKER,
        FLOWER,
    ),
    preload=("airflow.models", "airflow.jobs.job", "airflow.api_fastapi.execution_api.app"),
    # the Task SDK's supervisor and task runner: otherwise imported by every LocalExecutor worker and
    # Celery pool child on its first task, eight at once on two cores (the first 8 x sleep(5) run took
    # 11 s, later ones 6-7 s), and by every task process again
    task_preload=("airflow.sdk.execution_time.supervisor", "airflow.sdk.execution_time.task_runner"),
    environment=environment,
    reads=READS,
    rest=RestAPI(prefix="/api/v2", health_path="/api/v2/monitor/health", login_path="/auth/login/", auth="token",
                 trigger_body={"logical_date": None}, token_path="/auth/token"),
    admin_reset_password=True,
    # Task runner plus the process that supervises it (Local: the executor worker, forked when the
    # scheduler starts; Celery: the pool child): Pss of /proc/PID/smaps_rollup of both, while the 8
    # sleep(5) tasks of tests/integration/dags/parallel_sleep.py ran at once, 2026-11-25, 2 cores,
    # Debian 12, PostgreSQL 15. A task that only sleeps: real imports and data come on top, so this is
    # the least a task slot needs; with 1-3 tasks running it is 4-8 MiB more (fewer share the pages).
    # test_faults prints it again ([figure]) on every run.
    task_pss_mib={"local": 71, "celery": 96},
    standalone_password=standalone_password,
    web_listen_env=web_listen_env,
    dag_refresh_setting="AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
    dag_file_option="--dagfile-path",
    dag_parser="dag-processor",
    # 3.0-3.2 fork task processes without exec; 3.3.0-3.3.2 exec only task processes on darwin (task SDK 1.3:
    # `_FORK_EXEC_PLATFORMS`, used by ActivitySubprocess.start); its docstring leaves the DAG processor and
    # triggerer to a follow-up (#65691), and both still start their children with a bare fork. #69008 (merged
    # 2026-06-26) is in no 3.3 release yet: name the first one that carries it here.
    darwin_fork_exec_from="",
    # no production banners in the React UI; the FAB api-server logs the in-memory limiter warning instead
    ui=WebUI(dag_list_path="/dags", dag_runs_path="/dags/{dag_id}/runs", trigger_dialog=True),
    specialize=specialize,
)
