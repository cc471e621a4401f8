"""What runs now: every instance this state dir may run, and which of them are running.

An instance is a named process of a component: the running line's components, the extra Celery
workers started with ``run.worker`` (``worker-NAME``, instances of the line's ``worker``), and our
Redis. run, stop, status, logs, doctor and the benchmark ask this module; none globs pid files or
special-cases a name. It only reads: collecting what a dead process left is supervisor.collect's
job, called by the operations that start or stop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..apache_airflow import config, profiles
from ..components import BACKUPS, MEMCACHED, REDIS, WORKER, WORKER_PREFIX, Component
from ..errors import StackError
from ..services import memcached_server
from ..settings import Settings
from . import supervisor


@dataclass(frozen=True)
class Instance:
    name: str
    component: Component

    @property
    def extra_worker(self) -> bool:
        return self.name.startswith(WORKER_PREFIX)


# ---- what the running stack was started as ---------------------------------------------------
def recorded(settings: Settings) -> dict[str, str]:
    """What the running stack was started as ({"executor", "line", "release"}), or {}."""
    try:
        found = json.loads(settings.paths.stack_record.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def record(settings: Settings, executor: str, release: str) -> None:
    settings.paths.make_private()
    settings.paths.stack_record.write_text(json.dumps(
        {"executor": executor, "line": profiles.for_release(release).name, "release": release}))


def forget(settings: Settings) -> None:
    settings.paths.stack_record.unlink(missing_ok=True)


def line(settings: Settings) -> profiles.AirflowLine:
    """The profile of the release the running stack runs, else of the configured one."""
    rec = recorded(settings)
    for name in (rec.get("release"), rec.get("line")):  # a record of an earlier airflow-stack has no release
        if name:
            try:
                return profiles.get(name)
            except StackError:
                break
    return profiles.of(settings)


def executor(settings: Settings) -> str:
    """The executor of the running stack, else the configured one."""
    return recorded(settings).get("executor", settings.executor)


# ---- the instances ---------------------------------------------------------------------------
def extra_workers(settings: Settings, with_logs: bool = False) -> list[str]:
    """Names (worker-NAME) of the additional workers this state dir has records (or logs) of."""
    paths = settings.paths
    found = {p.stem for p in paths.run.glob(f"{WORKER_PREFIX}*.pid")} if paths.run.is_dir() else set()
    if with_logs and paths.logs.is_dir():
        found |= {p.stem for p in paths.logs.glob(f"{WORKER_PREFIX}*.log")}
    return sorted(found)


def instances(settings: Settings, with_logs: bool = False) -> list[Instance]:
    """Every instance this state dir may run, in start order: our Redis, the line's components,
    the extra workers (``with_logs``: also those that only left a log), the backups component (unless
    STACK_BACKUP_EVERY=off and it left nothing)."""
    found = [Instance(REDIS.name, REDIS)]
    if memcached_server.managed(settings):
        found.append(Instance(MEMCACHED.name, MEMCACHED))
    found += [Instance(comp.name, comp) for comp in line(settings).components]
    found += [Instance(name, WORKER) for name in extra_workers(settings, with_logs)]
    paths = settings.paths
    if (settings.backup_interval is not None or paths.pid_file(BACKUPS.name).exists()
            or (with_logs and paths.log_file(BACKUPS.name).exists())):
        found.append(Instance(BACKUPS.name, BACKUPS))
    return found


def airflow_instances(settings: Settings) -> list[Instance]:
    return [inst for inst in instances(settings) if inst.component.airflow]


def find(settings: Settings, name: str) -> Instance:
    """The instance called ``name``; a ``worker-NAME`` is one even when it no longer runs (it may
    have left processes or a log behind)."""
    for inst in instances(settings, with_logs=True):
        if inst.name == name:
            return inst
    if name.startswith(WORKER_PREFIX) and len(name) > len(WORKER_PREFIX):
        return Instance(name, WORKER)
    names = ", ".join(inst.name for inst in instances(settings, with_logs=True))
    raise StackError(f"no component {name!r} in this stack (Airflow {line(settings).name}); use one of: {names}")


def running(settings: Settings, of: list[Instance] | None = None) -> dict[str, supervisor.Running]:
    """name -> its live process, for ``of`` (default: every Airflow instance)."""
    found = {}
    for inst in airflow_instances(settings) if of is None else of:
        proc = supervisor.running(settings, inst.name)
        if proc:
            found[inst.name] = proc
    return found


def on_database(settings: Settings) -> list[str]:
    """The running Airflow processes of this state dir that were started on the configured database (by the
    keyed digest of their database URL; a process without one counts as using it)."""
    key = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    ours = supervisor.fingerprint(settings, {key: config.sql_alchemy_conn(settings)}).get(key)
    return [name for name, proc in running(settings).items() if proc.env.get(key) in (None, ours)]
