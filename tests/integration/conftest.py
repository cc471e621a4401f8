"""A stack of our own for the integration tests: temporary state dir and .env, free ports below the
ephemeral range, its own PostgreSQL role and database (dropped at the end), its own Redis.

Every task runs as a user runs it (``python -m invoke ...`` in the repo), and every output is checked
for the stack's secrets as it arrives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from airflow_stack import api_client
from airflow_stack import settings as settings_mod
from airflow_stack.sandbox import free_ports

REPO = Path(__file__).resolve().parents[2]
LINE = os.environ.get("STACK_TEST_AIRFLOW_LINE", "3.3")
EXECUTOR = os.environ.get("STACK_TEST_EXECUTOR", "local")
# the loopback address a "worker on another machine" reaches the stack through
REMOTE_ADDRESS = "127.0.0.2"
TEST_DAGS = Path(__file__).parent / "dags"


@dataclass
class Stack:
    state_dir: Path
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    def settings(self) -> settings_mod.Settings:
        return settings_mod.load(environ=self.env)

    def secrets(self) -> list[str]:
        values = settings_mod.read_env_file(Path(self.env["STACK_ENV_FILE"]))
        names = {spec.env for spec in settings_mod.specs().values() if spec.secret}
        return [v for k, v in values.items() if k in names and len(v) >= 8]

    def inv(self, *args: str, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run ``invoke ARGS`` as a user would; fail the test if a secret shows in its output."""
        proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=self.env | (env or {}),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        out = proc.stdout + proc.stderr
        self.outputs.append(out)
        for secret in self.secrets():
            assert secret not in out, f"a secret from .env appeared in the output of invoke {' '.join(args)}"
        if check:
            assert proc.returncode == 0, f"invoke {' '.join(args)} exited {proc.returncode}:\n{out[-3000:]}"
        return proc


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    dags = state / "dags"  # a copy: tests add DAG files without touching the repo
    shutil.copytree(TEST_DAGS, dags)
    api, health, worker_log, trigger_log, redis_port = free_ports(5)
    name = f"ast_test_{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACK_", "AIRFLOW", "_AIRFLOW"))}
    env |= {
        "CI": "true",
        "STACK_ENV_FILE": str(state / ".env"),
        "STACK_STATE_DIR": str(state),
        "STACK_AIRFLOW_LINE": LINE,
        "STACK_EXECUTOR": EXECUTOR,
        "STACK_DAGS_FOLDER": str(dags),
        "STACK_API_PORT": str(api),
        "STACK_SCHEDULER_HEALTH_PORT": str(health),
        "STACK_WORKER_LOG_PORT": str(worker_log),
        "STACK_TRIGGER_LOG_PORT": str(trigger_log),
        "STACK_REDIS_PORT": str(redis_port),
        "STACK_PG_DATABASE": name,
        "STACK_PG_USER": name,
        # a task whose process was killed (with its worker, or by test_faults) is failed, then retried,
        # after 20 s without heartbeat, not 300 s (3.x and 2.x names)
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": "20",
    }
    if EXECUTOR == "celery":
        # workers "on other machines" reach the API server through another loopback address
        env |= {"STACK_API_HOST": "0.0.0.0"}
    stack = Stack(state, env)
    try:
        yield stack
    finally:
        stack.inv("stop", "--timeout", "20", check=False)
        if (state / ".env").exists():
            stack.inv("db.drop", "--yes", check=False)
        leftovers = [p for p in psutil.process_iter(["cmdline"])
                     if str(state) in " ".join(p.info["cmdline"] or [])]
        # children that renamed themselves (setproctitle) are found by the test ports they hold
        ports = {api, health, worker_log, trigger_log, redis_port}
        holders = {c.pid for c in psutil.net_connections(kind="inet")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port in ports and c.pid}
        leftovers += [psutil.Process(pid) for pid in holders if pid not in {p.pid for p in leftovers}]
        for proc in leftovers:  # by PID, and only ours: they name our state dir or hold our ports
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        assert not leftovers, f"processes survived invoke stop: {[p.pid for p in leftovers]}"


@pytest.fixture(scope="session")
def services(stack: Stack) -> dict[str, subprocess.CompletedProcess[str]]:
    """PostgreSQL (role + DB) and our Redis, set up from nothing; the first runs' outputs."""
    return {"postgres": stack.inv("setup.postgres"), "redis": stack.inv("setup.redis")}


@pytest.fixture(scope="session")
def airflow_up(stack: Stack, services: dict) -> dict[str, float]:
    """The whole stack through `invoke up --executor EXECUTOR`, timed."""
    if EXECUTOR == "celery":
        # the opt-in flags that let workers on other machines in (here: through 127.0.0.2)
        stack.inv("setup.redis", "--bind", f"127.0.0.1 {REMOTE_ADDRESS} -::1")
        stack.inv("setup.postgres", "--listen", f"localhost,{REMOTE_ADDRESS}", "--allow-from", f"{REMOTE_ADDRESS}/32")
    began = time.monotonic()
    stack.inv("up", "--executor", EXECUTOR)
    return {"up_seconds": time.monotonic() - began}


def airflow_api(settings: settings_mod.Settings) -> api_client.AirflowAPI:
    """The stack's REST API, logged in as the admin with the password .env holds now."""
    return api_client.AirflowAPI(settings.api_url, settings.airflow_line, settings.admin_user,
                                 settings.admin_password)


@pytest.fixture
def api(stack: Stack, airflow_up: dict) -> api_client.AirflowAPI:
    """Logged in with the admin password .env holds now (a test changes it)."""
    return airflow_api(stack.settings())
