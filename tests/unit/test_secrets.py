from __future__ import annotations

import stat

from airflow_stack import settings as settings_mod
from airflow_stack import statedir
from airflow_stack.settings import secrecy


def test_first_setup_writes_env_file_0600_with_generated_secrets(env, tmp_path):
    s, added = settings_mod.ensure_secrets(settings_mod.load(environ=env), environ=env)
    path = tmp_path / ".env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(added) == {"STACK_PG_PASSWORD", "STACK_REDIS_PASSWORD", "STACK_REDIS_AIRFLOW_PASSWORD",
                          "STACK_FLOWER_PASSWORD", "_AIRFLOW_WWW_USER_PASSWORD",
                          "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
                          "STACK_CHECKOUT_ID"}
    assert s.pg_password and s.redis_password and s.pg_password != s.redis_password
    assert len(s.fernet_key) == 44  # urlsafe base64 of 32 bytes, as Fernet wants


def test_second_run_adds_nothing_and_keeps_values(env, tmp_path):
    first, _ = settings_mod.ensure_secrets(settings_mod.load(environ=env), environ=env)
    text = (tmp_path / ".env").read_text()
    second, added = settings_mod.ensure_secrets(settings_mod.load(environ=env), environ=env)
    assert added == [] and (tmp_path / ".env").read_text() == text
    assert second.pg_password == first.pg_password


def test_user_values_are_never_overwritten(env, tmp_path):
    (tmp_path / ".env").write_text("# mine\nSTACK_PG_PASSWORD=my-own-password\nSTACK_API_PORT=9999")
    s, added = settings_mod.ensure_secrets(settings_mod.load(environ=env), environ=env)
    text = (tmp_path / ".env").read_text()
    assert text.startswith("# mine\nSTACK_PG_PASSWORD=my-own-password\nSTACK_API_PORT=9999\n")
    assert "STACK_PG_PASSWORD" not in added and s.pg_password == "my-own-password"


def test_a_secret_set_in_the_environment_is_not_written(env, tmp_path):
    environ = env | {"STACK_REDIS_PASSWORD": "from-the-environment"}
    s, added = settings_mod.ensure_secrets(settings_mod.load(environ=environ), environ=environ)
    assert "STACK_REDIS_PASSWORD" not in added
    assert "from-the-environment" not in (tmp_path / ".env").read_text()
    assert s.redis_password == "from-the-environment"


def test_a_world_readable_env_file_is_tightened(env, tmp_path):
    path = tmp_path / ".env"
    path.write_text("STACK_API_PORT=9999\n")
    path.chmod(0o644)
    settings_mod.ensure_secrets(settings_mod.load(environ=env), environ=env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_redact_hides_every_secret(settings):
    from .conftest import SECRETS

    text = "conn " + " ".join(SECRETS)
    assert all(secret not in settings_mod.redact(text, settings) for secret in SECRETS)


def test_write_private_is_0600(tmp_path):
    path = tmp_path / "redis.conf"
    statedir.write_private(path, "requirepass x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "requirepass x\n"


def test_set_env_value_replaces_or_appends_and_stays_private(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\nSTACK_REDIS_BIND=127.0.0.1\nB=2\n")
    assert statedir.update_env_file(path, {"STACK_REDIS_BIND": "0.0.0.0 ::"})
    assert path.read_text() == 'A=1\nSTACK_REDIS_BIND="0.0.0.0 ::"\nB=2\n'
    assert not statedir.update_env_file(path, {"STACK_REDIS_BIND": "0.0.0.0 ::"})
    assert statedir.update_env_file(path, {"C": "3"}) and path.read_text().endswith("C=3\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert statedir.read_env_file(path)["STACK_REDIS_BIND"] == "0.0.0.0 ::"


def test_generated_passwords_never_start_with_a_dash(monkeypatch):
    monkeypatch.setattr(secrecy.secrets, "token_urlsafe", lambda n: "-abc_def")
    assert secrecy._password() == "pabc_def"
