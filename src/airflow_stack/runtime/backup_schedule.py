"""When the next backup is due, and what the last one found.

The backups component (ops/backup_service.py) and `invoke db.backup` write one record after each backup
(``STATE/last-backup.json``): that attempt (time, file, size, how long, verified or why not) and the newest
verified backup, which a failure does not replace. The next backup is due one interval after the newest
verified one, so a restart of the component does not back up again at once; after a failure it is tried
again after the interval or an hour, whichever is shorter. status and doctor judge the record here: a
failed backup, a verified file that changed since, or an overdue one is named, with its fix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings
from ..statedir import write_private

RETRY_AFTER = 3600.0  # seconds after a failed backup before the next try (or the interval, when shorter)
OVERDUE_GRACE = 600.0  # overdue once twice the interval and this have passed since the newest verified backup
STAMP = r"\d{8}T\d{6}Z"  # the UTC time in a backup's name (ops/backup.py): sorts as it happened


@dataclass(frozen=True)
class Attempt:
    """One backup: what it wrote, how long it took, and whether a restore gave back every row."""

    time: float  # when it started (seconds since the epoch)
    file: str = ""
    size: int = 0
    mtime_ns: int = 0  # the file's when it was verified: a file changed later is noticed
    verified: bool = False
    reason: str = ""  # why not: the backup or its verification failed
    dump_seconds: float = 0.0
    verify_seconds: float = 0.0
    tables: int = 0
    rows: int = 0
    how: str = ""  # how it was verified

    @property
    def name(self) -> str:
        return Path(self.file).name


@dataclass(frozen=True)
class Record:
    last: Attempt
    verified: Attempt | None = None  # the newest verified backup (the last one, when it was)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str
    fix: str = ""


def _attempt(data: object) -> Attempt | None:
    if not isinstance(data, dict):
        return None
    known = {f.name for f in dataclasses.fields(Attempt)}
    try:
        return Attempt(**{key: value for key, value in data.items() if key in known})
    except TypeError:
        return None


def read(settings: Settings) -> Record | None:
    """The record, or None when there is none (or it cannot be read: the next backup then writes it anew)."""
    try:
        data = json.loads(settings.paths.backup_record.read_text())
    except (OSError, ValueError):
        return None
    last = _attempt(data.get("last")) if isinstance(data, dict) else None
    return Record(last, _attempt(data.get("verified"))) if last else None


def write(settings: Settings, attempt: Attempt) -> Record:
    """Record ``attempt``; the newest verified backup stays what it was when this one was not verified."""
    before = read(settings)
    record = Record(attempt, attempt if attempt.verified else (before.verified if before else None))
    settings.paths.make_private()
    write_private(settings.paths.backup_record, json.dumps(
        {"last": _shown(record.last), "verified": _shown(record.verified) if record.verified else None}, indent=1))
    return record


def _shown(attempt: Attempt) -> dict:
    """An attempt as the record keeps it, with its time for people too (UTC)."""
    at = dt.datetime.fromtimestamp(attempt.time, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"at": at, **dataclasses.asdict(attempt)}


def due(record: Record | None, every: float) -> float:
    """When the next backup is due (seconds since the epoch; 0: now): one interval after the newest verified
    one, and after a failure not before the retry delay has passed."""
    if record is None:
        return 0.0
    at = record.verified.time + every if record.verified else 0.0
    if not record.last.verified:
        at = max(at, record.last.time + min(every, RETRY_AFTER))
    return at


def damage(attempt: Attempt) -> str:
    """Why a verified backup's file is no longer what was verified ("" when it is)."""
    path = Path(attempt.file)
    try:
        found = path.stat()
    except FileNotFoundError:
        return f"the newest verified backup {attempt.name} is gone from {path.parent}"
    except OSError as exc:
        return f"the newest verified backup {attempt.file} cannot be read ({exc.__class__.__name__})"
    if found.st_size != attempt.size or (attempt.mtime_ns and found.st_mtime_ns != attempt.mtime_ns):
        return (f"the newest verified backup {attempt.name} changed since it was verified "
                f"({found.st_size} bytes, {attempt.size} when verified)")
    return ""


def prune(settings: Settings, keep: int, record: Record | None) -> list[Path]:
    """Remove the oldest backups of this database in STATE/backups beyond the ``keep`` newest (by the time
    in their names); the newest verified one always stays. The removed files, oldest first."""
    folder = settings.paths.backups
    pattern = re.compile(rf"{re.escape(settings.pg_database)}-{STAMP}\.dump")
    found = sorted((p for p in folder.iterdir() if pattern.fullmatch(p.name)), key=lambda p: p.name) \
        if folder.is_dir() else []
    kept = {Path(record.verified.file)} if record and record.verified else set()
    removed = [path for path in found[:max(0, len(found) - keep)] if path not in kept]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def ago(seconds: float) -> str:
    """A duration as people say it: 40 s, 12 min, 3 h, 2 d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size or (unit == "min" and seconds >= 60):
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def size_text(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size / 1024:.0f} KiB"


LOGS_FIX = "see why in invoke logs -c backups; take one now, verified the same way: invoke db.backup"


def assess(settings: Settings, record: Record | None, now: float) -> Verdict:
    """What status and doctor say about the backups: healthy only when the last backup was verified, its
    file is as it was then, and the next one is not overdue."""
    every = settings.backup_interval
    if record is None:
        return Verdict(True, "no backup yet: the first one is due now")
    last, verified = record.last, record.verified
    if not last.verified:
        newest = (f"the newest verified one is {ago(now - verified.time)} old ({verified.name})" if verified
                  else "there is no verified backup yet")
        return Verdict(False, f"the last backup failed {ago(now - last.time)} ago: {last.reason}; {newest}", LOGS_FIX)
    assert verified is not None  # the last one was verified, so it is the newest verified one
    broken = damage(verified)
    if broken:
        return Verdict(False, broken, f"take a new one: invoke db.backup (and do not restore {verified.name})")
    if every is not None and now - verified.time > 2 * every + OVERDUE_GRACE:
        return Verdict(False, f"the newest verified backup is {ago(now - verified.time)} old, overdue (every "
                              f"{settings.backup_every})", f"start the backups component: invoke up; {LOGS_FIX}")
    detail = (f"last backup {ago(now - verified.time)} ago, verified ({size_text(verified.size)}, {verified.tables} "
              f"tables, {verified.rows} rows)")
    if every is not None:
        wait = due(record, every) - now
        detail += f"; next in {ago(wait)}" if wait > 0 else "; the next one is due now"
    return Verdict(True, detail)
