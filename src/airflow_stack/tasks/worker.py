"""invoke worker.*: what a Celery worker on another machine needs (run.worker starts one)."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from ..ops import worker_env as worker_env_mod
from ._common import load, one_line_errors, say


@task(name="env", help={
    "output": "where to write it (default: worker.env in the state dir; mode 0600)",
    "host": "the address a worker machine dials this one at (default: the first address beyond loopback our "
            "Redis listens on, else this machine's name)"})
@one_line_errors
def env(c: Context, output: str | None = None, host: str | None = None) -> None:
    """Write what a Celery worker on another machine needs (shared keys, Airflow's Redis user, the database role):
    never Redis's default password, the admin's, a superuser DSN or Flower's."""
    settings = load()
    path = Path(output).expanduser().resolve() if output else settings.paths.worker_env
    written = worker_env_mod.write(settings, path, host or worker_env_mod.default_host(settings))
    say(f"run: wrote {written} (mode 0600) for a worker machine: copy it there as its .env, then "
        f"scripts/invoke run.worker --name NAME --queues Q")
