"""Carry connections, variables and pools over from a SQLite Airflow into this stack.

Airflow's own export/import does the work: the SQLite file is copied (the original is never
written to), the copy is migrated to our Airflow version, exported with the old fernet key (so
secrets come out decrypted), and only names the stack does not have yet are imported, encrypted
with the stack's key. Re-running imports nothing twice; a dry run only reports.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from invoke import Context

from .. import settings as settings_mod
from ..apache_airflow import commands, config
from ..errors import StackError
from ..settings import Settings

AIRFLOW_TABLES = {"connection", "variable", "slot_pool", "alembic_version"}
# what each kind is called in the CLI, in the export file, and in our database
KINDS = {
    "connections": ("connection", "conn_id"),
    "variables": ("variable", "key"),
    "pools": ("slot_pool", "pool"),
}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


@dataclass
class Report:
    new: dict[str, list[str]] = field(default_factory=dict)
    kept: dict[str, list[str]] = field(default_factory=dict)
    to_check: list[str] = field(default_factory=list)


def check_source(path: Path) -> None:
    if not path.is_file():
        raise StackError(f"no file at {path}; give the path of the old airflow.db")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        raise StackError(f"{path} is not a SQLite database; give the old Airflow's airflow.db") from None
    if not tables >= AIRFLOW_TABLES:
        raise StackError(f"{path} is not an Airflow database (no {', '.join(sorted(AIRFLOW_TABLES - tables))} "
                         f"table); give the old Airflow's airflow.db")


def source_fernet_key(path: Path, key_file: Path | None, settings: Settings) -> str:
    """The old installation's fernet key: from a file, the setting STACK_IMPORT_FERNET_KEY, or the
    airflow.cfg beside its database. Never from a command line: argv is visible to every user."""
    if key_file is not None:
        try:
            return key_file.read_text().strip()
        except OSError as exc:
            raise StackError(f"cannot read the fernet key file {key_file} ({exc.strerror}); give a readable "
                             f"file that holds the old key") from None
    if settings.import_fernet_key:
        return settings.import_fernet_key.strip()
    cfg = path.parent / "airflow.cfg"
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(cfg)
    except configparser.Error:
        return ""
    return parser.get("core", "fernet_key", fallback="").strip()


def _names_in_stack(settings: Settings) -> dict[str, set[str]]:
    found = {}
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        for kind, (table, column) in KINDS.items():
            found[kind] = {row[0] for row in conn.execute(f"SELECT {column} FROM {table}").fetchall()}
    return found


def _to_check(connections: dict[str, object]) -> list[str]:
    flagged = []
    for conn_id, conn in connections.items():
        conn = conn if isinstance(conn, dict) else {}
        host = (conn.get("host") or "").lower()
        if host in LOCAL_HOSTS or conn.get("conn_type") == "sqlite":
            flagged.append(f"{conn_id} ({conn.get('conn_type')} at {host or 'a local file'})")
    return flagged


def carry_over(c: Context, settings: Settings, source: Path, key_file: Path | None, dry_run: bool) -> Report:
    check_source(source)
    key = source_fernet_key(source, key_file, settings)
    env = config.environment(settings)
    have = _names_in_stack(settings)
    report = Report()
    # a private working copy: the export holds decrypted secrets, so 0700 and always removed
    work = settings.paths.scratch("import-")
    try:
        copy = work / "airflow.db"
        shutil.copy2(source, copy)
        old = env | {"AIRFLOW_HOME": str(work / "home"), "AIRFLOW__CORE__FERNET_KEY": key,
                     "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{copy}"}
        (work / "home").mkdir()
        commands.run_cli(c, settings, old, "db migrate", "import-sqlite")
        for kind in KINDS:
            try:
                commands.run_cli(c, settings, old, f"{kind} export {shlex.quote(f'{work / kind}.json')}",
                                   "import-sqlite")
            except StackError as err:
                if "InvalidToken" in str(err) or "fernet" in str(err).lower():
                    setting = settings_mod.specs()["import_fernet_key"].env
                    raise StackError(f"cannot decrypt the old {kind}: give the old airflow.cfg's [core] fernet_key "
                                     f"with --fernet-key-file FILE or {setting}") from None
                raise
            # every export file is a JSON object keyed by name
            entries = json.loads((work / f"{kind}.json").read_text() or "{}")
            new = {name: entry for name, entry in entries.items() if name not in have[kind]}
            report.new[kind] = sorted(new)
            report.kept[kind] = sorted(set(entries) - set(new))
            if kind == "connections":
                report.to_check = _to_check(new)
            if new and not dry_run:
                path = work / f"{kind}-new.json"
                path.write_text(json.dumps(new))
                commands.run_cli(c, settings, env, f"{kind} import {shlex.quote(str(path))}", "import-sqlite")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report
