"""macOS with Homebrew: keg-only ``postgresql@N`` started with ``brew services``, Redis and memcached
from Homebrew, the system's Chrome with Homebrew's chromedriver."""

from __future__ import annotations

import shlex
from pathlib import Path

from invoke import Context

from ..errors import StackError
from .host_base import Platform


class Homebrew(Platform):
    name = "brew"
    trusts_loopback = True  # the formula's initdb: `host all all 127.0.0.1/32 trust` and ::1/128

    def __init__(self, sudo: str = "") -> None:
        super().__init__(sudo="")  # Homebrew refuses to run as root and never needs sudo
        self._prefixes: dict[str, str] = {}

    def _formula(self, pg_version: str) -> str:
        return shlex.quote(f"postgresql@{pg_version}")

    def _prefix(self, c: Context, formula: str = "") -> str:
        if formula not in self._prefixes:
            self._prefixes[formula] = c.run(f"brew --prefix {formula}".strip(), hide=True).stdout.strip()
        return self._prefixes[formula]

    def pg_installed(self, c: Context, pg_version: str) -> bool:
        return c.run(f"brew list --versions {self._formula(pg_version)}", hide=True, warn=True).ok

    def pg_install(self, c: Context, pg_version: str) -> None:
        self._run(c, f"brew install {self._formula(pg_version)}", "brew install",
                  "run it yourself to see why (brew doctor)")

    def pg_start(self, c: Context, port: int, pg_version: str) -> None:
        if port != 5432:
            raise StackError(f"Homebrew's {self._formula(pg_version)} listens on 5432; to use port {port} "
                             f"start your own server there and pass --host/--port")
        self._run(c, f"brew services start {self._formula(pg_version)}", "brew services start",
                  f"see $(brew --prefix)/var/log/{self._formula(pg_version)}.log")

    def pg_stop(self, c: Context, port: int, pg_version: str) -> None:
        self._run(c, f"brew services stop {self._formula(pg_version)}", "brew services stop", "check brew services")

    def pg_restart(self, c: Context, port: int, pg_version: str) -> None:
        self._run(c, f"brew services restart {self._formula(pg_version)}", "brew services restart",
                  "check brew services")

    def pg_bin(self, c: Context, tool: str, pg_version: str) -> str:
        # keg-only formula: its binaries are not on PATH
        return shlex.quote(f"{self._prefix(c, self._formula(pg_version))}/bin/{tool}")

    def pg_admin_psql(self, c: Context, port: int, pg_version: str) -> str:
        # Homebrew's initdb makes the login user the superuser, with trust on local sockets
        return f"{self.pg_bin(c, 'psql', pg_version)} -X -q -At -v ON_ERROR_STOP=1 -p {port}"

    def redis_server_bin(self, c: Context) -> str | None:
        if not c.run("brew list --versions redis", hide=True, warn=True).ok:
            return None
        return f"{self._prefix(c)}/bin/redis-server"

    def redis_install(self, c: Context) -> None:
        self._run(c, "brew install redis", "brew install redis", "run it yourself to see why (brew doctor)")

    def memcached_bin(self, c: Context) -> str | None:
        if not c.run("brew list --versions memcached", hide=True, warn=True).ok:
            return None
        return f"{self._prefix(c)}/bin/memcached"

    def memcached_install(self, c: Context) -> None:
        self._run(c, "brew install memcached", "brew install memcached", "run it yourself to see why (brew doctor)")

    CHROME = "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"

    def browser(self, c: Context) -> tuple[str, str] | None:
        # the system's Chrome (a browser is not ours to install on a Mac); chromedriver from Homebrew
        driver = c.run("command -v chromedriver", hide=True, warn=True, in_stream=False).stdout.strip()
        return (self.CHROME, driver) if driver and Path(self.CHROME).exists() else None

    def browser_install(self, c: Context) -> None:
        if not Path(self.CHROME).exists():
            raise StackError("Google Chrome is not installed; install it (https://www.google.com/chrome/), "
                             "then run invoke setup.browser again")
        self._run(c, "brew install --cask chromedriver", "brew install chromedriver",
                  "run it yourself to see why (brew doctor)")

    def os_packages_missing(self, c: Context, names: list[str]) -> list[str]:
        return [n for n in names if not c.run(f"brew list --versions {shlex.quote(n)}", hide=True, warn=True).ok]

    def os_packages_unknown(self, c: Context, names: list[str]) -> list[str]:
        return [n for n in names if not c.run(f"brew info {shlex.quote(n)}", hide=True, warn=True).ok]

    def os_packages_install(self, c: Context, names: list[str]) -> None:
        listed = " ".join(map(shlex.quote, names))
        self._run(c, f"brew install {listed}", f"brew install {listed}", "run it yourself to see why (brew doctor)")
