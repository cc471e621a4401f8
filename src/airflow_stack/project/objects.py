"""Connections, variables and pools from the project's airflow_settings.yaml (the astro CLI's format),
applied to the stack's database on every `invoke up`, and exported in the same format.

    airflow:
      connections:
        - conn_id: warehouse
          conn_type: postgres
          conn_host: db.example.com
          conn_login: etl
          conn_password: ${WAREHOUSE_PASSWORD}   # from .env: the password stays out of git
          conn_port: 5432
          conn_extra: {sslmode: require}
      pools:
        - pool_name: warehouse
          pool_slot: 4
          pool_description: at most 4 queries at once
      variables:
        - variable_name: environment
          variable_value: dev

Entries without a name are skipped, as astro does (its template ships them empty). Writing goes through
Airflow's own models (airflow_side/airflow_helper.py), so passwords and extras are encrypted with the
stack's Fernet key as Airflow would. No value is ever printed: reports name the objects only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from invoke import Context

from .. import statedir
from ..apache_airflow import commands
from ..errors import StackError
from ..settings import Settings
from . import folder

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
KINDS = ("connections", "variables", "pools")


class _Resolver:
    """``${NAME}`` from the environment, else the stack's .env (as every setting is resolved), else the
    project's own .env (which astro passes into its containers)."""

    def __init__(self, settings: Settings, where: Path) -> None:
        project_env = folder.get(settings).env_file
        self.values = (statedir.read_env_file(project_env) | statedir.read_env_file(settings.env_file)
                       | dict(os.environ))
        self.env_file = settings.env_file
        self.where = where

    def __call__(self, value: Any, field: str) -> Any:
        if not isinstance(value, str):
            return value

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.values:
                raise StackError(f"{self.where.name}: {field} names ${{{name}}}, which {self.env_file} does not "
                                 f"set; add {name}=... to {self.env_file}")
            return self.values[name]

        return REFERENCE.sub(one, value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _port(value: Any, field: str, where: Path) -> int | None:
    if value in (None, ""):
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise StackError(f"{where.name}: {field} {value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{where.name}: {field} {port} is not a port number (1-65535)")
    return port


def _entries(section: dict[str, Any], kind: str, where: Path) -> list[dict[str, Any]]:
    entries = section.get(kind) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise StackError(f"{where.name}: airflow.{kind} must be a list of entries (- {kind[:-1]}_...: ...); "
                         f"see the astro CLI's airflow_settings.yaml format")
    return entries


def load(settings: Settings) -> dict[str, list[dict[str, Any]]] | None:
    """The project's objects, validated, ``${NAME}`` resolved; None when it defines none."""
    path = folder.get(settings).objects_file
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise StackError(f"{path}{where}: {problem}; fix the YAML (the astro CLI's airflow_settings.yaml "
                         f"format)") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise StackError(f"cannot read {path} ({type(exc).__name__}); it must be a UTF-8 YAML file") from None
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("airflow", {}), (dict, type(None))):
        raise StackError(f"{path}: the file must hold a mapping 'airflow:' with connections, pools and variables")
    section = data.get("airflow") or {}
    resolve = _Resolver(settings, path)
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for i, entry in enumerate(_entries(section, "connections", path)):
        conn_id = entry.get("conn_id")
        if conn_id in (None, ""):
            continue
        field = f"connection {conn_id}"
        if not entry.get("conn_type"):
            raise StackError(f"{path.name}: connections[{i}] ({conn_id}) has no conn_type; add one "
                             f"(e.g. http, postgres)")
        out["connections"].append({
            "conn_id": str(conn_id),
            "conn_type": str(resolve(entry["conn_type"], f"{field} conn_type")),
            "host": _text(resolve(entry.get("conn_host"), f"{field} conn_host")),
            "schema": _text(resolve(entry.get("conn_schema"), f"{field} conn_schema")),
            "login": _text(resolve(entry.get("conn_login"), f"{field} conn_login")),
            "password": _text(resolve(entry.get("conn_password"), f"{field} conn_password")),
            "port": _port(resolve(entry.get("conn_port"), f"{field} conn_port"), f"{field} conn_port", path),
            "extra": _text(_resolve_tree(entry.get("conn_extra"), resolve, f"{field} conn_extra")),
        })
    for entry in _entries(section, "variables", path):
        name = entry.get("variable_name")
        if name in (None, ""):
            continue
        value = _resolve_tree(entry.get("variable_value"), resolve, f"variable {name}")
        out["variables"].append({"key": str(name), "value": _text(value) if value is not None else ""})
    for i, entry in enumerate(_entries(section, "pools", path)):
        name = entry.get("pool_name")
        if name in (None, ""):
            continue
        slots = entry.get("pool_slot")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < -1:
            raise StackError(f"{path.name}: pools[{i}] ({name}) pool_slot {slots!r} is not a number of slots "
                             f"(-1 for unlimited)")
        out["pools"].append({"name": str(name), "slots": slots,
                             "description": _text(entry.get("pool_description")) or ""})
    for kind, key in (("connections", "conn_id"), ("variables", "key"), ("pools", "name")):
        names = [entry[key] for entry in out[kind]]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise StackError(f"{path.name}: {kind} {', '.join(dupes)} defined more than once; keep one entry each")
    return out if any(out.values()) else None


def _resolve_tree(value: Any, resolve: _Resolver, field: str) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_tree(v, resolve, f"{field}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_tree(v, resolve, field) for v in value]
    return resolve(value, field)


def apply(c: Context, settings: Settings) -> list[str]:
    """Apply airflow_settings.yaml; one line per kind that changed (names, never values); [] when the
    database already holds what the file says (or it defines nothing)."""
    objects = load(settings)
    if objects is None:
        return []
    report = commands.run_helper(c, settings, "apply-objects", payload=objects, what="applying airflow_settings.yaml")
    return summarize(report)


def summarize(report: dict[str, dict[str, list[str]]]) -> list[str]:
    lines = []
    for kind in KINDS:
        outcome = report.get(kind, {})
        parts = [f"{what} {', '.join(outcome[what])}" for what in ("created", "updated") if outcome.get(what)]
        if parts:
            lines.append(f"airflow_settings.yaml {kind}: {'; '.join(parts)}")
    return lines


def count(objects: dict[str, list[dict[str, Any]]] | None) -> int:
    return sum(len(entries) for entries in (objects or {}).values())


def export(c: Context, settings: Settings, path: Path) -> dict[str, int]:
    """Write the stack's connections, variables and pools to ``path`` (0600) in the astro format."""
    data = commands.run_helper(c, settings, "export-objects", what="exporting objects")
    text = ("# Exported by airflow-stack (invoke objects.export): the stack's connections, variables and pools\n"
            "# in the astro CLI's airflow_settings.yaml format. It holds passwords in clear: keep it out of git\n"
            "# (or replace them with ${NAME} references to .env).\n")
    text += yaml.safe_dump({"airflow": data}, sort_keys=False, allow_unicode=True)
    statedir.write_private(path, text)
    return {kind: len(data.get(kind, [])) for kind in KINDS}
