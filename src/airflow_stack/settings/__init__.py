"""Settings: every setting declared once (model.py), resolved flag > environment > .env > the user's
defaults.env > default (resolve.py, which also tells what the user set); which values are secrets, how they
are generated once and kept in .env (secrecy.py)."""

from .grammar import parse_interval
from .model import (
    AIRFLOW_LINES,
    AIRFLOW_LINES_HELP,
    DSN_FIELDS,
    EXECUTORS,
    LIMITER_DB,
    LOOPBACK,
    PROJECT_DIR,
    REDIS_AIRFLOW_USER,
    SSLMODES,
    SUN_PATH_BYTES,
    Settings,
    Spec,
    help_for,
    missing_shared_secrets,
    shared_secret_names,
    specs,
)
from .resolve import defaults, environment_of, given, load
from .secrecy import (
    GENERATORS,
    ensure_secrets,
    generated_names,
    is_secret,
    persist,
    redact,
    secret_values,
)

__all__ = [
    "AIRFLOW_LINES", "AIRFLOW_LINES_HELP", "DSN_FIELDS", "EXECUTORS", "GENERATORS", "LIMITER_DB", "LOOPBACK",
    "PROJECT_DIR", "REDIS_AIRFLOW_USER", "SSLMODES", "SUN_PATH_BYTES", "Settings", "Spec", "defaults",
    "ensure_secrets", "environment_of", "generated_names", "given", "help_for", "is_secret", "load",
    "missing_shared_secrets", "parse_interval", "persist", "redact", "secret_values", "shared_secret_names", "specs",
]
