"""The login limiter's storage (Flask-Limiter, through ``limits``): which one ``STACK_RATELIMIT_STORAGE_URI``
names (default: our Redis, DB 1), where it is, which client library Airflow's venv needs for it, and
whether it answers. The one parser of that URI."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from .. import netutil
from ..errors import StackError
from ..settings import LOOPBACK, Settings

# storages that live on a server, and their default ports
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "memcached": 11211, "mongodb": 27017, "mongodb+srv": 27017}
# a Redis through a Unix socket (the default: ours), with the credentials in the userinfo and the DB as db=
REDIS_SOCKET = "redis+unix"
REDIS_SCHEMES = ("redis", "rediss", REDIS_SOCKET)
# the client library Flask-Limiter (through `limits`) needs for a storage other than Redis
CLIENTS = {"memcached": "pymemcache", "mongodb": "pymongo", "mongodb+srv": "pymongo"}


@dataclass(frozen=True)
class Storage:
    scheme: str
    host: str  # the first host the URI lists, without credentials
    port: int
    socket: str = ""  # a Unix socket's path instead of host and port

    @property
    def on_this_machine(self) -> bool:
        return bool(self.socket) or self.host in LOOPBACK

    def __str__(self) -> str:
        return f"{self.scheme}://{self.socket}" if self.socket else f"{self.scheme}://{self.host}:{self.port}"


def scheme(settings: Settings) -> str:
    return settings.limiter_storage_uri.split("://", 1)[0].lower()


def storage(settings: Settings) -> Storage | None:
    """Where the limiter counts; None for storages without a server (memory://) or unknown to us."""
    uri = settings.limiter_storage_uri
    kind = scheme(settings)
    if kind == REDIS_SOCKET:
        return Storage(kind, "localhost", 0, socket=urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    if kind not in DEFAULT_PORTS or "://" not in uri:
        return None
    # memcached:// and mongodb:// may list several hosts: the first one speaks for them
    netloc = uri.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].split(",")[0]
    parsed = urllib.parse.urlsplit("//" + netloc)
    try:
        port = parsed.port or DEFAULT_PORTS[kind]
    except ValueError:
        raise StackError("STACK_RATELIMIT_STORAGE_URI names a port that is not a number; fix the URI") from None
    return Storage(kind, parsed.hostname or "127.0.0.1", port)


def redis_db(settings: Settings) -> int:
    """The Redis DB the limiter counts in: the URI's path (redis://HOST/1), or its db= through a socket."""
    parts = urllib.parse.urlsplit(settings.limiter_storage_uri)
    db = dict(urllib.parse.parse_qsl(parts.query)).get("db", "") if parts.scheme == REDIS_SOCKET \
        else parts.path.strip("/")
    return int(db) if db.isdigit() else 0


def client_package(settings: Settings) -> str | None:
    """The package Airflow's venv needs to reach the storage (none for Redis: Airflow has it)."""
    return CLIENTS.get(scheme(settings))


def check_reachable(settings: Settings) -> None:
    """The storage must answer before the web component starts: Flask-Limiter falls back to counting in
    memory when it cannot reach it (the very warning this stack removes)."""
    found = storage(settings)
    if found is None:
        return  # memory:// (doctor says what it costs), or a storage we cannot probe
    if not (netutil.unix_socket_open(found.socket, timeout=2) if found.socket
            else netutil.port_open(found.port, found.host, timeout=2)):
        raise StackError(f"the login limiter's storage ({found}, STACK_RATELIMIT_STORAGE_URI) does not answer; start "
                         f"it or fix the URI (unreachable, Flask-Limiter would count in memory)")
