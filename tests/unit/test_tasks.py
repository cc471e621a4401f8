"""Task-level behaviour that needs no service: argument checks, worker-machine checks, no secrets."""

from __future__ import annotations

import pytest
from invoke import MockContext

from airflow_stack import stack
from airflow_stack.errors import StackError
from airflow_stack.tasks import run

from .conftest import SECRETS


@pytest.mark.parametrize("flags, message", [
    ({"name": "w 2"}, "worker name"),
    ({"queues": "a,,b"}, "comma-separated"),
    ({"queues": "a;rm -rf /"}, "comma-separated"),
])
def test_run_worker_rejects_bad_names_and_queues(flags, message):
    with pytest.raises(StackError, match=message):
        run.worker(MockContext(), **flags)


def test_a_worker_machine_without_secrets_names_what_to_copy(settings):
    bare = settings.replace(fernet_key=None, jwt_secret=None)
    with pytest.raises(StackError) as err:
        stack.check_worker_machine(bare)
    message = str(err.value)
    assert "AIRFLOW__CORE__FERNET_KEY, AIRFLOW__API_AUTH__JWT_SECRET" in message and "copy" in message
    assert not any(secret in message for secret in SECRETS)


def test_a_worker_machine_that_cannot_reach_redis_is_told_so(settings, monkeypatch):
    monkeypatch.setattr(stack.postgres, "ping", lambda s: (True, ""))
    monkeypatch.setattr(stack.redis_server, "ping", lambda s: (False, "Redis at 10.0.0.5:6380 is not answering"))
    with pytest.raises(StackError, match=r"invoke setup\.redis \(with --bind"):
        stack.check_worker_machine(settings)
