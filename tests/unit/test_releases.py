"""Which Airflow release the stack runs, and what differs between the minors it supports."""

from __future__ import annotations

import pytest
from invoke import MockContext, Result

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.apache_airflow import install, profiles, releases
from airflow_stack.errors import StackError


@pytest.fixture
def project(tmp_path, env):
    root = tmp_path / "my project"
    (root / "dags").mkdir(parents=True)
    return root


def load(env, project, **more):
    return settings_mod.load(environ=env | {"STACK_PROJECT_DIR": str(project)} | more)


@pytest.mark.parametrize(("image", "implied"), [
    ("quay.io/astronomer/astro-runtime:12.6.0", "2.10"),
    ("quay.io/astronomer/astro-runtime:13.1.0-base", "2.11"),
    ("astrocrpublic.azurecr.io/runtime:3.1-2", "3.1"),
    ("astrocrpublic.azurecr.io/runtime:3.3-1", "3.3"),
    ("apache/airflow:2.10.3-python3.11", "2.10.3"),
    ("apache/airflow:slim-3.0.2", "3.0.2"),
    ("python:3.12-slim", None),
    ("ubuntu", None),
])
def test_what_a_dockerfile_image_implies(image, implied):
    assert releases.of_image(image) == implied


def test_the_release_comes_from_the_version_then_the_line_then_the_dockerfile_then_the_default(env, project):
    assert releases.resolve(load(env, project)) == releases.Release("3.3.2", "the default")
    (project / "Dockerfile").write_text("# astro\nFROM astrocrpublic.azurecr.io/runtime:3.1-5\nRUN true\n")
    pinned = releases.resolve(load(env, project))
    assert pinned == releases.Release("3.1.8", "the project's Dockerfile (astrocrpublic.azurecr.io/runtime:3.1-5)")
    assert releases.resolve(load(env, project, STACK_AIRFLOW_LINE="3.3")).version == "3.3.2"
    assert releases.resolve(load(env, project, STACK_AIRFLOW_LINE="3.3", STACK_AIRFLOW_VERSION="3.2.1")) == \
        releases.Release("3.2.1", "STACK_AIRFLOW_VERSION")
    (project / "Dockerfile").write_text("FROM apache/airflow:2.10.5-python3.11\n")
    assert releases.resolve(load(env, project)).version == "2.10.5"


@pytest.mark.parametrize(("dockerfile", "message"), [
    ("FROM apache/airflow:2.9.3\n", r"Dockerfile \(apache/airflow:2\.9\.3\) names Airflow 2\.9\.3; the stack runs "
                                    r"3\.0, 3\.1, 3\.2, 3\.3\.x; 2\.10, 2\.11\.x"),
    ("FROM quay.io/astronomer/astro-runtime:11.3.0\n", r"implies Airflow 2\.9; the stack runs .*STACK_AIRFLOW_LINE"),
])
def test_a_dockerfile_pinning_an_unsupported_release_is_one_line(env, project, dockerfile, message):
    (project / "Dockerfile").write_text(dockerfile)
    with pytest.raises(StackError, match=message):
        releases.resolve(load(env, project))


def test_a_release_that_does_not_exist_is_one_line(monkeypatch):
    class Answer:
        def __init__(self, body):
            self.body = body

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.body

    files = b'{"files": [{"filename": "apache_airflow-3.1.7-py3-none-any.whl", "upload-time": "2026-02-01T10:00:00Z"}]}'
    monkeypatch.setattr(releases.urllib.request, "urlopen", lambda *a, **k: Answer(files))
    releases.resolve_as_of.cache_clear()
    assert releases.resolve_as_of("3.1.7") == "2026-02-02"  # the day after: core and the SDK came seconds later
    with pytest.raises(StackError, match=r"Airflow 3\.1\.99 does not exist on .*; choose a published release, "
                                         r"e\.g\. 3\.1\.8"):
        releases.resolve_as_of("3.1.99")
    releases.resolve_as_of.cache_clear()
    assert releases.resolve_as_of("3.3.2") == "2026-09-18"  # known: no question asked


def test_what_differs_between_the_minors_of_a_line(settings):
    assert profiles.get("3.3").sql_driver == "psycopg"
    for minor in ("3.2", "3.1", "3.0"):  # SQLAlchemy 1.4 (3.0), or no psycopg 3 installed (3.1, 3.2)
        assert profiles.get(minor).sql_driver == "psycopg2"
    assert airflow_config.sql_alchemy_conn(settings.replace(airflow_line="3.1")).startswith("postgresql+psycopg2://")
    # 2.10 resolves gunicorn 23 (no --control-socket) and resets a password in place; 2.11 the other way round
    old, new = profiles.get("2.10"), profiles.get("2.11")
    assert (old.gunicorn_control_socket, old.admin_reset_password) == (False, True)
    assert (new.gunicorn_control_socket, new.admin_reset_password) == (True, False)
    env_210 = airflow_config.environment(settings.replace(airflow_line="2.10"), "local")
    assert "GUNICORN_CMD_ARGS" not in env_210 and "GUNICORN_CMD_ARGS" in airflow_config.environment(
        settings.replace(airflow_line="2.11"), "local")
    assert airflow_config.environment(settings.replace(airflow_line="3.0"), "local")["AIRFLOW__API__WORKERS"] == "1"
    for minor in profiles.NAMES:  # every minor of a line runs the same components
        line = profiles.get(minor)
        assert [c.name for c in line.components] == [c.name for c in profiles.LINES[line.major].components]


def test_the_venvs_python_is_the_tooling_one_when_the_release_supports_it(settings, monkeypatch):
    python, version = install.interpreter(MockContext(), settings)
    assert (python, version) == (install.sys.executable, install.sys.version_info[:2])


def test_a_release_this_python_cannot_run_names_the_python_it_needs(settings, monkeypatch):
    monkeypatch.setattr(install.sys, "version_info", (3, 14, 0))  # as if the tooling ran on 3.14
    monkeypatch.setattr(install.shutil, "which", lambda name: None)  # and no other python3.X on PATH
    with pytest.raises(StackError, match=r"Airflow 2\.11\.2 needs Python 3\.10-3\.12; this machine has 3\.14 and no "
                                         r"python3\.12 \.\.\. python3\.10 on PATH"):
        install.interpreter(MockContext(), settings.replace(airflow_line="2.11"))
    # a python3.12 on PATH is taken instead
    monkeypatch.setattr(install.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "python3.12" else None)
    c = MockContext(run={"/usr/bin/python3.12 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'":
                         Result("3.12\n")})
    assert install.interpreter(c, settings.replace(airflow_line="2.11")) == ("/usr/bin/python3.12", (3, 12))
    # STACK_AIRFLOW_PYTHON naming a Python the release cannot run
    c = MockContext(run={"/opt/py -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'": Result("3.13\n")})
    with pytest.raises(StackError, match=r"Airflow 2\.11\.2 needs Python 3\.10-3\.12, this is 3\.13; "
                                         r".*STACK_AIRFLOW_PYTHON"):
        install.interpreter(c, settings.replace(airflow_line="2.11", airflow_python="/opt/py"))


@pytest.mark.parametrize(("release", "lowest"), [("2.10.5", "3.8.1"), ("2.11.2", "3.10"), ("3.3.2", "3.10")])
def test_constraints_are_resolved_for_every_python_the_release_supports_from_its_own_floor(
        tmp_path, monkeypatch, release, lowest):
    """2.10 requires Python >= 3.8.1: a universal resolution from 3.8.0 found no solution (tried)."""
    monkeypatch.setattr(releases, "resolve_as_of", lambda version: "2025-02-11")
    out = tmp_path / "constraints.txt"
    out.write_text("apache-airflow==x\n")  # what uv would write
    c = MockContext(run=Result(""), repeat=True)
    install.regenerate_constraints(c, release, out)
    cmd = c.run.call_args.args[0]
    assert f"--universal --generate-hashes --python-version {lowest} --exclude-newer 2025-02-11 " in cmd
