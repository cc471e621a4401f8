"""The backups component: while the stack runs, a verified backup every STACK_BACKUP_EVERY, and the
oldest beyond STACK_BACKUP_KEEP removed.

    python -m airflow_stack.ops.backup_service --every 1d --keep 7

invoke up starts it (runtime/lifecycle.keep_backups) on the tooling's own Python through the resident
launcher, as our Redis: started again when it dies, stopped by invoke stop; never on a machine that only
runs a Celery worker. Its settings are the ones invoke up resolved (in its environment) and .env. It
sleeps until the next backup is due (runtime/backup_schedule.due: one interval after the newest verified
backup, so a restart does not back up again at once), takes it under the state dir's operation lock (an
upgrade, a restore or a stop never meets a backup half-way), records it and prunes.

One backup (invoke db.backup takes the same): the free space against the database's size first; then
one REPEATABLE READ transaction exports its snapshot and counts every table's rows in it, and pg_dump
dumps exactly that snapshot (--snapshot); the dump is restored into a scratch database and counted again
(ops/scratch.py). Equal counts, table by table, make it verified: however Airflow writes meanwhile, both
sides saw the same instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path

import psycopg
from invoke import Context

from .. import locks
from .. import settings as settings_mod
from ..errors import StackError
from ..runtime import backup_schedule
from ..runtime.backup_schedule import Attempt, Record
from ..services import host
from ..services.host import Platform
from ..settings import Settings, redact
from . import backup, scratch

RECHECK = 30.0  # seconds between looks at the record while waiting (a db.backup by hand moves the schedule)
LOCK_WAIT = 60.0  # seconds a due backup waits for another operation on the state dir before it tries later


def _why(err: BaseException, settings: Settings) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[0] if lines else err.__class__.__name__
    return redact(f"PostgreSQL: {text}" if isinstance(err, psycopg.Error) else text, settings)


def take(c: Context, platform: Platform | None, settings: Settings, output: Path | None = None) -> Attempt:
    """One backup and its verification; what happened (never raises for a backup that fails: it says why)."""
    began, clock = time.time(), time.monotonic()
    folder = output.parent if output else settings.paths.backups
    try:
        backup.check_room(settings, folder)
        with scratch.snapshot(settings) as (exported, counts):
            path = backup.backup(c, platform, settings, output, snapshot=exported)
    except (StackError, psycopg.Error, OSError) as err:
        return Attempt(began, str(output or folder), reason=_why(err, settings),
                       dump_seconds=time.monotonic() - clock)
    dumped = time.monotonic()
    found = path.stat()
    done = Attempt(began, str(path), found.st_size, found.st_mtime_ns, dump_seconds=dumped - clock,
                   tables=len(counts), rows=sum(counts.values()))
    try:
        how = scratch.verify(c, platform, settings, path, counts)
    except (StackError, psycopg.Error, OSError) as err:
        return dataclasses.replace(done, reason=f"verification failed: {_why(err, settings)} (the dump stays at "
                                                f"{path})", verify_seconds=time.monotonic() - dumped)
    return dataclasses.replace(done, verified=True, how=how, verify_seconds=time.monotonic() - dumped)


def keep(settings: Settings, attempt: Attempt, newest: int) -> tuple[Record, list[Path]]:
    """Record a backup into STATE/backups; after a verified one, the oldest beyond the ``newest`` go."""
    record = backup_schedule.write(settings, attempt)
    return record, (backup_schedule.prune(settings, newest, record) if attempt.verified else [])


def run_once(c: Context, platform: Platform | None, settings: Settings, newest: int) -> tuple[Record, list[Path]]:
    """The scheduled backup: taken, recorded whatever happened (status and doctor name a failure), pruned."""
    return keep(settings, take(c, platform, settings), newest)


def take_by_hand(c: Context, platform: Platform | None, settings: Settings,
                 output: Path | None = None) -> tuple[Attempt, list[Path]]:
    """A backup someone asked for (db.backup, a rehearsal): one that fails is said to them in one line and
    changes nothing; a verified one into STATE/backups counts as the scheduled ones do (recorded, pruned)."""
    attempt = take(c, platform, settings, output)
    if not attempt.verified:
        raise StackError(attempt.reason)
    return attempt, (keep(settings, attempt, settings.backup_keep)[1] if output is None else [])


def describe(attempt: Attempt, pruned: list[Path] = ()) -> str:
    """One line about a backup, for the component's log and db.backup."""
    if not attempt.verified:
        return f"backup failed: {attempt.reason}"
    line = (f"{attempt.name}: {backup_schedule.size_text(attempt.size)} dumped in {attempt.dump_seconds:.1f} s, "
            f"verified in {attempt.verify_seconds:.1f} s ({attempt.how}: {attempt.tables} tables, {attempt.rows} "
            f"rows, as in the database when it was taken)")
    return line + (f"; removed {', '.join(p.name for p in pruned)}" if pruned else "")


def _say(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds: a half-written dump is removed, a scratch database dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="airflow_stack.ops.backup_service", description=__doc__.splitlines()[0])
    parser.add_argument("--every", required=True, help="STACK_BACKUP_EVERY: 90s, 6h, 1d ...")
    parser.add_argument("--keep", type=int, required=True, help="STACK_BACKUP_KEEP")
    args = parser.parse_args(argv)
    every = settings_mod.parse_interval(args.every)
    if every is None:
        parser.error("--every off: nothing to do")
    signal.signal(signal.SIGTERM, _stop)
    c = Context()
    settings = settings_mod.load()
    platform = host.detect() if settings.pg_is_local else None
    _say(f"backups: a verified backup every {args.every} into {settings.paths.backups}, the {args.keep} newest kept")
    while True:
        try:
            settings = settings_mod.load()  # .env as it is now (a password set anew by setup.postgres)
            wait = backup_schedule.due(backup_schedule.read(settings), every) - time.time()
            if wait > 0:
                time.sleep(min(wait, RECHECK))
                continue
            with locks.exclusive(settings, "a scheduled backup", wait=LOCK_WAIT):
                record, pruned = run_once(c, platform, settings, args.keep)
            _say(describe(record.last, pruned))
        except StackError as err:  # another operation held the state dir too long, or .env is broken now
            _say(f"backups: not now ({err})")
            time.sleep(RECHECK)


if __name__ == "__main__":
    sys.exit(main())
