"""Top-level tasks: up, stop, status, logs, and the stack's own airflow CLI."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from invoke import Context, task

from .. import (
    airflow_config,
    airflow_install,
    lifecycle,
    lines,
    memcached_server,
    platform,
    progress,
    redis_server,
    registry,
    secrets,
    supervisor,
)
from .. import status as status_mod
from ..errors import StackError
from . import db, run, setup
from ._common import exclusive, load, number, one_line_errors, say


@task(help={"executor": "local (default) or celery; kept in .env for the next invoke up",
            "line": f"{lines.HELP}; kept in .env for the next invoke up",
            "timeout": "seconds to wait for health (default 180)",
            "quiet": "no progress lines while steps run (STACK_PROGRESS=off does the same for every task)"})
@one_line_errors
@exclusive("invoke up")
def up(c: Context, executor: str | None = None, line: str | None = None, timeout: str | None = None,
       quiet: bool = False) -> None:
    """Bring the whole stack up: set up PostgreSQL, Redis and Airflow, then run it (re-run safe)."""
    if quiet:
        os.environ[progress.MODE_VAR] = "off"
    timeout = number(timeout, "--timeout", lifecycle.HEALTH_TIMEOUT)
    settings = load(executor=executor, airflow_line=line)
    rec = registry.recorded(settings)
    running = registry.running(settings)
    # a plain `invoke up` keeps what runs; only a flag switches
    if running and executor is None and rec.get("executor"):
        settings = settings.replace(executor=rec["executor"])
    if running and line is None and rec.get("line") in lines.NAMES:
        settings = settings.replace(airflow_line=rec["line"])
    setup.all_(c, line=settings.airflow_line)
    if running and rec.get("executor") not in (None, settings.executor):
        # an explicit switch: same database and DAG history, other executor
        say(f"up: switching from the {rec['executor']} to the {settings.executor} executor",
            *lifecycle.stop(settings))
    run.start_stack(c, settings.executor, timeout, settings.airflow_line)
    # what a flag chose is kept once it runs: the next plain `invoke up` brings back the same stack
    for flag, key, value in (("executor", "STACK_EXECUTOR", executor), ("line", "STACK_AIRFLOW_LINE", line)):
        if value is not None and secrets.set_env_value(settings.env_file, key, value):
            say(f"up: --{flag} {value} kept in {settings.env_file.name} ({key})")


@task(help={"version": "the release of the line to go to (default: the one its constraints pin)",
            "line": f"another Airflow line ({lines.HELP}); a newer one only",
            "timeout": "seconds to wait for the new release to be healthy (default 180)"})
@one_line_errors
@exclusive("invoke upgrade")
def upgrade(c: Context, version: str | None = None, line: str | None = None, timeout: str | None = None) -> None:
    """Go to another Airflow release: install it beside, parse the DAGs with it, back up, switch, migrate,
    start; on failure restore the backup and the previous release."""
    from .. import upgrade as upgrade_mod

    timeout = number(timeout, "--timeout", lifecycle.HEALTH_TIMEOUT)
    settings = load()
    plan = upgrade_mod.prepare(c, settings, line, version)
    say(f"upgrade: Airflow {settings.airflow_release} -> {plan.target.airflow_release}; the DAGs import with it")
    if plan.changed:
        say(f"upgrade: {len(plan.changed)} packages change their major or minor version: {', '.join(plan.changed)}")
    say(*(f"upgrade: {line_}" for line_ in upgrade_mod.switch(c, plan, timeout)))
    say(f"upgrade: done; Airflow {plan.target.airflow_release} (kept in {settings.env_file.name} as "
        f"STACK_AIRFLOW_VERSION); the backup stays in {plan.backup}")


@task(help={
    "component": "stop only this component (default: all of Airflow and our Redis)",
    "postgres": "also stop the PostgreSQL server (it may serve other databases: off by default)",
    "timeout": "seconds to wait for a graceful stop before killing (default 30)",
})
@one_line_errors
@exclusive("invoke stop")
def stop(c: Context, component: str = "", postgres: bool = False, timeout: str | None = None) -> None:
    """Stop the Airflow processes and our Redis (PostgreSQL only with --postgres)."""
    timeout = number(timeout, "--timeout", supervisor.STOP_TIMEOUT)
    settings = load()
    if component:
        say(*lifecycle.stop(settings, [component], timeout))
        return
    say(*lifecycle.stop(settings, None, timeout))
    say(*lifecycle.stop(settings, [redis_server.NAME], timeout))
    if memcached_server.managed(settings):
        say(*lifecycle.stop(settings, [memcached_server.NAME], timeout))
    if postgres:
        if not settings.pg_is_local:
            raise StackError(f"PostgreSQL at {settings.pg_host} is not ours to stop")
        platform.detect().pg_stop(c, settings.pg_port, settings.pg_version)
        say("postgresql: stopped")


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


@task(help={
    "component": "one component, e.g. scheduler, redis or worker-w2 (default: all)",
    "follow": "keep printing new lines (tail -F)",
    "lines": "how many lines to show first (default 50)",
})
def logs(c: Context, component: str = "", follow: bool = False, lines: str | None = None) -> None:
    """Show the logs of the stack's processes (all in the state dir's logs/)."""
    lines = number(lines, "--lines", 50, int)
    settings = load()
    if component:
        names = [registry.find(settings, component).name]
    else:
        names = [inst.name for inst in registry.instances(settings, with_logs=True)]
    files = [supervisor.log_file(settings, name) for name in names]
    existing = [str(f) for f in files if f.exists()]
    if not existing:
        raise StackError(f"no logs yet in {settings.log_dir}; start the stack: invoke up")
    c.run(f"tail -n {int(lines)} {'-F ' if follow else ''}{' '.join(map(shlex.quote, existing))}", pty=False)


@task(name="airflow", help={"args": "arguments for the airflow CLI, e.g. 'dags list'"})
@one_line_errors
def airflow_cli(c: Context, args: str = "version") -> None:
    """Run the stack's own Airflow CLI with its environment (see also scripts/airflow)."""
    settings = load()
    if not airflow_install.airflow_bin(settings).exists():
        raise StackError("Airflow is not installed; run: invoke setup.airflow")
    env = airflow_config.environment(settings, registry.executor(settings))
    c.run(f"{shlex.quote(str(airflow_install.airflow_bin(settings)))} {args}", env=env, pty=False)


@task(help={"json": "print JSON instead of lines"})
@one_line_errors
def doctor(c: Context, json: bool = False) -> None:
    """Prove the production warnings are gone: each check passes, or says the command that fixes it."""
    from .. import doctor as doctor_mod

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
@exclusive("invoke clean")
def clean(c: Context, yes: bool = False, drop_db: bool = False) -> None:
    """Remove runtime state (logs, pids, Redis data, AIRFLOW_HOME); the database only with --drop-db."""
    settings = load()
    if registry.running(settings):
        raise StackError("Airflow is running; stop it first: invoke stop")
    what = f"{settings.state_dir} (logs, pids, Redis data, AIRFLOW_HOME; backups and venvs are kept)"
    if drop_db:
        what += f" and database {settings.pg_database} with role {settings.pg_user}"
    if not yes:
        if not sys.stdin.isatty():
            raise StackError(f"clean would remove {what}; nobody can confirm here: re-run with --yes")
        if input(f"Remove {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            raise StackError("nothing removed")
    redis_server.stop(settings)
    removed = []
    # backups and the Airflow venvs stay: they are not runtime state
    for path in (settings.log_dir, settings.run_dir, settings.redis_dir, settings.airflow_home):
        if path.exists():
            shutil.rmtree(path)
            removed.append(path.name)
    say(f"clean: removed {', '.join(removed) or 'nothing'} in {settings.state_dir}")
    if drop_db:
        db.drop(c, yes=True)
