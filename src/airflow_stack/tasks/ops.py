"""Top-level tasks: up, upgrade, stop, restart, status, stacks, logs, doctor, clean, and the stack's own airflow
CLI."""

from __future__ import annotations

import shlex
from pathlib import Path

from invoke import Context, task

from .. import progress
from ..errors import StackError
from ..runtime import registry
from ..runtime import status as status_mod
from ..settings import AIRFLOW_LINES_HELP
from ..stack import Stack
from ._common import load, number, one_line_errors, say, stack, timeout_help


@task(help={"executor": "local (default) or celery; kept in .env for the next invoke up",
            "line": f"{AIRFLOW_LINES_HELP}; kept in .env for the next invoke up",
            "timeout": timeout_help("health"),
            "quiet": "no progress lines while steps run (STACK_PROGRESS=off does the same for every task)"})
@one_line_errors
def up(c: Context, executor: str | None = None, line: str | None = None, timeout: str | None = None,
       quiet: bool = False) -> None:
    """Bring the whole stack up: set up PostgreSQL, Redis and Airflow, then run it (re-run safe)."""
    timeout = number(timeout, "--timeout", Stack.HEALTH_TIMEOUT)
    the_stack = stack(c, airflow_line=line)
    if quiet:
        progress.configure("off")
    the_stack.up(executor, line, timeout)


@task(help={"version": "the release of the line to go to (default: the one its constraints pin)",
            "line": f"another Airflow line ({AIRFLOW_LINES_HELP}); a newer one only",
            "timeout": timeout_help("the new release to be healthy")})
@one_line_errors
def upgrade(c: Context, version: str | None = None, line: str | None = None, timeout: str | None = None) -> None:
    """Go to another Airflow release: install it beside, parse the DAGs with it, back up, switch, migrate,
    start; on failure restore the backup and the previous release."""
    from ..ops import upgrade as upgrade_mod

    timeout = number(timeout, "--timeout", Stack.HEALTH_TIMEOUT)
    the_stack = stack(c)
    with the_stack.lock("invoke upgrade"):
        settings = the_stack.settings
        plan = upgrade_mod.prepare(c, settings, line, version)
        say(f"upgrade: Airflow {plan.current_release} -> {plan.target_release}; the DAGs import with it")
        if plan.changed:
            say(f"upgrade: {len(plan.changed)} packages change their major or minor version: "
                f"{', '.join(plan.changed)}")
        say(*(f"upgrade: {line_}" for line_ in upgrade_mod.switch(c, plan, timeout)))
        say(f"upgrade: done; Airflow {plan.target_release} (kept in {settings.env_file.name} as "
            f"STACK_AIRFLOW_VERSION); the backup stays in {plan.backup}")


@task(help={
    "component": "stop only this component (default: all of Airflow and our Redis)",
    "postgres": "also stop the PostgreSQL server (it may serve other databases: off by default)",
    "timeout": f"seconds to wait for a graceful stop before killing (default {Stack.STOP_TIMEOUT:g})",
})
@one_line_errors
def stop(c: Context, component: str = "", postgres: bool = False, timeout: str | None = None) -> None:
    """Stop the Airflow processes and our Redis (PostgreSQL only with --postgres)."""
    timeout = number(timeout, "--timeout", Stack.STOP_TIMEOUT)
    stack(c).stop(component, postgres, timeout)


@task(help={
    "component": "restart only this component, e.g. scheduler, redis or worker-w2 (default: everything that runs)",
    "timeout": timeout_help("what was restarted to be healthy"),
    "stop_timeout": f"seconds to wait for a graceful stop before killing (default {Stack.STOP_TIMEOUT:g})",
})
@one_line_errors
def restart(c: Context, component: str = "", timeout: str | None = None, stop_timeout: str | None = None) -> None:
    """Stop and start what runs (or one component), with the same executor, line, Flower and extra workers."""
    timeout = number(timeout, "--timeout", Stack.HEALTH_TIMEOUT)
    stop_timeout = number(stop_timeout, "--stop-timeout", Stack.STOP_TIMEOUT)
    stack(c).restart(component, timeout, stop_timeout)


@task(name="status", help={"json": "print JSON instead of a table"})
@one_line_errors
def status_(c: Context, json: bool = False) -> None:
    """Show each component: pid, up/down, health, memory, CPU, ports (exit 1 when one is down or unhealthy)."""
    rows = status_mod.rows(load())
    say(status_mod.to_json(rows) if json else status_mod.to_table(rows))
    down = [row.name for row in rows if not row.up]
    unhealthy = [row.name for row in rows if row.up and not row.healthy]
    if down or unhealthy:  # for scripts and CI: the table above says why
        parts = [f"{', '.join(down)} {'is' if len(down) == 1 else 'are'} down"] if down else []
        parts += [f"{', '.join(unhealthy)} {'is' if len(unhealthy) == 1 else 'are'} unhealthy"] if unhealthy else []
        raise StackError(f"status: {'; '.join(parts)}")


@task(positional=["directory"], help={
    "directory": "the new project's folder (made when missing; an empty one, or an existing project)",
    "airflow": "the Airflow release it runs on, e.g. 3.1.8 (default: the default line's)"})
@one_line_errors
def init(c: Context, directory: str, airflow: str | None = None) -> None:
    """Start a project in the astro layout (example DAG, DAG tests, Dockerfile naming its release) and point
    STACK_PROJECT_DIR at it."""
    stack(c).init_project(Path(directory).expanduser().resolve(), airflow)


@task
@one_line_errors
def versions(c: Context) -> None:
    """Say which Airflow release the project pins, which runs, and which the stack can run."""
    say(*(f"versions: {line}" for line in status_mod.versions(load())))


@task(help={"json": "print JSON instead of a table"})
@one_line_errors
def stacks(c: Context, json: bool = False) -> None:
    """List the stacks on this machine: checkout, URL, database, running or not (* this checkout's)."""
    from ..runtime import checkouts

    settings = load()
    rows = checkouts.listing(settings)
    if json:
        import json as json_mod

        say(json_mod.dumps(rows, indent=2))
    elif rows:
        say(checkouts.to_table(rows))
    else:
        say(f"no stack has been set up on this machine yet ({settings.user_paths.stacks}): run invoke up")


@task(help={
    "component": "one component, e.g. scheduler, redis or worker-w2 (default: all)",
    "follow": "keep printing new lines (tail -F)",
    "lines": "how many lines to show first (default 50)",
})
@one_line_errors
def logs(c: Context, component: str = "", follow: bool = False, lines: str | None = None) -> None:
    """Show the logs of the stack's processes (all in the state dir's logs/)."""
    lines = number(lines, "--lines", 50, int)
    settings = load()
    if component:
        names = [registry.find(settings, component).name]
    else:
        names = [inst.name for inst in registry.instances(settings, with_logs=True)]
    files = [settings.paths.log_file(name) for name in names]
    existing = [str(f) for f in files if f.exists()]
    if not existing:
        raise StackError(f"no logs yet in {settings.paths.logs}; start the stack: invoke up")
    c.run(f"tail -n {int(lines)} {'-F ' if follow else ''}{' '.join(map(shlex.quote, existing))}", pty=False)


@task(name="airflow", help={"args": "arguments for the airflow CLI, e.g. 'dags list'"})
@one_line_errors
def airflow_cli(c: Context, args: str = "version") -> None:
    """Run the stack's own Airflow CLI with its environment (see also scripts/airflow)."""
    from ..apache_airflow import config, install

    settings = load()
    if not install.airflow_bin(settings).exists():
        raise StackError("Airflow is not installed; run: invoke setup.airflow")
    env = config.environment(settings, registry.executor(settings))
    c.run(f"{shlex.quote(str(install.airflow_bin(settings)))} {args}", env=env, pty=False)


@task(help={"json": "print JSON instead of lines"})
@one_line_errors
def doctor(c: Context, json: bool = False) -> None:
    """Prove the production warnings are gone: each check passes, or says the command that fixes it."""
    from ..ops import doctor as doctor_mod

    checks = doctor_mod.run_all(load())
    if json:
        import json as json_mod

        say(json_mod.dumps(doctor_mod.as_dicts(checks), indent=2))
    else:
        say(doctor_mod.render(checks))
    if not all(check.ok for check in checks):
        raise StackError("doctor: some checks fail (fix lines above)")


@task(help={"yes": "do not ask (required when nobody can answer: no terminal)",
            "drop_db": "also drop Airflow's database and role (every DAG run and connection)"})
@one_line_errors
def clean(c: Context, yes: bool = False, drop_db: bool = False) -> None:
    """Remove runtime state (logs, pids, Redis data, AIRFLOW_HOME); the database only with --drop-db."""
    stack(c).clean(yes, drop_db)
