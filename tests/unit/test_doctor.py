from __future__ import annotations

from airflow_stack import airflow_config, doctor
from airflow_stack.detach import fingerprint

from .conftest import SECRETS


def test_fingerprint_keeps_settings_and_hides_secrets(settings):
    env = airflow_config.environment(settings, "celery")
    printed = fingerprint(env | {"PATH": "/usr/bin", "HOME": "/root"})
    assert printed["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert printed["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://sha256:")
    assert printed["STACK_RATELIMIT_STORAGE_URI"].startswith("redis://sha256:")
    assert "PATH" not in printed and "HOME" not in printed
    assert not any(secret in value for value in printed.values() for secret in SECRETS)
    # the same environment, the same fingerprint: how doctor compares a process with .env
    assert fingerprint(env) == fingerprint(dict(env))


def test_render_lists_fixes_for_failures_only():
    text = doctor.render([doctor.Check("redis", True, "PONG"),
                          doctor.Check("secret files", False, "readable by others: .env", "chmod 600 .env")])
    lines = text.splitlines()
    assert lines[0].startswith("PASS  redis") and lines[1].startswith("FAIL  secret files")
    assert lines[2].strip() == "fix: chmod 600 .env"
    assert lines[-1] == "doctor: 1 of 2 checks fail (secret files)"


def test_files_check(settings, tmp_path):
    settings.env_file.chmod(0o644)
    check = doctor.check_files(settings)
    assert not check.ok and check.fix == f"chmod 600 {settings.env_file}"
    settings.env_file.chmod(0o600)
    assert doctor.check_files(settings).ok


def test_executor_check_rejects_sequential(settings):
    assert not doctor.check_executor(settings, {"scheduler": {"AIRFLOW__CORE__EXECUTOR": "SequentialExecutor"}}).ok
    assert doctor.check_executor(settings, {"scheduler": {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}}).ok


def test_database_check_rejects_sqlite(settings):
    check = doctor.check_database(settings, {"scheduler": {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite://sha256:1"}})
    assert not check.ok and "SQLite" in check.detail
