"""`invoke upgrade`: another Airflow release (a patch, or another line) without losing the stack.

The new release is installed beside the running one (one venv per release) and the project's DAGs
are parsed with it while the stack still runs; only then: a backup, stop, switch (.env), migrate,
start, wait healthy. When any of that fails, the backup is restored and the previous release
started again. Going down onto a schema a newer release migrated is refused before anything is
installed (schema.refuse_older_release).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from invoke import Context

from .. import settings as settings_mod
from ..apache_airflow import config, install, profiles, schema
from ..errors import StackError
from ..project import dags
from ..runtime import lifecycle, registry
from ..services import host
from ..settings import Settings
from ..statedir import write_private
from . import backup


@dataclass
class Plan:
    current: Settings
    target: Settings
    changed: list[str] = field(default_factory=list)  # packages whose major or minor version changes
    backup: Path | None = None

    @property
    def current_release(self) -> str:
        return profiles.release(self.current)

    @property
    def target_release(self) -> str:
        return profiles.release(self.target)


def _freeze(c: Context, settings: Settings) -> dict[str, str]:
    python = shlex.quote(str(install.airflow_python(settings)))
    result = c.run(f"{shlex.quote(install.uv_bin())} pip freeze --python {python}", hide=True, warn=True)
    found = {}
    for line in result.stdout.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            found[name.lower()] = version
    return found


def changed_packages(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """"name a.b -> c.d" for every package whose major or minor version differs (or that comes or goes)."""
    def minor(version: str) -> tuple[str, ...]:
        return tuple(re.findall(r"\d+", version)[:2])

    found = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is None or new is None or minor(old) != minor(new):
            found.append(f"{name} {old or '(none)'} -> {new or '(none)'}")
    return found


def prepare(c: Context, current: Settings, line: str | None, version: str | None) -> Plan:
    """Everything that can happen while the stack runs: checks, the new venv, the DAG parse."""
    # no --version: the release the (new) line's constraints pin
    target = current.replace(airflow_line=line or current.airflow_line, airflow_version=version or "")
    release = profiles.release(target)
    if release == install.installed_version(current) and install.is_current(target):
        raise StackError(f"Airflow {release} is what this stack runs already; nothing to upgrade")
    install.interpreter(c, target)  # a Python for the new release, before anything is installed
    schema.refuse_older_release(target, release)
    install.ensure(c, target)
    errors = dags.check(c, target).errors
    if errors:
        raise StackError(f"{len(errors)} DAG file(s) do not import with Airflow {release} "
                         f"({'; '.join(errors[:3])}); nothing was changed: fix them, then run the upgrade again")
    plan = Plan(current, target)
    if install.airflow_python(current).exists():
        plan.changed = changed_packages(_freeze(c, current), _freeze(c, target))
    return plan


def _remember(settings: Settings, target: Settings) -> None:
    settings_mod.persist(settings, airflow_line=target.airflow_line, airflow_version=profiles.release(target))


def switch(c: Context, plan: Plan, timeout: float) -> list[str]:
    """Backup, stop, switch, migrate, start and wait; on failure restore the backup and the previous
    release. Returns what was done."""
    current, target = plan.current, plan.target
    plat = host.detect() if current.pg_is_local else None
    executor = registry.executor(current)
    was_running = bool(registry.running(current))
    new_release, old_release = plan.target_release, plan.current_release
    old_env_file = current.env_file.read_bytes() if current.env_file.exists() else b""
    plan.backup = backup.backup(c, plat, current)
    done = [f"backed up {current.pg_database} to {plan.backup}"]
    done += lifecycle.stop(current)
    try:
        _remember(current, target)
        env = config.environment(target, executor)
        config.write_config(target, env)
        done += schema.migrate(c, target, env)
        done += schema.ensure_admin(c, target, env)
        if was_running:
            report = lifecycle.start(c, target, executor, {}, env, timeout=timeout)
            done.append(f"started Airflow {new_release}: {', '.join(report.started)}; healthy in "
                        f"{report.seconds:.1f} s")
    except (StackError, OSError) as err:
        reason = str(err).split(";")[0]
        lifecycle.stop(target)
        write_private(current.env_file, old_env_file.decode())
        try:
            backup.restore(c, plat, current, plan.backup)
        except StackError as failed:  # say both: why the upgrade failed, and what is left to do by hand
            raise StackError(f"the upgrade to Airflow {new_release} failed ({reason}), and restoring "
                             f"{plan.backup.name} failed too ({failed}); .env names Airflow {old_release} "
                             f"again: restore by hand with invoke db.restore {shlex.quote(str(plan.backup))} "
                             f"--yes, then invoke up") from None
        current.paths.schema_stamp.unlink(missing_ok=True)
        env = config.environment(current, executor)
        config.write_config(current, env)
        schema.migrate(c, current, env)  # marks the restored schema with the release it is for
        if was_running:
            lifecycle.start(c, current, executor, {}, env)
        raise StackError(f"the upgrade to Airflow {new_release} failed ({reason}); restored "
                         f"{plan.backup.name} and went back to Airflow {old_release}"
                         f"{', running again' if was_running else ''}") from None
    return done
