"""`invoke worker.env`: what a Celery worker on another machine needs, and nothing more.

A worker machine gets Airflow's shared keys (Fernet, JWT, the API's secret key), the Redis ACL user's
password (the user Airflow's processes log in as: no administrative command, no FLUSHALL), the database role
and where the services are, the release to install, and where the stack's CA goes. It never gets the Redis
default user's password, the admin's password, a superuser DSN, or Flower's password: those stay on the
stack's machine. Which settings go is said by the settings' specs (``shared`` and ``worker``).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from .. import settings as settings_mod
from .. import statedir
from ..apache_airflow import profiles
from ..errors import StackError
from ..settings import LOOPBACK, Settings

# where the worker dials the stack: set to the address given with --host
HOSTS = ("pg_host", "redis_host", "api_host")


def default_host(settings: Settings) -> str:
    """The address a worker most likely dials: the first address beyond loopback that our Redis listens on,
    else this machine's name."""
    listening = [a.removeprefix("-") for a in settings.redis_bind.split()]
    beyond = [a for a in listening
              if a not in LOOPBACK and not a.startswith("127.") and a not in ("*", "0.0.0.0", "::")]
    return beyond[0] if beyond else socket.getfqdn()


def values(settings: Settings, host: str) -> dict[str, str]:
    """Environment name -> value of what a worker machine needs (the release pinned as the stack runs it)."""
    found: dict[str, str] = {}
    for name, spec in settings_mod.specs().items():
        value = getattr(settings, name)
        if (spec.shared or spec.worker) and value not in (None, ""):
            found[spec.env] = str(value).lower() if isinstance(value, bool) else str(value)
    specs = settings_mod.specs()
    found[specs["airflow_version"].env] = profiles.release(settings)
    found[specs["executor"].env] = "celery"
    for name in HOSTS:
        found[specs[name].env] = host
    return found


def render(settings: Settings, host: str) -> str:
    lines = ["# airflow-stack: what a Celery worker on another machine needs (invoke worker.env). Keep it 0600.",
             "# On the worker machine: put this file at the checkout's .env, set STACK_PROJECT_DIR to the project's",
             "# clone there" + (", copy the stack's CA (tls/ca.pem of its state dir) into this machine's state dir,"
                                if settings.tls else ",") + " then: scripts/invoke run.worker --name NAME --queues Q"]
    return "\n".join(lines + [f"{key}={value}" if " " not in value else f'{key}="{value}"'
                              for key, value in values(settings, host).items()]) + "\n"


def check_output(path: Path) -> None:
    """A file of secrets goes into a folder no one else can write to: another user could swap it between our
    write and the copy to the worker."""
    folder = path.parent
    if not folder.is_dir():
        raise StackError(f"{folder} is not a folder; give an --output in a folder of yours")
    found = folder.stat()
    if found.st_mode & stat.S_IWOTH or (found.st_mode & stat.S_IWGRP and found.st_gid != os.getegid()):
        raise StackError(f"{folder} is writable by other users (mode {stat.S_IMODE(found.st_mode):o}); nothing was "
                         f"written: give an --output in a folder only you can write to")


def write(settings: Settings, path: Path, host: str) -> Path:
    check_output(path)
    statedir.write_private(path, render(settings, host))
    return path
