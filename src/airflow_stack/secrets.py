"""Secrets: generated once, written to .env with mode 0600, never printed, never overwritten.

A value the user set (in .env or in the environment) always wins; only missing keys are appended,
so re-running setup is safe and a user's own password survives it.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from . import settings as settings_mod
from .errors import StackError
from .settings import Settings


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

HEADER = ("# airflow-stack settings and secrets: written by `invoke setup`, kept out of git (mode 0600).\n"
          "# Values you set here win; missing secrets are generated once. Copy the whole file to a\n"
          "# machine that runs a Celery worker for this stack.\n")


def ensure_env_file(settings: Settings, names: list[str] | None = None,
                    environ: dict[str, str] | None = None) -> tuple[Settings, list[str]]:
    """Generate the missing secrets into .env; return reloaded settings and the env names added."""
    environ = dict(os.environ if environ is None else environ)
    path = settings.env_file
    specs = settings_mod.specs()
    existing = settings_mod.read_env_file(path)
    added: dict[str, str] = {}
    for name in names or settings_mod.generated_names():
        env = specs[name].env
        if env in existing or env in environ or getattr(settings, name):
            continue
        added[env] = GENERATORS[specs[name].generate]()
    if added or not path.exists():
        _append(path, added)
    secure_mode(path)
    return settings_mod.load(environ=environ | {settings_mod.ENV_FILE_VAR: str(path)}), list(added)


def _append(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    # created 0600 from the first byte: a secret is never readable by others, not even briefly
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        if new:
            fh.write(HEADER)
        elif path.stat().st_size and not path.read_text().endswith("\n"):
            fh.write("\n")
        for key, value in values.items():
            fh.write(f"{key}={value}\n")


def secure_mode(path: Path) -> bool:
    """Make a secrets file 0600; True when it had to be tightened."""
    if not path.exists():
        return False
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(0o600)
        except PermissionError:
            raise StackError(f"{path} is readable by others and not ours to fix; run: chmod 600 {path}") from None
        return True
    return False


def write_private(path: Path, text: str) -> None:
    """Write a file that holds a secret (e.g. redis.conf) with mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def redact(text: str, settings: Settings) -> str:
    """Replace every secret value in ``text`` (for error messages that quote a command or log)."""
    for value in settings_mod.secret_values(settings):
        if len(value) >= 6:
            text = text.replace(value, "***")
    return text


def set_env_value(path: Path, key: str, value: str) -> bool:
    """Set KEY=value in .env (replacing that key's line, or appending); True when it changed."""
    lines = path.read_text().splitlines() if path.exists() else []
    new = f"{key}={value}" if " " not in value else f'{key}="{value}"'
    for i, line in enumerate(lines):
        if line.split("=", 1)[0].strip() == key:
            if line == new:
                return False
            lines[i] = new
            break
    else:
        lines.append(new)
    write_private(path, "\n".join(lines) + "\n")
    return True
