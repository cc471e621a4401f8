"""A first DAG to see the stack work: three tasks, two of them in parallel.

Works on Airflow 3.x (airflow.sdk) and 2.11 (airflow.decorators).
"""

from __future__ import annotations

import datetime as dt

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


@dag(schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False, tags=["airflow-stack"])
def hello_stack():
    @task
    def extract() -> list[int]:
        return [1, 2, 3]

    @task
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    @task
    def largest(numbers: list[int]) -> int:
        return max(numbers)

    numbers = extract()
    total(numbers)
    largest(numbers)


hello_stack()
