"""Nox sessions: thin doorways onto ruff, pytest and invoke. `nox -l` lists them."""

from __future__ import annotations

import nox

from airflow_stack.apache_airflow import profiles

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "tests", "darwin", "integration"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
LINES = [nox.param(name, id=name, tags=[f"line-{name}"]) for name in profiles.NAMES]
EXECUTORS = [nox.param(name, id=name, tags=[name]) for name in ("local", "celery")]
# the executor-independent tests (services, bad input, backups, carry-over) run once per line
MARKERS = {"local": "integration and not celery", "celery": "integration and not once_per_line"}


def install(session: nox.Session, *groups: str, project: bool = True) -> None:
    deps = [dep for group in groups for dep in nox.project.dependency_groups(PYPROJECT, group)]
    session.install(*(("-e", ".") if project else ()), *deps)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint with ruff (pinned in pyproject's lint group)."""
    install(session, "lint", project=False)
    session.run("ruff", "check", "src", "tests", "tasks.py", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests: no services, every platform path through invoke's MockContext."""
    install(session, "test")
    session.run("pytest", "tests/unit", *session.posargs)


# the supervisor and launcher tests (a kill -9 restart by the resident supervisor included), and the forcing's own
DARWIN_TESTS = ("tests/unit/test_darwin.py", "tests/unit/test_supervisor.py", "tests/unit/test_launcher.py")


@nox.session
def darwin(session: nox.Session) -> None:
    """The supervisor and launcher tests as on macOS, forced on Linux: sys.platform, Homebrew, no /proc."""
    install(session, "test")
    session.run("pytest", *DARWIN_TESTS, "--platform", "darwin", *session.posargs)


@nox.session
@nox.parametrize("line", LINES)
@nox.parametrize("executor", EXECUTORS)
def integration(session: nox.Session, executor: str, line: str) -> None:
    """Integration tests against real PostgreSQL, Redis and Airflow, in their own state dir and ports."""
    install(session, "test")
    # --durations: where a session's time goes (every setup, call and teardown of 10 s or more), in every CI log
    session.run("pytest", "tests/integration", "-m", MARKERS[executor], "--line", line, "--executor", executor,
                "--durations=0", "--durations-min=10", *session.posargs)


@nox.session(default=False)
def dags(session: nox.Session) -> None:
    """Your project's DAGs (STACK_PROJECT_DIR): invoke dags.check, then its tests/dags with pytest in the
    stack's Airflow venv (astro's `dev parse` + `dev pytest`). Extra pytest arguments after --."""
    install(session)
    session.run("invoke", "dags.check")
    session.run("invoke", "dags.pytest", *(("--args", " ".join(session.posargs)) if session.posargs else ()))


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmark against `airflow standalone`, write docs/benchmarks.md (-- --line L --repeats N)."""
    install(session, "bench")
    session.run("python", "-m", "tests.support.bench", *session.posargs)
