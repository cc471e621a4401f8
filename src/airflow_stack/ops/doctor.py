"""`invoke doctor`: proves the production warnings are gone, and says how to fix what is not.

Every check reads the running system itself (process environments, the job table, Redis, sockets),
not just our configuration: a stack started by hand with other settings is caught too. Each check
returns pass, warn or fail, a detail line (never a secret) and, unless it passes, the one command
that fixes it. A warning is printed but does not make doctor fail.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict

import psutil
import psycopg

from .. import netutil
from ..apache_airflow import config, install
from ..components import WORKER, WORKER_PREFIX
from ..runtime import registry, supervisor
from ..runtime import status as status_mod
from ..services import postgres, redis_server
from ..settings import Settings
from .checks import LEVELS, Check, warning
from .doctor_security import (
    AFTER_PASSWORD,
    check_encryption,
    check_files,
    check_limiter,
    check_loopback_password,
    check_redis,
    check_shared_secrets,
    password_refused,
)

__all__ = ["LEVELS", "Check", "run_all", "warning"]

MIN_FREE_DISK = 1 << 30
MIB = 1 << 20


def check_database(settings: Settings, envs: dict[str, dict[str, str]]) -> Check:
    urls = {env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "") for env in envs.values()}
    if any(not url.startswith("postgresql") for url in urls):
        return Check("metadata database", False, "a running component uses SQLite (or no database URL)",
                     "invoke stop && invoke up")
    ok, reason = postgres.ping(settings)
    if not ok:
        return Check("metadata database", False, f"PostgreSQL not reachable ({reason})", "invoke setup.postgres")
    return Check("metadata database", True, f"PostgreSQL {settings.pg_host}:{settings.pg_port}/{settings.pg_database}")


def check_executor(settings: Settings, envs: dict[str, dict[str, str]]) -> Check:
    executors = {env.get("AIRFLOW__CORE__EXECUTOR", "") for env in envs.values()} or {
        config.EXECUTOR_CLASSES[settings.executor]}
    bad = executors - set(config.EXECUTOR_CLASSES.values())
    if bad or len(executors) > 1:
        return Check("executor", False, f"running with {', '.join(sorted(executors))}", "invoke stop && invoke up")
    return Check("executor", True, executors.pop())


def check_role(settings: Settings) -> Check:
    try:
        with psycopg.connect(**settings.pg_conninfo(connect_timeout=3)) as conn:
            superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    except psycopg.Error:
        return Check("database role", False, "cannot log in as the Airflow role", "invoke setup.postgres")
    if superuser:
        return Check("database role", False, f"{settings.pg_user} is a superuser",
                     "set STACK_PG_USER to a new role name, then invoke setup.postgres")
    return Check("database role", True, f"{settings.pg_user} is not a superuser")



def check_components(settings: Settings, refused: bool = False) -> list[Check]:
    checks = []
    for row in status_mod.rows(settings):
        if row.name in (status_mod.POSTGRESQL, redis_server.NAME):  # they have checks of their own
            continue
        fix = "" if row.healthy else ("invoke up" if not row.up else f"invoke logs -c {row.name}")
        if refused and row.up and not row.healthy and row.detail.startswith("broker unreachable"):
            fix = AFTER_PASSWORD  # the Celery ping goes through our Redis with the configured password
        checks.append(Check(row.name, row.healthy, row.detail, fix))
    return checks


def check_python(settings: Settings) -> Check:
    """Airflow's venv runs on a Python its release supports."""
    profile = registry.line(settings)  # the release that runs, else the one configured
    found = install.venv_python(settings.replace(airflow_version=profile.release))
    if found is None:
        return Check("python", False, f"Airflow {profile.release} is not installed", "invoke setup.airflow")
    version = tuple(int(part) for part in found.split("."))
    if not profile.supports_python(version):  # type: ignore[arg-type]
        return Check("python", False, f"Airflow {profile.release}'s venv runs on Python {found}; it needs "
                     f"{profile.python_range()}", "set STACK_AIRFLOW_PYTHON to a supported python3, then invoke up")
    return Check("python", True, f"Airflow {profile.release}'s venv runs on Python {found} (it supports "
                 f"{profile.python_range()})")


def check_ports(settings: Settings, running: dict[str, supervisor.Running]) -> Check:
    executor = registry.executor(settings)
    taken = []
    for comp in registry.line(settings).for_executor(executor):
        if comp.name in running:
            continue
        for setting, port in comp.listen_ports(settings, executor):
            if not netutil.port_bindable(port, "0.0.0.0"):
                taken.append(f"{port} ({comp.name}, STACK_{setting.upper()})")
    if taken:
        return Check("ports", False, f"taken by other programs: {', '.join(taken)}",
                     "free them, or set the named settings to free ports")
    return Check("ports", True, "every port is free or ours")


def check_disk(settings: Settings) -> Check:
    where = settings.paths.logs
    while not where.exists() and where != where.parent:  # doctor reads: it creates no folder
        where = where.parent
    free = shutil.disk_usage(where).free
    ok = free >= MIN_FREE_DISK
    return Check("disk", ok, f"{free / (1 << 30):.1f} GiB free for logs in {settings.paths.logs}",
                 "" if ok else "free space, or move STACK_STATE_DIR to a larger disk")


def _flag_value(argv: tuple[str, ...], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def _as_slots(value: object, default: int) -> int:
    try:
        return max(1, int(str(value)))
    except ValueError:
        return default


def task_slots(settings: Settings, executor: str, running: dict[str, supervisor.Running]) -> tuple[int, str, str]:
    """How many tasks could run at once on this machine: (slots, where that comes from, the setting
    that bounds it). Read from what the running processes were started with, else from the settings."""
    scheduler = running.get("scheduler")
    parallelism = _as_slots(scheduler.env.get("AIRFLOW__CORE__PARALLELISM") if scheduler else None,
                            settings.parallelism)
    if executor != "celery":
        return parallelism, f"parallelism {parallelism}", "AIRFLOW__CORE__PARALLELISM"
    workers = {name: proc for name, proc in running.items()
               if name == WORKER.name or name.startswith(WORKER_PREFIX)}
    if workers:
        concurrency = sum(_as_slots(_flag_value(proc.argv, "--concurrency"), settings.worker_concurrency)
                          for proc in workers.values())
        source = f"concurrency {concurrency} of {len(workers)} local Celery worker{'s' * (len(workers) > 1)}"
    else:
        concurrency = settings.worker_concurrency
        source = f"worker concurrency {concurrency}"
    if parallelism < concurrency:  # the scheduler never runs more than parallelism at once
        return parallelism, f"parallelism {parallelism}, below the {source}", "AIRFLOW__CORE__PARALLELISM"
    return concurrency, source, "AIRFLOW__CELERY__WORKER_CONCURRENCY"


def memory_verdict(slots: int, source: str, setting: str, task_mib: float, available: int) -> Check:
    """Warn when the task slots that could run at once need more memory than is available."""
    need, have = slots * task_mib, available / MIB
    detail = f"{slots} task slots ({source}) x {task_mib:.0f} MiB = {need:.0f} MiB; {have:.0f} MiB available"
    if need <= have:
        return Check("memory", True, detail)
    fit = max(1, int(have // task_mib))
    return warning("memory", f"{detail}: tasks may be killed for lack of memory",
                   f"set {setting} to {fit} (or less) in .env, then invoke stop && invoke up")


def check_memory(settings: Settings, running: dict[str, supervisor.Running]) -> Check:
    executor, line = registry.executor(settings), registry.line(settings)
    slots, source, setting = task_slots(settings, executor, running)
    task_mib = line.task_pss_mib.get(executor, max(line.task_pss_mib.values()))
    return memory_verdict(slots, source, setting, task_mib, psutil.virtual_memory().available)


def run_all(settings: Settings) -> list[Check]:
    running = registry.running(settings)
    # what each process was started with, as its launcher recorded it (secrets as hashes): reading
    # /proc/PID/environ fails for processes that set their title (setproctitle overwrites it)
    envs = {name: proc.env for name, proc in running.items()}
    refused = password_refused(settings)
    checks: list[Check] = [check_database(settings, envs), check_executor(settings, envs), check_role(settings),
                           check_loopback_password(settings)]
    checks += check_redis(settings, refused)
    checks.append(check_encryption(settings))
    checks += [check_limiter(settings, envs, refused), check_files(settings), check_shared_secrets(settings, envs)]
    checks += check_components(settings, refused)
    checks += [check_python(settings), check_ports(settings, running), check_disk(settings),
               check_memory(settings, running)]
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        line = f"{check.level.upper():<4}  {check.name:<18} {check.detail}"
        if check.level != "pass" and check.fix:
            line += f"\n      fix: {check.fix}"
        lines.append(line)
    failed = [c.name for c in checks if c.level == "fail"]
    warned = [c.name for c in checks if c.level == "warn"]
    summary = (f"doctor: all {len(checks)} checks pass" if not failed
               else f"doctor: {len(failed)} of {len(checks)} checks fail ({', '.join(failed)})")
    if warned:
        summary += f"; {len(warned)} warning{'s' * (len(warned) > 1)} ({', '.join(warned)})"
    lines.append(summary)
    return "\n".join(lines)


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


