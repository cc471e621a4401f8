"""`invoke doctor` on a healthy stack, and after each injected fault: the failing check and its fix."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from airflow_stack.apache_airflow import profiles
from airflow_stack.netutil import wait_until
from airflow_stack.runtime import supervisor

from .conftest import EXECUTOR

pytestmark = pytest.mark.integration


def doctor(stack, **kw) -> tuple[int, dict[str, dict]]:
    proc = stack.inv("doctor", "--json", check=False, **kw)
    assert "Traceback" not in proc.stdout + proc.stderr
    checks = json.loads(proc.stdout[: proc.stdout.rindex("]") + 1])
    return proc.returncode, {c["name"]: c for c in checks}


def assert_doctor_passes(stack) -> None:
    code, checks = doctor(stack)
    failed = {name: c for name, c in checks.items() if not c["ok"]}
    assert code == 0 and not failed, failed


def test_doctor_passes_on_a_healthy_stack(stack, airflow_up):
    began = time.monotonic()
    code, checks = doctor(stack)
    print(f"\n[figure] invoke doctor ({EXECUTOR}): {time.monotonic() - began:.1f} s, {len(checks)} checks")
    failed = {name: c for name, c in checks.items() if not c["ok"]}
    assert code == 0 and not failed, failed
    expected = {"metadata database", "executor", "login rate limits", "redis password", "shared secrets",
                "database role", "secret files", "scheduler", "triggerer"}
    assert expected <= set(checks)
    assert checks["executor"]["detail"] == {"local": "LocalExecutor", "celery": "CeleryExecutor"}[EXECUTOR]
    encryption = checks["network encryption"]
    settings = stack.settings()
    if EXECUTOR == "local":  # nothing opted in: nothing to encrypt
        assert (encryption["level"], encryption["detail"]) == ("pass", "nothing of ours listens beyond loopback")
    elif settings.tls:  # Redis, PostgreSQL and the API server over TLS; Airflow's log servers cannot be
        assert encryption["level"] == "warn", encryption
        assert not any(what in encryption["detail"] for what in ("Redis", "PostgreSQL", "API server")), encryption
        assert f"Airflow's log servers on ports {settings.worker_log_port}, {settings.trigger_log_port} (HTTP: " \
               "Airflow cannot serve them over TLS)" in encryption["detail"], encryption
        assert "remote logging" in encryption["fix"], encryption


def test_doctor_catches_a_world_readable_env_file(stack, airflow_up):
    env_file = Path(stack.env["STACK_ENV_FILE"])
    env_file.chmod(0o644)
    try:
        code, checks = doctor(stack)
        assert code != 0 and not checks["secret files"]["ok"]
        assert checks["secret files"]["fix"] == f"chmod 600 {env_file}"
    finally:
        env_file.chmod(0o600)


def test_a_killed_component_comes_back_by_itself(stack, airflow_up):
    """kill -9 of the triggerer: its supervisor starts it again, no command run; status says so."""
    settings = stack.settings()
    victim = supervisor.running(settings, "triggerer")
    os.kill(victim.pid, signal.SIGKILL)
    began = time.monotonic()
    assert wait_until(lambda: (p := supervisor.running(settings, "triggerer")) is not None and p.pid != victim.pid,
                      30), "the triggerer was not started again within 30 s"
    assert wait_until(lambda: stack.status()
                      ["triggerer"]["healthy"], 60)
    back = time.monotonic() - began
    print(f"\n[figure] kill -9 triggerer: healthy again by itself after {back:.1f} s")
    status = stack.status()
    assert (status["triggerer"]["restarts"], status["triggerer"]["last_exit"]) == (1, -9), status["triggerer"]
    assert "restarted 1x, last exit -9" in status["triggerer"]["detail"]
    assert_doctor_passes(stack)


def test_doctor_catches_a_stopped_component_and_up_heals_it(stack, airflow_up):
    stack.inv("stop", "-c", "triggerer")  # stopped on purpose: nothing starts it again
    time.sleep(2)
    proc = stack.inv("status", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "status: triggerer is down", proc.stderr
    status = stack.status()
    assert not status["triggerer"]["up"] and status["triggerer"]["detail"] == "not running"
    code, checks = doctor(stack)
    assert code != 0 and not checks["triggerer"]["ok"] and checks["triggerer"]["fix"] == "invoke up"
    began = time.monotonic()
    out = stack.inv("up").stdout
    print(f"\n[figure] stopped triggerer: healed by invoke up in {time.monotonic() - began:.1f} s")
    assert "started triggerer" in out
    assert stack.inv("status", check=False).returncode == 0  # all up and healthy again
    assert_doctor_passes(stack)


def test_doctor_catches_redis_down(stack, airflow_up):
    stack.inv("stop", "-c", "redis")
    try:
        code, checks = doctor(stack)
        assert code != 0 and not checks["redis"]["ok"] and checks["redis"]["fix"] == "invoke setup.redis"
    finally:
        # it waits for the Celery workers to reconnect: a green doctor right after it
        out = stack.inv("setup.redis").stdout
    if EXECUTOR == "celery":
        assert "Celery workers reconnected" in out
    assert_doctor_passes(stack)


def test_doctor_catches_login_limits_kept_in_memory(stack, airflow_up):
    web = profiles.of(stack.settings()).web.name
    stack.inv("stop", "-c", web)
    stack.inv(f"run.{EXECUTOR}", env={"STACK_RATELIMIT_STORAGE_URI": "memory://"})
    try:
        code, checks = doctor(stack)
        assert code != 0 and not checks["login rate limits"]["ok"]
        assert "memory" in checks["login rate limits"]["detail"]
        assert checks["login rate limits"]["fix"].endswith(f"invoke stop -c {web} && invoke up")
    finally:
        stack.inv("stop", "-c", web)
        stack.inv(f"run.{EXECUTOR}")
    assert_doctor_passes(stack)
