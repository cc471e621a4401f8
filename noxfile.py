"""Nox sessions: thin doorways onto ruff, pytest and invoke. `nox -l` lists them."""

from __future__ import annotations

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "tests", "integration"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
LINES = ["3.3", "2.11"]
EXECUTORS = ["local", "celery"]


def install(session: nox.Session, *groups: str) -> None:
    deps = [dep for group in groups for dep in nox.project.dependency_groups(PYPROJECT, group)]
    session.install("-e", ".", *deps)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "tasks.py", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests: no services, every platform path through invoke's MockContext."""
    install(session, "test")
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session
@nox.parametrize("line", LINES)
@nox.parametrize("executor", EXECUTORS)
def integration(session: nox.Session, executor: str, line: str) -> None:
    """Integration tests against real PostgreSQL, Redis and Airflow, in their own state dir and ports."""
    install(session, "test")
    if executor == "local":  # the services and bad-input tests need to run once per line only
        args = ["tests/integration", "-m", "integration and not celery"]
    else:
        args = ["tests/integration/test_airflow.py", "tests/integration/test_celery.py",
                "tests/integration/test_doctor.py", "tests/integration/test_faults.py", "-m", "integration"]
    session.run("pytest", *args, *session.posargs,
                env={"STACK_TEST_AIRFLOW_LINE": line, "STACK_TEST_EXECUTOR": executor})


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmark against `airflow standalone`, write docs/benchmarks.md (-- --line 2.11 --repeats N)."""
    install(session, "bench")
    session.run("python", "-m", "airflow_stack.bench", *session.posargs)
