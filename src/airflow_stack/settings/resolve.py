"""Resolving settings: task flag > environment > .env > the user's defaults.env > default, each value converted
and checked; which values the user set (``given``: never chosen for them) and what the defaults are."""

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
    """Resolve every setting: task flag > environment > .env > the user's defaults.env > default."""
    environ = dict(os.environ if environ is None else environ)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    all_specs = specs()
    env_file = _convert("env_file", all_specs["env_file"],
                        overrides.get("env_file", environ.get(ENV_FILE_VAR, ".env")), "environment")
    layers = [("flag", overrides), ("environment", environ), (env_file.name, statedir.read_env_file(env_file))]
    values: dict[str, Any] = {"env_file": env_file}
    values["user_state_dir"] = _resolve("user_state_dir", all_specs["user_state_dir"], layers)
    layers.append(user_defaults(values["user_state_dir"]))
    for name, spec in all_specs.items():
        if name not in values:
            values[name] = _resolve(name, spec, layers)
    if values.get("pg_dsn"):
        values |= _from_dsn(values["pg_dsn"], all_specs)
    return Settings(**values)


def _resolve(name: str, spec: Spec, layers: list[tuple[str, dict[str, Any]]]) -> Any:
    """The first layer's value (flags by name, the others by environment name), else the default."""
    for source, found in layers:
        key = name if source == "flag" else spec.env
        if key in found:
            return None if found[key] is None else _convert(name, spec, found[key], source)
    return None if spec.default is None else _convert(name, spec, spec.default, "default")


def defaultable(spec: Spec) -> bool:
    """A setting the user's defaults.env may give every checkout: no secret, no generated value, no path (each
    checkout has its own)."""
    return not (spec.secret or spec.generate or spec.kind is Path)


def user_defaults(user_state_dir: Path) -> tuple[str, dict[str, str]]:
    """(its path, KEY -> value) of the user's defaults.env; a name there that is not a setting, or one each
    checkout must have alone, is refused in one line."""
    path = statedir.UserStateDir(user_state_dir).defaults
    found = statedir.read_env_file(path)
    by_env = {spec.env: spec for spec in specs().values()}
    for key in found:
        if key not in by_env or not defaultable(by_env[key]):
            why = "is not a setting" if key not in by_env else "is each checkout's own (a secret, an id or a path)"
            raise StackError(f"{path}: {key} {why}; remove it there (set it in a checkout's .env instead)")
    return str(path), found


def defaults(settings: Settings) -> dict[str, Any]:
    """Every setting's default for this user: the user's defaults.env, else the declared default."""
    layers = [user_defaults(settings.user_state_dir)]
    return {name: _resolve(name, spec, layers) for name, spec in specs().items()}


def given(settings: Settings, names: list[str], environ: dict[str, str] | None = None) -> set[str]:
    """Which of ``names`` the user set (in the environment or .env; STACK_PG_DSN sets the PostgreSQL values it
    names): nothing is ever chosen for those."""
    environ = os.environ if environ is None else environ
    in_file = statedir.read_env_file(settings.env_file)
    all_specs = specs()
    found = {name for name in names if all_specs[name].env in environ or all_specs[name].env in in_file}
    return found | (set(names) & set(DSN_FIELDS.values()) if settings.pg_dsn else set())


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
