"""`invoke init DIR [--airflow X.Y.Z]`: a new project in the astro CLI's layout, for one Airflow release.

    dags/example_astronauts.py     TaskFlow, an asset (dataset on 2.x) outlet, dynamic task mapping over
                                   12 items: 13 tasks, no network (its data is in the file)
    tests/dags/test_dag_example.py the DAG tests astro generates, written to pass on that release
    airflow_settings.yaml          astro's template: connections, pools, variables, all empty
    Dockerfile                     FROM apache/airflow:X.Y.Z: the release the stack runs for the project
    requirements.txt, packages.txt, .env, .gitignore, include/, plugins/

A folder that holds anything but a project is refused; an existing project is only pointed at.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import StackError
from .folder import Project

DAG_3 = '''"""An example in the shape astro's gives: a task returns who is in space, a mapped task greets each.

It runs offline: the list is in this file. Its first task updates an asset, which other DAGs can be
scheduled on.
"""

import pendulum
from airflow.sdk import Asset, dag, task

ASTRONAUTS = [
    {"name": name, "craft": craft}
    for name, craft in [
        ("Oleg Kononenko", "ISS"), ("Nikolai Chub", "ISS"), ("Tracy Caldwell Dyson", "ISS"),
        ("Matthew Dominick", "ISS"), ("Michael Barratt", "ISS"), ("Jeanette Epps", "ISS"),
        ("Alexander Grebenkin", "ISS"), ("Butch Wilmore", "ISS"), ("Sunita Williams", "ISS"),
        ("Li Guangsu", "Tiangong"), ("Li Cong", "Tiangong"), ("Ye Guangfu", "Tiangong"),
    ]
]


@dag(start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False, tags=["example"],
     default_args={"owner": "Astro", "retries": 3})
def example_astronauts():
    @task(outlets=[Asset("current_astronauts")])
    def get_astronauts() -> list[dict]:
        return ASTRONAUTS

    @task
    def print_astronaut_craft(greeting: str, person_in_space: dict) -> None:
        print(f"{person_in_space['name']} is in space flying on the {person_in_space['craft']}! {greeting}")

    print_astronaut_craft.partial(greeting="Hello! :)").expand(person_in_space=get_astronauts())


example_astronauts()
'''

# Airflow 2: the same DAG with its names of then (Dataset, airflow.decorators)
DAG_2 = (DAG_3.replace("from airflow.sdk import Asset, dag, task",
                       "from airflow.datasets import Dataset\nfrom airflow.decorators import dag, task")
         .replace("an asset,", "a dataset,").replace("Asset(", "Dataset("))

TESTS = '''"""The project's DAG tests (astro's generated ones): every DAG imports, and carries a tag and retries."""

import os
from contextlib import contextmanager
import logging

import pytest

try:  # Airflow 3.2 and later
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # earlier releases
    from airflow.models import DagBag


@contextmanager
def suppress_logging(namespace):
    logger = logging.getLogger(namespace)
    old_value = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = old_value


def get_import_errors():
    """(None, None) when there are none, else (file, error) pairs relative to the project."""
    with suppress_logging("airflow"):
        dag_bag = DagBag(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", "dags"))

        def strip_path_prefix(path):
            return os.path.relpath(path, os.environ.get("AIRFLOW_HOME", "."))

        return [(None, None)] + [(strip_path_prefix(k), v.strip()) for k, v in dag_bag.import_errors.items()]


def get_dags():
    with suppress_logging("airflow"):
        dag_bag = DagBag(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", "dags"))
    return [(dag_id, dag, dag.fileloc) for dag_id, dag in dag_bag.dags.items()]


@pytest.mark.parametrize("rel_path,rv", get_import_errors(), ids=[x[0] for x in get_import_errors()])
def test_file_imports(rel_path, rv):
    """Every DAG file imports without error."""
    if rel_path and rv:
        raise Exception(f"{rel_path} failed to import with message \\n {rv}")


@pytest.mark.parametrize("dag_id,dag,fileloc", get_dags(), ids=[x[2] for x in get_dags()])
def test_dag_tags(dag_id, dag, fileloc):
    """Every DAG has a tag."""
    assert dag.tags, f"{dag_id} in {fileloc} has no tags"


@pytest.mark.parametrize("dag_id,dag,fileloc", get_dags(), ids=[x[2] for x in get_dags()])
def test_dag_retries(dag_id, dag, fileloc):
    """Every DAG retries its tasks at least twice."""
    assert dag.default_args.get("retries", 0) >= 2, f"{dag_id} in {fileloc} must have task retries >= 2"
'''

SETTINGS = '''# This file allows you to configure Airflow Connections, Pools, and Variables in a single place for local
# development only. NOTE: json dicts can be written in both indented and flow style.
airflow:
  connections: ## conn_id and conn_type are required
    - conn_id:
      conn_type:
      conn_host:
      conn_schema:
      conn_login:
      conn_password:
      conn_port:
      conn_extra:
        example_extra_field: example-value
  pools: ## pool_name and pool_slot are required
    - pool_name:
      pool_slot:
      pool_description:
  variables: ## variable_name and variable_value are required
    - variable_name:
      variable_value:
'''

FILES = {
    "requirements.txt": "# Python packages the DAGs import, one per line (installed in the stack's Airflow)\n",
    "packages.txt": "# OS packages the project needs, one per line (apt on Debian/Ubuntu, brew on macOS)\n",
    ".env": "# Names here reach every Airflow process and task (AIRFLOW_VAR_*, AIRFLOW_CONN_*, your own)\n",
    ".gitignore": ".env\n__pycache__/\n.pytest_cache/\n*.pyc\nairflow_settings.yaml.local\n",
    "airflow_settings.yaml": SETTINGS,
    "tests/dags/test_dag_example.py": TESTS,
    "include/.gitkeep": "",
    "plugins/.gitkeep": "",
}


def create(root: Path, release: str) -> list[str]:
    """Write a new project for ``release`` into ``root`` (made when missing); the files written. A folder
    that is already a project is left as it is ([]); one that holds anything else is refused."""
    project = Project(root)
    if root.exists() and not root.is_dir():
        raise StackError(f"{root} is a file; give a folder for the new project")
    if project.dags.is_dir():
        return []
    if root.is_dir() and any(root.iterdir()):
        raise StackError(f"{root} is not empty and is not an Airflow project (no dags/); give a new or empty folder, "
                         f"or point STACK_PROJECT_DIR at an existing project")
    files = FILES | {
        "dags/example_astronauts.py": DAG_3 if release.startswith("3.") else DAG_2,
        "Dockerfile": f"# The Airflow release this project runs on: airflow-stack runs it natively (astro: its image)\n"
                      f"FROM apache/airflow:{release}\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sorted(files)
