"""Our own Redis: installed through the platform, run from a config file in the state dir.

It listens on its own port (6380 by default) on loopback only, with a password and append-only
persistence. A Redis the user already runs (the distribution's on 6379) is never reconfigured,
stopped or even connected to. DB 0 is the Celery broker, DB 1 the login rate limits.
"""

from __future__ import annotations

from pathlib import Path

import redis
from invoke import Context

from . import netutil, supervisor
from .errors import StackError
from .platform import Platform
from .secrets import write_private
from .settings import PROJECT_DIR, Settings

NAME = "redis"
TEMPLATE = PROJECT_DIR / "config" / "redis.conf.tmpl"
READY_TIMEOUT = 20.0


def conf_path(settings: Settings) -> Path:
    return settings.redis_dir / "redis.conf"


def render_conf(settings: Settings) -> str:
    return TEMPLATE.read_text().format(
        port=settings.redis_port,
        bind=settings.redis_bind,
        password=settings.redis_password,
        dir=settings.redis_dir,
    )


def client(settings: Settings, password: str | None = "use-settings", db: int = 0) -> redis.Redis:
    pw = settings.redis_password if password == "use-settings" else password
    return redis.Redis(host=settings.redis_host, port=settings.redis_port, password=pw, db=db,
                       socket_connect_timeout=2, socket_timeout=5)


def ping(settings: Settings) -> tuple[bool, str]:
    try:
        client(settings).ping()
        return True, ""
    except redis.AuthenticationError:
        return False, (f"Redis at {settings.redis_host}:{settings.redis_port} refused the password "
                       f"(STACK_REDIS_PASSWORD in {settings.env_file.name})")
    except redis.RedisError as exc:
        return False, (f"Redis at {settings.redis_host}:{settings.redis_port} is not answering "
                       f"({exc.__class__.__name__})")


def ensure(c: Context, platform: Platform, settings: Settings) -> list[str]:
    """Install redis-server when missing, write our config, start our Redis when stopped."""
    done: list[str] = []
    server = platform.redis_server_bin(c)
    if server is None:
        platform.redis_install(c)
        done.append(f"installed redis-server ({platform.name})")
        server = platform.redis_server_bin(c)
        if server is None:
            raise StackError("redis-server is still not on PATH after installing it; check the install log")
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
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
            if line.startswith("port "):
                return int(line.split()[1])
    except (FileNotFoundError, ValueError, IndexError):
        pass
    return None


def stop(settings: Settings) -> str:
    return supervisor.stop(settings, NAME)
