"""`invoke upgrade --rehearse`: the migration to another release, tried first on a copy of the database.

The newest verified backup (runtime/backup_schedule; a fresh one, verified, when there is none or its
file changed since) is restored into a scratch database (ops/scratch.py). The new release, installed
beside the running one as `invoke upgrade` installs it (a venv of its own), migrates that copy, and the
project's DAGs are parsed with it against the copy (dags.check). The time of each step and the result are
reported, and the scratch database is dropped. The running stack, its database, .env, airflow.cfg and
venv are not touched: the migration runs with an AIRFLOW_HOME of its own (STATE/rehearsal-XXXX, removed
after), and nothing is stamped or kept in .env.

What can be refused is refused before anything is installed or written: the release (upgrade.target_of),
a server where no scratch database can be made, and no usable backup with no room for a fresh one.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from invoke import Context

from ..apache_airflow import commands, config, install, profiles, schema
from ..errors import StackError
from ..project import dags
from ..runtime import backup_schedule, registry
from ..runtime.backup_schedule import Attempt
from ..services.host import Platform
from ..settings import Settings
from . import backup, backup_service, scratch, upgrade

LOG = "upgrade-rehearsal"  # logs/upgrade-rehearsal.log: what `airflow db migrate` printed


@dataclass
class Rehearsal:
    current: str  # the running release
    target: str  # the release rehearsed
    source: Attempt  # the backup restored
    fresh: bool = False  # taken for this rehearsal
    revisions: tuple[str | None, str | None] = (None, None)  # the copy's schema revision before and after
    seconds: dict[str, float] = field(default_factory=dict)  # step -> seconds (restore, migrate, dags.check)
    dags: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # DAG files that do not import with the new release
    failure: str = ""  # the migration failed: why
    total: float = 0.0  # seconds, the scratch database's making and dropping included

    @property
    def ok(self) -> bool:
        return not self.failure and not self.errors


def _source(settings: Settings) -> Attempt | None:
    """The newest verified backup when its file is as it was verified; else None, once it is sure a fresh
    one can be written (refused in one line when not)."""
    record = backup_schedule.read(settings)
    newest = record.verified if record else None
    why = backup_schedule.damage(newest) if newest else "there is no verified backup"
    if not why:
        return newest
    try:
        backup.check_folder(settings.paths.backups)
        backup.check_room(settings, settings.paths.backups)
    except StackError as err:
        raise StackError(f"nothing to rehearse with: {why}, and a fresh one cannot be taken ({err}); nothing "
                         f"was changed") from None
    return None


def prepare(c: Context, platform: Platform | None, current: Settings, line: str | None,
            version: str | None) -> tuple[Settings, Attempt | None]:
    """The checks, in the order that changes nothing until all passed: (the target release's settings, the
    backup to restore, or None: a fresh one is to be taken)."""
    target = upgrade.target_of(c, current, line, version)
    if scratch.maker(c, platform, current) is None:
        raise StackError(f"a rehearsal needs a scratch database: {scratch.cannot_make(current)}")
    return target, _source(current)


def rehearse(c: Context, platform: Platform | None, current: Settings, target: Settings,
             source: Attempt | None) -> Rehearsal:
    """Take the fresh backup when ``source`` is None, install the target release beside, restore, migrate
    and parse the DAGs on the copy; the scratch database is dropped whatever happens."""
    began = time.monotonic()
    fresh = source is None
    if source is None:
        try:
            source, _ = backup_service.take_by_hand(c, platform, current)
        except StackError as err:
            raise StackError(f"the fresh backup for the rehearsal failed: {err}") from None
    report = Rehearsal(install.installed_version(current) or profiles.release(current), profiles.release(target),
                       source, fresh)
    if fresh:
        _timed(report, "backup", began)
    step = time.monotonic()
    if install.ensure(c, target):  # the staging venv, as the upgrade itself would build it
        _timed(report, "install", step)
    home = current.paths.scratch("rehearsal-")
    try:
        with scratch.database(c, platform, current, "rehearsal") as copy:
            _on_copy(c, platform, copy, target.replace(pg_database=copy.pg_database), registry.executor(current),
                     home, report)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    report.total = time.monotonic() - began
    return report


def _timed(report: Rehearsal, name: str, began: float) -> None:
    report.seconds[name] = time.monotonic() - began


def _on_copy(c: Context, platform: Platform | None, copy: Settings, copy_target: Settings, executor: str,
             home: Path, report: Rehearsal) -> None:
    began = time.monotonic()
    backup.restore(c, platform, copy, Path(report.source.file))
    _timed(report, "restore", began)
    before = schema.schema_revision(copy)
    # as the upgrade migrates (the driver migrations need), with an AIRFLOW_HOME of its own
    env = schema.migration_environment(copy_target, config.environment(copy_target, executor)) | {
        "AIRFLOW_HOME": str(home)}
    began = time.monotonic()
    try:
        commands.run_cli(c, copy_target, env, "db migrate", LOG)
    except StackError as err:
        report.failure = str(err)
        return
    finally:
        _timed(report, "migrate", began)
        report.revisions = (before, schema.schema_revision(copy_target))
    began = time.monotonic()
    parsed = dags.check(c, copy_target)
    _timed(report, "dags.check", began)
    report.dags, report.errors = parsed.dags, parsed.errors


def lines(report: Rehearsal) -> list[str]:
    """What the rehearsal found, for the task to say."""
    src = report.source
    age = backup_schedule.ago(time.time() - src.time)
    said = [f"rehearse: Airflow {report.current} -> {report.target} on a copy of {src.name} "
            f"({'taken now' if report.fresh else f'the newest verified backup, {age} old'}, {src.rows} rows); "
            f"the running stack is not touched"]
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.seconds.items())
    before, after = report.revisions
    if report.failure:
        said.append(f"rehearse: the migration failed: {report.failure}")
    else:
        said.append(f"rehearse: migrated the copy from schema revision {before} to {after}; "
                    f"{len(report.dags)} DAGs parse with Airflow {report.target}")
        said += [f"rehearse: does not import: {error}" for error in report.errors]
    verdict = "success" if report.ok else "FAILED"
    said.append(f"rehearse: {verdict} in {report.total:.1f} s ({steps}); the scratch database was dropped")
    return said
