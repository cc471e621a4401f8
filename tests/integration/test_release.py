"""One Airflow minor as a project pins it (nox's `releases` sessions, `--line X.Y`): a project made by
`invoke init` for that release, outside the repo in a folder with a space, brought up with nothing but the
project naming the release (its Dockerfile); a DAG through the REST API; dags.check, dags.test and the
project's own tests with dags.pytest; stop. On 3.1 the project is shaped as `astro dev init` makes one for
Runtime 3.1 (its Dockerfile names the Runtime image), its .env reaches the tasks, and the same project then
moves to 3.3.2 with STACK_AIRFLOW_VERSION and `invoke upgrade`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_stack.apache_airflow import profiles

from .conftest import LINE, Stack, airflow_api
from .test_bad_input import assert_one_line_error

pytestmark = [pytest.mark.integration, pytest.mark.minor]

RELEASE = profiles.get(LINE).default_version
# what `astro dev init` writes for Runtime 3.1 (its image names the minor; the stack runs its newest patch)
ASTRO_RUNTIME = {"3.1": "astrocrpublic.azurecr.io/runtime:3.1-5"}
ENV_PROBE = '''import json
import os
from pathlib import Path

import pendulum

try:
    from airflow.sdk import BaseHook, Variable, dag, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task
    from airflow.hooks.base import BaseHook
    from airflow.models import Variable


@dag(start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False, tags=["test"],
     default_args={"retries": 2})
def project_env_probe():
    @task(retries=0)
    def look() -> None:
        Path(__file__).with_name("project_env_probe.json").write_text(json.dumps({
            "variable": Variable.get("greeting"), "connection": BaseHook.get_connection("warehouse").host,
            "plain": os.environ.get("PLAIN_NAME")}))

    look()


project_env_probe()
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    state = tmp_path_factory.mktemp("stack state")
    root = tmp_path_factory.mktemp("astro projects") / "my project"
    # no STACK_AIRFLOW_LINE: the project's Dockerfile names the release
    stack = Stack.create(state, "", "local", root, f"ast_rel_{os.getpid()}")
    try:
        yield stack, root
    finally:
        stack.inv("logs", "--lines", "200", check=False)
        survivors = stack.teardown()
        assert not survivors, f"processes survived invoke stop: {survivors}"


def components_release(stack: Stack) -> set[str]:
    rows = json.loads(stack.inv("status", "--json").stdout)
    return {row["version"] for row in rows if row["version"]}


def run_dag(stack: Stack, dag_id: str, conf: dict | None = None) -> float:
    api = airflow_api(stack.settings())
    try:
        api.wait_for_dag(dag_id, timeout=120)
        api.unpause(dag_id)
        began = time.monotonic()
        run_id = api.trigger(dag_id, conf)
        assert api.wait_for_run(dag_id, run_id, timeout=240) == "success"
        return time.monotonic() - began
    finally:
        api.close()


def test_a_new_project_runs_on_the_release_it_pins(project):
    stack, root = project
    out = stack.inv("init", str(root), "--airflow", RELEASE).stdout
    assert f"for Airflow {RELEASE}" in out and (root / "dags" / "example_astronauts.py").exists()
    assert f"FROM apache/airflow:{RELEASE}" in (root / "Dockerfile").read_text()
    if LINE in ASTRO_RUNTIME:
        (root / "Dockerfile").write_text(f"FROM {ASTRO_RUNTIME[LINE]}\n")
        (root / ".env").write_text("AIRFLOW_VAR_GREETING=hello from the project's .env\n"
                                   "AIRFLOW_CONN_WAREHOUSE=postgresql://etl@warehouse.example.invalid:5432/dw\n"
                                   "PLAIN_NAME=a plain name\n")
        (root / "dags" / "project_env_probe.py").write_text(ENV_PROBE)
    began = time.monotonic()
    stack.inv("up", timeout=1200)
    print(f"\n[figure] first invoke up of a project pinning Airflow {RELEASE}: {time.monotonic() - began:.1f} s")
    assert components_release(stack) == {RELEASE}  # status names the release every component runs
    versions = stack.inv("versions").stdout
    assert f"pins Airflow {RELEASE}" in versions and f"runs: Airflow {RELEASE}" in versions
    print(f"[figure] example_astronauts (13 tasks, mapped) through the API on {RELEASE}: "
          f"{run_dag(stack, 'example_astronauts'):.1f} s")


def test_its_dags_check_test_and_pass_their_own_tests(project):
    stack, _ = project
    assert "DAGs import without errors" in stack.inv("dags.check").stdout
    began = time.monotonic()
    assert "example_astronauts succeeded" in stack.inv("dags.test", "example_astronauts").stdout
    print(f"\n[figure] dags.test example_astronauts on {RELEASE}: {time.monotonic() - began:.1f} s")
    out = stack.inv("dags.pytest").stdout
    assert " passed" in out and " failed" not in out, out[-2000:]


def the_projects_env_reaches_its_tasks(project):
    stack, root = project
    run_dag(stack, "project_env_probe")
    seen = json.loads((root / "dags" / "project_env_probe.json").read_text())
    assert seen == {"variable": "hello from the project's .env", "connection": "warehouse.example.invalid",
                    "plain": "a plain name"}


def the_same_project_moves_to_another_release_with_an_upgrade(project):
    stack, _ = project
    target = profiles.get("3.3").default_version
    env = {"STACK_AIRFLOW_VERSION": target}
    assert_one_line_error(stack.inv("up", env=env, check=False), f"migrated by Airflow {RELEASE}",
                          "run invoke upgrade")
    assert components_release(stack) == {RELEASE}  # refused: nothing stopped or changed
    began = time.monotonic()
    stack.inv("upgrade", "--version", target, timeout=1200)
    print(f"\n[figure] invoke upgrade {RELEASE} -> {target}: {time.monotonic() - began:.1f} s")
    assert components_release(stack) == {target}
    run_dag(stack, "example_astronauts")


if LINE in ASTRO_RUNTIME:  # the astro Runtime project (and its move to 3.3.2) is made for Runtime 3.1 only
    test_the_projects_env_reaches_its_tasks = the_projects_env_reaches_its_tasks
    test_the_same_project_moves_to_another_release_with_an_upgrade = \
        the_same_project_moves_to_another_release_with_an_upgrade
