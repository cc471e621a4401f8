"""The setup steps of the facade: PostgreSQL, our Redis, memcached, Airflow, a browser. Each returns what it
changed and says it, with its time; each is safe to run again."""

from __future__ import annotations

from ..apache_airflow import config, install, releases, schema
from ..components import MEMCACHED, REDIS
from ..errors import StackError
from ..project import folder, objects
from ..runtime import checkouts, lifecycle, registry, supervisor
from ..services import host, memcached_server, pg_access, pg_database, postgres, redis_server, tls
from ..settings import LOOPBACK
from .base import StackBase


class SetupSteps(StackBase):
    # ---- setup: each step returns what it changed ---------------------------------------------------
    def setup(self) -> None:
        """Everything: PostgreSQL, our Redis (and memcached, when the limiter uses it), and Airflow."""
        with self._exclusive("invoke setup"):
            self.setup_postgres()
            self.setup_redis()
            if memcached_server.managed(self.settings):
                self.setup_memcached()
            self.setup_airflow()

    def setup_postgres(self, keep: dict[str, object] | None = None, listen: str | None = None,
                       allow_from: str | None = None, new_database: bool = False, tls_flag: bool = False
                       ) -> list[str]:
        """Install and start PostgreSQL if needed; create Airflow's role and database (PG15-safe). ``keep``:
        the server flags given (pg_host, pg_port, pg_sslmode), kept in .env once it is set up."""

        def run() -> list[str]:
            changes = self._secrets() + self._keep_tls(tls_flag)
            plat = self.local_host
            if plat is not None:
                changes += postgres.ensure_server(self.c, plat, self.settings)
            admin = postgres.admin_for(self.c, plat, self.settings)
            # before anything of the stack starts: this checkout's own names and ports, when others have the defaults
            self.settings, claimed = checkouts.claim(self.settings, admin)
            self.say(*(f"checkout: {line}" for line in claimed))
            s = self.settings
            if listen or allow_from:
                if admin is None or plat is None:
                    raise StackError("--listen/--allow-from configure a server this machine runs; for another "
                                     "server change its listen_addresses and pg_hba.conf there")
                changes += pg_access.allow_remote(self.c, plat, admin, s, listen, allow_from)
            if admin is not None and plat is not None:  # TLS (STACK_TLS), scram where the server trusts loopback
                changes += pg_access.ensure_auth(self.c, plat, admin, s)
            if new_database:
                schema.forget_migration(s)
            clusters = plat.clusters(self.c) if isinstance(plat, host.Apt) else []
            changes += pg_database.bootstrap(admin, s, schema.migrated_here(s), clusters)
            # a server chosen with a flag is the stack's from now on: the next `invoke up` uses it too
            return changes + self._keep(**(keep or {}))

        with self._exclusive("invoke setup.postgres"):
            return self._step("postgres", run, lambda: (
                f"already set up: role {self.settings.pg_user} owns {self.settings.pg_database} on "
                f"{self.settings.pg_host}:{self.settings.pg_port}"))

    def setup_redis(self, bind: str | None = None, tls_flag: bool = False) -> list[str]:
        """Install redis-server if needed and run our own password-protected Redis (its Unix socket only by
        default; TCP for the addresses ``bind`` names beyond loopback)."""
        if bind is not None:
            redis_server.check_bind(bind)

        def run() -> list[str]:
            # the TCP port the bind asks for must be free (or ours) before the bind is kept
            redis_server.check_port(self.settings.replace(redis_bind=bind or self.settings.redis_bind),
                                    supervisor.running(self.settings, REDIS.name) is not None)
            changes = self._secrets()
            switched = self._keep_tls(tls_flag)
            changes += switched
            kept = self._keep(redis_bind=bind)
            changes += kept
            remote = [a.removeprefix("-") for a in (bind or "").split() if a.removeprefix("-") not in LOOPBACK]
            if kept and remote:
                changes.append(tls.reachability(self.settings, f"our Redis (port {self.settings.redis_port}, "
                                                f"password required)", ", ".join(remote)))
            s = self.settings
            before = supervisor.running(s, REDIS.name)
            had_tcp = redis_server.conf_listens_tcp(s)
            prepared = redis_server.prepare(self.c, self.host, s, ours_running=before is not None)
            changes += prepared.done
            changes += lifecycle.run_service(self.c, s, REDIS, prepared.argv, prepared.config_changed,
                                             prepared.label, redis_server.READY_TIMEOUT)
            if had_tcp and not s.redis_tcp and registry.running(s):  # a stack set up before the socket
                changes.append("the running Airflow processes still dial its TCP port, which is closed now: "
                               "invoke stop && invoke up")
            if supervisor.running(s, REDIS.name) != before and not switched:  # (re)started: clients lost it
                changes += lifecycle.wait_workers_reconnected(s)  # (after a switch to TLS they cannot)
            return changes

        with self._exclusive("invoke setup.redis"):
            return self._step("redis", run, lambda: f"already running on {redis_server.where(self.settings)}")

    def setup_memcached(self) -> list[str]:
        """Run our memcached for the login limiter, when STACK_RATELIMIT_STORAGE_URI names one on this machine."""
        if not memcached_server.managed(self.settings):
            self.say("memcached: not used (STACK_RATELIMIT_STORAGE_URI names no memcached on this machine)")
            return []

        def run() -> list[str]:
            s = self.settings
            proc = supervisor.running(s, MEMCACHED.name)
            prepared = memcached_server.prepare(self.c, self.host, s, proc.argv if proc else None)
            return prepared.done + lifecycle.run_service(self.c, s, MEMCACHED, prepared.argv, prepared.config_changed,
                                                         prepared.label, memcached_server.READY_TIMEOUT)

        with self._exclusive("invoke setup.memcached"):
            return self._step("memcached", run, lambda: f"already running at {self.settings.limiter_storage_uri}")

    def setup_airflow(self) -> list[str]:
        """Install Airflow (and the project's requirements.txt, packages.txt) in its own venv, write its
        config, migrate the schema, create the admin, apply the project's airflow_settings.yaml."""

        def run() -> list[str]:
            s = self.settings
            install.interpreter(self.c, s)  # a release this machine has no Python for: one line, nothing changed
            folder.get(s).check()
            config.project_environment(s, {})  # the project's .env: a broken line or a name of the stack's
            objects.load(s)  # a broken airflow_settings.yaml or a missing ${NAME}: before anything changes
            chosen = releases.resolve(s)
            if not install.constraints_for(s).exists():
                releases.resolve_as_of(chosen.version)  # a release that does not exist: one line, before anything
            # before anything is installed or written: never down onto a schema a newer release migrated
            schema.refuse_another_release(s, chosen.version, chosen.source)
            changes = self._secrets()
            notes = releases.project_note_once(s)
            self.say(*(f"airflow: {note}" for note in notes))  # now: a later step may fail
            changes += folder.ensure_os_packages(self.c, self.host, self.settings)
            changes += install.ensure(self.c, self.settings)
            env, written = self.write_config()
            changes += [f"wrote {name}" for name in written]
            changes += schema.migrate(self.c, self.settings, env)
            changes += schema.ensure_admin(self.c, self.settings, env)
            return changes + objects.apply(self.c, self.settings)

        with self._exclusive("invoke setup.airflow"):
            return self._step("airflow", run, lambda: (
                f"Airflow {install.installed_version(self.settings)} already installed, migrated, admin present"))

    def setup_browser(self) -> list[str]:
        """A headless browser and its WebDriver for the UI tests and screenshots (nothing downloads one)."""
        found: list[tuple[str, str]] = []

        def run() -> list[str]:
            plat = self.host
            browser, changes = plat.ensure_installed(self.c, "a browser and its WebDriver", plat.browser,
                                                     plat.browser_install)
            found.append(browser)
            return changes

        with self._exclusive("invoke setup.browser"):
            return self._step("browser", run, lambda: f"{found[0][0]} with {found[0][1]}")
