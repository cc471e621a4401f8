"""What crosses a wire, and to whom: the API server over HTTPS verified with the stack's CA where other machines
connect (the Celery session: STACK_TLS, the API on 0.0.0.0), and our Redis through its Unix socket, so that a
process that takes its TCP port while it restarts receives nothing."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time

import httpx
import pytest

from airflow_stack.apache_airflow import profiles
from airflow_stack.apache_airflow.airflow_side import upkeep
from tests.support.api_client import verify_for

from .conftest import EXECUTOR, REMOTE_ADDRESS, airflow_api
from .test_airflow import _login_page
from .test_bad_input import assert_one_line_error

pytestmark = pytest.mark.integration


def run_dag(stack, dag_id: str) -> str:
    api = airflow_api(stack.settings())
    api.wait_for_dag(dag_id)
    api.unpause(dag_id)
    return api.wait_for_run(dag_id, api.trigger(dag_id))


# the Celery session's stack opts in to TLS (STACK_TLS, the API on 0.0.0.0); the LocalExecutor's listens on
# loopback only, in plain HTTP: these two run in the Celery session alone (deselected elsewhere, not skipped)
@pytest.mark.celery
def test_the_api_speaks_https_only_and_a_client_without_the_stacks_ca_is_refused(stack, airflow_up):
    settings = stack.settings()
    if not settings.api_tls:  # never in CI, which runs as root
        pytest.skip("not root or no pg_createcluster: this Celery session runs without STACK_TLS (conftest)")
    web = profiles.of(settings).web
    health = profiles.of(settings).rest.health_path
    # with the stack's CA: verified, on loopback and at the address other machines use (the certificate names it)
    for base in (settings.api_url, f"https://{REMOTE_ADDRESS}:{settings.api_port}"):
        with httpx.Client(trust_env=False, timeout=10, verify=verify_for(settings)) as client:
            resp = client.get(base + health)
        assert resp.status_code == 200 and resp.url.scheme == "https", (base, resp.status_code)
    # without it (the system's certificate store): refused, nothing read
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(settings.api_url + health, trust_env=False, timeout=10)
    # and no plain HTTP on that port at all
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(settings.api_url.replace("https://", "http://") + health, trust_env=False, timeout=10)
    # the resident launcher's liveness GET (what restarts a hung API server) verifies the same way
    url, ca_file = web.probe.liveness_url(settings), web.probe.ca_file(settings)
    assert url.startswith("https://") and upkeep.answers(url, ca_file=ca_file) and not upkeep.answers(url)
    # the stack's probes are green over HTTPS (invoke status), the API server never restarted for failing them
    rows = stack.status()
    print(f"\n[figure] over HTTPS: {web.name} {rows[web.name]['detail']!r}")
    assert all(row["healthy"] for row in rows.values()), rows
    assert rows[web.name]["restarts"] == 0 and "has not answered" not in settings.paths.log_file(web.name).read_text()


@pytest.mark.celery
def test_tasks_reach_the_execution_api_over_https(stack, airflow_up):
    settings = stack.settings()
    if not settings.api_tls:  # never in CI, which runs as root
        pytest.skip("not root or no pg_createcluster: this Celery session runs without STACK_TLS (conftest)")
    if profiles.of(settings).major != "3":
        pytest.skip("only Airflow 3's tasks call the API server (a 2.x Celery session is not part of CI)")
    began = time.monotonic()
    assert run_dag(stack, "env_probe") == "success"
    seen_file = settings.dags_folder / "env_probe.json"
    seen = json.loads(seen_file.read_text())
    seen_file.unlink()
    print(f"\n[figure] env_probe over HTTPS: success in {time.monotonic() - began:.1f} s")
    assert seen["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{settings.api_url}/execution/"
    assert seen["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("https://")
    assert seen["AIRFLOW__API__SSL_CERT"] == str(settings.tls_ca_file)  # the CA the Task SDK's client trusts
    assert "AIRFLOW__API__SSL_KEY" not in seen  # the server's key stays with the API server
    assert seen.get("SSL_CERT_FILE") == os.environ.get("SSL_CERT_FILE")  # DAG code's trust store is the user's


class Squatter:
    """Another local user's process on our Redis's TCP port: it accepts whatever connects and keeps what it
    is sent (an AUTH with a password, if any client dialed the port)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as any server would
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.received: list[tuple[str, bytes]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            if not select.select([self.sock], [], [], 0.2)[0]:
                continue
            conn, peer = self.sock.accept()
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while chunk := conn.recv(4096):
                        data += chunk
                except OSError:
                    pass
            self.received.append((f"{peer[0]}:{peer[1]}", data))

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def test_a_process_that_takes_the_redis_port_while_redis_restarts_receives_nothing(stack, airflow_up):
    """Our Redis stops; another program binds its port on 127.0.0.1; the stack's clients go on: its probes, the
    Celery workers' reconnects, a login counted by the limiter, our Redis started again, a DAG run. Not one of
    them dials the port: they all use the Unix socket. (With TCP opted in for other machines, our Redis cannot
    start beside the squatter: refused in one line, and it starts once the port is free.)"""
    settings = stack.settings()
    assert "redis: stopped" in stack.inv("stop", "-c", "redis").stdout
    squatter = Squatter(settings.redis_port)
    began = time.monotonic()
    try:
        down = stack.status()
        assert not down["redis"]["up"]
        # a wrong login, from an address of its own: the login limiter reaches for its storage in Redis
        transport = httpx.HTTPTransport(local_address="127.0.0.8", verify=verify_for(settings))
        with httpx.Client(base_url=settings.api_url, timeout=30, transport=transport) as web:
            path, token = _login_page(web, settings.airflow_line)
            login = web.post(path, data={"username": settings.admin_user, "password": "wrong",
                                         "csrf_token": token}).status_code
        time.sleep(10)  # the workers' broker connections retry meanwhile
        if settings.redis_tcp:  # workers elsewhere need the port: our Redis does not start beside a squatter
            assert_one_line_error(stack.inv("setup.redis", check=False), f"port {settings.redis_port} is in use")
            squatter.close()
        out = stack.inv("setup.redis").stdout
        assert "started Redis" in out
        if EXECUTOR == "celery":
            assert "Celery workers reconnected" in out
        state = run_dag(stack, "noop_forty")
        up = stack.status()
    finally:
        squatter.close()
        stack.inv("setup.redis")  # back for what follows, whatever happened ("already running" when it is)
    print(f"\n[figure] squatter on 127.0.0.1:{settings.redis_port} for {time.monotonic() - began:.0f} s "
          f"(TCP for other machines: {settings.redis_tcp}): {len(squatter.received)} connections, "
          f"{sum(len(data) for _, data in squatter.received)} bytes; login page {login}; run {state}")
    # nothing was sent to it; without TCP nothing even connected (with TCP setup.redis's check that the port is
    # free connects and sends nothing)
    assert [(peer, data[:20]) for peer, data in squatter.received if data] == []
    assert len(squatter.received) == (1 if settings.redis_tcp else 0), squatter.received
    assert state == "success"
    assert all(row["healthy"] for row in up.values()), up
