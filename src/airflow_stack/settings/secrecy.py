"""Secrets: which values are secret (one answer for redaction, the fingerprints of what a process was
started with, airflow.cfg and the generated list), how they are generated once into .env, and how a
flag's choice is kept there.

A value the user set (in .env or in the environment) always wins; only missing secrets are generated,
so re-running setup is safe and a user's own password survives it.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import Callable
from typing import Any

from .. import statedir
from .model import Settings, specs

# ---- what is a secret: one answer for redaction, fingerprints, airflow.cfg and .env ----------------
# a name that says it holds a secret, whatever its value (a user's own AIRFLOW__*__PASSWORD, say)
SECRET_NAME = re.compile(r"(PASSWORD|_SECRET|_KEY|_DSN|_CONN|_TOKEN)$")
# a URL with a password in it (scheme://user:password@host)
URL_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]+@")
MIN_SECRET_LENGTH = 6  # shorter values are too common in text to count as a secret there


def secret_values(settings: Settings) -> list[str]:
    """The secret values set now, each long enough to be told apart in text."""
    return [value for name, spec in specs().items()
            if spec.secret and len(value := str(getattr(settings, name) or "")) >= MIN_SECRET_LENGTH]


def is_secret(settings: Settings, name: str, value: str) -> bool:
    """Whether the variable ``name`` with ``value`` holds a secret: it is kept out of airflow.cfg, recorded
    as a keyed digest only, and never printed."""
    return (bool(SECRET_NAME.search(name)) or bool(URL_PASSWORD.search(value))
            or any(secret in value for secret in secret_values(settings)))


def redact(text: str, settings: Settings) -> str:
    """Replace every secret value in ``text`` (for error messages that quote a command or a log)."""
    for value in secret_values(settings):
        text = text.replace(value, "***")
    return text


# ---- secrets generated once into .env -------------------------------------------------------------
def _password() -> str:
    # URL-safe alphabet: the value goes into connection URLs (still quoted) and shell env files;
    # a leading "-" would read as an option to many CLIs, so never start with one
    value = secrets.token_urlsafe(24)
    return value if not value.startswith("-") else "p" + value[1:]


def _fernet_key() -> str:
    # the exact format cryptography.fernet.Fernet.generate_key() produces
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


# how each kind of generated secret (Spec.generate) is made
GENERATORS: dict[str, Callable[[], str]] = {
    "password": _password,
    "fernet": _fernet_key,
    "token": lambda: secrets.token_urlsafe(48),
    "id": lambda: secrets.token_hex(8),
}


def generated_names() -> list[str]:
    return [name for name, spec in specs().items() if spec.generate]


def ensure_secrets(settings: Settings, environ: dict[str, str] | None = None) -> tuple[Settings, list[str]]:
    """Generate the secrets ``settings`` lacks into .env (0600, written anew and moved into place, so
    nobody who opened the old file reads them); the settings with them, and the names added. A name the
    environment sets (even empty) is the user's: never generated."""
    environ = os.environ if environ is None else environ
    all_specs = specs()
    added = {name: GENERATORS[all_specs[name].generate]() for name in generated_names()
             if not getattr(settings, name) and all_specs[name].env not in environ}
    statedir.update_env_file(settings.env_file, {all_specs[name].env: value for name, value in added.items()})
    statedir.secure_mode(settings.env_file)
    return settings.replace(**added), [all_specs[name].env for name in added]


def persist(settings: Settings, **values: Any) -> list[str]:
    """Keep settings in .env (a flag's choice, for the next command): the environment names that changed."""
    all_specs = specs()
    return statedir.update_env_file(settings.env_file, {
        all_specs[name].env: str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in values.items()})
