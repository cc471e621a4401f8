"""Health probes for the components in components.TABLE, plus PostgreSQL and Redis pings."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request

import psycopg

from .components import Probe
from .settings import Settings

# Airflow's own threshold for a heartbeat to count as healthy ([scheduler] *_health_check_threshold)
HEARTBEAT_THRESHOLD = 30.0


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check(probe: Probe, settings: Settings, started: float | None = None) -> tuple[bool, str]:
    """(healthy, one-line detail)."""
    if probe.kind == "http":
        return _check_http(probe, settings)
    if probe.kind == "job":
        return _check_job(probe, settings, started)
    raise ValueError(f"unknown probe kind {probe.kind}")


def _check_http(probe: Probe, settings: Settings) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{getattr(settings, probe.port_setting)}{probe.path}"
    try:
        status, body = http_get(url)
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
