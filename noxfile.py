"""Nox sessions: thin doorways onto ruff, pytest and invoke. `nox -l` lists them."""

from __future__ import annotations

import nox

from airflow_stack.apache_airflow import profiles

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "tests", "darwin", "integration", "releases"]

# every supported minor but the default gets a session of its own (2.x is end of life: no full matrix)
MINORS = [nox.param(name, id=name, tags=[f"line-{name}"]) for name in profiles.NAMES if name != profiles.DEFAULT]
# The LocalExecutor session holds the once-per-line tests too: about three times a Celery one, so it runs as two
# halves (each with a stack of its own) that two lanes can run at once. "machine": the tests that bring up their
# own servers, clones and stacks; "stack": every other file (a new test file lands there unless listed here).
MACHINE_TESTS = ("test_services.py", "test_bad_input.py", "test_checkouts.py", "test_managed_pg.py",
                 "test_pg_restart.py", "test_pg_trust.py", "test_reboot.py", "test_import_sqlite.py", "test_upgrade.py",
                 "test_faults.py")
SESSIONS = [nox.param("local", "machine", id="local-machine", tags=["local"]),
            nox.param("local", "stack", id="local-stack", tags=["local"]),
            nox.param("celery", "all", id="celery", tags=["celery"])]
# the executor-independent tests (services, bad input, backups, carry-over) run once, with the LocalExecutor
MARKERS = {"local": "integration and not celery and not minor",
           "celery": "integration and not once_per_line and not minor"}


def install(session: nox.Session, *groups: str, project: bool = True) -> None:
    """The session's venv exactly as uv.lock pins these dependency groups (and this package, editable), compiled:
    a shell with PYTHONDONTWRITEBYTECODE set (some CI images) would otherwise compile every import again in
    each of the hundreds of `python -m invoke` a session runs (1.2 s each, measured)."""
    session.run_install("uv", "sync", "-q", "--locked", "--compile-bytecode", "--no-default-groups",
                        *(arg for group in groups for arg in ("--group", group)),
                        *(() if project else ("--no-install-project",)), "--python", session.virtualenv.location,
                        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}, external=True)


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


def _part(part: str) -> list[str]:
    """pytest's paths for one part of the LocalExecutor session ("all": every file)."""
    machine = [f"tests/integration/{name}" for name in MACHINE_TESTS]
    if part == "machine":
        return machine
    if part == "stack":
        return ["tests/integration", *(f"--ignore={path}" for path in machine)]
    return ["tests/integration"]


@nox.session
@nox.parametrize(("executor", "part"), SESSIONS)
def integration(session: nox.Session, executor: str, part: str) -> None:
    """Integration tests of the default release against real PostgreSQL, Redis and Airflow, in their own state dir
    and ports."""
    install(session, "test")
    # --durations: where a session's time goes (every setup, call and teardown of 10 s or more), in every CI log
    session.run("pytest", *_part(part), "-m", MARKERS[executor], "--line", profiles.DEFAULT,
                "--executor", executor, "--durations=0", "--durations-min=10", *session.posargs)


@nox.session
@nox.parametrize("line", MINORS)
def releases(session: nox.Session, line: str) -> None:
    """One other supported minor: a project pinning it up, a DAG through the API, dags.check/test/pytest, stop."""
    install(session, "test")
    session.run("pytest", "tests/integration/test_release.py", "-m", "minor", "--line", line,
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
