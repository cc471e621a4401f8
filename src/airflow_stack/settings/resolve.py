"""Resolving settings: task flag > environment > .env > default, each value converted and checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import statedir
from ..errors import StackError
from .model import DSN_FIELDS, ENV_FILE_VAR, PROJECT_DIR, Settings, Spec, specs


def _convert(name: str, spec: Spec, raw: Any, source: str) -> Any:
    if spec.kind in (int, float):
        try:
            value = spec.kind(raw)
        except (TypeError, ValueError):
            raise StackError(f"{spec.env}={raw!r} ({source}) is not a number; set it to a number") from None
        if name.endswith("port") and not 1 <= value <= 65535:
            raise StackError(f"{spec.env}={value} ({source}) is not a port; use 1-65535")
        if not value >= spec.minimum:  # also refuses nan
            raise StackError(f"{spec.env}={value:g} ({source}) must be at least {spec.minimum:g}")
        return value
    if spec.kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise StackError(f"{spec.env}={raw!r} ({source}) is not true/false")
    if spec.kind is Path:
        path = Path(str(raw)).expanduser()
        return path if path.is_absolute() else (PROJECT_DIR / path)
    value = str(raw)
    if spec.choices and value not in spec.choices:
        raise StackError(f"{spec.env}={value!r} ({source}) is not supported; use one of: {', '.join(spec.choices)}")
    if spec.parse:
        try:
            return spec.parse(value)
        except ValueError as exc:
            raise StackError(f"{spec.env}={value!r} ({source}): {exc}") from None
    return value


def load(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Resolve every setting: task flag > environment > .env > default."""
    environ = dict(os.environ if environ is None else environ)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    all_specs = specs()
    env_file = _convert("env_file", all_specs["env_file"],
                        overrides.get("env_file", environ.get(ENV_FILE_VAR, ".env")), "environment")
    file_values = statedir.read_env_file(env_file)
    values: dict[str, Any] = {"env_file": env_file}
    for name, spec in all_specs.items():
        if name == "env_file":
            continue
        if name in overrides:
            raw, source = overrides[name], "flag"
        elif spec.env in environ:
            raw, source = environ[spec.env], "environment"
        elif spec.env in file_values:
            raw, source = file_values[spec.env], str(env_file.name)
        else:
            raw, source = spec.default, "default"
        values[name] = None if raw is None else _convert(name, spec, raw, source)
    if values.get("pg_dsn"):
        values |= _from_dsn(values["pg_dsn"], all_specs)
    return Settings(**values)


def _from_dsn(dsn: str, all_specs: dict[str, Spec]) -> dict[str, Any]:
    """The PostgreSQL settings a libpq DSN (URL or key=value) names; what it leaves out keeps its value."""
    from psycopg.conninfo import conninfo_to_dict  # psycopg parses DSNs exactly as libpq does

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError: the message may quote the DSN, password included
        raise StackError("STACK_PG_DSN is not a libpq connection string; write it as "
                         "postgresql://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=verify-full") from None
    found = {}
    for key, name in DSN_FIELDS.items():
        if parts.get(key) not in (None, ""):
            found[name] = _convert(name, all_specs[name], parts[key], "STACK_PG_DSN")
    return found
