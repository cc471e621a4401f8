"""Our Redis through its Unix socket in the state dir: no TCP port unless another machine needs one, and
every client here (Celery's broker, the login limiter, redis-py, the probes) reaches it through the socket."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from kombu import Connection
from kombu.utils.url import url_to_parts
from redis.connection import parse_url

from airflow_stack.components import REDIS
from airflow_stack.errors import StackError
from airflow_stack.ops import doctor_security
from airflow_stack.services import limiter, redis_server
from airflow_stack.settings import SUN_PATH_BYTES

PASSWORD = "p@ss:w/rd%"  # every character a URL must escape


@pytest.fixture
def spaced(settings, tmp_path):
    """A state dir with a space in its name (~/My Projects), and a password that needs escaping."""
    return settings.replace(state_dir=tmp_path / "my stack", redis_airflow_password=PASSWORD)


def test_by_default_redis_has_no_tcp_port_and_every_client_here_uses_the_socket(spaced):
    sock = spaced.paths.redis_socket
    assert spaced.redis_via_socket and not spaced.redis_tcp
    conf = redis_server.render_conf(spaced)
    assert f'\nunixsocket "{sock}"\nunixsocketperm 700\nport 0\n' in conf  # quoted: the path has a space
    assert REDIS.listen_ports(spaced) == []  # no port for status, doctor or preflight to look after
    assert redis_server.connection_params(spaced) == {"unix_socket_path": str(sock)}
    # Celery's broker (kombu): redis+socket, the DB as virtual_host, the password escaped in the userinfo
    broker = Connection(spaced.airflow_redis_url(0))
    assert broker.transport_cls == "redis"
    # kombu's Redis transport splits the rest as below and connects to "/" + path (kombu/transport/redis.py)
    scheme, _, _, user, password, path, query = url_to_parts(broker.hostname)
    assert (scheme, "/" + path, user, password, query) == ("socket", str(sock), "airflow", PASSWORD,
                                                           {"virtual_host": "0"})
    # the login limiter (limits turns redis+unix:// into redis-py's unix://): credentials and DB as it reads them
    uri = spaced.limiter_storage_uri
    assert uri.startswith(f"redis+unix://airflow:{quote(PASSWORD, safe='')}@") and uri.endswith("?db=1")
    parsed = parse_url(uri.replace("redis+unix://", "unix://", 1))
    assert (parsed["path"], parsed["username"], parsed["password"], parsed["db"]) == (str(sock), "airflow", PASSWORD, 1)
    assert limiter.redis_db(spaced) == 1 and str(limiter.storage(spaced)) == f"redis+unix://{sock}"


def test_tcp_only_for_other_machines(settings):
    opted_in = settings.replace(redis_bind="127.0.0.1 10.0.0.5 -::1")
    assert opted_in.redis_tcp and opted_in.redis_via_socket  # workers elsewhere dial TCP; this machine the socket
    assert f"\nport {settings.redis_port}\n" in redis_server.render_conf(opted_in)
    assert REDIS.listen_ports(opted_in) == [("redis_port", settings.redis_port)]
    worker = settings.replace(redis_host="10.0.0.5")  # a worker machine: the stack's address, over TCP
    assert not worker.redis_via_socket and worker.airflow_redis_url(0).startswith("redis://airflow:")
    assert redis_server.connection_params(worker) == {"host": "10.0.0.5", "port": settings.redis_port}


def test_a_socket_path_too_long_for_a_socket_address_falls_back_to_tcp_on_loopback_with_one_warning(settings, tmp_path):
    deep = settings.replace(state_dir=tmp_path / ("d" * (SUN_PATH_BYTES - len(str(tmp_path)))))
    assert not deep.redis_socket_fits and deep.redis_tcp and not deep.redis_via_socket
    conf = redis_server.render_conf(deep)
    assert "unixsocket" not in conf and f"\nport {settings.redis_port}\n" in conf
    assert deep.airflow_redis_url(0).startswith("redis://airflow:") and "@127.0.0.1:" in deep.limiter_storage_uri
    note = redis_server.socket_note(deep)
    assert note.startswith("warning:") and "TCP" in note and "STACK_STATE_DIR" in note and "\n" not in note
    assert redis_server.socket_note(settings) == ""


class _Platform:
    redis_server_bin = redis_install = None

    def ensure_installed(self, c, what, find, install):
        return "/usr/bin/redis-server", []


def test_setup_needs_no_free_port_without_tcp_and_keeps_the_socket_folder_private(settings):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = settings.replace(redis_port=squatter.getsockname()[1])
    try:
        prepared = redis_server.prepare(None, _Platform(), taken, ours_running=False)
        assert os.stat(settings.paths.redis).st_mode & 0o777 == 0o700
        assert os.stat(settings.state_dir).st_mode & 0o077 == 0
        assert prepared.label == f"Redis on {settings.paths.redis_socket}"
        # once another machine needs TCP, the port must be free
        with pytest.raises(StackError, match=f"port {taken.redis_port} is in use"):
            redis_server.prepare(None, _Platform(), taken.replace(redis_bind="127.0.0.1 10.0.0.5"), ours_running=False)
    finally:
        squatter.close()


def test_doctor_accepts_the_private_socket_and_says_tcp_is_off(settings):
    sock_path = settings.paths.redis_socket
    sock_path.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen()
    try:
        pid = os.getpid()  # this test process listens on no TCP port
        os.chmod(sock_path, 0o700)
        check = doctor_security.check_redis_listens(settings, pid)
        assert check.ok and check.detail == f"on {sock_path} (only you); TCP off", check
        os.chmod(sock_path, 0o777)
        check = doctor_security.check_redis_listens(settings, pid)
        assert not check.ok and "open to others" in check.detail and check.fix == "invoke setup.redis"
        # the limiter's storage answers through the socket
        limiter.check_reachable(settings)
    finally:
        listener.close()
        sock_path.unlink()
    assert not doctor_security.check_redis_listens(settings, os.getpid()).ok  # gone
    with pytest.raises(StackError, match=r"redis\+unix:///.*redis.sock, STACK_RATELIMIT_STORAGE_URI\) does not answer"):
        limiter.check_reachable(settings)


def test_workers_health_pings_log_in_as_the_acl_user(settings, monkeypatch):
    from airflow_stack.runtime import health

    seen = []
    monkeypatch.setattr(health, "_celery_app", lambda url: seen.append(url) or SimpleNamespace(
        control=SimpleNamespace(ping=lambda **kw: [{"worker@host": {"ok": "pong"}}])))
    assert health.celery_ping(settings, ["worker@host"]) == {"worker@host": True}
    assert seen == [settings.airflow_redis_url(0)] and seen[0].startswith("redis+socket://airflow:")
    assert settings.redis_password not in seen[0]
