"""Health probes for the components (components.py, the line profiles), our Redis and memcached."""

from __future__ import annotations

import datetime as dt
import functools
import json
import socket
import ssl
import time
import urllib.error
import urllib.request

import psycopg

from ..components import Probe, celery_node_name
from ..services import memcached_server, redis_server
from ..settings import Settings
from . import backup_schedule

# Airflow's own threshold for a heartbeat to count as healthy ([scheduler] *_health_check_threshold)
HEARTBEAT_THRESHOLD = 30.0


@functools.lru_cache(maxsize=4)
def _opener(ca_file: str) -> urllib.request.OpenerDirector:
    """The probes dial the stack's own addresses: never through a proxy the user's shell sets (http_proxy),
    which urlopen would otherwise use even for 127.0.0.1; HTTPS verified with ``ca_file`` (the stack's CA)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ca_file:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)))
    return urllib.request.build_opener(*handlers)


def http_get(url: str, timeout: float = 3.0, ca_file: str = "") -> tuple[int, bytes]:
    try:
        with _opener(ca_file).open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def warm_up(probe: Probe, settings: Settings, timeout: float = 60.0) -> tuple[bool, str]:
    """GET the probe's warm-up path: (answered 200, one-line detail)."""
    url = probe.url(settings, probe.warmup)
    try:
        status, _ = http_get(url, timeout=timeout, ca_file=probe.ca_file(settings))
    except OSError as exc:
        return False, f"warm-up {probe.warmup}: no answer ({getattr(exc, 'reason', exc)})"
    return status == 200, f"warm-up {probe.warmup}: HTTP {status}"


def check(probe: Probe, settings: Settings, started: float | None = None, name: str = "") -> tuple[bool, str]:
    """(healthy, one-line detail)."""
    if probe.kind == "http":
        return _check_http(probe, settings)
    if probe.kind == "job":
        return _check_job(probe, settings, started)
    if probe.kind == "celery":
        return _check_celery(name, settings)
    if probe.kind == "redis":
        ok, reason = redis_server.ping(settings)
        return ok, reason or "PONG"
    if probe.kind == "memcached":
        return memcached_server.ping(settings)
    if probe.kind == "backup":
        verdict = backup_schedule.assess(settings, backup_schedule.read(settings), time.time())
        return verdict.ok, verdict.detail
    raise ValueError(f"unknown probe kind {probe.kind}")


@functools.lru_cache(maxsize=4)
def _celery_app(broker_url: str):
    from celery import Celery

    app = Celery("airflow-stack-probe", broker=broker_url, set_as_current=False)
    # a probe must answer quickly, also when Redis is down
    app.conf.update(broker_connection_timeout=2, broker_connection_retry=False,
                    broker_connection_retry_on_startup=False, broker_connection_max_retries=1)
    return app


def celery_ping(settings: Settings, nodes: list[str], timeout: float = 1.5) -> dict[str, bool]:
    """Ping Celery nodes (NAME@host) through the broker, as the workers reach it (the ACL user; a worker
    machine has no other Redis password); node -> answered."""
    app = _celery_app(settings.airflow_redis_url(0))
    try:
        replies = app.control.ping(destination=nodes, timeout=timeout, limit=len(nodes))
    except Exception as exc:  # kombu raises several transport-specific errors
        raise ConnectionError(f"broker unreachable ({exc.__class__.__name__})") from None
    answered = {node for reply in replies for node in reply}
    return {node: node in answered for node in nodes}


def _check_celery(name: str, settings: Settings) -> tuple[bool, str]:
    node = f"{celery_node_name(name)}@{socket.gethostname()}"
    try:
        ok = celery_ping(settings, [node])[node]
    except ConnectionError as exc:
        return False, str(exc)
    return ok, f"{node} answers ping" if ok else f"{node} does not answer ping"


def _check_http(probe: Probe, settings: Settings) -> tuple[bool, str]:
    url = probe.url(settings)
    try:
        status, body = http_get(url, ca_file=probe.ca_file(settings))
    except OSError as exc:
        return False, f"no answer ({getattr(exc, 'reason', exc)})"
    if status != 200:
        return False, f"HTTP {status}"
    if not probe.json_key:
        return True, "HTTP 200"
    try:
        state = json.loads(body)[probe.json_key]["status"]
    except (ValueError, KeyError, TypeError):
        return False, "unexpected health answer"
    return state == "healthy", f"{probe.json_key} {state}"


def _check_job(probe: Probe, settings: Settings, started: float | None) -> tuple[bool, str]:
    since = dt.datetime.fromtimestamp((started or 0) - 5, tz=dt.timezone.utc)
    try:
        with psycopg.connect(**settings.pg_conninfo(connect_timeout=3)) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM now() - max(latest_heartbeat)) FROM job "
                "WHERE job_type = %s AND state = 'running' AND start_date >= %s",
                (probe.job_type, since)).fetchone()
    except psycopg.errors.UndefinedTable:
        return False, "no job table yet"
    except psycopg.Error as exc:
        return False, f"metadata DB unreachable ({exc.__class__.__name__})"
    age = row[0] if row else None
    if age is None:
        return False, f"no {probe.job_type} heartbeat yet"
    age = float(age)
    return age < HEARTBEAT_THRESHOLD, f"heartbeat {age:.0f} s ago"
