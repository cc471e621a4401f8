"""Your project's DAG tests (the astro CLI's tests/dags): `invoke dags.pytest` or `nox -s dags` runs them
with the stack's Airflow venv and environment (not this repo's test sessions)."""

import os

import pytest

try:  # Airflow 3.1 and later
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 2
    from airflow.models import DagBag


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])


def test_every_dag_file_imports(dagbag):
    assert not dagbag.import_errors, dagbag.import_errors


def test_every_dag_has_a_task(dagbag):
    empty = [dag_id for dag_id, dag in dagbag.dags.items() if not dag.tasks]
    assert not empty, f"DAGs without tasks: {empty}"
