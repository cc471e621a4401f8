"""The running stack through the facade: what `up` decides, start, stop, add a worker, clean, drop the
database, a new project."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .. import settings as settings_mod
from .. import statedir
from ..apache_airflow import install, profiles, releases, schema
from ..components import BACKUPS, MEMCACHED, REDIS
from ..errors import StackError
from ..project import folder, scaffold
from ..runtime import lifecycle, registry, supervisor
from ..services import memcached_server, pg_access, pg_database, postgres
from ..settings import Settings
from .base import StackBase


class Running(StackBase):
    # ---- running -------------------------------------------------------------------------------------
    def _choose(self, executor: str | None, live: dict, recorded: dict[str, str], may_switch: bool) -> bool:
        """The one rule for what a start runs; sets ``self.executor``. The release is the settings' (or the
        project's Dockerfile's): a release other than the running one meets the schema checks of setup. The
        executor: a plain `invoke up` keeps the running one; a flag switches, with the same database and DAG
        history (True: the running stack must stop first). The run.* tasks never switch: a stack running
        another executor or release is refused."""
        self.executor = executor or self.settings.executor
        if not live:
            return False
        ran_executor = recorded.get("executor")
        if may_switch:
            self.executor = executor or ran_executor or self.settings.executor
            return ran_executor not in (None, self.executor)
        ran_release = recorded.get("release") or recorded.get("line")
        if recorded and (ran_executor, ran_release) != (self.executor, self.release) \
                and (ran_executor, ran_release) != (self.executor, profiles.of(self.settings).name):
            raise StackError(f"the stack runs Airflow {ran_release} with the {ran_executor} executor; stop it first "
                             f"(invoke stop), or switch with: invoke up --executor {self.executor}")
        return False

    def up(self, executor: str | None = None, line: str | None = None,
           timeout: float = lifecycle.HEALTH_TIMEOUT) -> None:
        """Bring the whole stack up: set up what is missing, then start what does not run (re-run safe)."""
        with self._exclusive("invoke up"):
            live, recorded = registry.running(self.settings), registry.recorded(self.settings)
            switching = self._choose(executor, live, recorded, may_switch=True)
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
            self._choose(executor, live, recorded, may_switch=False)
            self._start(live, timeout, extras)

    def _start(self, live: dict, timeout: float, extras: tuple[str, ...] = ()) -> None:
        s, executor = self.settings, self.executor
        env, _ = self.write_config()
        report = lifecycle.start(self.c, s, executor, live, env, timeout=timeout, extras=extras)
        self.say(*(f"tls: {line}" for line in report.notes))
        if report.restarted:
            self.say(*(f"run: {line} (it ran code the venv no longer holds: another Airflow release or "
                       f"requirements.txt)" for line in report.restarted))
        if not report.started:
            self.say(f"run: already running ({', '.join(report.already)}), Airflow {self.release}, {executor}")
        else:
            self.say(f"run: started {', '.join(report.started)}; all healthy in {report.seconds:.1f} s")
        trust = f" ; its certificate is from the stack's CA: trust {s.tls_ca_file}" if s.api_tls else ""
        self.say(f"run: Airflow UI and API ({profiles.of(s).web.name}) at {s.api_url}/ ; user {s.admin_user}, "
                 f"password: _AIRFLOW_WWW_USER_PASSWORD in {s.env_file}{trust}")
        if "flower" in extras:
            self.say(f"run: Flower at http://127.0.0.1:{s.flower_port}/ ; user {s.admin_user}, password: "
                     f"STACK_FLOWER_PASSWORD in {s.env_file}")
        self.say(*lifecycle.keep_backups(self.c, s))  # beside the stack, never beside a lone worker (add_worker)

    def add_worker(self, name: str, queues: str, concurrency: int | None,
                   timeout: float = lifecycle.HEALTH_TIMEOUT) -> None:
        """Add a Celery worker ``worker-NAME``, here or on another machine that has the stack's .env."""
        from ..runtime import preflight

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
            if s.paths.pid_file(BACKUPS.name).exists():  # first: no backup starts while the stack stops
                self.say(*lifecycle.stop(s, [BACKUPS.name], timeout))
            self.say(*lifecycle.stop(s, None, timeout))
            self.say(*lifecycle.stop(s, [REDIS.name], timeout))
            if memcached_server.managed(s):
                self.say(*lifecycle.stop(s, [MEMCACHED.name], timeout))
            if postgres_too:
                if not s.pg_is_local:
                    raise StackError(f"PostgreSQL at {s.pg_host} is not ours to stop")
                self.host.pg_stop(self.c, s.pg_port, s.pg_version)
                self.say("postgresql: stopped")

    def restart(self, component: str = "", timeout: float = lifecycle.HEALTH_TIMEOUT,
                stop_timeout: float = supervisor.STOP_TIMEOUT) -> None:
        """Stop what runs (or ``component``) and start it again with the same choices: the executor and line it
        runs, Flower and the extra Celery workers as they were started."""
        with self._exclusive("invoke restart"):
            recorded = registry.recorded(self.settings)
            self._choose(None, registry.running(self.settings), recorded, True)
            if recorded.get("release") and recorded["release"] != self.release:
                # a restart changes nothing: the release that runs comes back (`invoke up` goes to the settings')
                self.settings = self.settings.replace(airflow_version=recorded["release"])
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
            for name in (BACKUPS.name, REDIS.name):
                supervisor.stop(s, name)
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

    def init_project(self, root: Path, release: str | None) -> None:
        """A new project in the astro layout for ``release`` (default: the default line's), pointed at."""
        version = releases.check(release, "--airflow") if release else releases.SERIES[profiles.DEFAULT].newest
        written = scaffold.create(root, version)
        kept = self._keep(project_dir=root)
        self.say(f"init: wrote {len(written)} files into {root} for Airflow {version} (its Dockerfile pins it)"
                 if written else f"init: {root} is a project already; nothing written")
        self.say(*(f"init: {line}" for line in kept), "init: next: invoke up")

    def ensure_airflow(self) -> Settings:
        """The venv the stack would run (requirements.txt included), for the tasks that run Airflow's code on
        the project without a running stack (dags.*); the settings with any secret generated for it."""
        folder.get(self.settings).check()
        if not install.is_current(self.settings):
            self._secrets()
            install.ensure(self.c, self.settings)
        return self.settings
