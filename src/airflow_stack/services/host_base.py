"""What every host strategy offers (``Platform``): install and run PostgreSQL, Redis, memcached, a
browser and the project's OS packages, each command through the invoke Context. The strategies:
host_brew.py (macOS with Homebrew), host_apt.py (Debian/Ubuntu, with systemd or Debian's
``pg_ctlcluster``); host.py picks one. Not root means ``sudo`` — non-interactive when nobody can type
a password, so CI fails fast instead of hanging on a prompt.
"""

from __future__ import annotations

import io
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from invoke import Context

from .. import progress
from ..errors import StackError

Found = TypeVar("Found")


@dataclass(frozen=True)
class Cluster:
    """A Debian PostgreSQL cluster, as ``pg_lsclusters`` lists it."""

    version: str
    name: str
    port: int
    online: bool


class WholeStdin(io.StringIO):
    """Text for a command's standard input, handed over in one piece: invoke reads ``in_stream`` one
    character per read with a 10 ms pause between reads when it is not a terminal (about 100 bytes a
    second: a certificate took 7 s, a pg_hba.conf a minute)."""

    def read(self, size: int | None = -1) -> str:
        return super().read(-1)


def sudo_prefix(euid: int | None = None, interactive: bool | None = None) -> str:
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return ""
    if interactive is None:
        interactive = sys.stdin.isatty() and not os.environ.get("CI")
    return "sudo " if interactive else "sudo -n "


class Platform:
    name = "abstract"

    def __init__(self, sudo: str = "") -> None:
        self.sudo = sudo

    # PostgreSQL ---------------------------------------------------------------------------
    def pg_installed(self, c: Context, pg_version: str) -> bool:
        raise NotImplementedError

    def pg_install(self, c: Context, pg_version: str) -> None:
        raise NotImplementedError

    def pg_start(self, c: Context, port: int, pg_version: str) -> None:
        raise NotImplementedError

    def pg_stop(self, c: Context, port: int, pg_version: str) -> None:
        raise NotImplementedError

    def pg_restart(self, c: Context, port: int, pg_version: str) -> None:
        raise NotImplementedError

    def append_line(self, c: Context, path: str, line: str) -> None:
        """Append a line to a server file (pg_hba.conf), with the rights that file needs."""
        self._run(c, f"{self.sudo}tee -a {shlex.quote(path)}", f"appending to {path}",
                  "run as root or with sudo rights", in_stream=WholeStdin(line + "\n"))

    def write_file(self, c: Context, path: str, text: str) -> None:
        """Replace a server file's content (pg_hba.conf) atomically, keeping its owner and mode.

        A copy (cp -p) takes the new text and is renamed over the file: a reload that comes in
        between sees the old file or the new one, never a truncated one.
        """
        script = 'tmp="$1.airflow-stack.tmp" && cp -p "$1" "$tmp" && cat > "$tmp" && mv -f "$tmp" "$1"'
        self._run(c, f"{self.sudo}sh -c {shlex.quote(script)} sh {shlex.quote(path)}", f"writing {path}",
                  "run as root or with sudo rights", in_stream=WholeStdin(text))

    # the OS user PostgreSQL runs as, who must own its key file ("": whoever runs the stack, as on Homebrew)
    pg_os_user = ""
    # its initdb admits every local user over TCP loopback without a password (pg_hba trust): the stack's role
    # gets scram lines of its own above those (services/pg_access.ensure_loopback_scram)
    trusts_loopback = False

    def write_private_file(self, c: Context, path: str, text: str) -> None:
        """Write a file only the server's OS user may read (PostgreSQL refuses a key file others can)."""
        owner = f"-o {self.pg_os_user} -g {self.pg_os_user} " if self.pg_os_user else ""
        self._run(c, f"{self.sudo}install {owner}-m 600 /dev/stdin {shlex.quote(path)}", f"writing {path}",
                  "run as root or with sudo rights", in_stream=WholeStdin(text))

    def pg_bin(self, c: Context, tool: str, pg_version: str) -> str:
        raise NotImplementedError

    def pg_admin_psql(self, c: Context, port: int, pg_version: str) -> str:
        """A psql command line connected as the local superuser (no password: peer or trust)."""
        raise NotImplementedError

    def ensure_installed(self, c: Context, what: str, find: Callable[[Context], Found | None],
                         install: Callable[[Context], None]) -> tuple[Found, list[str]]:
        """What ``find`` finds, after ``install`` when it found nothing; and what was done, for the report."""
        found = find(c)
        if found is not None:
            return found, []
        install(c)
        found = find(c)
        if found is None:
            raise StackError(f"{what} is still not found after installing it with {self.name}; "
                             f"check the package manager's output above")
        return found, [f"installed {what} ({self.name})"]

    # Redis --------------------------------------------------------------------------------
    def redis_server_bin(self, c: Context) -> str | None:
        raise NotImplementedError

    def redis_install(self, c: Context) -> None:
        raise NotImplementedError

    # memcached (the login limiter's storage, when chosen) ------------------------------------
    def memcached_bin(self, c: Context) -> str | None:
        found = c.run("command -v memcached", hide=True, warn=True, in_stream=False)
        return found.stdout.strip() if found.ok and found.stdout.strip() else None

    def memcached_install(self, c: Context) -> None:
        raise NotImplementedError

    # A browser for the UI tests and screenshots ------------------------------------------------
    def browser(self, c: Context) -> tuple[str, str] | None:
        """(browser binary, its WebDriver) when both are installed."""
        raise NotImplementedError

    def browser_install(self, c: Context) -> None:
        raise NotImplementedError

    # The project's packages.txt -----------------------------------------------------------
    def os_packages_missing(self, c: Context, names: list[str]) -> list[str]:
        """Of ``names``, those not installed yet."""
        raise NotImplementedError

    def os_packages_unknown(self, c: Context, names: list[str]) -> list[str]:
        """Of ``names``, those the package manager does not know."""
        raise NotImplementedError

    def os_packages_install(self, c: Context, names: list[str]) -> None:
        raise NotImplementedError

    def _run(self, c: Context, cmd: str, what: str, hint: str, **kwargs: object) -> None:
        with progress.step(what) as step:  # the package manager's lines as detail (Unpacking ..., Pouring ...)
            result = c.run(cmd, hide=False, warn=True, out_stream=step, err_stream=step, **kwargs)
        if result.failed:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise StackError(f"{what} failed ({detail[-1] if detail else f'exit {result.exited}'}); {hint}")
