"""Run, stop and inspect the Airflow processes of components.TABLE, supervised by supervisor.py."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from invoke import Context

from . import (
    airflow_config,
    airflow_db,
    airflow_install,
    components,
    health,
    netutil,
    postgres,
    redis_server,
    supervisor,
)
from .errors import StackError
from .settings import Settings

HEALTH_TIMEOUT = 180.0


def _state_path(settings: Settings) -> Path:
    return settings.run_dir / "stack.json"


def recorded(settings: Settings) -> dict[str, str]:
    """What the running stack was started as (executor, line), or {}."""
    try:
        return json.loads(_state_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def running_components(settings: Settings) -> dict[str, supervisor.Running]:
    line = recorded(settings).get("line", settings.airflow_line)
    found = {}
    for comp in components.for_line(line):
        proc = supervisor.running(settings, comp.name)
        if proc:
            found[comp.name] = proc
    return found


def preflight(settings: Settings) -> None:
    """Everything a start needs, each missing piece named with the task that provides it."""
    if not settings.dags_folder.is_dir():
        raise StackError(f"DAG folder {settings.dags_folder} does not exist; create it or set STACK_DAGS_FOLDER")
    ok, reason = postgres.ping(settings)
    if not ok:
        raise StackError(f"PostgreSQL is not reachable as {settings.pg_user}@{settings.pg_host}:{settings.pg_port} "
                         f"({reason}); run: invoke setup.postgres")
    ok, reason = redis_server.ping(settings)
    if not ok:
        raise StackError(f"{reason}; run: invoke setup.redis")
    if not airflow_install.is_current(settings):
        raise StackError(f"Airflow {settings.airflow_line} is not installed (or its constraints changed); "
                         f"run: invoke setup.airflow")
    if airflow_db.needs_migration(settings):
        raise StackError(f"the metadata DB {settings.pg_database} needs `airflow db migrate`; "
                         f"run: invoke setup.airflow")


def _check_ports(settings: Settings, to_start: list[components.Component]) -> None:
    for comp in to_start:
        for setting, port in comp.listen_ports(settings):
            host = settings.api_host if setting == "api_port" else "0.0.0.0"
            if not netutil.port_bindable(port, host):
                env = f"STACK_{setting.upper()}"
                raise StackError(f"port {port} ({comp.name}) is in use by another program; "
                                 f"set {env} to a free port")


@dataclass
class StartReport:
    started: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    seconds: float = 0.0


def start(c: Context, settings: Settings, executor: str, timeout: float = HEALTH_TIMEOUT,
          only: list[str] | None = None) -> StartReport:
    """Start whatever of the executor's components is not running, then wait until all are healthy."""
    rec = recorded(settings)
    live = running_components(settings)
    if live and rec and (rec.get("executor"), rec.get("line")) != (executor, settings.airflow_line):
        raise StackError(f"the stack runs Airflow {rec.get('line')} with the {rec.get('executor')} executor; "
                         f"stop it first (invoke stop), then start it as {executor}")
    preflight(settings)
    wanted = [comp for comp in components.for_line(settings.airflow_line, executor)
              if only is None or comp.name in only]
    to_start = [comp for comp in wanted if comp.name not in live]
    report = StartReport(already=[comp.name for comp in wanted if comp.name in live])
    env = airflow_config.environment(settings, executor)
    airflow_config.write_config(settings, env)
    began = time.monotonic()
    if to_start:
        _check_ports(settings, to_start)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        _state_path(settings).write_text(json.dumps({"executor": executor, "line": settings.airflow_line}))
        airflow = str(airflow_install.airflow_bin(settings))
        for comp in to_start:
            supervisor.start(c, settings, comp.name, comp.command(airflow), env)
            report.started.append(comp.name)
    wait_healthy(settings, wanted, timeout)
    report.seconds = time.monotonic() - began
    return report


def wait_healthy(settings: Settings, wanted: list[components.Component], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = {comp.name: comp for comp in wanted}
    details: dict[str, str] = {}
    interval = 0.5
    while pending:
        for name, comp in list(pending.items()):
            proc = supervisor.running(settings, name)
            if proc is None:
                log = supervisor.log_file(settings, name)
                _print_log_tail(name, log)
                raise StackError(f"{name} exited during start-up; see {log} (last lines above)")
            ok, details[name] = health.check(comp.probe, settings, proc.started)
            if ok:
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            for name, comp in pending.items():
                _print_log_tail(name, supervisor.log_file(settings, name),
                                f"probe: {comp.probe.describe(settings)} -> {details.get(name)}")
            names = ", ".join(pending)
            raise StackError(f"{names} did not report healthy within {timeout:.0f} s (probe and last log lines "
                             f"above); fix the cause, then run invoke up again")
        time.sleep(interval)
        interval = min(interval * 1.3, 2.0)


def _print_log_tail(name: str, log: Path, headline: str = "") -> None:
    print(f"--- {name}{': ' + headline if headline else ''}; last lines of {log}:", file=sys.stderr)
    print(supervisor.tail(log, 12), file=sys.stderr)


def stop(settings: Settings, names: list[str] | None = None, timeout: float = supervisor.STOP_TIMEOUT) -> list[str]:
    """Stop Airflow components (all, or ``names``), last started first; return one line per component."""
    line = recorded(settings).get("line", settings.airflow_line)
    table = components.for_line(line)
    if names:
        table = tuple(components.by_name(line, name) for name in names)
    lines = []
    for comp in reversed(table):
        lines.append(f"{comp.name}: {supervisor.stop(settings, comp.name, timeout)}")
    if not running_components(settings):
        _state_path(settings).unlink(missing_ok=True)
    return lines


@dataclass
class Row:
    name: str
    pid: int | None
    up: bool
    healthy: bool
    detail: str
    ports: list[int]


def status(settings: Settings) -> list[Row]:
    rec = recorded(settings)
    line = rec.get("line", settings.airflow_line)
    executor = rec.get("executor", settings.executor)
    rows = []
    pg_ok, pg_detail = postgres.ping(settings)
    rows.append(Row("postgresql", None, pg_ok, pg_ok, pg_detail or f"{settings.pg_database} reachable",
                    [settings.pg_port]))
    redis_proc = supervisor.running(settings, redis_server.NAME)
    r_ok, r_detail = redis_server.ping(settings) if redis_proc else (False, "not running")
    rows.append(Row("redis", redis_proc.pid if redis_proc else None, redis_proc is not None, r_ok,
                    r_detail or "PONG", [settings.redis_port]))
    for comp in components.for_line(line, executor):
        proc = supervisor.running(settings, comp.name)
        if proc is None:
            rows.append(Row(comp.name, None, False, False, "not running", [p for _, p in comp.listen_ports(settings)]))
            continue
        ok, detail = health.check(comp.probe, settings, proc.started)
        rows.append(Row(comp.name, proc.pid, True, ok, detail, [p for _, p in comp.listen_ports(settings)]))
    return rows


def status_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


def status_table(rows: list[Row]) -> str:
    out = [f"{'COMPONENT':<15} {'PID':>7}  {'STATE':<5} {'HEALTH':<10} {'PORTS':<12} DETAIL"]
    for r in rows:
        state = "up" if r.up else "down"
        healthy = "healthy" if r.healthy else ("-" if not r.up else "unhealthy")
        ports = ",".join(map(str, r.ports))
        out.append(f"{r.name:<15} {r.pid or '-':>7}  {state:<5} {healthy:<10} {ports:<12} {r.detail}")
    return "\n".join(out)
