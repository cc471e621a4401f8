"""Bad input: one line that says what to do, a non-zero exit, no traceback, nothing destroyed."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from airflow_stack import supervisor

from .conftest import free_ports

pytestmark = pytest.mark.integration


def env_digest(stack) -> str:
    return hashlib.sha256(Path(stack.env["STACK_ENV_FILE"]).read_bytes()).hexdigest()


def assert_one_line_error(proc, *needles: str) -> str:
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert len(proc.stderr.strip().splitlines()) == 1, out
    for needle in needles:
        assert needle in proc.stderr, out
    return proc.stderr.strip()


@pytest.fixture
def listener():
    """A program that is not ours holding a port."""
    port = free_ports(1)[0]
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    yield port
    sock.close()


def test_redis_port_taken_by_another_program(stack, services, listener):
    before = env_digest(stack)
    ours = supervisor.running(stack.settings(), "redis").pid
    proc = stack.inv("setup.redis", "--port", str(listener), check=False)
    assert_one_line_error(proc, str(listener), "STACK_REDIS_PORT")
    assert env_digest(stack) == before
    assert supervisor.running(stack.settings(), "redis").pid == ours  # our Redis still runs


def test_postgres_port_taken_by_another_program(stack, services, listener):
    proc = stack.inv("setup.postgres", "--port", str(listener), check=False)
    assert_one_line_error(proc, str(listener))


def test_postgres_unreachable_at_given_host(stack, services):
    port = free_ports(1)[0]
    before = env_digest(stack)
    proc = stack.inv("setup.postgres", "--host", "127.0.0.3", "--port", str(port), check=False)
    assert_one_line_error(proc, "127.0.0.3", "cannot connect")
    assert env_digest(stack) == before


def test_wrong_superuser_access(stack, services):
    proc = stack.inv("setup.postgres", check=False, env={
        "STACK_PG_ADMIN_DSN": "postgresql://postgres:not-the-password@127.0.0.1:5432/postgres"})
    err = assert_one_line_error(proc, "STACK_PG_ADMIN_DSN")
    assert "not-the-password" not in err


def test_malformed_env_line(stack, services, tmp_path):
    broken = tmp_path / ".env"
    broken.write_text(Path(stack.env["STACK_ENV_FILE"]).read_text() + "this line is not an assignment\n")
    before = broken.read_bytes()
    proc = stack.inv("setup.postgres", check=False, env={"STACK_ENV_FILE": str(broken)})
    assert_one_line_error(proc, "is not KEY=VALUE", "line")
    assert broken.read_bytes() == before


def test_non_numeric_port_in_env_file(stack, services, tmp_path):
    broken = tmp_path / ".env"
    # (the test stack sets STACK_REDIS_PORT in the environment, which rightly wins over .env)
    broken.write_text(Path(stack.env["STACK_ENV_FILE"]).read_text() + "STACK_PG_PORT=five-four-three-two\n")
    proc = stack.inv("setup.postgres", check=False, env={"STACK_ENV_FILE": str(broken)})
    assert_one_line_error(proc, "STACK_PG_PORT", "not a number")


def test_unsupported_airflow_line(stack, services):
    proc = stack.inv("setup.airflow", "--line", "2.10", check=False)
    assert_one_line_error(proc, "2.10", "3.3, 2.11")


def test_unknown_task_flag(stack):
    proc = stack.inv("setup.redis", "--prot", "1", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
