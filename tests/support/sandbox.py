"""An isolated stack: its own state dir and .env, free ports, its own PostgreSQL role and database, and a
machine-wide folder (the list of stacks) of the test run's.

The integration tests and the benchmark bring up a whole stack this way, next to a user's, and
tear it down after: a user's running stack (its ports, its role, its state dir) is never touched.
Every task runs as a user runs it: ``python -m invoke ...`` in the repo, with no standard input.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from airflow_stack import settings as settings_mod
from airflow_stack import statedir
from airflow_stack.netutil import port_bindable
from airflow_stack.settings import PROJECT_DIR

# the ports a sandbox takes, one setting each
PORT_SETTINGS = ("STACK_API_PORT", "STACK_SCHEDULER_HEALTH_PORT", "STACK_WORKER_LOG_PORT", "STACK_TRIGGER_LOG_PORT",
                 "STACK_REDIS_PORT", "STACK_FLOWER_PORT")


def free_ports(count: int, low: int = 20000, high: int = 32000) -> list[int]:
    """Ports nobody holds, below the kernel's ephemeral range (no TIME_WAIT collisions)."""
    rng = random.Random()
    found: list[int] = []
    while len(found) < count:
        port = rng.randrange(low, high)
        if port not in found and port_bindable(port, "0.0.0.0") and port_bindable(port, "127.0.0.1"):
            found.append(port)
    return found


def clean_environ() -> dict[str, str]:
    """This process's environment without any stack or Airflow setting (a user's must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("STACK_", "AIRFLOW", "_AIRFLOW"))}


@dataclass
class Sandbox:
    state_dir: Path
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)
    # a command line the tasks run under (the remote-worker test: its own hostname namespace)
    wrapper: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, state_dir: Path, line: str, executor: str, project_dir: Path, name: str,
               extra: dict[str, str] | None = None) -> Sandbox:
        """A sandbox in ``state_dir`` running the Airflow project in ``project_dir`` (its DAGs in
        ``project_dir/dags``), whose role and database are both called ``name``."""
        env = clean_environ() | {
            "CI": "true",  # never prompt
            "STACK_ENV_FILE": str(state_dir / ".env"),
            "STACK_STATE_DIR": str(state_dir),
            # the list of stacks and defaults.env: the test run's own, never the user's
            "STACK_USER_STATE_DIR": str(state_dir.parent / "user-state"),
            "STACK_AIRFLOW_LINE": line,
            "STACK_EXECUTOR": executor,
            "STACK_PROJECT_DIR": str(project_dir),
            "STACK_PG_DATABASE": name,
            "STACK_PG_USER": name,
        }
        env |= dict(zip(PORT_SETTINGS, map(str, free_ports(len(PORT_SETTINGS))), strict=True))
        return cls(state_dir, env | (extra or {}))

    def settings(self) -> settings_mod.Settings:
        return settings_mod.load(environ=self.env)

    def ports(self) -> set[int]:
        return {int(self.env[name]) for name in PORT_SETTINGS if name in self.env}

    def secrets(self) -> list[str]:
        """The secret values in the sandbox's .env (output is checked for them)."""
        values = statedir.read_env_file(Path(self.env["STACK_ENV_FILE"]))
        names = {spec.env for spec in settings_mod.specs().values() if spec.secret}
        # and the user's own secrets there (what airflow_settings.yaml names as ${NAME})
        return [v for k, v in values.items()
                if (k in names or k.endswith(("PASSWORD", "SECRET", "TOKEN", "KEY"))) and len(v) >= 8]

    def inv(self, *args: str, check: bool = False, timeout: float = 900, env: dict[str, str | None] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run ``invoke ARGS`` in the repo as a user would, with no standard input. ``env`` goes on top
        of the sandbox's (a None value takes that variable away). The output is kept in ``outputs`` and
        must hold no secret of the sandbox's .env; ``check``: exit 0 too."""
        environ = {k: v for k, v in (self.env | (env or {})).items() if v is not None}
        proc = subprocess.run([*self.wrapper, sys.executable, "-m", "invoke", *args], cwd=PROJECT_DIR,
                              env=environ, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        out = proc.stdout + proc.stderr
        self.outputs.append(out)
        for secret in self.secrets():
            assert secret not in out, f"a secret from .env appeared in the output of invoke {' '.join(args)}"
        if check:
            assert proc.returncode == 0, f"invoke {' '.join(args)} exited {proc.returncode}:\n{out[-3000:]}"
        return proc

    def status(self) -> dict[str, dict]:
        """``invoke status --json`` as name -> row (it exits 1 while a component is down: not checked)."""
        return {row["name"]: row for row in json.loads(self.inv("status", "--json", check=False).stdout)}

    def secrets_in_logs(self) -> list[str]:
        """Every log file under the state dir (components', Airflow's task and DAG-processor logs, setup
        logs) that holds a secret of .env: "file: SETTING", never the value."""
        values = statedir.read_env_file(Path(self.env["STACK_ENV_FILE"]))
        secrets = {name: value for name, value in values.items() if value in self.secrets()}
        found = []
        for folder in (self.state_dir / "logs", self.state_dir / "airflow" / "logs"):
            for path in folder.rglob("*"):
                if not path.is_file():
                    continue
                text = path.read_bytes().decode(errors="replace")
                found += [f"{path}: {name}" for name, value in secrets.items() if value in text]
        return found

    def leftovers(self) -> list[psutil.Process]:
        """Processes still running that are ours: they name the state dir, or hold one of its ports
        (children that renamed themselves with setproctitle are found that way)."""
        found = {}
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.state_dir) in " ".join(proc.info["cmdline"] or []):
                found[proc.pid] = proc
        ports = self.ports()
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports and conn.pid and conn.pid not in found:
                with contextlib.suppress(psutil.NoSuchProcess):
                    found[conn.pid] = psutil.Process(conn.pid)
        found.pop(os.getpid(), None)
        return list(found.values())

    def teardown(self) -> list[int]:
        """Stop the stack, drop its role and database, kill (by PID) whatever survived; return those PIDs."""
        self.inv("stop", "--timeout", "20", check=False)
        if Path(self.env["STACK_ENV_FILE"]).exists():
            self.inv("db.drop", "--yes", check=False)
        survivors = self.leftovers()
        for proc in survivors:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        return [proc.pid for proc in survivors]
