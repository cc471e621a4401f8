"""The one door the tasks use: ``Stack(c, settings)``.

Settings are loaded once per command (by the task, with its flags) and handed in; a step that changes
them (a generated secret, a flag kept in .env) replaces ``self.settings``, so no step loads them again.
Each setup step returns what it changed and says it; what runs is read once per command; the rule for
keeping or switching the executor and line lives in ``_choose``; airflow.cfg is written at most once per
command. One operation at a time per state dir: every method that changes the stack holds its lock.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator

from invoke import Context

from . import locks, progress, statedir
from . import settings as settings_mod
from .apache_airflow import config, install, profiles, schema
from .components import MEMCACHED, REDIS
from .errors import StackError
from .project import folder, objects
from .runtime import lifecycle, registry, supervisor
from .services import host, memcached_server, pg_access, pg_database, postgres, redis_server, tls
from .settings import LOOPBACK, Settings


class Stack:
    HEALTH_TIMEOUT = lifecycle.HEALTH_TIMEOUT  # seconds a start waits for health, unless told
    STOP_TIMEOUT = supervisor.STOP_TIMEOUT  # seconds a stop waits for a graceful end before killing

    def __init__(self, c: Context, settings: Settings, say: Callable[..., None] = progress.say) -> None:
        self.c = c
        self.settings = settings
        self.say = say
        self._host: host.Platform | None = None
        self.executor = settings.executor  # what this command runs: the configured one, or what _choose decides
        self._config_written: str | None = None  # the executor airflow.cfg was written for in this command

    # ---- what the stack is ------------------------------------------------------------------------
    @property
    def host(self) -> host.Platform:
        if self._host is None:
            self._host = host.detect()
        return self._host

    @property
    def local_host(self) -> host.Platform | None:
        """The host strategy when PostgreSQL is this machine's (its client tools come from there), else None."""
        return self.host if self.settings.pg_is_local else None

    @property
    def release(self) -> str:
        return profiles.release(self.settings)

    def write_config(self, executor: str | None = None) -> tuple[dict[str, str], list[str]]:
        """What every Airflow process shares, for ``executor`` (default: what this command runs), with
        airflow.cfg and webserver_config.py written from it (once per command and executor); and the files
        that changed."""
        executor = executor or self.executor
        env = config.environment(self.settings, executor)
        if self._config_written == executor:
            return env, []
        written = config.write_config(self.settings, env)
        self._config_written = executor
        return env, written

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """One operation at a time on this state dir (reentrant: `up` runs the setup steps)."""
        with locks.exclusive(self.settings, what):
            yield

    lock = _exclusive  # for the tasks that operate on the stack's database or objects (db.*, objects.*)

    def _step(self, what: str, run: Callable[[], list[str]], nothing: Callable[[], str]) -> list[str]:
        """Run one setup step and say what it changed (or that nothing needed doing), with its time."""
        began = time.monotonic()
        changes = run()
        seconds = time.monotonic() - began
        if changes:
            self.say(*(f"{what}: {change}" for change in changes), f"{what}: done in {seconds:.1f} s")
        else:
            self.say(f"{what}: {nothing()} ({seconds:.1f} s)")
        return changes

    def _secrets(self) -> list[str]:
        self.settings, added = settings_mod.ensure_secrets(self.settings)
        return [f"generated {name} into {self.settings.env_file}" for name in added]

    def _keep(self, **flags: object) -> list[str]:
        """Flags whose choice stays for the next command: kept in .env (those given, i.e. not None)."""
        given = {name: value for name, value in flags.items() if value is not None}
        if not given:
            return []
        changed = settings_mod.persist(self.settings, **given)
        self.settings = self.settings.replace(**given)
        specs = settings_mod.specs()
        return [f"{specs[name].env}={value} kept in {self.settings.env_file.name}"
                for name, value in given.items() if specs[name].env in changed]

    def _keep_tls(self, tls_flag: bool) -> list[str]:
        """--tls on a setup task: kept in .env, so every later task (and a worker's copy of .env) uses it."""
        if not tls_flag:
            return []
        said = self._keep(tls=True)
        if said and registry.running(self.settings):  # started with plain-text URLs, which TLS-only Redis refuses
            said.append("the running Airflow processes connect in plain text until restarted: invoke stop && invoke up")
        return said

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
            s = self.settings
            plat = self.local_host
            if plat is not None:
                changes += postgres.ensure_server(self.c, plat, s)
            admin = postgres.admin_for(self.c, plat, s)
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
        """Install redis-server if needed and run our own password-protected Redis (loopback by default)."""
        if bind is not None:
            redis_server.check_bind(bind)

        def run() -> list[str]:
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
            prepared = redis_server.prepare(self.c, self.host, s, ours_running=before is not None)
            changes += prepared.done
            changes += lifecycle.run_service(self.c, s, REDIS, prepared.argv, prepared.config_changed,
                                             prepared.label, redis_server.READY_TIMEOUT)
            if supervisor.running(s, REDIS.name) != before and not switched:  # (re)started: clients lost it
                changes += lifecycle.wait_workers_reconnected(s)  # (after a switch to TLS they cannot)
            return changes

        with self._exclusive("invoke setup.redis"):
            return self._step("redis", run, lambda: f"already running on 127.0.0.1:{self.settings.redis_port}")

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
            profiles.of(s).check_python()
            folder.get(s).check()
            objects.load(s)  # a broken airflow_settings.yaml or a missing ${NAME}: before anything changes
            # before anything is installed or written: never down onto a schema a newer release migrated
            schema.refuse_older_release(s, self.release)
            changes = self._secrets()
            notes = folder.dockerfile_note_once(s, self.release)
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

    # ---- running -------------------------------------------------------------------------------------
    def _choose(self, executor: str | None, line: str | None, live: dict, recorded: dict[str, str],
                may_switch: bool) -> bool:
        """The one rule for what a start runs; sets ``self.executor`` (and the line in ``self.settings``).
        A plain `invoke up` keeps what runs (its executor and line); a flag switches, with the same database
        and DAG history (True: the running stack must stop first). The run.* tasks never switch: a running
        stack of another executor or line is refused."""
        self.executor = executor or self.settings.executor
        if not live:
            return False
        ran_executor, ran_line = recorded.get("executor"), recorded.get("line")
        if may_switch:
            if line is None and ran_line in profiles.NAMES:
                self.settings = self.settings.replace(airflow_line=ran_line)
            self.executor = executor or ran_executor or self.settings.executor
            return ran_executor not in (None, self.executor)
        if recorded and (ran_executor, ran_line) != (self.executor, self.settings.airflow_line):
            raise StackError(f"the stack runs Airflow {ran_line} with the {ran_executor} executor; stop it first "
                             f"(invoke stop), or switch with: invoke up --executor {self.executor}")
        return False

    def up(self, executor: str | None = None, line: str | None = None,
           timeout: float = lifecycle.HEALTH_TIMEOUT) -> None:
        """Bring the whole stack up: set up what is missing, then start what does not run (re-run safe)."""
        with self._exclusive("invoke up"):
            live, recorded = registry.running(self.settings), registry.recorded(self.settings)
            switching = self._choose(executor, line, live, recorded, may_switch=True)
            self.setup()
            if switching:  # an explicit switch: same database and DAG history, other executor
                self.say(f"up: switching from the {recorded['executor']} to the {self.executor} executor",
                         *lifecycle.stop(self.settings))
                live = {}
            self._start(live, timeout)
            # what a flag chose is kept once it runs: the next plain `invoke up` brings back the same stack
            for flag, (name, value) in {"executor": ("executor", executor), "line": ("airflow_line", line)}.items():
                if value is not None and settings_mod.persist(self.settings, **{name: value}):
                    self.say(f"up: --{flag} {value} kept in {self.settings.env_file.name} "
                             f"({settings_mod.specs()[name].env})")

    def start(self, executor: str, extras: tuple[str, ...] = (), timeout: float = lifecycle.HEALTH_TIMEOUT) -> None:
        """Start the executor's components (run.local, run.celery); a stack running otherwise is refused."""
        with self._exclusive(f"invoke run.{executor}"):
            live, recorded = registry.running(self.settings), registry.recorded(self.settings)
            self._choose(executor, None, live, recorded, may_switch=False)
            self._start(live, timeout, extras)

    def _start(self, live: dict, timeout: float, extras: tuple[str, ...] = ()) -> None:
        s, executor = self.settings, self.executor
        env, _ = self.write_config()
        report = lifecycle.start(self.c, s, executor, live, env, timeout=timeout, extras=extras)
        if report.restarted:
            self.say(*(f"run: {line} (it ran code the venv no longer holds: another Airflow release or "
                       f"requirements.txt)" for line in report.restarted))
        if not report.started:
            self.say(f"run: already running ({', '.join(report.already)}), Airflow {s.airflow_line}, {executor}")
        else:
            self.say(f"run: started {', '.join(report.started)}; all healthy in {report.seconds:.1f} s")
        self.say(f"run: Airflow UI and API ({profiles.of(s).web.name}) at {s.api_url}/ ; user {s.admin_user}, "
                 f"password: _AIRFLOW_WWW_USER_PASSWORD in {s.env_file}")
        if "flower" in extras:
            self.say(f"run: Flower at http://127.0.0.1:{s.flower_port}/ ; user {s.admin_user}, password: "
                     f"STACK_FLOWER_PASSWORD in {s.env_file}")

    def add_worker(self, name: str, queues: str, concurrency: int | None,
                   timeout: float = lifecycle.HEALTH_TIMEOUT) -> None:
        """Add a Celery worker ``worker-NAME``, here or on another machine that has the stack's .env."""
        from .runtime import preflight

        with self._exclusive("invoke run.worker"):
            s = self.settings
            preflight.check_worker_machine(s)
            statedir.secure_mode(s.env_file)
            folder.get(s).check()  # the project's DAGs must be on this machine too, at STACK_PROJECT_DIR
            folder.ensure_os_packages(self.c, self.host, s)
            install.ensure(self.c, s)  # a fresh worker machine gets Airflow (and requirements.txt) here
            env, _ = self.write_config("celery")
            instance, already = lifecycle.start_worker(self.c, s, name, queues, concurrency or s.worker_concurrency,
                                                       env, timeout)
        if already:
            self.say(f"run: worker {instance} already running")
        else:
            self.say(f"run: started {instance} (queues {queues}); it answers ping as {name}@<this host>")

    def stop(self, component: str = "", postgres_too: bool = False, timeout: float = supervisor.STOP_TIMEOUT) -> None:
        """Stop Airflow's processes and the services the stack runs for them (PostgreSQL only when asked)."""
        with self._exclusive("invoke stop"):
            s = self.settings
            if component:
                self.say(*lifecycle.stop(s, [component], timeout))
                return
            self.say(*lifecycle.stop(s, None, timeout))
            self.say(*lifecycle.stop(s, [REDIS.name], timeout))
            if memcached_server.managed(s):
                self.say(*lifecycle.stop(s, [MEMCACHED.name], timeout))
            if postgres_too:
                if not s.pg_is_local:
                    raise StackError(f"PostgreSQL at {s.pg_host} is not ours to stop")
                self.host.pg_stop(self.c, s.pg_port, s.pg_version)
                self.say("postgresql: stopped")

    def restart(self, component: str = "", timeout: float = HEALTH_TIMEOUT, stop_timeout: float = STOP_TIMEOUT) -> None:
        """Stop what runs (or ``component``) and start it again with the same choices: the executor and line it
        runs, Flower and the extra Celery workers as they were started."""
        with self._exclusive("invoke restart"):
            self._choose(None, None, registry.running(self.settings), registry.recorded(self.settings), True)
            self.say(*(f"restart: {line}" for line in lifecycle.restart(
                self.c, self.settings, self.executor, self.write_config()[0], [component] if component else None,
                timeout, stop_timeout)))

    def clean(self, confirmed: bool, drop_db: bool) -> None:
        """Remove runtime state (logs, pids, Redis data, AIRFLOW_HOME); the database only with ``drop_db``."""
        with self._exclusive("invoke clean"):
            s = self.settings
            if registry.running(s):
                raise StackError("Airflow is running; stop it first: invoke stop")
            what = f"{s.state_dir} (logs, pids, Redis data, AIRFLOW_HOME; backups and venvs are kept)"
            if drop_db:
                what += f" and database {s.pg_database} with role {s.pg_user}"
            if not confirmed:
                if not sys.stdin.isatty():
                    raise StackError(f"clean would remove {what}; nobody can confirm here: re-run with --yes")
                if input(f"Remove {what}? [y/N] ").strip().lower() not in ("y", "yes"):
                    raise StackError("nothing removed")
            supervisor.stop(s, REDIS.name)
            removed = []
            # backups and the Airflow venvs stay: they are not runtime state
            for path in (s.paths.logs, s.paths.run, s.paths.redis, s.paths.airflow_home):
                if path.exists():
                    shutil.rmtree(path)
                    removed.append(path.name)
            self.say(f"clean: removed {', '.join(removed) or 'nothing'} in {s.state_dir}")
            if drop_db:
                self.drop_database()

    def drop_database(self) -> None:
        """Drop Airflow's database and role (refused while Airflow runs on it)."""
        with self._exclusive("invoke db.drop"):
            s = self.settings
            using = registry.on_database(s)
            if using:
                raise StackError(f"Airflow is running on this database ({', '.join(using)}); stop it first: "
                                 f"invoke stop")
            plat = self.local_host
            admin = postgres.admin_for(self.c, plat, s)
            if admin is None:
                raise StackError("no superuser access to this server; set STACK_PG_ADMIN_DSN")
            pg_database.drop(admin, s)
            if plat is not None and pg_access.forget_remote(self.c, plat, admin, s):
                self.say(f"db: removed the pg_hba entries for {s.pg_user}")
            schema.forget_migration(s)  # its schema stamp described a database that no longer exists
            self.say(f"db: dropped database {s.pg_database} and role {s.pg_user}")

    def ensure_airflow(self) -> Settings:
        """The venv the stack would run (requirements.txt included), for the tasks that run Airflow's code on
        the project without a running stack (dags.*); the settings with any secret generated for it."""
        folder.get(self.settings).check()
        if not install.is_current(self.settings):
            self._secrets()
            install.ensure(self.c, self.settings)
        return self.settings
