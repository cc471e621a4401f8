"""invoke run.local / run.celery / run.worker: start Airflow processes, supervised, until healthy."""

from __future__ import annotations

import re

from invoke import Context, task

from ..errors import StackError
from ..settings import AIRFLOW_LINES_HELP
from ..stack import Stack
from ._common import number, one_line_errors, stack, timeout_help


@task(help={"timeout": timeout_help(), "line": AIRFLOW_LINES_HELP})
@one_line_errors
def local(c: Context, timeout: str | None = None, line: str | None = None) -> None:
    """Run Airflow with the LocalExecutor: scheduler, dag-processor, triggerer, API server."""
    timeout = number(timeout, "--timeout", Stack.HEALTH_TIMEOUT)
    stack(c, airflow_line=line).start("local", timeout=timeout)


@task(help={"timeout": timeout_help(), "line": AIRFLOW_LINES_HELP,
            "flower": "also run Flower, Celery's monitoring UI, on STACK_FLOWER_PORT (loopback)"})
@one_line_errors
def celery(c: Context, timeout: str | None = None, line: str | None = None, flower: bool = False) -> None:
    """Run Airflow with the CeleryExecutor: the Local set plus one Celery worker (Redis broker)."""
    timeout = number(timeout, "--timeout", Stack.HEALTH_TIMEOUT)
    stack(c, airflow_line=line).start("celery", ("flower",) if flower else (), timeout)


@task(help={
    "queues": "comma-separated Celery queues it consumes (default: default)",
    "concurrency": "task slots (default AIRFLOW__CELERY__WORKER_CONCURRENCY)",
    "name": "worker name, unique on this machine; its Celery node is NAME@host (default w2)",
    "timeout": timeout_help("it to answer a ping"),
})
@one_line_errors
def worker(c: Context, queues: str = "default", concurrency: str | None = None, name: str = "w2",
           timeout: str | None = None) -> None:
    """Add a Celery worker, here or on another machine that has the stack's .env."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise StackError(f"worker name {name!r} may only use letters, digits, '.', '_' and '-'")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*", queues):
        raise StackError(f"queues {queues!r}: give a comma-separated list of names, e.g. --queues default,gpu")
    slots = number(concurrency, "--concurrency", None, int, example=8)
    timeout = number(timeout, "--timeout", Stack.HEALTH_TIMEOUT)
    stack(c).add_worker(name, queues, slots, timeout)
