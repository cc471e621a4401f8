"""A stack of our own for the integration tests (tests/support/sandbox.py): temporary state dir and
.env, free ports below the ephemeral range, its own PostgreSQL role and database (dropped at the
end), its own Redis.

Every task runs as a user runs it (``python -m invoke ...`` in the repo), and every output is checked
for the stack's secrets as it arrives.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_stack import lines
from airflow_stack import settings as settings_mod
from tests.conftest import EXECUTOR_VAR, LINE_VAR
from tests.support import api_client
from tests.support.sandbox import PROJECT_DIR as REPO
from tests.support.sandbox import Sandbox, free_ports

__all__ = ["REMOTE_ADDRESS", "REPO", "Stack", "airflow_api", "free_ports"]  # and LINE, EXECUTOR (below)
# the loopback address a "worker on another machine" reaches the stack through
REMOTE_ADDRESS = "127.0.0.2"
TEST_DAGS = Path(__file__).parent / "dags"


def __getattr__(name: str) -> str:
    """LINE and EXECUTOR: read when a test module asks, after pytest parsed --line / --executor."""
    if name == "LINE":
        return os.environ.get(LINE_VAR, lines.DEFAULT)
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
    state = tmp_path_factory.mktemp("stack")
    dags = state / "dags"  # a copy: tests add DAG files without touching the repo
    shutil.copytree(TEST_DAGS, dags)
    executor = __getattr__("EXECUTOR")
    extra = {
        # a task whose process was killed (with its worker, or by test_faults) is failed, then retried,
        # after 20 s without heartbeat, not 300 s (the names of both lines)
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": "20",
    }
    if executor == "celery":
        # workers "on other machines" reach the API server through another loopback address
        extra["STACK_API_HOST"] = "0.0.0.0"
    stack = Stack.create(state, __getattr__("LINE"), executor, dags, f"ast_test_{os.getpid()}", extra)
    try:
        yield stack
    finally:
        survivors = stack.teardown()
        assert not survivors, f"processes survived invoke stop: {survivors}"


@pytest.fixture(scope="session")
def services(stack: Stack) -> dict[str, subprocess.CompletedProcess[str]]:
    """PostgreSQL (role + DB) and our Redis, set up from nothing; the first runs' outputs."""
    return {"postgres": stack.inv("setup.postgres"), "redis": stack.inv("setup.redis")}


@pytest.fixture(scope="session")
def airflow_up(stack: Stack, services: dict) -> dict[str, float]:
    """The whole stack through `invoke up --executor EXECUTOR`, timed."""
    executor = __getattr__("EXECUTOR")
    if executor == "celery":
        # the opt-in flags that let workers on other machines in (here: through 127.0.0.2)
        stack.inv("setup.redis", "--bind", f"127.0.0.1 {REMOTE_ADDRESS} -::1")
        stack.inv("setup.postgres", "--listen", f"localhost,{REMOTE_ADDRESS}", "--allow-from", f"{REMOTE_ADDRESS}/32")
    began = time.monotonic()
    stack.inv("up", "--executor", executor)
    return {"up_seconds": time.monotonic() - began}


def airflow_api(settings: settings_mod.Settings) -> api_client.AirflowAPI:
    """The stack's REST API, logged in as the admin with the password .env holds now."""
    return api_client.AirflowAPI(settings.api_url, settings.airflow_line, settings.admin_user,
                                 settings.admin_password)


@pytest.fixture
def api(stack: Stack, airflow_up: dict) -> api_client.AirflowAPI:
    """Logged in with the admin password .env holds now (a test changes it)."""
    return airflow_api(stack.settings())
