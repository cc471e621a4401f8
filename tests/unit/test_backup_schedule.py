"""When the next backup is due, which backups go, the record, and what status and doctor say about it."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest
from invoke import Result

from airflow_stack import settings as settings_mod
from airflow_stack.ops import doctor
from airflow_stack.runtime import backup_schedule, lifecycle, registry
from airflow_stack.runtime.backup_schedule import Attempt, Record

from .conftest import SECRETS

DAY = 86400.0
T = 1_700_000_000.0  # some instant


def verified(time: float, path=None, size: int = 0) -> Attempt:
    return Attempt(time, str(path or f"/backups/airflow-{time:.0f}.dump"), size, verified=True, tables=3, rows=12)


def failed(time: float, reason: str = "pg_dump failed: connection refused") -> Attempt:
    return Attempt(time, "/backups", reason=reason)


def test_the_first_backup_is_due_at_once():
    assert backup_schedule.due(None, DAY) == 0


def test_the_next_backup_is_due_one_interval_after_the_newest_verified_one():
    ok = verified(T)
    assert backup_schedule.due(Record(ok, ok), DAY) == T + DAY
    # a restart of the component reads the same record: it does not back up again at once
    assert backup_schedule.due(Record(ok, ok), 6 * 3600) == T + 6 * 3600


def test_after_a_failure_it_is_tried_again_after_the_interval_or_an_hour_whichever_is_shorter():
    ok = verified(T)
    # failed long after the last verified one: the next try one hour after the failure, not at once
    assert backup_schedule.due(Record(failed(T + 2 * DAY), ok), DAY) == T + 2 * DAY + 3600
    # with a short interval: one interval after the failure
    assert backup_schedule.due(Record(failed(T + 100), ok), 20) == T + 120
    # failed soon after a verified one: the schedule of the verified one still holds
    assert backup_schedule.due(Record(failed(T + 60), ok), DAY) == T + DAY
    # never any verified backup: tried again after the retry delay
    assert backup_schedule.due(Record(failed(T), None), DAY) == T + 3600


def test_the_record_keeps_the_newest_verified_backup_across_failures(settings):
    first = backup_schedule.write(settings, verified(T))
    assert first.verified == first.last == verified(T)
    second = backup_schedule.write(settings, failed(T + DAY))
    assert second.last == failed(T + DAY) and second.verified == verified(T)
    assert backup_schedule.read(settings) == second
    path = settings.paths.backup_record
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())  # readable by people: the time, the file, the size, verified or why not
    assert data["last"]["reason"] == "pg_dump failed: connection refused" and data["last"]["verified"] is False
    assert data["last"]["at"] == "2023-11-15T22:13:20Z" and data["verified"]["at"] == "2023-11-14T22:13:20Z"
    assert data["verified"]["file"] == verified(T).file and data["verified"]["verified"] is True
    third = backup_schedule.write(settings, verified(T + DAY + 60))
    assert third.verified == third.last == verified(T + DAY + 60)


def test_a_record_that_cannot_be_read_counts_as_none(settings):
    assert backup_schedule.read(settings) is None
    settings.paths.make_private()
    for text in ("{not json", "[]", '{"last": 3}', '{"last": {"no time": 1}}'):
        settings.paths.backup_record.write_text(text)
        assert backup_schedule.read(settings) is None
    # a record of a later version (a field this one does not know) still reads
    settings.paths.backup_record.write_text(json.dumps({"last": {"time": T, "verified": True, "new": 1}}))
    assert backup_schedule.read(settings).last.time == T


def make_backups(settings, stamps: list[str]) -> list:
    folder = settings.paths.backups
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, stamp in enumerate(stamps):
        path = folder / f"{settings.pg_database}-{stamp}.dump"
        path.write_bytes(b"PGDMP")
        os.utime(path, (T - i, T - i))  # mtimes in the reverse order of the names: the names decide
        paths.append(path)
    return paths


def test_pruning_removes_the_oldest_by_the_time_in_their_names_and_keeps_the_newest_verified(settings):
    stamps = ["20240101T000000Z", "20240102T000000Z", "20240103T000000Z", "20240104T000000Z", "20240105T000000Z"]
    paths = make_backups(settings, stamps)
    others = [settings.paths.backups / "airflow_other-20240101T000000Z.dump", settings.paths.backups / "mine.dump",
              settings.paths.backups / f"{settings.pg_database}-20240101T000000Z.dump.txt"]
    for path in others:
        path.write_text("not one of the stack's backups")
    # the newest verified one is the second oldest (the three after it failed their verification)
    record = Record(failed(T), verified(T - DAY, paths[1]))
    removed = backup_schedule.prune(settings, 2, record)
    assert removed == [paths[0], paths[2]]  # oldest first
    assert [p for p in paths if p.exists()] == [paths[1], paths[3], paths[4]]
    assert all(p.exists() for p in others)
    assert backup_schedule.prune(settings, 2, record) == []
    assert backup_schedule.prune(settings, 1, Record(verified(T, paths[4]), verified(T, paths[4]))) == [paths[1],
                                                                                                         paths[3]]


def test_pruning_without_a_backups_folder_removes_nothing(settings):
    assert backup_schedule.prune(settings, 1, None) == []


def test_status_says_the_last_backups_age_and_that_it_was_verified(settings):
    path = make_backups(settings, ["20240101T000000Z"])[0]
    ok = Attempt(T, str(path), path.stat().st_size, path.stat().st_mtime_ns, verified=True, tables=40, rows=1234)
    verdict = backup_schedule.assess(settings, Record(ok, ok), T + 3 * 3600)
    assert verdict.ok and verdict.detail.startswith("last backup 3 h ago, verified (0 KiB, 40 tables, 1234 rows)")
    assert verdict.detail.endswith("; next in 21 h")
    assert backup_schedule.assess(settings, None, T).ok  # none yet: the component takes the first at once


def test_a_failed_backup_is_named_with_its_reason_and_the_fix(settings):
    path = make_backups(settings, ["20240101T000000Z"])[0]
    ok = Attempt(T, str(path), path.stat().st_size, path.stat().st_mtime_ns, verified=True)
    bad = failed(T + DAY + 600, "verification failed: 1 table(s) differ after the restore (public.log: 3 restored, "
                                "4 in the database)")
    verdict = backup_schedule.assess(settings, Record(bad, ok), T + DAY + 900)
    assert not verdict.ok
    assert verdict.detail == ("the last backup failed 5 min ago: verification failed: 1 table(s) differ after the "
                              "restore (public.log: 3 restored, 4 in the database); the newest verified one is 24 h "
                              f"old ({path.name})")
    assert "invoke db.backup" in verdict.fix and "invoke logs -c backups" in verdict.fix
    assert "no verified backup yet" in backup_schedule.assess(settings, Record(bad, None), T).detail


def test_a_verified_backup_whose_file_changed_or_went_is_named(settings):
    path = make_backups(settings, ["20240101T000000Z"])[0]
    path.write_bytes(b"PGDMP" + b"x" * 1000)
    ok = Attempt(T, str(path), path.stat().st_size, path.stat().st_mtime_ns, verified=True)
    assert backup_schedule.damage(ok) == ""
    path.write_bytes(b"PGDMP" + b"x" * 10)  # truncated
    verdict = backup_schedule.assess(settings, Record(ok, ok), T + 60)
    assert not verdict.ok
    assert verdict.detail == (f"the newest verified backup {path.name} changed since it was verified (15 bytes, "
                              f"1005 when verified)")
    assert verdict.fix == f"take a new one: invoke db.backup (and do not restore {path.name})"
    path.unlink()
    assert "is gone from" in backup_schedule.assess(settings, Record(ok, ok), T + 60).detail


def test_a_backup_long_overdue_is_named(settings):
    path = make_backups(settings, ["20240101T000000Z"])[0]
    ok = Attempt(T, str(path), path.stat().st_size, path.stat().st_mtime_ns, verified=True)
    assert backup_schedule.assess(settings, Record(ok, ok), T + 2 * DAY).ok
    late = backup_schedule.assess(settings, Record(ok, ok), T + 3 * DAY)
    assert not late.ok and late.detail == "the newest verified backup is 3 d old, overdue (every 1d)"
    assert late.fix.startswith("start the backups component: invoke up")


@pytest.mark.parametrize(("seconds", "said"), [(0, "0 s"), (59, "59 s"), (90, "2 min"), (3000, "50 min"),
                                               (3 * 3600, "3 h"), (25 * 3600, "25 h"), (3 * DAY, "3 d")])
def test_ages_read_as_people_say_them(seconds, said):
    assert backup_schedule.ago(seconds) == said


# ---- the backups component: how it is started, what doctor says ---------------------------------------------
class Launcher:
    """An invoke Context that runs launcher.py the way the supervisor calls it, recording its spec and env."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def run(self, cmd: str, **kwargs) -> Result:
        python, _, spec = shlex.split(cmd)
        self.seen = {"python": python, "spec": json.loads(Path(spec).read_text()), "env": kwargs["env"]}
        return Result('{"backups": 4242}')


def test_the_backups_component_runs_the_service_on_the_toolings_python_with_the_resolved_settings(settings):
    chosen = settings.replace(backup_every="20s", backup_keep=2)
    c = Launcher()
    said = lifecycle.keep_backups(c, chosen)
    assert c.seen["python"] == sys.executable
    spec = c.seen["spec"]
    assert spec["resident"] and spec["preload"] is None  # supervised (restarted when it dies), exec'd
    assert spec["processes"][0]["argv"] == [sys.executable, "-m", "airflow_stack.ops.backup_service",
                                            "--every", "20s", "--keep", "2"]
    # from its environment it resolves the settings this command had; no secret of .env travels in it
    assert settings_mod.load(environ=c.seen["env"]) == chosen
    assert not [secret for secret in SECRETS if secret in c.seen["env"].values()]
    assert said == [f"backups: started: a verified backup every 20s into {settings.paths.backups}, the 2 newest "
                    f"kept; no backup yet: the first one is due now"]
    # STACK_BACKUP_EVERY=off and none runs: nothing to start or stop
    assert lifecycle.keep_backups(Launcher(), settings.replace(backup_every="off")) == []


def test_doctor_names_backups_that_are_off_or_not_running(settings):
    off = doctor.check_backups(settings.replace(backup_every="off"))
    assert [(c.level, c.detail, c.fix) for c in off] == [
        ("warn", "no scheduled backups (STACK_BACKUP_EVERY=off)", "set STACK_BACKUP_EVERY=1d in .env, then invoke up")]
    assert doctor.check_backups(settings) == []  # no stack runs here (a worker's machine): nothing to say
    registry.record(settings, "local", "3.3.2")
    [check] = doctor.check_backups(settings)
    assert not check.ok and check.detail.startswith("the backups component is not running") and check.fix == "invoke up"
