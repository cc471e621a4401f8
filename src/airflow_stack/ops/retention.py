"""Retention: task logs and old metadata rows do not grow without end.

Task logs (the state dir's logs/airflow/) older than STACK_RETENTION_DAYS are deleted; Airflow's
own `airflow db clean` removes metadata rows older than that (DAG runs, task instances, jobs, logs
of the log table...), without keeping archive tables. The components' own logs are capped by size
by their supervisor (launcher.rotate).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass

from invoke import Context

from ..apache_airflow import commands, config
from ..settings import Settings


@dataclass
class Pruned:
    files: int = 0
    bytes: int = 0


def prune_task_logs(settings: Settings, days: int, dry_run: bool = False) -> Pruned:
    """Delete task log files not written for ``days`` days, and the folders they leave empty."""
    root = settings.paths.task_logs
    pruned = Pruned()
    if not root.is_dir():
        return pruned
    cutoff = time.time() - days * 86400
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            if stat.st_mtime < cutoff:
                pruned.files += 1
                pruned.bytes += stat.st_size
                if not dry_run:
                    os.unlink(path)
        if not dry_run and folder != str(root) and not os.listdir(folder):
            os.rmdir(folder)
    return pruned


def clean_metadata(c: Context, settings: Settings, days: int, dry_run: bool = False) -> str:
    """`airflow db clean` of the rows older than ``days`` days; returns the cut-off it used."""
    before = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).replace(microsecond=0).isoformat()
    env = config.environment(settings)
    args = f"db clean --clean-before-timestamp {before} --yes --skip-archive" + (" --dry-run" if dry_run else "")
    commands.run_cli(c, settings, env, args, "db-clean")
    return before
