"""What the parts of the facade share: this command's settings (loaded once, replaced when a step changes
them), the host, the release, airflow.cfg written at most once, one operation at a time on the state dir,
and how a step reports what it changed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from invoke import Context

from .. import locks, progress
from .. import settings as settings_mod
from ..apache_airflow import config, profiles
from ..runtime import lifecycle, registry, supervisor
from ..services import host
from ..settings import Settings


class StackBase:
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
