"""Start and stop the stack's components (supervisor.py): Airflow's processes and the services the stack
runs for them (our Redis, memcached), and wait until they are healthy, each by its probe.

What a start needs is checked first (preflight.py); what runs is known from the registry, read once by
the caller and passed in. What to start (which executor and line, a switch) is decided by the caller
(stack/).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from invoke import Context

from .. import netutil, progress
from .. import settings as settings_mod
from ..apache_airflow import config, install, profiles
from ..components import BACKUPS, WORKER, WORKER_PREFIX, Component, worker_command
from ..errors import StackError
from ..services import tls
from ..settings import Settings
from . import backup_schedule, health, preflight, registry, supervisor

HEALTH_TIMEOUT = 180.0
POLL_INTERVAL = 0.3  # seconds between health probes while waiting for a start


@dataclass
class StartReport:
    started: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # stopped first: they ran another Airflow release
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what was made for them (the web component's certificate)


def start(c: Context, settings: Settings, executor: str, live: dict[str, supervisor.Running],
          env: dict[str, str], timeout: float = HEALTH_TIMEOUT, extras: tuple[str, ...] = ()) -> StartReport:
    """Start whatever of the executor's components is not running (``live``: what runs, as the caller read
    it), then wait until all are healthy. ``env``: the environment every Airflow process shares (airflow.cfg
    written from it already)."""
    preflight.check_start(settings)
    profile = profiles.of(settings)
    wanted = list(profile.for_executor(executor, extras))
    missing = [comp.name for comp in wanted if comp.name not in live]
    if any(supervisor.restarting(settings, name) is not None for name in missing):  # killed, crashed
        with progress.step(f"waiting for the supervisor to start {', '.join(missing)} again"):
            supervisor.await_restarts(settings, missing)
        live = registry.running(settings)
    version, build = install.installed_version(settings), running_build(settings, env)
    # a component started before the venv changed (another pin, a new patch, a requirements.txt change)
    # runs code that is no longer installed: it is started again, so that no process runs other packages
    # than the venv holds
    stale = [comp.name for comp in wanted if comp.name in live
             and (live[comp.name].version not in (None, version) or live[comp.name].build not in (None, build))]
    # extra Celery workers (run.worker) too: started again as they were started, same queues and slots
    stale_workers = {name: proc.argv for name, proc in live.items() if name.startswith(WORKER_PREFIX) and proc.argv
                     and (proc.version not in (None, version) or proc.build not in (None, build))}
    report = StartReport()
    if stale or stale_workers:
        report.restarted = stop(settings, [*stale, *stale_workers])
        live = registry.running(settings)
    to_start = [comp for comp in wanted if comp.name not in live]
    report.already = [comp.name for comp in wanted if comp.name in live]
    began = time.monotonic()
    if to_start:
        for comp in to_start:  # what a killed component left behind would hold its ports
            supervisor.collect(settings, comp.name, whole_session=comp.reap_session)
        preflight.check_ports(settings, to_start, executor)
        if settings.api_tls and profile.web in to_start:  # its certificate: made once, issued again for a new name
            report.notes += tls.ensure(settings)
        registry.record(settings, executor, profile.release)
        report.started += [comp.name for comp in to_start]
    _launch(c, settings, [(comp.name, comp, None) for comp in to_start]
            + [(name, WORKER, list(argv)) for name, argv in stale_workers.items()], env)
    wait_healthy(settings, [(comp.name, comp) for comp in wanted] + [(name, WORKER) for name in stale_workers],
                 timeout)
    report.seconds = time.monotonic() - began
    return report


def running_build(settings: Settings, env: dict[str, str]) -> str:
    """What the processes run: the venv's packages and the project's .env (a change to either restarts them)."""
    return f"{install.installed_build(settings)}/{config.project_digest(settings, env)}"


def _launch(c: Context, settings: Settings, named: list[tuple[str, Component, list[str] | None]],
            env: dict[str, str]) -> None:
    """Start Airflow instances (name, component, argv: None for the line's command, else as recorded: an extra
    worker's queues and slots), with what the venv holds now; one launcher for all but those with secrets of
    their own (Flower), which get one each: no other process sees them."""
    profile, airflow = profiles.of(settings), str(install.airflow_bin(settings))
    version, build = install.installed_version(settings), running_build(settings, env)

    def launch(name: str, comp: Component, argv: list[str] | None) -> supervisor.Launch:
        return supervisor.Launch(name, argv or comp.command(airflow, settings), profile.preload_for(comp),
                                 comp.reap_session, version, build, comp.probe.liveness_url(settings),
                                 comp.probe.ca_file(settings))

    launch_airflow(c, settings, [launch(*item) for item in named if item[1].own_env is None], env)
    for name, comp, argv in named:
        if comp.own_env is not None:
            launch_airflow(c, settings, [launch(name, comp, argv)], env | comp.own_env(settings))


def launch_airflow(c: Context, settings: Settings, launches: list[supervisor.Launch], env: dict[str, str]) -> None:
    """Start Airflow processes from one launcher on Airflow's own Python, which imports Airflow once
    (unless STACK_PRELOAD is off: then each starts as `airflow COMPONENT` would)."""
    if not launches:
        return
    preload = profiles.of(settings).preload if settings.preload else None
    supervisor.start_many(c, settings, launches, config.process_environment(settings, env),
                          python=str(install.airflow_python(settings)), preload=preload)


def wait_healthy(settings: Settings, wanted: list[tuple[str, Component]], timeout: float) -> None:
    with progress.step("waiting until healthy") as step:
        _wait_healthy(settings, wanted, timeout, step)


def _wait_healthy(settings: Settings, wanted: list[tuple[str, Component]], timeout: float,
                  step: progress.Step) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(wanted)
    details: dict[str, str] = {}
    while pending:
        step.note(f"waiting for {', '.join(pending)}")
        for name, comp in list(pending.items()):
            proc = supervisor.running(settings, name)
            if proc is None:
                log = settings.paths.log_file(name)
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
                _print_log_tail(name, settings.paths.log_file(name),
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
    workers = [(inst.name, inst.component) for inst in registry.airflow_instances(settings)
               if inst.component.probe.kind == "celery" and supervisor.running(settings, inst.name)]
    if not workers:
        return []
    began = time.monotonic()
    wait_healthy(settings, workers, timeout)
    return [f"Celery workers reconnected ({', '.join(name for name, _ in workers)}) in "
            f"{time.monotonic() - began:.0f} s"]


def _print_log_tail(name: str, log: Path, headline: str = "") -> None:
    print(f"--- {name}{': ' + headline if headline else ''}; last lines of {log}:", file=sys.stderr)
    print(progress.tail(log, 12), file=sys.stderr)


def start_worker(c: Context, settings: Settings, name: str, queues: str, concurrency: int, env: dict[str, str],
                 timeout: float = HEALTH_TIMEOUT) -> tuple[str, bool]:
    """Start an additional Celery worker ``worker-NAME`` with the shared ``env``; (its name, whether it was
    already running)."""
    instance = f"{WORKER_PREFIX}{name}"
    if supervisor.running(settings, instance):
        return instance, True
    # the first worker on a machine serves task logs on the log port (when other machines need them);
    # others find it taken
    serve_logs = settings.serve_logs and netutil.port_bindable(settings.worker_log_port, "0.0.0.0")
    argv = worker_command(str(install.airflow_bin(settings)), name, queues, concurrency, serve_logs)
    launch_airflow(c, settings, [supervisor.Launch(instance, argv, profiles.of(settings).preload_for(WORKER),
                                                   version=install.installed_version(settings),
                                                   build=running_build(settings, env))], env)
    wait_healthy(settings, [(instance, WORKER)], timeout)
    return instance, False


def run_service(c: Context, settings: Settings, comp: Component, argv: list[str], restart: bool, label: str,
                timeout: float) -> list[str]:
    """A service the stack runs for Airflow (our Redis, memcached), as a component: started through the
    supervisor (which restarts it when it dies) unless it runs healthy already; ``restart``: it runs with a
    config it has not loaded (a new port, password or address). Waited for by its probe."""
    proc = supervisor.running(settings, comp.name)
    if proc is not None and not restart and health.check(comp.probe, settings, proc.started, comp.name)[0]:
        return []
    done = []
    if proc is not None:
        supervisor.stop(settings, comp.name)
        done.append(f"restarted our {comp.name} to apply its new config")
    supervisor.start_many(c, settings, [supervisor.Launch(comp.name, argv)],
                          config.process_environment(settings, {}, project=False))
    wait_healthy(settings, [(comp.name, comp)], timeout)
    return [*done, f"started {label}"]


def restart(c: Context, settings: Settings, executor: str, env: dict[str, str], names: list[str] | None = None,
            timeout: float = HEALTH_TIMEOUT, stop_timeout: float = supervisor.STOP_TIMEOUT) -> list[str]:
    """Stop what runs (everything of the stack's, or ``names``) and start it again as it was started: our Redis
    and memcached with their argv, the line's components for ``executor`` (Flower too, when it ran), the extra
    Celery workers with their queues and slots; then wait until each is healthy. What was not running stays
    so; a component named that does not run is refused before anything stops."""
    selected = [registry.find(settings, name) for name in names] if names else registry.instances(settings)
    procs = {inst.name: proc for inst in selected if (proc := supervisor.running(settings, inst.name))}
    idle = [inst for inst in selected if inst.name not in procs]
    if names and idle:
        raise StackError(f"{idle[0].name} is not running; {_how_to_start(idle[0], executor)}")
    if not procs:
        raise StackError("nothing of this stack runs; start it: invoke up")
    selected = [inst for inst in selected if inst.name in procs]
    services = [inst for inst in selected if not inst.component.airflow]
    airflow = [inst for inst in selected if inst.component.airflow]
    if airflow:
        preflight.check_start(settings)  # what the start needs, before anything stops
    said = stop(settings, [inst.name for inst in selected], stop_timeout)
    began = time.monotonic()
    for inst in services:
        if inst.component is BACKUPS:  # with this command's settings in its environment, not waited for
            said += keep_backups(c, settings)
            continue
        supervisor.start_many(c, settings, [supervisor.Launch(inst.name, list(procs[inst.name].argv))],
                              config.process_environment(settings, {}))
        wait_healthy(settings, [(inst.name, inst.component)], timeout)
    if airflow:
        preflight.check_ports(settings, [inst.component for inst in airflow if not inst.extra_worker], executor)
        registry.record(settings, executor, profiles.of(settings).release)
        _launch(c, settings, [(inst.name, inst.component, list(procs[inst.name].argv) if inst.extra_worker else None)
                              for inst in airflow], env)
        wait_healthy(settings, [(inst.name, inst.component) for inst in airflow], timeout)
    if services and names:  # Celery workers that kept running lost the broker: done once they are back
        said += wait_workers_reconnected(settings)
    return [*said, f"started {', '.join(inst.name for inst in selected)} again; all healthy in "
                   f"{time.monotonic() - began:.1f} s"]


def _how_to_start(inst: registry.Instance, executor: str) -> str:
    if inst.extra_worker:
        return f"start it: invoke run.worker --name {inst.name.removeprefix(WORKER_PREFIX)} --queues ..."
    if executor not in inst.component.executors:
        return f"the {executor} executor does not run it"
    return "start it: invoke run.celery --flower" if inst.component.optional else "start it: invoke up"


def keep_backups(c: Context, settings: Settings) -> list[str]:
    """The backups component beside the running stack, with this command's settings: started, or started
    again when they changed (another interval, a setting in .env); stopped with STACK_BACKUP_EVERY=off. It
    runs on the tooling's own Python; its supervisor restarts it when it dies. What was done, and the state
    of the backups."""
    proc = supervisor.running(settings, BACKUPS.name)
    if settings.backup_interval is None:
        return [f"backups: {supervisor.stop(settings, BACKUPS.name)} (STACK_BACKUP_EVERY=off)"] if proc else []
    argv = BACKUPS.command(sys.executable, settings)
    env = config.process_environment(settings, settings_mod.environment_of(settings))
    if proc is not None and list(proc.argv) == argv and proc.env == supervisor.fingerprint(settings, env):
        return []
    if proc is not None:
        supervisor.stop(settings, BACKUPS.name)
    supervisor.start_many(c, settings, [supervisor.Launch(BACKUPS.name, argv)], env)
    verdict = backup_schedule.assess(settings, backup_schedule.read(settings), time.time())
    return [f"backups: {'started again' if proc else 'started'}: a verified backup every {settings.backup_every} "
            f"into {settings.paths.backups}, the {settings.backup_keep} newest kept; {verdict.detail}"]


def stop(settings: Settings, names: list[str] | None = None, timeout: float = supervisor.STOP_TIMEOUT) -> list[str]:
    """Stop Airflow processes (all, or ``names``), last started first; one line per process.

    A Celery worker gets SIGTERM, its warm shutdown: it takes no new task and finishes the running
    ones within ``timeout``; the scheduler requeues what a killed worker leaves behind.
    """
    # find() raises with the valid names
    selected = [registry.find(settings, name) for name in names] if names else registry.airflow_instances(settings)
    watching = supervisor.supervisors(settings, [inst.name for inst in selected])
    results = [(inst.name, supervisor.stop(settings, inst.name, timeout, whole_session=inst.component.reap_session))
               for inst in reversed(selected)]
    # a supervisor with nothing left to watch exits by itself: the stop is done once it did
    still_watching = supervisor.supervisors(settings, [inst.name for inst in registry.instances(settings)])
    supervisor.wait_gone(watching - still_watching)
    lines = [f"{name}: {result}" for name, result in results if names or result != "not running"]
    if not registry.running(settings):
        registry.forget(settings)
    return lines or ["airflow: nothing was running"]
