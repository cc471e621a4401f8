"""invoke run.local / run.celery / run.worker: start Airflow processes, supervised, until healthy."""

from __future__ import annotations

import re

from invoke import Context, task

from .. import airflow_install, lifecycle, lines, platform, preflight, project, secrets
from ..errors import StackError
from ._common import exclusive, load, number, one_line_errors, say


def start_stack(c: Context, executor: str, timeout: float, line: str | None = None,
                extras: tuple[str, ...] = ()) -> None:
    settings = load(executor=executor, airflow_line=line)
    report = lifecycle.start(c, settings, executor, timeout=timeout, extras=extras)
    if report.restarted:
        say(*(f"run: {line} (it ran code the venv no longer holds: another Airflow release or requirements.txt)"
              for line in report.restarted))
    web = settings.line.web.name
    if not report.started:
        say(f"run: already running ({', '.join(report.already)}), Airflow {settings.airflow_line}, {executor}")
    else:
        say(f"run: started {', '.join(report.started)}; all healthy in {report.seconds:.1f} s")
    say(f"run: Airflow UI and API ({web}) at {settings.api_url}/ ; user {settings.admin_user}, "
        f"password: _AIRFLOW_WWW_USER_PASSWORD in {settings.env_file}")
    if "flower" in extras:
        say(f"run: Flower at http://127.0.0.1:{settings.flower_port}/ ; user {settings.admin_user}, password: "
            f"STACK_FLOWER_PASSWORD in {settings.env_file}")


@task(help={"timeout": "seconds to wait for every component to be healthy (default 180)",
            "line": lines.HELP})
@one_line_errors
@exclusive("invoke run.local")
def local(c: Context, timeout: str | None = None, line: str | None = None) -> None:
    """Run Airflow with the LocalExecutor: scheduler, dag-processor, triggerer, API server."""
    start_stack(c, "local", number(timeout, "--timeout", lifecycle.HEALTH_TIMEOUT), line)


@task(help={"timeout": "seconds to wait for every component to be healthy (default 180)",
            "line": lines.HELP,
            "flower": "also run Flower, Celery's monitoring UI, on STACK_FLOWER_PORT (loopback)"})
@one_line_errors
@exclusive("invoke run.celery")
def celery(c: Context, timeout: str | None = None, line: str | None = None, flower: bool = False) -> None:
    """Run Airflow with the CeleryExecutor: the Local set plus one Celery worker (Redis broker)."""
    start_stack(c, "celery", number(timeout, "--timeout", lifecycle.HEALTH_TIMEOUT), line,
                extras=("flower",) if flower else ())


@task(help={
    "queues": "comma-separated Celery queues it consumes (default: default)",
    "concurrency": "task slots (default AIRFLOW__CELERY__WORKER_CONCURRENCY)",
    "name": "worker name, unique on this machine; its Celery node is NAME@host (default w2)",
    "timeout": "seconds to wait until it answers a ping (default 180)",
})
@one_line_errors
@exclusive("invoke run.worker")
def worker(c: Context, queues: str = "default", concurrency: str | None = None, name: str = "w2",
           timeout: str | None = None) -> None:
    """Add a Celery worker, here or on another machine that has the stack's .env."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise StackError(f"worker name {name!r} may only use letters, digits, '.', '_' and '-'")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*", queues):
        raise StackError(f"queues {queues!r}: give a comma-separated list of names, e.g. --queues default,gpu")
    slots = number(concurrency, "--concurrency", None, int, example=8)
    timeout = number(timeout, "--timeout", lifecycle.HEALTH_TIMEOUT)
    settings = load()
    preflight.check_worker_machine(settings)
    secrets.secure_mode(settings.env_file)
    project.get(settings).check()  # the project's DAGs must be on this machine too, at STACK_PROJECT_DIR
    project.ensure_os_packages(c, platform.detect(), settings)
    airflow_install.ensure(c, settings)  # a fresh worker machine gets Airflow (and requirements.txt) here
    instance, already = lifecycle.start_worker(c, settings, name, queues, slots or settings.worker_concurrency,
                                           timeout)
    if already:
        say(f"run: worker {instance} already running")
    else:
        say(f"run: started {instance} (queues {queues}); it answers ping as {name}@<this host>")
