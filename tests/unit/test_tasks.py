"""Task-level behaviour that needs no service: argument checks, worker-machine checks, no secrets."""

from __future__ import annotations

import pytest
from invoke import MockContext

from airflow_stack import statedir
from airflow_stack.errors import StackError
from airflow_stack.runtime import preflight
from airflow_stack.services import limiter, redis_server
from airflow_stack.tasks import _common, run

from .conftest import SECRETS


@pytest.mark.parametrize("flags, message", [
    ({"name": "w 2"}, "worker name"),
    ({"queues": "a,,b"}, "comma-separated"),
    ({"queues": "a;rm -rf /"}, "comma-separated"),
    ({"concurrency": "many"}, r"--concurrency 'many' is not a number; give e\.g\. --concurrency 8"),
    ({"concurrency": "0"}, "must be above 0"),
    ({"timeout": "soon"}, "--timeout 'soon' is not a number"),
])
def test_run_worker_rejects_bad_names_and_queues(flags, message):
    with pytest.raises(StackError, match=message):
        run.worker(MockContext(), **flags)


def test_a_worker_machine_without_secrets_names_what_to_copy(settings):
    bare = settings.replace(fernet_key=None, jwt_secret=None)
    with pytest.raises(StackError) as err:
        preflight.check_worker_machine(bare)
    message = str(err.value)
    assert "AIRFLOW__CORE__FERNET_KEY, AIRFLOW__API_AUTH__JWT_SECRET" in message and "copy" in message
    assert not any(secret in message for secret in SECRETS)


def test_a_worker_machine_that_cannot_reach_redis_is_told_so(settings, monkeypatch):
    monkeypatch.setattr(preflight.postgres, "ping", lambda s: (True, ""))
    monkeypatch.setattr(preflight.redis_server, "ping",
                        lambda s, as_airflow=False: (False, "Redis at 10.0.0.5:6380 is not answering"))
    with pytest.raises(StackError, match=r"invoke setup\.redis \(with --bind"):
        preflight.check_worker_machine(settings)


def test_numeric_flags_are_text_to_invoke_and_numbers_to_us():
    # a flag with a number default is cast by invoke's parser: bad text would end in a traceback there
    from airflow_stack.tasks import ops

    for task_, flags in ((ops.up, ["timeout"]), (ops.stop, ["timeout"]), (ops.logs, ["lines"]),
                         (ops.restart, ["timeout", "stop_timeout"]),
                         (run.local, ["timeout"]), (run.celery, ["timeout"]),
                         (run.worker, ["timeout", "concurrency"])):
        args = {arg.name: arg for arg in task_.get_arguments()}
        assert all(args[flag].kind is str for flag in flags), task_.name
    assert _common.number("2.5", "--timeout", 180) == 2.5 and _common.number(None, "--lines", 50, int) == 50


@pytest.mark.parametrize("bind, message", [
    ("", "give space-separated IP addresses"),
    ("127.0.0.1 10.0.0.300", "'10.0.0.300' is not an IP address"),
    ("127.0.0.1;reboot", "is not an IP address"),
    # a well-formed address of another machine: Redis would fail to listen there and stay down
    ("127.0.0.1 192.0.2.7", "192.0.2.7 is not an address of this machine"),
])
def test_redis_bind_addresses_are_checked_before_anything_is_written(bind, message):
    with pytest.raises(StackError, match=message):
        redis_server.check_bind(bind)


def test_redis_bind_accepts_this_machines_addresses_and_optional_ones():
    for bind in ("127.0.0.1", "127.0.0.1 127.0.0.2 -::1", "0.0.0.0 ::", "* -::*", "127.0.0.1 -192.0.2.7"):
        redis_server.check_bind(bind)


def test_the_admin_password_never_reaches_a_command_line(settings, monkeypatch):
    """Every local user can read a process's argv (ps): the password travels in the environment and
    is appended to the CLI's own sys.argv inside the process."""
    from invoke import Result

    from airflow_stack.apache_airflow import schema

    for exists, reset in ((False, True), (True, True), (True, False)):
        monkeypatch.setattr(schema, "_admin_hash", lambda s, exists=exists: "pbkdf2:sha256:x$y" if exists else None)
        # a line that resets the password, and one that re-creates the user instead
        line = settings.replace(airflow_line="3.3" if reset else "2.11")
        ctx = MockContext(run=Result(""), repeat=True)
        schema.ensure_admin(ctx, line, {"AIRFLOW_HOME": "/x"})
        commands = [call.args[0] for call in ctx.run.call_args_list]
        envs = [call.kwargs["env"] for call in ctx.run.call_args_list]
        assert commands and not [cmd for cmd in commands if "admin-secret-value-3" in cmd]
        with_password = [cmd for cmd in commands if "users create" in cmd or "reset-password" in cmd]
        assert with_password and all(cmd.split(" >> ")[0].endswith(" _AIRFLOW_WWW_USER_PASSWORD")
                                     for cmd in with_password), with_password
        assert all(env["_AIRFLOW_WWW_USER_PASSWORD"] == "admin-secret-value-3" for env in envs)
        (line.paths.airflow_home / ".airflow-stack-admin.json").unlink()


def test_an_older_release_is_refused_on_a_newer_schema(settings, monkeypatch):
    from airflow_stack.apache_airflow import schema

    monkeypatch.setattr(schema, "schema_migrated_by", lambda s: ("3.3.2", "d2f4e1b3c5a7"))
    with pytest.raises(StackError, match=r"migrated by Airflow 3\.3\.2 \(schema revision d2f4e1b3c5a7\); "
                                         r"Airflow 2\.11\.2 cannot run on it, so nothing was installed"):
        schema.refuse_older_release(settings, "2.11.2")
    with pytest.raises(StackError, match=r"Airflow 3\.3\.1 cannot run"):
        schema.refuse_older_release(settings, "3.3.1")  # an older patch of the same line too
    for same_or_newer in ("3.3.2", "3.3.10", "3.4.0"):
        schema.refuse_older_release(settings, same_or_newer)
    monkeypatch.setattr(schema, "schema_migrated_by", lambda s: (None, None))  # a new, empty database
    schema.refuse_older_release(settings, "2.11.2")


@pytest.mark.parametrize("uri, message", [
    ("memcached://127.0.0.1:{closed}", "(memcached://127.0.0.1:{closed}, STACK_RATELIMIT_STORAGE_URI) does not answer"),
    ("mongodb://user:pw@127.0.0.1:{closed}/limits", "(mongodb://127.0.0.1:{closed}, "),
    ("memcached://127.0.0.1:{closed},127.0.0.1:{open}", "(memcached://127.0.0.1:{closed}, "),
    ("redis://:pw@127.0.0.1:x/1", "names a port that is not a number"),
])
def test_an_unreachable_limiter_storage_is_refused_before_a_start(settings, uri, message):
    """Flask-Limiter falls back to memory when its storage is away: the start says so instead."""
    import socket

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    ports = {"open": listening.getsockname()[1], "closed": closed.getsockname()[1]}
    closed.close()
    try:
        with pytest.raises(StackError) as err:
            limiter.check_reachable(settings.replace(ratelimit_storage_uri=uri.format(**ports)))
        assert message.format(**ports) in str(err.value) and "pw" not in str(err.value)
        # one that answers, and memory:// (doctor says what that costs), pass
        limiter.check_reachable(settings.replace(ratelimit_storage_uri=f"memcached://127.0.0.1:{ports['open']}"))
        limiter.check_reachable(settings.replace(ratelimit_storage_uri="memory://"))
    finally:
        listening.close()


def test_an_upgrade_lists_the_packages_whose_major_or_minor_version_changes():
    from airflow_stack.ops import upgrade

    before = {"apache-airflow": "3.3.1", "sqlalchemy": "2.0.40", "flask": "2.2.5", "gone": "1.0"}
    after = {"apache-airflow": "3.3.2", "sqlalchemy": "2.1.0", "flask": "2.2.6", "new": "0.1"}
    assert upgrade.changed_packages(before, after) == [
        "gone 1.0 -> (none)", "new (none) -> 0.1", "sqlalchemy 2.0.40 -> 2.1.0"]


def test_worker_env_holds_what_a_worker_needs_and_none_of_the_four_admin_secrets(settings, tmp_path):
    from airflow_stack.ops import worker_env

    settings = settings.replace(pg_admin_dsn="postgresql://postgres:superuser-secret@db/postgres",
                                flower_password="flower-secret-value-8")
    path = worker_env.write(settings, tmp_path / "worker.env", "10.0.0.5")
    text = path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    values = statedir.read_env_file(path)
    for needed in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
                   "STACK_REDIS_AIRFLOW_PASSWORD", "STACK_PG_PASSWORD", "STACK_PG_USER", "STACK_PG_DATABASE"):
        assert values[needed], needed
    assert values["STACK_PG_HOST"] == values["STACK_REDIS_HOST"] == values["STACK_API_HOST"] == "10.0.0.5"
    assert values["STACK_EXECUTOR"] == "celery" and values["STACK_AIRFLOW_VERSION"] == "3.3.2"
    for kept_home in ("redis-secret-value-2", "admin-secret-value-3", "superuser-secret", "flower-secret-value-8"):
        assert kept_home not in text  # the Redis default user's, the admin's, a superuser DSN, Flower's
    assert not {"STACK_REDIS_PASSWORD", "_AIRFLOW_WWW_USER_PASSWORD", "STACK_PG_ADMIN_DSN",
                "STACK_FLOWER_PASSWORD"} & set(values)


def test_worker_env_is_never_written_into_a_folder_others_can_write(settings, tmp_path):
    from airflow_stack.ops import worker_env

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    with pytest.raises(StackError, match=r"shared is writable by other users \(mode 1777\); nothing was written"):
        worker_env.write(settings, shared / "worker.env", "10.0.0.5")
    assert not (shared / "worker.env").exists()
