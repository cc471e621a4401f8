"""`invoke upgrade`: another Airflow release (a patch, or another line) without losing the stack.

The new release is installed beside the running one (one venv per release) and the project's DAGs
are parsed with it while the stack still runs; only then: a backup, stop, switch (.env), migrate,
start, wait healthy. When any of that fails, the backup is restored and the previous release
started again. Going down onto a schema a newer release migrated is refused before anything is
installed (airflow_db.refuse_older_release).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from invoke import Context

from . import airflow_config, airflow_db, airflow_install, backup, dags, lifecycle, platform, registry, secrets
from .errors import StackError
from .settings import Settings


@dataclass
class Plan:
    current: Settings
    target: Settings
    changed: list[str] = field(default_factory=list)  # packages whose major or minor version changes
    backup: Path | None = None


def _freeze(c: Context, settings: Settings) -> dict[str, str]:
    python = shlex.quote(str(airflow_install.airflow_python(settings)))
    result = c.run(f"{shlex.quote(airflow_install.uv_bin())} pip freeze --python {python}", hide=True, warn=True)
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
    if target.airflow_release == airflow_install.installed_version(current) and airflow_install.is_current(target):
        raise StackError(f"Airflow {target.airflow_release} is what this stack runs already; nothing to upgrade")
    target.line.check_python()
    airflow_db.refuse_older_release(target, target.airflow_release)
    airflow_install.ensure(c, target)
    errors = dags.check(c, target).errors
    if errors:
        raise StackError(f"{len(errors)} DAG file(s) do not import with Airflow {target.airflow_release} "
                         f"({'; '.join(errors[:3])}); nothing was changed: fix them, then run the upgrade again")
    plan = Plan(current, target)
    if airflow_install.airflow_python(current).exists():
        plan.changed = changed_packages(_freeze(c, current), _freeze(c, target))
    return plan


def _remember(settings: Settings, target: Settings) -> None:
    secrets.set_env_value(settings.env_file, "STACK_AIRFLOW_LINE", target.airflow_line)
    secrets.set_env_value(settings.env_file, "STACK_AIRFLOW_VERSION", target.airflow_release)


def switch(c: Context, plan: Plan, timeout: float) -> list[str]:
    """Backup, stop, switch, migrate, start and wait; on failure restore the backup and the previous
    release. Returns what was done."""
    current, target = plan.current, plan.target
    plat = platform.detect() if current.pg_is_local else None
    executor = registry.executor(current)
    was_running = bool(registry.running(current))
    old_env_file = current.env_file.read_bytes() if current.env_file.exists() else b""
    plan.backup = backup.backup(c, plat, current)
    done = [f"backed up {current.pg_database} to {plan.backup}"]
    done += lifecycle.stop(current)
    try:
        _remember(current, target)
        env = airflow_config.environment(target, executor)
        airflow_config.write_config(target, env)
        done += airflow_db.migrate(c, target, env)
        done += airflow_db.ensure_admin(c, target, env)
        if was_running:
            report = lifecycle.start(c, target, executor, timeout=timeout)
            done.append(f"started Airflow {target.airflow_release}: {', '.join(report.started)}; healthy in "
                        f"{report.seconds:.1f} s")
    except (StackError, OSError) as err:
        reason = str(err).split(";")[0]
        lifecycle.stop(target)
        secrets.write_private(current.env_file, old_env_file.decode())
        backup.restore(c, plat, current, plan.backup)
        (current.airflow_home / ".airflow-stack-migrated.json").unlink(missing_ok=True)
        env = airflow_config.environment(current, executor)
        airflow_config.write_config(current, env)
        airflow_db.migrate(c, current, env)  # marks the restored schema with the release it is for
        if was_running:
            lifecycle.start(c, current, executor)
        raise StackError(f"the upgrade to Airflow {target.airflow_release} failed ({reason}); restored "
                         f"{plan.backup.name} and went back to Airflow {current.airflow_release}"
                         f"{', running again' if was_running else ''}") from None
    return done
