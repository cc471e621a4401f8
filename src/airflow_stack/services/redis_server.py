"""Our own Redis: installed through the host, its config file in the state dir, its command line, and
its clients. It is started, waited for and stopped as a component of the running stack (runtime).

Airflow's processes and the stack reach it through a Unix socket in the 0700 state dir (mode 0700 itself),
with a password and append-only persistence. It listens on TCP (its own port, 6380 by default) only for
other machines (STACK_REDIS_BIND beyond loopback; TLS only with STACK_TLS), or when the socket's path is too
long for a socket address: a port freed while it restarts gives a squatter no password. A Redis the user
already runs (the distribution's on 6379) is never reconfigured, stopped or even connected to. DB 0 is the
Celery broker, DB 1 the login rate limits.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import redis
from invoke import Context
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import netutil
from ..errors import StackError
from ..settings import PROJECT_DIR, REDIS_AIRFLOW_USER, SUN_PATH_BYTES, Settings
from ..statedir import write_private
from . import tls
from .host import Platform

NAME = "redis"
TEMPLATE = PROJECT_DIR / "config" / "redis.conf.tmpl"
READY_TIMEOUT = 20.0


def conf_path(settings: Settings) -> Path:
    return settings.paths.redis_conf


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
    """The Unix socket (0700) when its path fits; TCP only when settings.redis_tcp: plain text on the port, or
    with STACK_TLS only TLS there (no plain-text port at all), verified by clients against the stack's CA.
    Clients authenticate with passwords, not certificates."""
    lines = []
    if settings.redis_socket_fits:
        path = conf_value(str(settings.paths.redis_socket), "STACK_STATE_DIR")
        lines += [f"unixsocket {path}", "unixsocketperm 700"]
    if not settings.redis_tcp:
        return "\n".join([*lines, "port 0"])
    if not settings.tls:
        return "\n".join([*lines, f"port {settings.redis_port}"])
    files = tls.Files.of(settings)
    return "\n".join([
        *lines, "port 0", f"tls-port {settings.redis_port}",
        f"tls-cert-file {conf_value(str(files.cert), 'STACK_STATE_DIR')}",
        f"tls-key-file {conf_value(str(files.key), 'STACK_STATE_DIR')}",
        f"tls-ca-cert-file {conf_value(str(files.ca), 'STACK_STATE_DIR')}",
        "tls-auth-clients no",
    ])


def socket_note(settings: Settings) -> str:
    """Said once when the socket's path is too long for a socket address ("": it fits)."""
    if settings.redis_socket_fits:
        return ""
    size = len(str(settings.paths.redis_socket).encode())
    return (f"warning: {settings.paths.redis_socket} is {size} bytes, longer than a Unix socket address holds "
            f"({SUN_PATH_BYTES - 1}): our Redis listens on TCP {settings.redis_port} on loopback instead, "
            f"which another local user could take while it restarts; a shorter STACK_STATE_DIR keeps it off TCP")


def check_bind(bind: str) -> None:
    """Redis must be able to listen on every address given (Redis skips a "-address" it cannot use):
    otherwise it stops at its restart, and the whole stack loses its broker and rate limits."""
    example = "e.g. '127.0.0.1 10.0.0.5' (this machine's own addresses)"
    if not bind.strip():
        raise StackError(f"--bind {bind!r}: give space-separated IP addresses, {example}")
    for address in bind.split():
        host = address.removeprefix("-")
        if host in ("*", "::*"):
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise StackError(f"--bind {bind!r}: {host!r} is not an IP address; give space-separated IP addresses, "
                             f"{example}") from None
        if not address.startswith("-") and not netutil.port_bindable(0, host):
            raise StackError(f"--bind {bind!r}: {host} is not an address of this machine, Redis could not listen "
                             f"there; give {example}")


def render_conf(settings: Settings) -> str:
    return TEMPLATE.read_text().format(
        listen=listen_lines(settings),
        bind=settings.redis_bind,  # IP addresses, checked by setup.redis --bind
        password=conf_value(settings.redis_password or "", "STACK_REDIS_PASSWORD"),
        airflow_user=REDIS_AIRFLOW_USER,
        airflow_password=conf_value(">" + (settings.redis_airflow_password or ""), "STACK_REDIS_AIRFLOW_PASSWORD"),
        dir=conf_value(str(settings.paths.redis), "STACK_STATE_DIR"),
    )


def connection_params(settings: Settings) -> dict[str, object]:
    """redis-py's keywords that say where our Redis is: its socket here, else host and port (TLS with STACK_TLS,
    the server verified against the stack's CA, its host name checked)."""
    if settings.redis_via_socket:
        return {"unix_socket_path": str(settings.paths.redis_socket)}
    tls_params = {"ssl": True, "ssl_ca_certs": str(settings.tls_ca_file), "ssl_cert_reqs": "required",
                  "ssl_check_hostname": True} if settings.tls else {}
    return {"host": settings.redis_host, "port": settings.redis_port, **tls_params}


def client(settings: Settings, password: str | None = "use-settings", db: int = 0,
           username: str | None = None) -> redis.Redis:
    pw = settings.redis_password if password == "use-settings" else password
    # one attempt: redis-py retries a refused or missing password like a lost connection, with back-off
    # (~4-10 s), and every caller here (probes, doctor, setup) wants the answer now
    return redis.Redis(username=username, password=pw, db=db, socket_connect_timeout=2, socket_timeout=5,
                       retry=Retry(NoBackoff(), 0), **connection_params(settings))


def airflow_client(settings: Settings, db: int = 0) -> redis.Redis:
    """Our Redis as Airflow's processes see it (the ACL user)."""
    return client(settings, settings.redis_airflow_password, db, username=REDIS_AIRFLOW_USER)


def ping(settings: Settings, as_airflow: bool = False) -> tuple[bool, str]:
    """Our Redis answers, as its default user (the stack's own operations) or, ``as_airflow``, as the ACL user
    Airflow's processes log in as (all a worker machine has)."""
    user = f"Airflow's Redis user ({REDIS_AIRFLOW_USER})" if as_airflow else "Redis"
    secret = "STACK_REDIS_AIRFLOW_PASSWORD" if as_airflow else "STACK_REDIS_PASSWORD"
    where = settings.redis_address
    try:
        (airflow_client(settings) if as_airflow else client(settings)).ping()
        return True, ""
    except redis.AuthenticationError:
        return False, f"{user} at {where} refused the password ({secret} in {settings.env_file.name})"
    except redis.RedisError as exc:
        if settings.tls and not settings.redis_via_socket and not settings.tls_ca_file.exists():
            return False, f"STACK_TLS is on but {settings.tls_ca_file} is missing (the stack's CA, from its state dir)"
        over = ", over TLS" if settings.tls and not settings.redis_via_socket else ""
        return False, f"Redis at {where} is not answering ({exc.__class__.__name__}{over})"


@dataclass
class Prepared:
    """Our Redis, ready to be started: its command line, whether a running one must restart to load a new
    config, and what was done (installed, config written)."""

    argv: list[str]
    config_changed: bool
    done: list[str] = field(default_factory=list)
    label: str = ""


def prepare(c: Context, platform: Platform, settings: Settings, ours_running: bool) -> Prepared:
    """Install redis-server when missing and write our config; ``ours_running``: our Redis runs now (a
    taken port is then ours). Refuses a port another program holds before anything is written."""
    server, done = platform.ensure_installed(c, "redis-server", platform.redis_server_bin, platform.redis_install)
    settings.paths.make_private()  # the socket's folder: only this user may even look for it
    settings.paths.redis.mkdir(mode=0o700, exist_ok=True)
    settings.paths.redis.chmod(0o700)
    if settings.tls:
        done += tls.ensure(settings)
    conf = conf_path(settings)
    text = render_conf(settings)
    changed = not conf.exists() or conf.read_text() != text
    check_port(settings, ours_running)
    if changed:
        write_private(conf, text)  # holds requirepass: 0600
        done.append(f"wrote {conf}")
        done += [note] if (note := socket_note(settings)) else []
    return Prepared([server, str(conf)], changed, done, f"Redis on {where(settings)}")


def check_port(settings: Settings, ours_running: bool) -> None:
    """When our Redis needs a TCP port, one another program holds is refused, before anything is kept or
    written: a taken port must not cost the user their running Redis. Without TCP no port matters."""
    ours_on_port = ours_running and _conf_port(conf_path(settings)) == settings.redis_port
    if settings.redis_tcp and not ours_on_port and netutil.port_open(settings.redis_port):
        raise StackError(f"port {settings.redis_port} is in use by another program; "
                         f"set STACK_REDIS_PORT to a free port")


def where(settings: Settings) -> str:
    """Where our Redis listens: its socket, and its TCP port when it has one."""
    found = [str(settings.paths.redis_socket)] if settings.redis_socket_fits else []
    if settings.redis_tcp:
        hosts = [a.removeprefix("-") for a in settings.redis_bind.split()]
        found.append(f"{'TLS ' if settings.tls else ''}port {settings.redis_port} ({', '.join(hosts)})")
    return " and ".join(found)


def conf_listens_tcp(settings: Settings) -> bool:
    """The config our Redis runs with (or last ran with) opens a TCP port."""
    return _conf_port(conf_path(settings)) is not None


def _conf_port(conf: Path) -> int | None:
    try:
        for line in conf.read_text().splitlines():
            if line.startswith(("port ", "tls-port ")) and line.split()[1] != "0":
                return int(line.split()[1])
    except (FileNotFoundError, ValueError, IndexError):
        pass
    return None
