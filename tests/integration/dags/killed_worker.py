"""A task long enough to kill its worker under it; one retry lets another worker finish it."""

from __future__ import annotations

import datetime as dt
import time

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


@dag(schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False, tags=["airflow-stack-test"],
     default_args={"retries": 1, "retry_delay": dt.timedelta(seconds=2)})
def killed_worker():
    @task(queue="default")
    def long_sleep() -> None:
        time.sleep(15)

    long_sleep()


killed_worker()
