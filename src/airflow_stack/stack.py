"""Run, stop and inspect the Airflow processes of components.TABLE, supervised by supervisor.py.

Additional Celery workers (``invoke run.worker``) are instances of the table's ``worker`` component,
named ``worker-NAME``; their pid files are how status, stop and logs find them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from invoke import Context

from . import (
    airflow_config,
    airflow_db,
    airflow_install,
    components,
    health,
    measure,
    netutil,
    postgres,
    redis_server,
    supervisor,
)
from .components import Component
from .errors import StackError
from .settings import Settings, specs

HEALTH_TIMEOUT = 180.0
POLL_INTERVAL = 0.3  # seconds between health probes while waiting for a start


def _state_path(settings: Settings) -> Path:
    return settings.run_dir / "stack.json"


def recorded(settings: Settings) -> dict[str, str]:
    """What the running stack was started as (executor, line), or {}."""
    try:
        return json.loads(_state_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _line(settings: Settings) -> str:
    return recorded(settings).get("line", settings.airflow_line)


def extra_workers(settings: Settings) -> list[str]:
    """Names (worker-NAME) of the additional workers this state dir has pid files for."""
    if not settings.run_dir.is_dir():
        return []
    return sorted(p.stem for p in settings.run_dir.glob(f"{components.WORKER_PREFIX}*.pid"))


def instances(settings: Settings, line: str | None = None) -> list[tuple[str, Component]]:
    """Every process this state dir may run: (name, its component in the table)."""
    line = line or _line(settings)
    found = [(comp.name, comp) for comp in components.for_line(line)]
    return found + [(name, components.WORKER) for name in extra_workers(settings)]


def running_components(settings: Settings) -> dict[str, supervisor.Running]:
    found = {}
    for name, _ in instances(settings):
        proc = supervisor.running(settings, name)
        if proc:
            found[name] = proc
    return found


def require_services(settings: Settings, pg_fix: str, redis_fix: str, password_fix: str = "") -> None:
    """PostgreSQL (as Airflow's role) and our Redis must answer; else say what fixes it."""
    ok, reason = postgres.ping(settings)
    if not ok:
        raise StackError(f"cannot reach PostgreSQL at {settings.pg_host}:{settings.pg_port} as {settings.pg_user} "
                         f"({reason}); {pg_fix}")
    ok, reason = redis_server.ping(settings)
    if not ok:
        refused = "refused the password" in reason
        raise StackError(f"{reason}; {password_fix if refused and password_fix else redis_fix}")


# invoke setup.redis alone would restart our Redis with the new password, under running Airflow processes
# that keep the one they were started with
REDIS_PASSWORD_FIX = ("use the password our Redis runs with (requirepass in its redis.conf), or apply a new one: "
                      "invoke setup.redis && invoke stop && invoke up")


def preflight(settings: Settings) -> None:
    """Everything a start needs, each missing piece named with the task that provides it."""
    if not settings.dags_folder.is_dir():
        raise StackError(f"DAG folder {settings.dags_folder} does not exist; create it or set STACK_DAGS_FOLDER")
    require_services(settings, "run: invoke setup.postgres", "run: invoke setup.redis", REDIS_PASSWORD_FIX)
    if not airflow_install.is_current(settings):
        raise StackError(f"Airflow {settings.airflow_line} is not installed (or its constraints changed); "
                         f"run: invoke setup.airflow")
    if airflow_db.needs_migration(settings):
        raise StackError(f"the metadata DB {settings.pg_database} needs `airflow db migrate`; "
                         f"run: invoke setup.airflow")


# what every Airflow process must share with the stack's machine (airflow-facts: shared secrets)
SHARED_SECRETS = ("pg_password", "redis_password", "fernet_key", "jwt_secret", "api_secret_key")


def check_worker_machine(settings: Settings) -> None:
    """What a worker needs from the stack's machine, each gap named with what to copy or run."""
    missing = [specs()[name].env for name in SHARED_SECRETS if not getattr(settings, name)]
    if missing:
        raise StackError(f"this machine lacks {', '.join(missing)}: copy the stack machine's .env here "
                         f"(every Airflow process must share them), then set STACK_PG_HOST, STACK_REDIS_HOST "
                         f"and STACK_API_HOST to that machine's address")
    require_services(settings,
                     "allow this machine there: invoke setup.postgres --listen ... --allow-from ...",
                     "on the stack's machine run invoke setup.redis (with --bind for other machines), "
                     "and check STACK_REDIS_HOST / STACK_REDIS_PASSWORD here")


def check_ports(settings: Settings, to_start: list[Component], executor: str) -> None:
    for comp in to_start:
        for setting, port in comp.listen_ports(settings, executor):
            host = settings.api_host if setting == "api_port" else "0.0.0.0"
            if not netutil.port_bindable(port, host):
                holder = netutil.port_holder(port) or "another program"
                raise StackError(f"port {port} ({comp.name}) is held by {holder}; stop that, "
                                 f"or set STACK_{setting.upper()} to a free port")


@dataclass
class StartReport:
    started: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    seconds: float = 0.0


def start(c: Context, settings: Settings, executor: str, timeout: float = HEALTH_TIMEOUT,
          extras: tuple[str, ...] = ()) -> StartReport:
    """Start whatever of the executor's components is not running, then wait until all are healthy."""
    rec = recorded(settings)
    live = running_components(settings)
    if live and rec and (rec.get("executor"), rec.get("line")) != (executor, settings.airflow_line):
        raise StackError(f"the stack runs Airflow {rec.get('line')} with the {rec.get('executor')} executor; "
                         f"stop it first (invoke stop), or switch with: invoke up --executor {executor}")
    preflight(settings)
    wanted = list(components.for_line(settings.airflow_line, executor, extras))
    to_start = [comp for comp in wanted if comp.name not in live]
    report = StartReport(already=[comp.name for comp in wanted if comp.name in live])
    env = airflow_config.environment(settings, executor)
    airflow_config.write_config(settings, env)
    began = time.monotonic()
    if to_start:
        for comp in to_start:  # what a killed component left behind would hold its ports
            supervisor.reap_orphans(settings, comp.name, whole_session=comp.reap_session)
        check_ports(settings, to_start, executor)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        _state_path(settings).write_text(json.dumps({"executor": executor, "line": settings.airflow_line}))
        airflow = str(airflow_install.airflow_bin(settings))
        launch_airflow(c, settings, [supervisor.Launch(comp.name, comp.command(airflow, settings),
                                                       components.preload(comp, settings.airflow_line))
                                     for comp in to_start], env)
        report.started += [comp.name for comp in to_start]
    wait_healthy(settings, [(comp.name, comp) for comp in wanted], timeout)
    report.seconds = time.monotonic() - began
    return report


def launch_airflow(c: Context, settings: Settings, launches: list[supervisor.Launch], env: dict[str, str]) -> None:
    """Start Airflow processes from one launcher on Airflow's own Python, which imports Airflow once."""
    supervisor.start_many(c, settings, launches, env, python=str(airflow_install.airflow_python(settings)),
                          preload=components.PRELOAD[settings.airflow_line])


def wait_healthy(settings: Settings, wanted: list[tuple[str, Component]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(wanted)
    details: dict[str, str] = {}
    while pending:
        for name, comp in list(pending.items()):
            proc = supervisor.running(settings, name)
            if proc is None:
                log = supervisor.log_file(settings, name)
                _print_log_tail(name, log)
                raise StackError(f"{name} exited during start-up; see {log} (last lines above)")
            ok, details[name] = health.check(comp.probe, settings, proc.started, name)
            if ok and comp.probe.warmup:
                ok, details[name] = health.warm_up(comp.probe, settings)
            if ok:
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            for name, comp in pending.items():
                _print_log_tail(name, supervisor.log_file(settings, name),
                                f"probe: {comp.probe.describe(settings)} -> {details.get(name)}")
            raise StackError(f"{', '.join(pending)} did not report healthy within {timeout:.0f} s (probe and "
                             f"last log lines above); fix the cause, then run invoke up again")
        # a steady, short poll: each probe is a local HTTP GET or one small query, and a longer or growing
        # interval (it was up to 2 s) only adds to the time a start reports
        time.sleep(POLL_INTERVAL)


def wait_workers_reconnected(settings: Settings, timeout: float = HEALTH_TIMEOUT) -> list[str]:
    """After our Redis (re)started: wait until the running Celery workers answer pings again.

    A worker whose broker went away reconnects with a growing back-off (kombu's), which can take
    10-20 s; a setup step that restarted Redis is done only once the workers are back.
    """
    workers = [(name, comp) for name, comp in instances(settings)
               if comp.probe.kind == "celery" and supervisor.running(settings, name)]
    if not workers:
        return []
    began = time.monotonic()
    wait_healthy(settings, workers, timeout)
    return [f"Celery workers reconnected ({', '.join(name for name, _ in workers)}) in "
            f"{time.monotonic() - began:.0f} s"]


def _print_log_tail(name: str, log: Path, headline: str = "") -> None:
    print(f"--- {name}{': ' + headline if headline else ''}; last lines of {log}:", file=sys.stderr)
    print(supervisor.tail(log, 12), file=sys.stderr)


def start_worker(c: Context, settings: Settings, name: str, queues: str, concurrency: int,
                 timeout: float = HEALTH_TIMEOUT) -> tuple[str, bool]:
    """Start an additional Celery worker ``worker-NAME``; (its name, whether it was already running)."""
    instance = f"{components.WORKER_PREFIX}{name}"
    if supervisor.running(settings, instance):
        return instance, True
    env = airflow_config.environment(settings, "celery")
    airflow_config.write_config(settings, env)
    # the first worker on a machine serves task logs on the log port; others find it taken
    serve_logs = netutil.port_bindable(settings.worker_log_port, "0.0.0.0")
    argv = components.worker_command(str(airflow_install.airflow_bin(settings)), name, queues, concurrency,
                                     serve_logs)
    preload = components.preload(components.WORKER, settings.airflow_line)
    launch_airflow(c, settings, [supervisor.Launch(instance, argv, preload)], env)
    wait_healthy(settings, [(instance, components.WORKER)], timeout)
    return instance, False


def stop(settings: Settings, names: list[str] | None = None, timeout: float = supervisor.STOP_TIMEOUT) -> list[str]:
    """Stop Airflow processes (all, or ``names``), last started first; one line per process.

    A Celery worker gets SIGTERM, its warm shutdown: it takes no new task and finishes the running
    ones within ``timeout``; the scheduler requeues what a killed worker leaves behind.
    """
    known = dict(instances(settings))
    if names:
        for name in names:
            if name not in known and not name.startswith(components.WORKER_PREFIX):
                components.by_name(_line(settings), name)  # raises with the valid names
        # a worker-NAME that died is no longer listed, but may have left processes to reap
        selected = [(name, known.get(name, components.WORKER)) for name in names]
    else:
        selected = list(known.items())
    results = [(name, supervisor.stop(settings, name, timeout, whole_session=comp.reap_session))
               for name, comp in reversed(selected)]
    lines = [f"{name}: {result}" for name, result in results if names or result != "not running"]
    if not running_components(settings):
        _state_path(settings).unlink(missing_ok=True)
    return lines or ["airflow: nothing was running"]


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
    redis_usage = (usage(redis_proc.pid) if redis_proc else None) or (None, None)
    rows.append(Row("redis", redis_proc.pid if redis_proc else None, redis_proc is not None, r_ok,
                    r_detail or "PONG", [settings.redis_port], *redis_usage))
    wanted = [(comp.name, comp) for comp in components.for_line(line, executor)]
    wanted += [(name, comp) for name, comp in instances(settings, line)
               if (name, comp) not in wanted and supervisor.running(settings, name)]
    in_use = None
    for name, comp in wanted:
        ports = [p for _, p in comp.listen_ports(settings, executor)]
        proc = supervisor.running(settings, name)
        if proc is None:
            rows.append(Row(name, None, False, False, "not running", ports))
            continue
        ok, detail = health.check(comp.probe, settings, proc.started, name)
        if name.startswith(components.WORKER_PREFIX):
            ports = []  # extra workers serve no logs when the main one does
            queues = proc.argv[proc.argv.index("--queues") + 1].split(",") if "--queues" in proc.argv else []
            in_use = _queues_in_use(settings) if in_use is None else in_use
            unused = [q for q in queues if in_use is not None and q not in in_use and q != components.DEFAULT_QUEUE]
            if unused and len(unused) == len(queues):
                detail += f"; no task has used its queues ({','.join(queues)}) yet"
        rows.append(Row(name, proc.pid, True, ok, detail, ports, *(usage(proc.pid) or (None, None))))
    return rows


def status_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


def status_table(rows: list[Row]) -> str:
    out = [f"{'COMPONENT':<15} {'PID':>7}  {'STATE':<5} {'HEALTH':<10} {'MEM MiB':>8} {'CPU s':>7}  "
           f"{'PORTS':<12} DETAIL"]
    for r in rows:
        state = "up" if r.up else "down"
        healthy = "healthy" if r.healthy else ("-" if not r.up else "unhealthy")
        ports = ",".join(map(str, r.ports))
        mem = f"{r.memory_mib:.0f}" if r.memory_mib is not None else "-"
        cpu = f"{r.cpu_seconds:.1f}" if r.cpu_seconds is not None else "-"
        out.append(f"{r.name:<15} {r.pid or '-':>7}  {state:<5} {healthy:<10} {mem:>8} {cpu:>7}  "
                   f"{ports:<12} {r.detail}")
    measured = [r for r in rows if r.memory_mib is not None]
    if measured:
        total_mem = sum(r.memory_mib or 0 for r in measured)
        total_cpu = sum(r.cpu_seconds or 0 for r in measured)
        out.append(f"{'total (ours)':<15} {'':>7}  {'':<5} {'':<10} {total_mem:>8.0f} {total_cpu:>7.1f}")
    return "\n".join(out)
