"""The environment every Airflow process shares, airflow.cfg and webserver_config.py."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.apache_airflow import profiles
from airflow_stack.errors import StackError

from .conftest import SECRETS


def test_3x_environment(settings):
    env = airflow_config.environment(settings.replace(api_port=18080), "local")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://airflow:")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] == "5"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "jwt-secret-value-5"
    # the login limiter counts in our Redis, reached through its Unix socket in the state dir
    sock = settings.paths.redis_socket
    assert env["STACK_RATELIMIT_STORAGE_URI"] == f"redis+unix://airflow:redis-user-secret-value-7@{sock}?db=1"
    assert not any(key.startswith("AIRFLOW__WEBSERVER__") for key in env)


def test_a_finished_task_frees_its_slot_within_a_second_on_3x_and_env_can_change_that(settings, env, tmp_path):
    # the supervisor's wait between heartbeats is also how late it may notice its task process exited
    assert airflow_config.environment(settings)["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "1"
    with (tmp_path / ".env").open("a") as dotenv:
        dotenv.write("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL=5\n")
    slower = settings_mod.load(environ=env)
    assert airflow_config.environment(slower)["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "5"
    # 2.x has no Task SDK supervisor: nothing to set there
    assert "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL" not in airflow_config.environment(
        settings.replace(airflow_line="2.11"))


def test_an_idle_scheduler_looks_again_after_half_a_second_on_both_lines(settings):
    for line in profiles.NAMES:
        env = airflow_config.environment(settings.replace(airflow_line=line))
        assert env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == "0.5"


def test_211_environment(settings):
    env = airflow_config.environment(settings.replace(airflow_line="2.11", api_port=18081), "local")
    assert env["AIRFLOW__WEBSERVER__WEB_SERVER_PORT"] == "18081"
    assert env["AIRFLOW__WEBSERVER__SECRET_KEY"] == "api-secret-value-6"
    assert "basic_auth" in env["AIRFLOW__API__AUTH_BACKENDS"]
    assert env["AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL"] == "5"
    assert "AIRFLOW__CORE__AUTH_MANAGER" not in env
    assert env["GUNICORN_CMD_ARGS"] == f"--control-socket {settings.paths.run / 'gunicorn.ctl'}"


def test_every_component_gets_the_same_secrets(settings):
    for line in profiles.NAMES:
        s = settings.replace(airflow_line=line)
        local, celery = airflow_config.environment(s, "local"), airflow_config.environment(s, "celery")
        shared = airflow_config.secret_keys(local, s)
        assert {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"} <= shared
        assert all(local[k] == celery[k] for k in shared)
        assert len(profiles.get(line).components) >= 3  # one environment is handed to all of them


def test_celery_result_backend_uses_db_plus_postgresql(settings):
    env = airflow_config.environment(settings, "celery")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://airflow:")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("@127.0.0.1:5432/airflow?sslmode=prefer")  # as every URL
    sock = settings.paths.redis_socket
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis+socket://airflow:redis-user-secret-value-7@{sock}?virtual_host=0"


def test_airflow_cfg_holds_no_secret(settings):
    for line in profiles.NAMES:
        s = settings.replace(airflow_line=line)
        cfg = airflow_config.render_airflow_cfg(airflow_config.environment(s), s)
        assert "[core]" in cfg and "executor = LocalExecutor" in cfg
        assert not any(secret in cfg for secret in SECRETS)
        assert "sql_alchemy_conn" not in cfg and "sqlite" not in cfg
        assert "[flask_limiter]" not in cfg  # has no effect; the limiter is set in webserver_config.py


def test_the_stacks_own_hosts_bypass_a_proxy(settings, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "corp.example,.internal")
    monkeypatch.delenv("no_proxy", raising=False)
    env = airflow_config.environment(settings.replace(pg_host="10.1.2.3", redis_host="10.1.2.4"))
    assert env["NO_PROXY"] == env["no_proxy"]
    hosts = env["NO_PROXY"].split(",")
    assert hosts[:2] == ["corp.example", ".internal"]  # the user's list is kept, first
    assert {"localhost", "127.0.0.1", "::1", "10.1.2.3", "10.1.2.4"} <= set(hosts)


def test_missing_secrets_say_run_setup(settings):
    with pytest.raises(Exception, match="run: invoke setup"):
        airflow_config.environment(settings.replace(jwt_secret=None))


def test_webserver_config_sets_the_limiter_storage_uri_from_the_environment():
    text = airflow_config.render_webserver_config()
    tree = ast.parse(text)
    assigned = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert {"RATELIMIT_STORAGE_URI", "AUTH_TYPE"} <= assigned
    assert "RATELIMIT_STORAGE_URL" not in assigned  # the key Flask-Limiter >= 3 ignores


def test_webserver_config_resolves_to_the_uri(monkeypatch):
    monkeypatch.setenv("STACK_RATELIMIT_STORAGE_URI", "memcached://127.0.0.1:11211")
    namespace: dict = {}
    code = airflow_config.render_webserver_config().replace("from flask_appbuilder.const import AUTH_DB",
                                                            "AUTH_DB = 1")
    exec(compile(code, "webserver_config.py", "exec"), namespace)
    assert namespace["RATELIMIT_STORAGE_URI"] == "memcached://127.0.0.1:11211"


def test_write_config_is_idempotent(settings):
    env = airflow_config.environment(settings)
    assert airflow_config.write_config(settings, env) == ["airflow.cfg", "webserver_config.py"]
    assert airflow_config.write_config(settings, env) == []


def test_airflow_processes_get_only_what_they_need_of_the_callers_environment(settings):
    """A shell with direnv exports all of .env: the admin password, a superuser DSN and the bare
    passwords must not reach the Airflow processes, where any DAG could read them."""
    exported = {f"STACK_{k}": v for k, v in (("PG_PASSWORD", "pg-secret-value-1"), ("PG_ADMIN_DSN", "postgresql://x:y@z/"),
                                            ("REDIS_PASSWORD", "redis-secret-value-2"), ("CHECKOUT_ID", "abc"))}
    caller = exported | {"_AIRFLOW_WWW_USER_PASSWORD": "admin-secret-value-3", "PATH": "/usr/bin", "HOME": "/root",
                         "LC_ALL": "C.UTF-8", "https_proxy": "http://proxy:3128", "AWS_PROFILE": "dev",
                         "AIRFLOW__CORE__DEFAULT_TIMEZONE": "utc", "AIRFLOW_CONN_WAREHOUSE": "postgres://w",
                         "SSH_AUTH_SOCK": "/tmp/agent", "GITHUB_TOKEN": "t0ken"}
    env = airflow_config.environment(settings)
    got = airflow_config.process_environment(settings, env, caller)
    passed = {"PATH", "HOME", "LC_ALL", "https_proxy", "AIRFLOW__CORE__DEFAULT_TIMEZONE", "AIRFLOW_CONN_WAREHOUSE"}
    assert passed <= set(got)
    assert not {"_AIRFLOW_WWW_USER_PASSWORD", "SSH_AUTH_SOCK", "GITHUB_TOKEN", "AWS_PROFILE", *exported} & set(got)
    assert "admin-secret-value-3" not in "".join(got.values())
    assert got["AIRFLOW__CORE__FERNET_KEY"] == env["AIRFLOW__CORE__FERNET_KEY"]  # what Airflow needs is there
    # a name the user lists explicitly passes
    listed = airflow_config.process_environment(settings.replace(passthrough="AWS_PROFILE, GITHUB_TOKEN"), env, caller)
    assert listed["AWS_PROFILE"] == "dev" and listed["GITHUB_TOKEN"] == "t0ken"


def test_the_projects_env_reaches_every_airflow_process_but_never_the_stacks_own_names(settings, tmp_path):
    """As astro passes the project's .env into every container: whether or not the shell exports a name."""
    project = tmp_path / "my project"
    (project / "dags").mkdir(parents=True)
    s = settings.replace(project_dir=project)
    (project / ".env").write_text("AIRFLOW_VAR_GREETING=hello\nAIRFLOW_CONN_WAREHOUSE=postgresql://u:p@db/x\n"
                                  "PLAIN_NAME=plain value\nAIRFLOW__CORE__LOAD_EXAMPLES=False\n")
    env = airflow_config.environment(s, "local")
    merged = airflow_config.process_environment(s, env, environ={"PATH": "/bin", "PLAIN_NAME": "from the shell"})
    assert merged["AIRFLOW_VAR_GREETING"] == "hello" and merged["PLAIN_NAME"] == "plain value"
    assert merged["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"  # the stack's own value, which the file repeats
    assert "PLAIN_NAME" not in airflow_config.process_environment(s, env, environ={}, project=False)  # services
    digest = airflow_config.project_digest(s, env)
    (project / ".env").write_text("AIRFLOW_VAR_GREETING=changed\n")
    assert airflow_config.project_digest(s, env) not in ("", digest)  # a change restarts what sees it
    for line, name in (("AIRFLOW__CORE__FERNET_KEY=mine-of-16-chars-xx", "AIRFLOW__CORE__FERNET_KEY"),
                       ("STACK_PG_PASSWORD=another-one", "STACK_PG_PASSWORD"),
                       ("AIRFLOW__CORE__EXECUTOR=SequentialExecutor", "AIRFLOW__CORE__EXECUTOR")):
        (project / ".env").write_text(line + "\n")
        with pytest.raises(StackError, match=rf"sets {name}, which is the stack's own") as err:
            airflow_config.process_environment(s, env)
        assert line.split("=", 1)[1] not in str(err.value)  # no value is printed
    (project / ".env").write_text("export OK=1\nthis line is not a setting\n")
    with pytest.raises(StackError, match=r"\.env line 2 is not KEY=VALUE"):
        airflow_config.process_environment(s, env)


def test_the_repo_as_its_own_project_has_no_project_env(settings, tmp_path):
    """The default project is this repo, whose .env is the stack's own: not read twice, never a clash."""
    (tmp_path / "dags").mkdir()
    s = settings.replace(project_dir=tmp_path)  # the conftest's .env is tmp_path/.env: the same file
    assert airflow_config.project_environment(s, airflow_config.environment(s, "local")) == {}


def test_on_macos_releases_that_fork_without_exec_get_objc_fork_safety_off(settings, monkeypatch, request):
    """No release of either line execs every child it forks on darwin (3.3.2: tasks only, #64874; the DAG
    processor and triggerer fork bare until #69008): every Airflow process gets the variable there, and only
    there; a release that carries both fixes would not."""
    var = airflow_config.OBJC_FORK_SAFETY_VAR
    assert var not in airflow_config.environment(settings)  # Linux
    monkeypatch.setattr(airflow_config.sys, "platform", "darwin")
    for line in profiles.NAMES:
        assert airflow_config.environment(settings.replace(airflow_line=line))[var] == "YES"
    fixed = dataclasses.replace(profiles.LINES["3"], darwin_fork_exec_from="3.3.3")
    monkeypatch.setitem(profiles.LINES, "3", fixed)
    profiles.for_release.cache_clear()  # profiles of releases are built once from their line's
    request.addfinalizer(profiles.for_release.cache_clear)
    assert var in airflow_config.environment(settings.replace(airflow_version="3.3.2"))
    assert var not in airflow_config.environment(settings.replace(airflow_version="3.3.3"))
    assert var not in airflow_config.render_airflow_cfg(airflow_config.environment(settings), settings)
    assert fixed.needs_objc_fork_workaround("3.3.10") is False and fixed.needs_objc_fork_workaround("3.2.9")


def test_migrations_run_with_psycopg2_where_a_migration_needs_it(settings, monkeypatch, tmp_path):
    """3.x's migration 0094 cannot run on psycopg 3 (an upgrade from 3.1 to 3.3 stopped there): `db migrate` gets
    the psycopg2 URL, the running processes keep the line's driver; a failure names the exception, not the
    trailer after it."""
    from invoke import MockContext

    from airflow_stack.apache_airflow import commands, install, schema

    seen = {}
    monkeypatch.setattr(schema, "needs_migration", lambda s: True)
    monkeypatch.setattr(schema, "schema_revision", lambda s: "abc")
    monkeypatch.setattr(schema, "_mark_schema", lambda s, version: None)
    monkeypatch.setattr(install, "installed_version", lambda s: "3.3.2")
    monkeypatch.setattr(commands, "run_cli", lambda c, s, env, args, log: seen.update(env=env, args=args))
    env = airflow_config.environment(settings, "local")
    assert env[airflow_config.SQL_CONN_VAR].startswith("postgresql+psycopg://")
    settings.paths.make_private()
    settings.paths.airflow_home.mkdir(parents=True, exist_ok=True)
    schema.migrate(MockContext(), settings, env)
    assert seen["args"] == "db migrate"
    assert seen["env"][airflow_config.SQL_CONN_VAR] == env[airflow_config.SQL_CONN_VAR].replace(
        "postgresql+psycopg://", "postgresql+psycopg2://", 1)
    log = tmp_path / "setup-airflow.log"
    log.write_text("an earlier run\nValueError: not this one\n")
    began = log.stat().st_size
    with log.open("a") as fh:
        fh.write("Running upgrade b87d2135fa50 -> e812941398f4\nTraceback (most recent call last):\n"
                 "psycopg.errors.IndeterminateDatatype: could not determine data type of parameter $8\n"
                 "sqlalchemy.exc.ProgrammingError: (psycopg.errors.IndeterminateDatatype) could not determine "
                 "data type of parameter $8\n[SQL: WITH batch AS (...)]\n"
                 "(Background on this error at: https://sqlalche.me/e/20/f405)\n")
    assert commands.failure_reason(log, began).startswith("sqlalchemy.exc.ProgrammingError: (psycopg.errors.")
    with log.open("a") as fh:
        fh.write("killed\n")
    assert commands.failure_reason(log, log.stat().st_size - len("killed\n")) == "killed"
