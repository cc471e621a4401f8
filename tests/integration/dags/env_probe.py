"""Writes what a task's process sees of its environment beside this file (0600), for the test that
checks no secret of the tooling reaches DAG code. Test-only: it writes secrets to that file."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


@dag(schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False, tags=["airflow-stack-test"])
def env_probe():
    @task
    def dump() -> None:
        path = Path(__file__).with_name("env_probe.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(os.environ), fh)

    dump()


env_probe()
