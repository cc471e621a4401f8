"""A stack of our own for the integration tests (tests/support/sandbox.py): temporary state dir and
.env, free ports below the ephemeral range, its own PostgreSQL role and database (dropped at the
end), its own Redis.

Every task runs as a user runs it (``python -m invoke ...`` in the repo), and every output is checked
for the stack's secrets as it arrives.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import profiles
from tests.conftest import EXECUTOR_VAR, LINE_VAR
from tests.support import api_client
from tests.support.sandbox import PROJECT_DIR as REPO
from tests.support.sandbox import Sandbox, free_ports

__all__ = [  # and LINE, EXECUTOR (below)
    "PROJECT_SECRET_NAME", "REMOTE_ADDRESS", "REPO", "Stack", "airflow_api", "free_ports", "write_project"]
# the loopback address a "worker on another machine" reaches the stack through
REMOTE_ADDRESS = "127.0.0.2"
TEST_DAGS = Path(__file__).parent / "dags"
# the .env variable the test project's airflow_settings.yaml takes its connection password from
PROJECT_SECRET_NAME = "PROJECT_API_PASSWORD"

# The test project, in the astro CLI's layout, outside the repo as a user's is: a requirement that is not
# one of Airflow's, a plugin with a macro, a module in include/, connections, variables and pools.
PROJECT_FILES = {
    "requirements.txt": "# the project's own requirement (not one of Airflow's dependencies)\ncowsay==5.0\n",
    "packages.txt": "",
    "plugins/stack_plugin.py": '''from airflow.plugins_manager import AirflowPlugin


def shout(text):
    return text.upper() + "!"


class StackPlugin(AirflowPlugin):
    name = "stack_plugin"
    macros = [shout]
''',
    "include/__init__.py": "",
    "include/greetings.py": '''def greet(name):
    return f"hello {name}, from include/"
''',
    "airflow_settings.yaml": f'''airflow:
  connections:
    - conn_id: project_api
      conn_type: http
      conn_host: api.example.invalid
      conn_schema: https
      conn_login: etl
      conn_password: ${{{PROJECT_SECRET_NAME}}}
      conn_port: 8443
      conn_extra:
        timeout: 30
    - conn_id:
      conn_type:
      conn_host:
  pools:
    - pool_name: project_pool
      pool_slot: 3
      pool_description: the test project's pool
  variables:
    - variable_name: project_greeting
      variable_value: hello from airflow_settings.yaml
''',
    "tests/dags/test_dag_integrity.py": '''import os

try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models import DagBag


def test_every_dag_imports():
    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    assert "project_probe" in bag.dag_ids
''',
    "dags/project_probe.py": '''"""Uses what the project brings: its requirement, its plugin's macro, include/, and the
connection, variable and pool of airflow_settings.yaml; writes what it saw beside itself."""
import hashlib
import json
from pathlib import Path

import cowsay
import pendulum
from include.greetings import greet

try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG, BaseHook, Variable
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.hooks.base import BaseHook
    from airflow.models import Variable
    from airflow.operators.python import PythonOperator

OUT = Path(__file__).with_name("project_probe.json")


def probe(shouted, ti=None, **_):
    conn = BaseHook.get_connection("project_api")
    OUT.write_text(json.dumps({
        "cowsay": cowsay.__version__, "shouted": shouted, "greeting": greet("stack"),
        "host": conn.host, "login": conn.login, "port": conn.port, "extra": conn.extra_dejson,
        "password_sha256": hashlib.sha256((conn.password or "").encode()).hexdigest(),
        "variable": Variable.get("project_greeting"), "pool": ti.task.pool,
    }))


with DAG("project_probe", start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False):
    PythonOperator(task_id="probe", python_callable=probe, pool="project_pool",
                   op_kwargs={"shouted": "{{ macros.stack_plugin.shout('stack') }}"})
''',
    "dags/fails_on_purpose.py": '''import pendulum

try:
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
except ImportError:
    from airflow import DAG
    from airflow.operators.python import PythonOperator


def fail():
    raise RuntimeError("this task fails on purpose")


with DAG("fails_on_purpose", start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False):
    PythonOperator(task_id="fail", python_callable=fail, retries=0)
''',
    # a DAG that says whether a module given in its run's conf can be imported by a task
    "dags/import_probe.py": '''import importlib.util
import json
from pathlib import Path

import pendulum

try:
    from airflow.sdk import dag, get_current_context, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task
    from airflow.operators.python import get_current_context


@dag(start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False)
def import_probe():
    @task
    def probe() -> None:
        module = get_current_context()["dag_run"].conf["module"]
        Path(__file__).with_name("import_probe.json").write_text(
            json.dumps({"importable": importlib.util.find_spec(module) is not None}))

    probe()


import_probe()
''',
    # an astro project's Dockerfile: the release its image pins is said once (the sandbox's line wins over it)
    "Dockerfile": "FROM quay.io/astronomer/astro-runtime:12.6.0\n",
}


def pg_main_version() -> str:
    rows = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout.split("\n")
    return next(row.split()[0] for row in rows if row.strip())


def can_make_clusters() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("pg_createcluster"))


@contextlib.contextmanager
def own_cluster(label: str) -> Iterator[tuple[str, str, int]]:
    """A PostgreSQL cluster of the installed major version, the test's own (Debian's pg_createcluster),
    started on a free port and dropped afterwards: a test that restarts or reconfigures the server (its
    listen addresses, its TLS certificate) never touches the shared one, or a user's stack on it."""
    version, name, port = pg_main_version(), f"ast{label}{os.getpid()}", free_ports(1)[0]
    subprocess.run(["pg_createcluster", version, name, "--port", str(port), "--start"], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    try:
        yield version, name, port
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def clusters(services) -> Callable[[str], contextlib.AbstractContextManager[tuple[str, str, int]]]:
    """``own_cluster``, for the tests that stop, restart or reconfigure a server; asked after ``services`` set
    PostgreSQL up (pg_createcluster comes with it): a check at collection would skip these on a machine whose
    PostgreSQL the tests install."""
    if not can_make_clusters():
        pytest.skip("needs root and Debian's postgresql-common (pg_createcluster) for a cluster of its own")
    return own_cluster


def write_project(root: Path) -> Path:
    """A project folder in the astro layout at ``root``, with the integration tests' DAGs."""
    shutil.copytree(TEST_DAGS, root / "dags", dirs_exist_ok=True)
    shutil.copy(REPO / "dags" / "hello_stack.py", root / "dags")  # the DAG a new user meets first
    for name, text in PROJECT_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def __getattr__(name: str) -> str:
    """LINE and EXECUTOR: read when a test module asks, after pytest parsed --line / --executor."""
    if name == "LINE":
        return os.environ.get(LINE_VAR, profiles.DEFAULT)
    if name == "EXECUTOR":
        return os.environ.get(EXECUTOR_VAR, "local")
    raise AttributeError(name)


class Stack(Sandbox):
    """The test stack's sandbox: a task that exits non-zero fails the test unless ``check=False``."""

    def inv(self, *args: str, check: bool = True, timeout: float = 900, env: dict[str, str | None] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return super().inv(*args, check=check, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # folders with a space in their names, as on many laptops ("~/My Projects"): every path the stack
    # writes into a config file or a shell line must survive it
    state = tmp_path_factory.mktemp("stack state")
    # the user's project, outside the repo (tests add DAG files to it without touching the repo)
    project = write_project(tmp_path_factory.mktemp("my project"))
    env_file = state / ".env"
    env_file.write_text(f"{PROJECT_SECRET_NAME}={secrets.token_urlsafe(18)}\n")
    env_file.chmod(0o600)
    executor = __getattr__("EXECUTOR")
    extra = {
        # a task whose process was killed (with its worker, or by test_faults) is failed, then retried,
        # after 40 s without heartbeat, not 300 s (the names of both lines). Not less: a task in flight must
        # outlive an API-server kill (test_faults), and its supervisor heartbeats again only once the
        # restarted server answers and the client's backoff lets it (~20 s under two test lanes: at 20 s
        # the scheduler failed a task that was fine, CI 2026-12-06)
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "40",
        "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": "40",
    }
    cluster: contextlib.AbstractContextManager = contextlib.nullcontext()
    if executor == "celery":
        # workers "on other machines" reach the API server through another loopback address, and Redis and
        # PostgreSQL over TLS (the stack's CA); the PostgreSQL server is the session's own, as the opt-in
        # restarts it (listen_addresses) and gives it the stack's certificate
        extra["STACK_API_HOST"] = "0.0.0.0"
        if can_make_clusters():
            cluster, extra["STACK_TLS"] = own_cluster("c"), "true"
        else:
            print("\n[note] not root or no pg_createcluster: the Celery session opts the shared PostgreSQL in, "
                  "without TLS")
    with cluster as made:
        if made:
            extra["STACK_PG_PORT"] = str(made[2])
        stack = Stack.create(state, __getattr__("LINE"), executor, project, f"ast_test_{os.getpid()}", extra)
        yield from _run_stack(stack, state)


def _run_stack(stack: Stack, state: Path) -> Iterator[Stack]:
    try:
        yield stack
    finally:
        # after every test: no secret in any log the stack wrote, nor in what `invoke logs` shows (inv checks)
        leaks = stack.secrets_in_logs() if state.exists() else []
        stack.inv("logs", "--lines", "1000000", check=False)
        survivors = stack.teardown()
        assert not survivors, f"processes survived invoke stop: {survivors}"
        assert not leaks, f"secrets of .env in log files: {leaks}"


@pytest.fixture(scope="session")
def services(stack: Stack) -> dict[str, subprocess.CompletedProcess[str]]:
    """PostgreSQL (role + DB) and our Redis, set up from nothing; the first runs' outputs."""
    return {"postgres": stack.inv("setup.postgres"), "redis": stack.inv("setup.redis")}


@pytest.fixture(scope="session")
def airflow_up(stack: Stack, services: dict) -> dict[str, float | str]:
    """The whole stack through `invoke up --executor EXECUTOR`, timed."""
    executor = __getattr__("EXECUTOR")
    opt_in = ""
    if executor == "celery":
        # the opt-in flags that let workers on other machines in (here: through 127.0.0.2)
        opt_in = stack.inv("setup.redis", "--bind", f"127.0.0.1 {REMOTE_ADDRESS} -::1").stdout
        opt_in += stack.inv("setup.postgres", "--listen", f"localhost,{REMOTE_ADDRESS}",
                            "--allow-from", f"{REMOTE_ADDRESS}/32").stdout
    began = time.monotonic()
    stack.inv("up", "--executor", executor)
    return {"up_seconds": time.monotonic() - began, "opt_in": opt_in}


def airflow_api(settings: settings_mod.Settings) -> api_client.AirflowAPI:
    """The stack's REST API, logged in as the admin with the password .env holds now."""
    return api_client.AirflowAPI(settings.api_url, profiles.of(settings).name, settings.admin_user,
                                 settings.admin_password, verify=api_client.verify_for(settings))


@pytest.fixture
def api(stack: Stack, airflow_up: dict) -> api_client.AirflowAPI:
    """Logged in with the admin password .env holds now (a test changes it)."""
    return airflow_api(stack.settings())
