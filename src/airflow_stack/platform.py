"""Which machine this is, and how it installs and runs PostgreSQL and Redis.

Three strategies, each a small class whose every command goes through the invoke Context:
Homebrew (macOS), apt with systemd, and apt without systemd (Debian's ``pg_ctlcluster``, as in
containers and CI images). Not root means ``sudo`` — non-interactive when nobody can type a
password, so CI fails fast instead of hanging on a prompt.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from invoke import Context

from . import progress
from .errors import StackError

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


class Homebrew(Platform):
    name = "brew"

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


class Apt(Platform):
    """Debian/Ubuntu. Subclasses differ only in how a cluster is started and stopped."""

    name = "apt"
    pg_os_user = "postgres"
    _updated = False

    @property
    def _hint(self) -> str:
        return "run it yourself to see why" if not self.sudo else "run as root or with sudo rights (sudo -v)"

    # another apt run (unattended-upgrades, a second stack's setup) holds dpkg's lock: wait for it, do not fail
    _apt = "apt-get -o DPkg::Lock::Timeout=300"

    def _apt_update(self, c: Context) -> None:
        if not self._updated:
            self._run(c, f"{self.sudo}{self._apt} update -q", "apt-get update", self._hint)
            self._updated = True

    def _apt_install(self, c: Context, package: str) -> None:
        self._apt_update(c)
        self._run(c, f"{self.sudo}env DEBIAN_FRONTEND=noninteractive {self._apt} install -y -q {package}",
                  f"apt-get install {package}", self._hint)

    def memcached_install(self, c: Context) -> None:
        # Debian's package also starts the distribution's own memcached on 11211: ours runs apart from it
        self._apt_install(c, "memcached")

    def browser(self, c: Context) -> tuple[str, str] | None:
        found = c.run("command -v chromium chromedriver", hide=True, warn=True, in_stream=False).stdout.split()
        return (found[0], found[1]) if len(found) == 2 else None

    def browser_install(self, c: Context) -> None:
        # Debian's own Chromium and its driver: nothing downloads a browser build
        self._apt_install(c, "chromium chromium-driver")

    def os_packages_missing(self, c: Context, names: list[str]) -> list[str]:
        missing = []
        for name in names:
            query = f"dpkg-query -W -f '${{db:Status-Status}}' {shlex.quote(name.split('=')[0])}"
            result = c.run(query, hide=True, warn=True)
            if not (result.ok and result.stdout.strip() == "installed"):
                missing.append(name)
        return missing

    def _unknown(self, c: Context, names: list[str]) -> list[str]:
        return [n for n in names
                if not c.run(f"apt-cache show --no-all-versions {shlex.quote(n)}", hide=True, warn=True).ok]

    def os_packages_unknown(self, c: Context, names: list[str]) -> list[str]:
        unknown = self._unknown(c, names)
        if unknown and not self._updated:  # the package lists may just be old (or absent on a fresh image)
            self._apt_update(c)
            unknown = self._unknown(c, unknown)
        return unknown

    def os_packages_install(self, c: Context, names: list[str]) -> None:
        self._apt_install(c, " ".join(map(shlex.quote, names)))

    def clusters(self, c: Context) -> list[Cluster]:
        result = c.run("pg_lsclusters -h", hide=True, warn=True)
        if result.failed:
            return []
        found = []
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2].isdigit():
                found.append(Cluster(parts[0], parts[1], int(parts[2]), parts[3].startswith("online")))
        return found

    def cluster_for_port(self, c: Context, port: int) -> Cluster:
        clusters = self.clusters(c)
        for cluster in clusters:
            if cluster.port == port:
                return cluster
        listed = ", ".join(f"{k.version}/{k.name} on {k.port}" for k in clusters) or "none"
        raise StackError(f"no PostgreSQL cluster listens on port {port} (clusters: {listed}); "
                         f"set STACK_PG_PORT to one of them, or create one: pg_createcluster --port {port} "
                         f"<version> airflow")

    def pg_installed(self, c: Context, pg_version: str) -> bool:
        return bool(self.clusters(c))

    def pg_install(self, c: Context, pg_version: str) -> None:
        self._apt_install(c, "postgresql")

    def pg_bin(self, c: Context, tool: str, pg_version: str) -> str:
        return tool  # postgresql-common puts wrappers for psql, pg_isready, pg_dump on PATH

    def pg_admin_psql(self, c: Context, port: int, pg_version: str) -> str:
        # peer authentication: only the postgres OS user is the superuser on the local socket
        become = "runuser -u postgres --" if not self.sudo else f"{self.sudo}-u postgres"
        return f"{become} psql -X -q -At -v ON_ERROR_STOP=1 -p {port}"

    def redis_server_bin(self, c: Context) -> str | None:
        found = c.run("command -v redis-server", hide=True, warn=True)
        return found.stdout.strip() if found.ok and found.stdout.strip() else None

    def redis_install(self, c: Context) -> None:
        self._apt_install(c, "redis-server")


class AptSystemd(Apt):
    name = "apt+systemd"

    def pg_start(self, c: Context, port: int, pg_version: str) -> None:
        cluster = self.cluster_for_port(c, port)
        self._run(c, f"{self.sudo}systemctl start postgresql@{cluster.version}-{cluster.name}",
                  "systemctl start", f"see journalctl -u postgresql@{cluster.version}-{cluster.name}")

    def pg_stop(self, c: Context, port: int, pg_version: str) -> None:
        cluster = self.cluster_for_port(c, port)
        self._run(c, f"{self.sudo}systemctl stop postgresql@{cluster.version}-{cluster.name}",
                  "systemctl stop", "check systemctl status postgresql")

    def pg_restart(self, c: Context, port: int, pg_version: str) -> None:
        cluster = self.cluster_for_port(c, port)
        self._run(c, f"{self.sudo}systemctl restart postgresql@{cluster.version}-{cluster.name}",
                  "systemctl restart", f"see journalctl -u postgresql@{cluster.version}-{cluster.name}")


class AptPgCtlcluster(Apt):
    name = "apt+pg_ctlcluster"

    def pg_start(self, c: Context, port: int, pg_version: str) -> None:
        cluster = self.cluster_for_port(c, port)
        self._run(c, f"{self.sudo}pg_ctlcluster {cluster.version} {cluster.name} start", "pg_ctlcluster start",
                  f"see /var/log/postgresql/postgresql-{cluster.version}-{cluster.name}.log")

    def pg_stop(self, c: Context, port: int, pg_version: str) -> None:
        cluster = self.cluster_for_port(c, port)
        self._run(c, f"{self.sudo}pg_ctlcluster {cluster.version} {cluster.name} stop", "pg_ctlcluster stop",
                  "check pg_lsclusters")

    def pg_restart(self, c: Context, port: int, pg_version: str) -> None:
        cluster = self.cluster_for_port(c, port)
        self._run(c, f"{self.sudo}pg_ctlcluster {cluster.version} {cluster.name} restart",
                  "pg_ctlcluster restart",
                  f"see /var/log/postgresql/postgresql-{cluster.version}-{cluster.name}.log")


def detect(which=shutil.which, system: str = sys.platform, systemd_dir: Path = Path("/run/systemd/system"),
           sudo: str | None = None) -> Platform:
    """Pick the strategy for this machine."""
    sudo = sudo_prefix() if sudo is None else sudo
    if system == "darwin" or (which("brew") and not which("apt-get")):
        if not which("brew"):
            raise StackError("Homebrew is not installed; install it from brew.sh, then re-run")
        return Homebrew()
    if which("apt-get"):
        # systemd is PID 1 exactly when this directory exists (sd_booted)
        return AptSystemd(sudo) if systemd_dir.is_dir() else AptPgCtlcluster(sudo)
    raise StackError("neither Homebrew nor apt-get is on this machine; airflow-stack supports macOS with "
                     "Homebrew and Debian/Ubuntu: install PostgreSQL and Redis yourself and pass --host/--port")
