"""Three tasks in flight, then one after them: the DAG a component is killed under (test_faults).

Retries with a short delay: a task whose process died with the component is failed by the
scheduler's heartbeat check and run again, instead of failing the run.
"""

from __future__ import annotations

import datetime as dt
import time

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task


@dag(schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False, tags=["airflow-stack-test"],
     default_args={"retries": 3, "retry_delay": dt.timedelta(seconds=2)})
def fault_recovery():
    @task
    def hold(n: int) -> int:
        time.sleep(10)
        return n

    @task
    def after(values: list[int]) -> int:
        return sum(values)

    after([hold.override(task_id=f"hold_{i}")(i) for i in range(3)])


fault_recovery()
