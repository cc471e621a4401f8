"""Forty independent tasks that do nothing: what the scheduler and executor cost per task.

Python tasks, not EmptyOperator: those the scheduler marks done without running anything.
"""

from __future__ import annotations

import datetime as dt

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


@dag(schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False, tags=["airflow-stack-bench"])
def noop_forty():
    @task
    def noop(n: int) -> None:
        return None

    for i in range(40):
        noop.override(task_id=f"noop_{i}")(i)


noop_forty()
