"""Unit tests: no services. Settings come from a temporary .env and a clean environment. With
``--platform darwin`` every test runs with macOS's paths forced (tests/support/darwin.py) and fails when the
code under test read /proc."""

from __future__ import annotations

import pytest

from airflow_stack import settings as settings_mod


@pytest.fixture(autouse=True)
def forced_platform(request, monkeypatch, tmp_path_factory):
    """The platform the code under test sees (tests.support.darwin.Forced): native, or darwin forced here."""
    from tests.support import darwin

    if request.config.getoption("--platform") != "darwin":
        yield darwin.Forced("native")
        return
    forced = darwin.force(monkeypatch, tmp_path_factory.mktemp("proc-reads") / "reads.txt")
    yield forced
    assert forced.reads() == [], "the code under test read /proc, which macOS does not have"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A clean environment whose .env, state dir, machine-wide folder and project (an empty one) live in
    tmp_path: nothing read from this checkout's own .env, which holds a stack's settings once scripts/up ran."""
    (tmp_path / "project").mkdir()
    return {"STACK_ENV_FILE": str(tmp_path / ".env"), "STACK_STATE_DIR": str(tmp_path / "state"),
            "STACK_USER_STATE_DIR": str(tmp_path / "user-state"), "STACK_PROJECT_DIR": str(tmp_path / "project")}


@pytest.fixture
def settings(env, tmp_path) -> settings_mod.Settings:
    (tmp_path / ".env").write_text(
        "STACK_PG_PASSWORD=pg-secret-value-1\nSTACK_REDIS_PASSWORD=redis-secret-value-2\n"
        "_AIRFLOW_WWW_USER_PASSWORD=admin-secret-value-3\nAIRFLOW__CORE__FERNET_KEY=fernet-secret-value-4\n"
        "AIRFLOW__API_AUTH__JWT_SECRET=jwt-secret-value-5\nAIRFLOW__API__SECRET_KEY=api-secret-value-6\n"
        "STACK_REDIS_AIRFLOW_PASSWORD=redis-user-secret-value-7\n")
    return settings_mod.load(environ=env)


SECRETS = ["pg-secret-value-1", "redis-secret-value-2", "admin-secret-value-3", "fernet-secret-value-4",
           "jwt-secret-value-5", "api-secret-value-6", "redis-user-secret-value-7"]
