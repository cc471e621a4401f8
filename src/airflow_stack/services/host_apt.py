"""Debian and Ubuntu with apt: PostgreSQL clusters (postgresql-common), started through systemd where it
is PID 1, else with Debian's ``pg_ctlcluster`` (containers, CI images, this kind of machine)."""

from __future__ import annotations

import shlex

from invoke import Context

from ..errors import StackError
from .host_base import Cluster, Platform


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
