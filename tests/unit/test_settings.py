from __future__ import annotations

import pytest

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.apache_airflow import profiles
from airflow_stack.errors import StackError


def test_defaults_without_env_file(env):
    s = settings_mod.load(environ=env)
    assert (s.airflow_line, s.executor, s.pg_port, s.redis_port, s.api_port) == ("", "local", 5432, 6380, 8080)
    assert profiles.release(s) == "3.3.2"  # no line chosen, no Dockerfile in the project: the default
    assert s.state_dir.is_absolute() and s.pg_password is None


def test_precedence_flag_over_environment_over_env_file_over_default(env, tmp_path):
    (tmp_path / ".env").write_text("STACK_REDIS_PORT=7001\nSTACK_API_PORT=7002\nSTACK_PG_PORT=7003\n")
    s = settings_mod.load(overrides={"redis_port": 9001}, environ=env | {"STACK_REDIS_PORT": "8001",
                                                                          "STACK_API_PORT": "8002"})
    assert s.redis_port == 9001  # flag
    assert s.api_port == 8002  # environment
    assert s.pg_port == 7003  # .env
    assert s.scheduler_health_port == 8974  # default


def test_none_flag_means_not_given(env):
    assert settings_mod.load(overrides={"redis_port": None}, environ=env).redis_port == 6380


def test_derived_sqlalchemy_url_quotes_the_password(env):
    s = settings_mod.load(environ=env | {"STACK_PG_PASSWORD": "p@ss/w:rd"})
    assert airflow_config.sql_alchemy_conn(s) == "postgresql+psycopg://airflow:p%40ss%2Fw%3Ard@127.0.0.1:5432/airflow?sslmode=prefer"
    # 2.11's SQLAlchemy 1.4 has no psycopg 3 dialect
    assert airflow_config.sql_alchemy_conn(s.replace(airflow_line="2.11")).startswith("postgresql+psycopg2://airflow:p%40ss")


def test_malformed_env_line_is_an_error_naming_the_line(env, tmp_path):
    (tmp_path / ".env").write_text("STACK_API_PORT=1\nnot an assignment\n")
    with pytest.raises(StackError, match=r"line 2 is not KEY=VALUE"):
        settings_mod.load(environ=env)


@pytest.mark.parametrize("value, message", [("abc", "not a number"), ("70000", "not a port"), ("0", "not a port")])
def test_bad_port_values(env, value, message):
    with pytest.raises(StackError, match=message):
        settings_mod.load(environ=env | {"STACK_REDIS_PORT": value})


def test_unknown_choice(env):
    with pytest.raises(StackError, match=r"use one of: , 3\.3, 3\.2, 3\.1, 3\.0, 2\.11, 2\.10"):
        settings_mod.load(environ=env | {"STACK_AIRFLOW_LINE": "2.9"})


def test_booleans(env):
    assert settings_mod.load(environ=env | {"STACK_LOAD_EXAMPLES": "yes"}).load_examples is True
    with pytest.raises(StackError, match="true/false"):
        settings_mod.load(environ=env | {"STACK_LOAD_EXAMPLES": "maybe"})


def test_unreadable_env_file(env, tmp_path):
    (tmp_path / ".env").mkdir()
    with pytest.raises(StackError, match=r"cannot read .*: it is a directory; move it away"):
        settings_mod.load(environ=env)


def test_env_file_that_is_not_utf8(env, tmp_path):
    (tmp_path / ".env").write_bytes(b"STACK_API_PORT=1\nSTACK_PG_USER=\xff\xfe\n")
    with pytest.raises(StackError, match=r"byte 31 is not UTF-8 text"):
        settings_mod.load(environ=env)


@pytest.mark.parametrize("line, version, ok", [("3.3", (3, 14), True), ("2.11", (3, 12), True),
                                               ("2.11", (3, 13), False), ("3.3", (3, 9), False),
                                               ("3.0", (3, 9), True), ("3.1", (3, 14), False), ("2.10", (3, 8), True)])
def test_python_support_per_line(line, version, ok):
    if ok:
        profiles.get(line).check_python(version)
    else:
        with pytest.raises(StackError, match=rf"Airflow {line}\.\d+ needs Python 3\.\d+-3\.\d+, this is "
                                             rf"{version[0]}\.{version[1]}; .* STACK_AIRFLOW_PYTHON"):
            profiles.get(line).check_python(version)


def test_the_liveness_watchdog_can_be_turned_off_but_not_set_below_zero(env):
    assert settings_mod.load(environ=env | {"STACK_LIVENESS_SECONDS": "0"}).liveness_seconds == 0
    with pytest.raises(StackError, match=r"STACK_LIVENESS_SECONDS=-1 \(environment\) must be at least 0"):
        settings_mod.load(environ=env | {"STACK_LIVENESS_SECONDS": "-1"})
    with pytest.raises(StackError, match=r"STACK_API_PORT=0 \(environment\) is not a port"):
        settings_mod.load(environ=env | {"STACK_API_PORT": "0"})


@pytest.mark.parametrize(("value", "message"), [
    ("soon", r"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME='soon' \(environment\) is not a number"),
    ("0", "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=0 \\(environment\\) must be at least 0.1"),
    ("nan", "must be at least 0.1"),
])
def test_the_scheduler_idle_sleep_is_a_positive_number_of_seconds(env, value, message):
    assert settings_mod.load(environ=env).scheduler_idle_sleep == 0.5
    assert settings_mod.load(environ=env | {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25"}
                             ).scheduler_idle_sleep == 0.25
    with pytest.raises(StackError, match=message):
        settings_mod.load(environ=env | {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": value})


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("6h", 21600), ("1d", 86400), ("1w", 604800), ("1h30m", 5400), ("1.5h", 5400),
    (" 2D ", 172800), ("off", None), ("OFF", None),
])
def test_the_backup_interval_is_a_number_and_a_unit_or_off(env, text, seconds):
    assert settings_mod.parse_interval(text) == seconds
    assert settings_mod.load(environ=env | {"STACK_BACKUP_EVERY": text}).backup_interval == seconds


@pytest.mark.parametrize(("text", "message"), [
    ("soon", "not an interval; write a number and a unit"), ("90", "not an interval"),
    ("-1h", "not an interval"), ("1 h", "not an interval"), ("", "not an interval"),
    ("5s", "shorter than 10 s"), ("0d", "shorter than 10 s"),
])
def test_a_backup_interval_that_is_not_one_is_refused_in_one_line_when_settings_load(env, tmp_path, text, message):
    assert settings_mod.load(environ=env).backup_every == "1d"  # the default while the stack runs
    with pytest.raises(StackError, match=rf"^STACK_BACKUP_EVERY={text!r} \(environment\): {message}") as err:
        settings_mod.load(environ=env | {"STACK_BACKUP_EVERY": text})
    assert "\n" not in str(err.value)
    (tmp_path / ".env").write_text(f"STACK_BACKUP_EVERY={text}\n")
    with pytest.raises(StackError, match=r"\(\.env\)"):
        settings_mod.load(environ=env)


def test_the_settings_as_environment_resolve_to_the_same_settings(settings, env):
    """What the backups component is started with: it must resolve exactly the settings invoke up had."""
    chosen = settings.replace(backup_every="20s", backup_keep=2, pg_port=5433, tls=True, scheduler_idle_sleep=0.25)
    environ = settings_mod.environment_of(chosen, environ={"STACK_REDIS_PASSWORD": "from-the-shell-1"})
    assert settings_mod.load(environ=environ) == chosen.replace(redis_password="from-the-shell-1")
    # no secret from .env travels in it (the component reads .env itself); one from the shell does
    assert settings.pg_password not in environ.values() and environ["STACK_REDIS_PASSWORD"] == "from-the-shell-1"
