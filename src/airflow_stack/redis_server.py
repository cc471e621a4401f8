"""Our own Redis: installed through the platform, run from a config file in the state dir.

It listens on its own port (6380 by default) on loopback only, with a password and append-only
persistence. A Redis the user already runs (the distribution's on 6379) is never reconfigured,
stopped or even connected to. DB 0 is the Celery broker, DB 1 the login rate limits.
"""

from __future__ import annotations

import re
from pathlib import Path

import redis
from invoke import Context
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import netutil, supervisor, tls
from .errors import StackError
from .platform import Platform
from .secrets import write_private
from .settings import PROJECT_DIR, REDIS_AIRFLOW_USER, Settings

NAME = "redis"
TEMPLATE = PROJECT_DIR / "config" / "redis.conf.tmpl"
READY_TIMEOUT = 20.0


def conf_path(settings: Settings) -> Path:
    return settings.redis_dir / "redis.conf"


def conf_value(value: str, setting: str) -> str:
    """A value as one redis.conf argument: plain when it is safe as it is, else double-quoted with
    escapes (Redis reads a config line as quoted arguments). A line break cannot be written there."""
    if any(ch in value for ch in "\r\n\0"):
        raise StackError(f"{setting} holds a line break or NUL, which redis.conf cannot carry; choose a value "
                         f"without one")
    if re.fullmatch(r"[A-Za-z0-9._~+/=:@%,-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def listen_lines(settings: Settings) -> str:
    """Plain text on the port; with STACK_TLS only TLS there (no plain-text port at all), verified by
    clients against the stack's CA. Clients authenticate with passwords, not certificates."""
    if not settings.tls:
        return f"port {settings.redis_port}"
    files = tls.Files.of(settings)
    return "\n".join([
        "port 0", f"tls-port {settings.redis_port}",
        f"tls-cert-file {conf_value(str(files.cert), 'STACK_STATE_DIR')}",
        f"tls-key-file {conf_value(str(files.key), 'STACK_STATE_DIR')}",
        f"tls-ca-cert-file {conf_value(str(files.ca), 'STACK_STATE_DIR')}",
        "tls-auth-clients no",
    ])


def render_conf(settings: Settings) -> str:
    return TEMPLATE.read_text().format(
        listen=listen_lines(settings),
        bind=settings.redis_bind,  # IP addresses, checked by setup.redis --bind
        password=conf_value(settings.redis_password or "", "STACK_REDIS_PASSWORD"),
        airflow_user=REDIS_AIRFLOW_USER,
        airflow_password=conf_value(">" + (settings.redis_airflow_password or ""), "STACK_REDIS_AIRFLOW_PASSWORD"),
        dir=conf_value(str(settings.redis_dir), "STACK_STATE_DIR"),
    )


def client(settings: Settings, password: str | None = "use-settings", db: int = 0,
           username: str | None = None) -> redis.Redis:
    pw = settings.redis_password if password == "use-settings" else password
    # one attempt: redis-py retries a refused or missing password like a lost connection, with back-off
    # (~4-10 s), and every caller here (probes, doctor, setup) wants the answer now
    return redis.Redis(host=settings.redis_host, port=settings.redis_port, username=username, password=pw, db=db,
                       socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0),
                       **settings.redis_tls_params())


def airflow_client(settings: Settings, db: int = 0) -> redis.Redis:
    """Our Redis as Airflow's processes see it (the ACL user)."""
    return client(settings, settings.redis_airflow_password, db, username=REDIS_AIRFLOW_USER)


def ping(settings: Settings) -> tuple[bool, str]:
    try:
        client(settings).ping()
        return True, ""
    except redis.AuthenticationError:
        return False, (f"Redis at {settings.redis_host}:{settings.redis_port} refused the password "
                       f"(STACK_REDIS_PASSWORD in {settings.env_file.name})")
    except redis.RedisError as exc:
        if settings.tls and not settings.tls_ca_file.exists():
            return False, f"STACK_TLS is on but {settings.tls_ca_file} is missing (the stack's CA, from its state dir)"
        return False, (f"Redis at {settings.redis_host}:{settings.redis_port} is not answering "
                       f"({exc.__class__.__name__}{', over TLS' if settings.tls else ''})")


def ensure(c: Context, platform: Platform, settings: Settings) -> list[str]:
    """Install redis-server when missing, write our config, start our Redis when stopped."""
    server, done = platform.ensure_installed(c, "redis-server", platform.redis_server_bin, platform.redis_install)
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    if settings.tls:
        done += tls.ensure(settings)
    conf = conf_path(settings)
    text = render_conf(settings)
    changed = not conf.exists() or conf.read_text() != text
    proc = supervisor.running(settings, NAME)
    ours_on_port = proc is not None and _conf_port(conf) == settings.redis_port
    # decide before touching anything: a taken port must not cost the user their running Redis
    if not ours_on_port and netutil.port_open(settings.redis_port):
        raise StackError(f"port {settings.redis_port} is in use by another program; "
                         f"set STACK_REDIS_PORT to a free port")
    if changed:
        write_private(conf, text)  # holds requirepass: 0600
        done.append(f"wrote {conf}")
    if proc is not None:
        if not changed and ping(settings)[0]:
            return done
        # our Redis, with a config it has not loaded yet (a new port or password): restart it
        supervisor.stop(settings, NAME)
        done.append("restarted our Redis to apply its new config")
    supervisor.start(c, settings, NAME, [server, str(conf)], env={})
    if not netutil.wait_until(lambda: ping(settings)[0], READY_TIMEOUT):
        log = supervisor.log_file(settings, NAME)
        raise StackError(f"Redis did not answer on port {settings.redis_port} within {READY_TIMEOUT:.0f} s; "
                         f"see {log}: {supervisor.tail(log, 1)}")
    done.append(f"started Redis on 127.0.0.1:{settings.redis_port}")
    return done


def _conf_port(conf: Path) -> int | None:
    try:
        for line in conf.read_text().splitlines():
            if line.startswith(("port ", "tls-port ")) and line.split()[1] != "0":
                return int(line.split()[1])
    except (FileNotFoundError, ValueError, IndexError):
        pass
    return None


def stop(settings: Settings) -> str:
    return supervisor.stop(settings, NAME)
