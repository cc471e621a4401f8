"""The user's project on the stack (astro layout, in a folder outside the repo, written by conftest):
requirements.txt in the venv, plugins/ and include/ in every process, airflow_settings.yaml applied,
DAG checks. Proven through the REST API and in PostgreSQL, with the LocalExecutor and with Celery."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import yaml

from airflow_stack import statedir
from airflow_stack.apache_airflow import install
from airflow_stack.runtime import supervisor

from .conftest import EXECUTOR, PROJECT_SECRET_NAME, write_project
from .test_bad_input import assert_one_line_error

pytestmark = pytest.mark.integration


def project_dir(stack) -> Path:
    return Path(stack.env["STACK_PROJECT_DIR"])


def project_secret(stack) -> str:
    return statedir.read_env_file(Path(stack.env["STACK_ENV_FILE"]))[PROJECT_SECRET_NAME]


def run_probe(stack, api) -> dict:
    """Trigger project_probe through the REST API; what its task saw."""
    out = project_dir(stack) / "dags" / "project_probe.json"
    out.unlink(missing_ok=True)
    api.wait_for_dag("project_probe", timeout=90)
    api.unpause("project_probe")
    run_id = api.trigger("project_probe")
    assert api.wait_for_run("project_probe", run_id) == "success"
    ti = api.client.get(f"{api.prefix}/dags/project_probe/dagRuns/{run_id}/taskInstances/probe").json()
    assert ti["pool"] == "project_pool" and ti["state"] == "success"
    return json.loads(out.read_text())


def freeze(stack) -> str:
    python = install.airflow_python(stack.settings())
    return subprocess.run([install.uv_bin(), "pip", "freeze", "--python", str(python)],
                          capture_output=True, text=True, check=True).stdout


# what does not run the project's code: a requirement change restarts none of them
NOT_AIRFLOW = ("redis", "memcached", "backups")


def component_pids(stack) -> dict[str, int]:
    """The Airflow processes' name -> pid."""
    rows = json.loads(stack.inv("status", "--json").stdout)
    return {row["name"]: row["pid"] for row in rows if row["name"] not in NOT_AIRFLOW and row["pid"]}


def test_a_dag_uses_the_projects_requirement_plugin_include_and_objects(stack, api, airflow_up):
    seen = run_probe(stack, api)
    assert seen["cowsay"] == "5.0"  # requirements.txt, in the venv of every process (a Celery worker's too)
    assert seen["shouted"] == "STACK!"  # the plugin's macro
    assert seen["greeting"] == "hello stack, from include/"
    assert (seen["host"], seen["login"], seen["port"], seen["extra"]) == ("api.example.invalid", "etl", 8443,
                                                                          {"timeout": 30})
    # the password came from .env through ${NAME}
    assert seen["password_sha256"] == hashlib.sha256(project_secret(stack).encode()).hexdigest()
    assert seen["variable"] == "hello from airflow_settings.yaml" and seen["pool"] == "project_pool"
    # the REST API lists them
    conn = api.client.get(f"{api.prefix}/connections/project_api").json()
    assert (conn["conn_type"], conn["host"], conn["port"]) == ("http", "api.example.invalid", 8443)
    assert api.client.get(f"{api.prefix}/variables/project_greeting").json()["value"] == \
        "hello from airflow_settings.yaml"
    assert api.client.get(f"{api.prefix}/pools/project_pool").json()["slots"] == 3
    # PostgreSQL holds the password encrypted with the stack's Fernet key, never in clear
    with psycopg.connect(**stack.settings().pg_conninfo()) as db:
        password, is_encrypted = db.execute("SELECT password, is_encrypted FROM connection WHERE conn_id = %s",
                                            ("project_api",)).fetchone()
        assert is_encrypted and password and project_secret(stack) not in password
        assert db.execute("SELECT count(*) FROM connection WHERE conn_id IS NULL OR conn_id = ''").fetchone()[0] == 0
    # the Dockerfile was named once, with the Airflow its image pins, and the setting that wins over it
    assert any("Dockerfile (quay.io/astronomer/astro-runtime:12.6.0) pins Airflow 2.10; STACK_AIRFLOW_LINE" in out
               and "wins" in out for out in stack.outputs)


def test_a_requirement_change_reaches_the_next_task_and_no_old_process_is_left(stack, api, airflow_up):
    requirements = project_dir(stack) / "requirements.txt"
    before = component_pids(stack)
    old = {name: psutil.Process(pid).create_time() for name, pid in before.items()}
    requirements.write_text(requirements.read_text().replace("cowsay==5.0", "cowsay==6.1"))
    try:
        began = time.monotonic()
        out = stack.inv("up").stdout
        print(f"\n[figure] invoke up after a one-package requirements change ({EXECUTOR}): "
              f"{time.monotonic() - began:.1f} s")
        assert "requirements" in out
        after = component_pids(stack)
        assert set(after) == set(before)
        for name, pid in before.items():  # every process of the old code is gone
            gone = not psutil.pid_exists(pid) or psutil.Process(pid).create_time() != old[name]
            assert gone and after[name] != pid, name
        # one build for all: the venv's packages as installed now (then the project .env's digest)
        builds = {supervisor.running(stack.settings(), name).build for name in after}
        assert len(builds) == 1 and builds.pop().split("/")[0] == install.installed_build(stack.settings())
        assert run_probe(stack, api)["cowsay"] == "6.1"
        assert "requirements" not in stack.inv("up").stdout  # a plain up again: nothing to install ...
        assert component_pids(stack) == after  # ... and nothing restarted
    finally:
        requirements.write_text(requirements.read_text().replace("cowsay==6.1", "cowsay==5.0"))
        stack.inv("up")  # the venv and the processes as the file says again, for the tests after this one


@pytest.mark.once_per_line
@pytest.mark.parametrize(("requirement", "needles"), [
    ("requests==2.0.0", ("requests==2.0.0", "requests==")),  # conflicts with the line's constraints
    ("no-such-package-airflow-stack==1.0", ("no-such-package-airflow-stack",)),
], ids=["conflicting-pin", "nonexistent-package"])
def test_a_bad_requirement_is_one_line_and_changes_nothing(stack, airflow_up, requirement, needles):
    requirements = project_dir(stack) / "requirements.txt"
    original = requirements.read_text()
    venv_before, pids_before = freeze(stack), component_pids(stack)
    requirements.write_text(original + requirement + "\n")
    try:
        line = assert_one_line_error(stack.inv("up", check=False), *needles)
        assert "nothing was installed" in line
    finally:
        requirements.write_text(original)
    assert freeze(stack) == venv_before
    assert component_pids(stack) == pids_before
    assert all(row["healthy"] for row in json.loads(stack.inv("status", "--json").stdout))


@pytest.mark.once_per_line
def test_airflow_settings_applied_twice_changes_nothing_and_a_change_is_applied(stack, api, airflow_up):
    def rows():
        with psycopg.connect(**stack.settings().pg_conninfo()) as db:
            return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                    for table in ("connection", "variable", "slot_pool")}

    before = rows()
    out = stack.inv("objects.apply").stdout
    assert "3 objects, all as the file says" in out
    assert rows() == before  # not one row rewritten
    settings_file = project_dir(stack) / "airflow_settings.yaml"
    original = settings_file.read_text()
    settings_file.write_text(original.replace("hello from airflow_settings.yaml", "changed in the file")
                             .replace("pool_slot: 3", "pool_slot: 5"))
    try:
        out = stack.inv("objects.apply").stdout
        assert "variables: updated project_greeting" in out and "pools: updated project_pool" in out
        assert api.client.get(f"{api.prefix}/variables/project_greeting").json()["value"] == "changed in the file"
        assert api.client.get(f"{api.prefix}/pools/project_pool").json()["slots"] == 5
    finally:
        settings_file.write_text(original)
        stack.inv("objects.apply")
    assert rows()["connection"] == before["connection"]


@pytest.mark.once_per_line
def test_export_then_apply_on_a_fresh_database_round_trips(stack, airflow_up, tmp_path):
    exported = tmp_path / "exported.yaml"
    out = stack.inv("objects.export", "--file", str(exported)).stdout
    assert "mode 0600" in out and exported.stat().st_mode & 0o777 == 0o600
    data = yaml.safe_load(exported.read_text())["airflow"]
    conn = next(c for c in data["connections"] if c["conn_id"] == "project_api")
    assert conn["conn_password"] == project_secret(stack) and conn["conn_extra"] == {"timeout": 30}
    assert_one_line_error(stack.inv("objects.export", "--file", str(exported), check=False), "--force")
    # a fresh stack's database, with the export as its project's airflow_settings.yaml
    fresh = write_project(tmp_path / "fresh-project")
    shutil.copy(exported, fresh / "airflow_settings.yaml")
    name = f"{stack.env['STACK_PG_DATABASE']}_fresh"
    env = {"STACK_PG_DATABASE": name, "STACK_PG_USER": name, "STACK_PROJECT_DIR": str(fresh)}
    try:
        stack.inv("setup.postgres", env=env)
        began = time.monotonic()
        stack.inv("setup.airflow", env=env, timeout=600)
        print(f"\n[figure] setup.airflow of a fresh database with the exported objects: "
              f"{time.monotonic() - began:.1f} s")
        again = tmp_path / "again.yaml"
        stack.inv("objects.export", "--file", str(again), env=env)
        assert yaml.safe_load(again.read_text()) == yaml.safe_load(exported.read_text())
    finally:
        # the fresh database goes, while the stack runs on its own (which must not be refused, nor touched)
        stack.inv("db.drop", "--yes", env=env)
    with psycopg.connect(**stack.settings().pg_conninfo()) as db:
        assert db.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,)).fetchone()[0] == 0
    assert_one_line_error(stack.inv("db.drop", "--yes", check=False), "stop it first")  # its own: refused


@pytest.mark.once_per_line
def test_bad_airflow_settings_are_one_line_and_change_nothing(stack, airflow_up):
    from .test_bad_input import db_fingerprint

    settings_file = project_dir(stack) / "airflow_settings.yaml"
    original = settings_file.read_text()
    before = db_fingerprint(stack.settings())
    cases = [
        (original.replace("  pools:\n", "  pools:\n   - : [\n"), ("airflow_settings.yaml line", "fix the YAML")),
        (original.replace(PROJECT_SECRET_NAME, "NOT_IN_DOT_ENV"), ("NOT_IN_DOT_ENV", "add NOT_IN_DOT_ENV=")),
        (original.replace("pool_slot: 3", "pool_slot: many"), ("project_pool", "pool_slot")),
        ("airflow:\n  connections: not-a-list\n", ("airflow.connections must be a list",)),
    ]
    try:
        for text, needles in cases:
            settings_file.write_text(text)
            for task in ("objects.apply", "up"):
                assert_one_line_error(stack.inv(task, check=False), *needles)
    finally:
        settings_file.write_text(original)
    assert db_fingerprint(stack.settings()) == before


@pytest.mark.once_per_line
def test_packages_txt_installs_once_and_names_an_unknown_package(stack, airflow_up):
    packages = project_dir(stack) / "packages.txt"
    known = "tree"  # small, no dependencies; what packages.txt is for
    was_installed = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", known],
                                   capture_output=True, text=True).stdout == "installed"
    packages.write_text(f"# OS packages the project needs\n{known}\n")
    try:
        out = stack.inv("setup.airflow", timeout=600).stdout
        assert (f"installed {known}" in out) != was_installed, out
        assert shutil.which(known)
        assert f"installed {known}" not in stack.inv("setup.airflow").stdout  # once
        packages.write_text("no-such-os-package-airflow-stack\n")
        line = assert_one_line_error(stack.inv("setup.airflow", check=False), "no-such-os-package-airflow-stack")
        assert "nothing was installed" in line
    finally:
        packages.write_text("")


@pytest.mark.once_per_line
def test_dags_check_names_file_and_line_and_dags_test_runs_one_dag(stack, airflow_up, tmp_path):
    began = time.monotonic()
    out = stack.inv("dags.check").stdout
    print(f"\n[figure] dags.check of the test project: {time.monotonic() - began:.1f} s")
    assert "DAGs import without errors" in out
    # a broken copy of the project: an import error, a syntax error, a duplicate dag_id, a cycle
    broken = write_project(tmp_path / "broken")
    (broken / "dags" / "broken_import.py").write_text("from airflow import DAG\n\nimport no_such_module_xyz\n")
    (broken / "dags" / "broken_syntax.py").write_text("from airflow import DAG\n\ndef f(:\n    pass\n")
    (broken / "dags" / "duplicate.py").write_text((broken / "dags" / "project_probe.py").read_text())
    proc = stack.inv("dags.check", check=False, env={"STACK_PROJECT_DIR": str(broken)})
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "dags/broken_import.py:3: ModuleNotFoundError: No module named 'no_such_module_xyz'" in proc.stdout
    assert "dags/broken_syntax.py:3: SyntaxError" in proc.stdout
    assert "AirflowDagDuplicatedIdException: Ignoring DAG project_probe" in proc.stdout
    assert "3 DAG file(s) with errors" in proc.stderr

    began = time.monotonic()
    proc = stack.inv("dags.test", "project_probe")
    print(f"\n[figure] dags.test project_probe: {time.monotonic() - began:.1f} s")
    assert "project_probe succeeded" in proc.stdout
    seen = json.loads((project_dir(stack) / "dags" / "project_probe.json").read_text())
    assert seen["variable"] == "hello from airflow_settings.yaml" and seen["cowsay"] == "5.0"
    failed = stack.inv("dags.test", "fails_on_purpose", check=False)
    assert failed.returncode == 1 and "this task fails on purpose" in failed.stdout + failed.stderr
    assert "the run of fails_on_purpose failed" in failed.stderr
    assert_one_line_error(stack.inv("dags.test", "project_prob", check=False), "did you mean project_probe")
    assert_one_line_error(stack.inv("dags.test", "project_probe", "--conf", "[1", check=False), "JSON object")


def test_dags_test_never_races_the_running_scheduler(stack, api, airflow_up):
    """`airflow dags test` puts its run in the stack's database: with the DAG unpaused, the stack's own
    scheduler would start the run's tasks too (1 run in 3 failed so). 20 runs in a row, every one succeeds,
    and the DAG's paused flag is as it was."""
    api.wait_for_dag("project_probe", timeout=90)
    api.unpause("project_probe")
    took = []
    for _ in range(20):
        began = time.monotonic()
        proc = stack.inv("dags.test", "project_probe", check=False)
        took.append(time.monotonic() - began)
        assert proc.returncode == 0 and "project_probe succeeded" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    assert api.client.get(f"{api.prefix}/dags/project_probe").json()["is_paused"] is False
    assert not list(stack.settings().paths.run.glob("dags-test-*.json"))  # nothing left to put back
    took.sort()
    print(f"\n[figure] dags.test project_probe x20 under a running scheduler ({EXECUTOR}): median {took[10]:.1f} s, "
          f"max {took[-1]:.1f} s")


# a package no supported release depends on (tabulate was one: Airflow 3.3's core requires it)
PROBE_REQUIREMENT, PROBE_MODULE = "pyjokes==0.8.3", "pyjokes"


@pytest.mark.once_per_line
def test_a_requirement_removed_from_the_file_is_gone_from_the_next_task(stack, api, airflow_up):
    """The venv holds exactly the release, its constraints and requirements.txt: a line added is importable by
    the next task, the same line removed is not."""
    requirements = project_dir(stack) / "requirements.txt"
    original = requirements.read_text()

    def importable(module: str) -> bool:
        out = project_dir(stack) / "dags" / "import_probe.json"
        out.unlink(missing_ok=True)
        api.wait_for_dag("import_probe", timeout=90)
        api.unpause("import_probe")
        run_id = api.trigger("import_probe", {"module": module})
        assert api.wait_for_run("import_probe", run_id) == "success"
        return json.loads(out.read_text())["importable"]

    assert not importable(PROBE_MODULE)
    requirements.write_text(original + f"{PROBE_REQUIREMENT}\n")
    try:
        began = time.monotonic()
        stack.inv("up")
        print(f"\n[figure] a requirement added: invoke up {time.monotonic() - began:.1f} s")
        assert importable(PROBE_MODULE)
    finally:
        requirements.write_text(original)
    began = time.monotonic()
    stack.inv("up")
    print(f"[figure] the same requirement removed: invoke up {time.monotonic() - began:.1f} s")
    assert not importable(PROBE_MODULE)
    assert PROBE_MODULE not in freeze(stack)


@pytest.mark.once_per_line
def test_the_projects_own_tests_run_with_the_stacks_airflow(stack, airflow_up):
    proc = stack.inv("dags.pytest", "--args", "-q")
    assert "1 passed" in proc.stdout
    (project_dir(stack) / "tests" / "dags" / "test_fails.py").write_text("def test_fails():\n    assert 1 == 2\n")
    try:
        proc = stack.inv("dags.pytest", check=False)
        assert proc.returncode == 1 and "1 failed, 1 passed" in proc.stdout
    finally:
        os.remove(project_dir(stack) / "tests" / "dags" / "test_fails.py")
