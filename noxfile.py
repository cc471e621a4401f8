"""Nox sessions: thin doorways onto ruff, pytest and invoke. `nox -l` lists them."""

from __future__ import annotations

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "tests", "integration"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
LINES = ["3.3", "2.11"]


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
@nox.parametrize("line", [nox.param(line, id=line) for line in LINES])
def integration(session: nox.Session, line: str) -> None:
    """Integration tests against real PostgreSQL, Redis and Airflow, in their own state dir and ports."""
    install(session, "test")
    session.run("pytest", "tests/integration", "-m", "integration", *session.posargs,
                env={"STACK_TEST_AIRFLOW_LINE": line})
