"""`invoke status`: one row per instance of the registry (and PostgreSQL), and its renderers.

It only reads: probes, the process table and the metadata DB; no file is written or removed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import psycopg

from ..apache_airflow import install, releases
from ..components import BACKUPS, DEFAULT_QUEUE
from ..services import postgres
from ..settings import Settings
from . import health, measure, registry, supervisor

POSTGRESQL = "postgresql"


@dataclass
class Row:
    name: str
    pid: int | None
    up: bool
    healthy: bool
    detail: str
    ports: list[int]
    memory_mib: float | None = None  # PSS where the kernel gives it (else RSS), process and children
    cpu_seconds: float | None = None  # user + system CPU time so far, process and children
    version: str | None = None  # the Airflow release the process runs
    restarts: int = 0  # started again by its supervisor after it died
    last_exit: int | None = None  # the exit code it died with last (negative: the signal)


def usage(pid: int) -> tuple[float, float] | None:
    """(memory MiB as PSS, CPU seconds) of a process and its children: PSS counts shared pages once."""
    pids = measure.tree(pid)
    if not pids:
        return None
    return measure.pss_mib(pids), measure.cpu_seconds(pids)


def _queues_in_use(settings: Settings) -> set[str] | None:
    try:
        with psycopg.connect(**settings.pg_conninfo(connect_timeout=3)) as conn:
            return {row[0] for row in conn.execute("SELECT DISTINCT queue FROM task_instance").fetchall()}
    except psycopg.Error:
        return None


def rows(settings: Settings) -> list[Row]:
    """PostgreSQL, then every instance the stack's executor runs or that runs anyway (an extra worker)."""
    executor = registry.executor(settings)
    line = registry.line(settings)
    pg_ok, pg_detail = postgres.ping(settings)
    found = [Row(POSTGRESQL, None, pg_ok, pg_ok, pg_detail or f"{settings.pg_database} reachable",
                 [settings.pg_port])]
    wanted = {comp.name for comp in line.for_executor(executor)}
    in_use: set[str] | None = None
    for inst in registry.instances(settings):
        comp = inst.component
        proc = supervisor.running(settings, inst.name)
        if proc is None and not (inst.name in wanted or not comp.airflow):
            continue  # not this executor's, and not running
        if proc is None and comp is BACKUPS and not registry.recorded(settings):
            continue  # it runs beside a stack started here: not on a worker's machine, nor while stopped
        ports = [] if inst.extra_worker else [p for _, p in comp.listen_ports(settings, executor)]
        if proc is None:
            code = supervisor.restarting(settings, inst.name)
            detail = "not running" if code is None else f"exited ({code}); its supervisor starts it again"
            found.append(Row(inst.name, None, False, False, detail, ports))
            continue
        ok, detail = health.check(comp.probe, settings, proc.started, inst.name)
        if proc.restarts:
            detail += f"; restarted {proc.restarts}x, last exit {proc.last_exit}"
        if inst.extra_worker:  # extra workers serve no logs when the main one does
            queues = proc.argv[proc.argv.index("--queues") + 1].split(",") if "--queues" in proc.argv else []
            in_use = _queues_in_use(settings) if in_use is None else in_use
            unused = [q for q in queues if in_use is not None and q not in in_use and q != DEFAULT_QUEUE]
            if unused and len(unused) == len(queues):
                detail += f"; no task has used its queues ({','.join(queues)}) yet"
        if proc.version:
            detail += f"; Airflow {proc.version}"
        found.append(Row(inst.name, proc.pid, True, ok, detail, ports, *(usage(proc.pid) or (None, None)),
                         proc.version, proc.restarts, proc.last_exit))
    return found


def versions(settings: Settings) -> list[str]:
    """What the project pins, what runs, what is configured and installed, and what the stack can run."""
    lines = []
    pinned = releases.pinned_by_project(settings)
    lines.append(f"project {settings.project_dir}: " + (f"pins Airflow {pinned.version} ({pinned.source})" if pinned
                                                       else "pins no Airflow release (no Dockerfile naming one)"))
    chosen = releases.resolve(settings)
    installed = install.installed_version(settings)
    lines.append(f"configured: Airflow {chosen.version} ({chosen.source}); "
                 + (f"installed in {install.venv(settings)} on Python {install.venv_python(settings)}" if installed
                    else "not installed yet (invoke up installs it)"))
    running: dict[str, list[str]] = {}
    for name, proc in registry.running(settings).items():
        running.setdefault(proc.version or "unknown", []).append(name)
    lines += [f"runs: Airflow {version}: {', '.join(names)}" for version, names in running.items()] or \
        ["runs: nothing"]
    lines.append(f"can run: {releases.supported()} (newest known patches: "
                 f"{', '.join(series.newest for series in releases.SERIES.values())}; 2.x is end of life)")
    return lines


def to_json(found: list[Row]) -> str:
    return json.dumps([asdict(r) for r in found], indent=2)


def to_table(found: list[Row]) -> str:
    width = max([len("COMPONENT"), len("total (ours)"), *(len(r.name) for r in found)])
    out = [f"{'COMPONENT':<{width}} {'PID':>7}  {'STATE':<5} {'HEALTH':<10} {'MEM MiB':>8} {'CPU s':>7}  "
           f"{'PORTS':<12} DETAIL"]
    for r in found:
        state = "up" if r.up else "down"
        healthy = "healthy" if r.healthy else ("-" if not r.up else "unhealthy")
        ports = ",".join(map(str, r.ports))
        mem = f"{r.memory_mib:.0f}" if r.memory_mib is not None else "-"
        cpu = f"{r.cpu_seconds:.1f}" if r.cpu_seconds is not None else "-"
        out.append(f"{r.name:<{width}} {r.pid or '-':>7}  {state:<5} {healthy:<10} {mem:>8} {cpu:>7}  "
                   f"{ports:<12} {r.detail}")
    measured = [r for r in found if r.memory_mib is not None]
    if measured:
        total_mem = sum(r.memory_mib or 0 for r in measured)
        total_cpu = sum(r.cpu_seconds or 0 for r in measured)
        out.append(f"{'total (ours)':<{width}} {'':>7}  {'':<5} {'':<10} {total_mem:>8.0f} {total_cpu:>7.1f}")
    return "\n".join(out)
