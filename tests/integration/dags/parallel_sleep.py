"""Eight independent sleep(5) tasks: finishes in ~5 s only when the executor runs them in parallel."""

from __future__ import annotations

import datetime as dt
import time

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


@dag(schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False, tags=["airflow-stack-test"])
def parallel_sleep():
    @task
    def sleep_five(n: int) -> int:
        time.sleep(5)
        return n

    for i in range(8):
        sleep_five.override(task_id=f"sleep_{i}")(i)


parallel_sleep()
