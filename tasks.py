"""airflow-stack's invoke tasks. This file only assembles the namespaces; the logic lives in
src/airflow_stack/. Run `invoke --list` for the tasks, `invoke --help TASK` for their options."""

from invoke import Collection

from airflow_stack.tasks import dags, db, docs, objects, ops, run, service, setup, worker

ns = Collection(setup, run, worker, db, dags, objects, docs, service)
for top_level in (ops.init, ops.up, ops.upgrade, ops.stop, ops.restart, ops.status_, ops.versions, ops.stacks,
                  ops.logs, ops.doctor, ops.clean, ops.airflow_cli):
    ns.add_task(top_level)
