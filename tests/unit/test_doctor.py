from __future__ import annotations

import os
import socket
from types import SimpleNamespace

from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.ops import doctor
from airflow_stack.runtime import supervisor

from .conftest import SECRETS


def test_fingerprint_keeps_settings_and_hides_secrets(settings):
    env = airflow_config.environment(settings, "celery")
    printed = supervisor.fingerprint(settings, env | {"PATH": "/usr/bin", "HOME": "/root"}, create_key=True)
    assert printed["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert printed["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://hmac:")
    assert printed["STACK_RATELIMIT_STORAGE_URI"].startswith("redis+unix://hmac:")
    assert printed["AIRFLOW__CORE__FERNET_KEY"].startswith("hmac:")
    assert "PATH" not in printed and "HOME" not in printed
    assert not any(secret in value for value in printed.values() for secret in SECRETS)
    # the same environment, the same fingerprint: how doctor compares a process with .env
    assert supervisor.fingerprint(settings, env) == supervisor.fingerprint(settings, dict(env))


def test_fingerprints_are_keyed_per_state_dir(settings, tmp_path):
    """A digest of a secret in the records cannot be checked against guesses without the state
    dir's key (0600), unlike a plain hash."""
    import hashlib

    env = {"AIRFLOW__CORE__FERNET_KEY": settings.fernet_key}
    mine = supervisor.fingerprint(settings, env, create_key=True)["AIRFLOW__CORE__FERNET_KEY"]
    plain = hashlib.sha256(settings.fernet_key.encode()).hexdigest()[:16]
    assert plain not in mine
    key = settings.paths.run / "fingerprint.key"
    assert key.stat().st_mode & 0o777 == 0o600
    other = settings.replace(state_dir=tmp_path / "other")
    assert supervisor.fingerprint(other, env, create_key=True)["AIRFLOW__CORE__FERNET_KEY"] != mine


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


def test_render_shows_warnings_with_their_fix_and_they_fail_nothing():
    checks = [doctor.Check("redis", True, "PONG"),
              doctor.warning("memory", "8 task slots need 800 MiB; 500 MiB available", "set X to 4")]
    lines = doctor.render(checks).splitlines()
    assert lines[1].startswith("WARN  memory") and lines[2].strip() == "fix: set X to 4"
    assert lines[-1] == "doctor: all 2 checks pass; 1 warning (memory)"
    assert all(check.ok for check in checks)  # the exit code stays 0
    assert [c["level"] for c in doctor.as_dicts(checks)] == ["pass", "warn"]
    failed = doctor.render([doctor.Check("disk", False, "full", "free space"), *checks]).splitlines()
    assert failed[-1] == "doctor: 1 of 3 checks fail (disk); 1 warning (memory)"
    assert doctor.Check("disk", False, "full", level="warn").level == "fail"  # a failure stays one


MIB = 1 << 20


def test_memory_passes_when_every_slot_fits():
    check = doctor.memory_verdict(8, "parallelism 8", "AIRFLOW__CORE__PARALLELISM", 71, 8 * 71 * MIB)
    assert check.ok and check.level == "pass" and "568 MiB" in check.detail and not check.fix


def test_memory_warns_when_short_and_says_what_to_lower():
    check = doctor.memory_verdict(32, "parallelism 32", "AIRFLOW__CORE__PARALLELISM", 71, 1000 * MIB)
    assert check.ok and check.level == "warn"
    assert "2272 MiB" in check.detail and "1000 MiB available" in check.detail
    assert check.fix == "set AIRFLOW__CORE__PARALLELISM to 14 (or less) in .env, then invoke stop && invoke up"
    # not even one task fits: still a setting a user can act on, never 0
    assert "to 1 (or less)" in doctor.memory_verdict(8, "x", "S", 96, 10 * MIB).fix


def _proc(argv=(), env=None):
    return supervisor.Running(1, 0.0, tuple(argv), env or {})


def test_slots_come_from_the_running_processes(settings):
    running = {"scheduler": _proc(env={"AIRFLOW__CORE__PARALLELISM": "32"})}
    assert doctor.task_slots(settings, "local", running) == (32, "parallelism 32", "AIRFLOW__CORE__PARALLELISM")
    # nothing runs: the settings (the default, 8 on this 2-core machine)
    assert doctor.task_slots(settings, "local", {})[0] == settings.parallelism
    worker = ["airflow", "celery", "worker", "--queues", "default", "--concurrency"]
    running |= {"worker": _proc([*worker, "16"]), "worker-w2": _proc([*worker, "4"]), "api-server": _proc()}
    slots, source, setting = doctor.task_slots(settings, "celery", running)
    assert (slots, setting) == (20, "AIRFLOW__CELERY__WORKER_CONCURRENCY") and "2 local Celery workers" in source
    # the scheduler never runs more than parallelism at once: then that is what to lower
    running["scheduler"] = _proc(env={"AIRFLOW__CORE__PARALLELISM": "8"})
    assert doctor.task_slots(settings, "celery", running)[::2] == (8, "AIRFLOW__CORE__PARALLELISM")


def test_encryption_warns_of_each_plain_text_listener_beyond_loopback(settings, monkeypatch):
    """Our Redis listening on every interface without STACK_TLS (a real socket of this process stands for
    it), a PostgreSQL elsewhere reached unverified, the API server beyond loopback: each named."""
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))  # bound, never connected to
    listener.listen()
    try:
        monkeypatch.setattr(supervisor, "running", lambda s, name: SimpleNamespace(pid=os.getpid()))
        check = doctor.check_encryption(settings.replace(pg_host="db.example.org", api_host="0.0.0.0"))
    finally:
        listener.close()
    assert check.ok and check.level == "warn"  # a warning: doctor still exits 0
    assert "Redis on 0.0.0.0" in check.detail and "PostgreSQL at db.example.org with sslmode=prefer" in check.detail
    assert "the API server on 0.0.0.0" in check.detail and check.fix.startswith("set STACK_TLS=true")
    # only loopback, nothing opted in: a pass
    monkeypatch.setattr(supervisor, "running", lambda s, name: None)

    def refused(**kw):
        raise doctor.psycopg.OperationalError("no server here")

    monkeypatch.setattr(doctor.psycopg, "connect", refused)
    quiet = doctor.check_encryption(settings)
    assert (quiet.level, quiet.detail) == ("pass", "nothing of ours listens beyond loopback")


def test_the_login_limit_check_proves_the_api_logins_are_counted_too(settings, monkeypatch):
    """A probe login on the form, then a wrong password on the API, from the probe address: the second must
    move the same counter (or be refused once its budget is spent)."""
    from airflow_stack.ops import doctor_security

    key = f"LIMITS:LIMITER/{doctor_security.PROBE_ADDRESS}/AuthDBView.login/5/40/second".encode()
    counts: dict[bytes, int] = {}
    redis_db = SimpleNamespace(keys=lambda pattern: list(counts), mget=lambda keys: [counts[k] for k in keys])
    monkeypatch.setattr(doctor_security.redis_server, "client", lambda s, db=0: redis_db)
    monkeypatch.setattr(doctor_security, "_probe_login", lambda s, path: counts.update({key: counts.get(key, 0) + 1}))
    uri = {airflow_config.LIMITER_VAR: "redis://hmac:x@127.0.0.1:6380/1"}
    monkeypatch.setattr(doctor_security.supervisor, "fingerprint", lambda s, env: uri)

    def check(line: str, answer: int, counted: bool):
        def api_probe(s, rest):
            if counted:
                counts[key] += 1
            return answer

        counts.clear()
        monkeypatch.setattr(doctor_security, "_probe_api_login", api_probe)
        return doctor_security.check_limiter(settings.replace(airflow_line=line), {"api-server": uri, "webserver": uri})

    passed = check("3.3", 401, counted=True)
    assert passed.ok and passed.detail.endswith("a wrong password on POST /auth/token too"), passed
    assert check("3.3", 429, counted=False).ok  # the probe address's budget was spent already: refused
    failed = check("3.3", 401, counted=False)
    assert not failed.ok and "a wrong password on POST /auth/token was not counted" in failed.detail
    assert failed.fix == "invoke setup.airflow && invoke stop -c api-server && invoke up"
    assert "the API's basic auth (/api/v1) was not counted" in check("2.11", 403, counted=False).detail


def test_doctor_is_red_when_the_role_gets_in_on_loopback_with_no_password(settings, monkeypatch):
    """A trust rule (Homebrew's initdb writes them) lets anyone on this machine in as Airflow's role."""
    import contextlib

    import psycopg

    from airflow_stack.ops import doctor_security
    from airflow_stack.services import host

    tried, trusting = [], {"127.0.0.1"}

    def connect(**kw):
        tried.append(kw)
        if kw["host"] in trusting:
            return contextlib.nullcontext()
        raise psycopg.OperationalError("connection failed: fe_sendauth: no password supplied")

    monkeypatch.setattr(doctor_security.psycopg, "connect", connect)
    monkeypatch.setattr(doctor_security.host, "detect", lambda: host.Homebrew())
    check = doctor_security.check_loopback_password(settings)
    assert not check.ok and check.detail.startswith("PostgreSQL lets airflow in on 127.0.0.1 with no password")
    assert check.fix.startswith("invoke setup.postgres")
    # the probe offers no password at all: not the role's, not one from the environment or ~/.pgpass
    assert [kw["host"] for kw in tried] == ["127.0.0.1", "::1"]
    assert all(kw["password"] == "" and kw["passfile"] == doctor_security.NO_PASSFILE for kw in tried)
    assert not any(secret in str(tried) + check.detail for secret in SECRETS)
    monkeypatch.setattr(doctor_security.host, "detect", lambda: host.AptPgCtlcluster(""))
    assert "pg_hba.conf" in doctor_security.check_loopback_password(settings).fix  # a server we do not amend
    trusting.clear()
    assert doctor_security.check_loopback_password(settings).ok
    managed = settings.replace(pg_host="db.example.com")
    assert doctor_security.check_loopback_password(managed).detail.startswith("not probed")
