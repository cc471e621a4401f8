"""PostgreSQL and our Redis, set up from nothing by `invoke setup.postgres` / `setup.redis`."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import psutil
import psycopg
import pytest
import redis

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.runtime import supervisor
from airflow_stack.services import redis_server

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]


def test_first_setup_creates_role_database_and_redis(services):
    pg, rd = services["postgres"].stdout, services["redis"].stdout
    assert "created role" in pg and "created database" in pg
    assert "started Redis" in rd


def test_second_setup_changes_nothing(stack, services):
    pg = stack.inv("setup.postgres").stdout
    assert "already set up" in pg and "created" not in pg
    rd = stack.inv("setup.redis").stdout
    assert "already running" in rd and "started" not in rd


def test_env_file_is_private_and_holds_generated_secrets(stack, services):
    env_file = Path(stack.env["STACK_ENV_FILE"])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    for key in ("STACK_PG_PASSWORD=", "STACK_REDIS_PASSWORD=", "AIRFLOW__CORE__FERNET_KEY="):
        assert key in text


def test_role_can_create_tables_in_public_schema(stack, services):
    # the PostgreSQL 15 trap: GRANT ALL ON DATABASE no longer allows this
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        conn.execute("CREATE TABLE public.created_by_role (x int)")
        conn.execute("INSERT INTO public.created_by_role VALUES (1)")
        assert conn.execute("SELECT count(*) FROM public.created_by_role").fetchone()[0] == 1
        conn.execute("DROP TABLE public.created_by_role")


def test_role_is_not_superuser_and_has_airflow_settings(stack, services):
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        flags = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                             "WHERE rolname = current_user").fetchone()
        assert flags == (False, False, False)
        assert conn.execute("SHOW timezone").fetchone()[0] == "UTC"
        assert conn.execute("SHOW default_transaction_isolation").fetchone()[0] == "read committed"
        assert conn.execute("SHOW client_encoding").fetchone()[0] == "UTF8"
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        assert owner.fetchone()[0] == stack.settings().pg_user


def test_setup_resyncs_a_changed_role_password(stack, services):
    settings = stack.settings()
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            psycopg.sql.Identifier(settings.pg_user), uuid.uuid4().hex))
        conn.commit()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**settings.pg_conninfo()).close()
    out = stack.inv("setup.postgres").stdout
    assert "reset the password" in out
    psycopg.connect(**settings.pg_conninfo()).close()


def ours(settings, **kw) -> redis.Redis:
    """A client of our Redis where this machine's clients reach it: its Unix socket."""
    return redis.Redis(socket_timeout=5, **redis_server.connection_params(settings), **kw)


def test_redis_refuses_clients_without_the_password(stack, services):
    settings = stack.settings()
    with pytest.raises(redis.AuthenticationError):
        ours(settings).ping()
    with pytest.raises(redis.AuthenticationError):
        ours(settings, password="wrong-password").ping()
    assert ours(settings, password=settings.redis_password).ping() is True


def test_airflow_uses_a_redis_user_that_cannot_administer_or_wipe_it(stack, services):
    settings = stack.settings()
    user = ours(settings, username=settings_mod.REDIS_AIRFLOW_USER, password=settings.redis_airflow_password)
    # what Celery's broker and the limiter do
    assert user.lpush("airflow-stack-acl-test", "x") == 1 and user.rpop("airflow-stack-acl-test") == b"x"
    assert user.eval("return redis.call('incr', KEYS[1])", 1, "airflow-stack-acl-counter") >= 1
    # and what it must never do
    admin = ours(settings, password=settings.redis_password)
    for command in (("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("FLUSHDB",), ("ACL", "LIST"),
                    ("SHUTDOWN", "NOSAVE"), ("MONITOR",), ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST")):
        # Redis's own verdict for that user, without running anything
        assert admin.execute_command("ACL", "DRYRUN", settings_mod.REDIS_AIRFLOW_USER, *command) != b"OK", command
        if command[0] in ("DEBUG", "MODULE"):
            continue  # Redis 7 refuses these to every client before the ACL ("not allowed"): tried below
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*command)
    for command in (("DEBUG", "SLEEP", "0"), ("MODULE", "LIST")):
        with pytest.raises(redis.exceptions.ResponseError):
            user.execute_command(*command)
    assert supervisor.running(settings, "redis") is not None  # SHUTDOWN was refused indeed
    # every Airflow process gets that user in its broker and limiter URLs, not the default user, and reaches
    # our Redis through its socket
    env = airflow_config.environment(settings)
    for key, scheme in (("AIRFLOW__CELERY__BROKER_URL", "redis+socket"), ("STACK_RATELIMIT_STORAGE_URI", "redis+unix")):
        assert env[key].startswith(f"{scheme}://{settings_mod.REDIS_AIRFLOW_USER}:"), key
        assert urlsplit(env[key]).path == quote(str(settings.paths.redis_socket)), key
    assert settings.redis_password not in " ".join(env.values())


def test_redis_listens_on_no_tcp_port_only_on_its_private_socket(stack, services):
    """Nothing beyond loopback is opted in: our Redis has no TCP port at all (a port freed while it restarts
    gives a squatter nothing), and its socket is in a folder only this user can enter."""
    settings = stack.settings()
    proc = supervisor.running(settings, "redis")
    listening = [conn.laddr for conn in psutil.Process(proc.pid).net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN]
    sock = settings.paths.redis_socket  # (psutil names no path for it: it splits /proc/net/unix at the space)
    assert listening == [] and stat.S_ISSOCK(sock.stat().st_mode), listening
    assert ours(settings, password=settings.redis_password).ping() is True  # through it
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (sock, sock.parent, settings.state_dir)}
    print(f"\n[figure] redis: TCP listeners {listening}; socket {sock} ({len(str(sock).encode())} bytes), "
          f"modes {[oct(m) for m in modes.values()]}")
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


def test_redis_keeps_a_key_across_a_restart(stack, services):
    settings = stack.settings()
    client = ours(settings, password=settings.redis_password)
    client.set("airflow-stack-test", "kept")
    first_pid = supervisor.running(settings, "redis").pid
    assert "redis: stopped" in stack.inv("stop", "-c", "redis").stdout
    assert supervisor.running(settings, "redis") is None
    assert "started Redis" in stack.inv("setup.redis").stdout
    assert supervisor.running(settings, "redis").pid != first_pid
    assert client.get("airflow-stack-test") == b"kept"
