"""One task per Celery queue: each must run on a worker that consumes its queue."""

from __future__ import annotations

import datetime as dt
import socket

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


@dag(schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False, tags=["airflow-stack-test"])
def queue_routing():
    @task(queue="default")
    def on_default() -> str:
        return socket.getfqdn()

    @task(queue="other")
    def on_other() -> str:
        return socket.getfqdn()

    on_default()
    on_other()


queue_routing()
