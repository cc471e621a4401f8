"""One profile per Airflow line: everything that differs between lines, in one place.

A profile answers "what does this line of Airflow need?": its default release and the Pythons it
supports, the SQLAlchemy driver, the environment only it reads, its components and their probes,
what the launcher preloads, its REST paths, how its admin password is reset, and what one running
task costs in memory. Nothing outside this package compares line names: adding a line is one
profile module here plus its constraints file (config/constraints/airflow-<line>.txt).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...components import Component
from ...errors import StackError
from ...settings import AIRFLOW_LINES, AIRFLOW_LINES_HELP

if TYPE_CHECKING:
    from ...settings import Settings


CONSTRAINTS_DIR = Path(__file__).resolve().parents[4] / "config" / "constraints"
# a new DAG file is listed within this many seconds (Airflow's default, 300, makes users wait 5 min)
DAG_DIR_REFRESH_SECONDS = 5


@dataclass(frozen=True)
class RestAPI:
    """How a client talks to the line's REST API (the tests, the benchmark and doctor's probe login)."""

    prefix: str  # /api/v2
    health_path: str  # the endpoint that reports each component's health
    login_path: str  # the FAB login form (rate limited)
    auth: str  # "token": POST /auth/token for a JWT; "basic": user and password on every request
    trigger_body: Mapping[str, object] = field(default_factory=dict)
    token_path: str = ""  # auth "token": where user and password (JSON) get a JWT (limited with the form)


@dataclass(frozen=True)
class WebUI:
    """What a person (and the UI tests, docs.screenshots) meets in the line's web UI."""

    dag_list_path: str  # the DAG list
    dag_runs_path: str  # one DAG's runs, with their states ("{dag_id}" filled in)
    trigger_dialog: bool  # a trigger button opens a dialog with its own Trigger button (else a link triggers)
    # the banners a default install shows on its home page, which this stack exists to remove
    production_warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class AirflowLine:
    name: str  # "3.3": also the constraints file's name
    default_version: str  # the release `setup.constraints` pins when the file has none
    python: tuple[tuple[int, int], tuple[int, int]]  # lowest and highest supported Python
    sql_driver: str  # SQLAlchemy driver for postgresql+DRIVER://
    components: tuple[Component, ...]  # start order; stop goes in reverse
    # what every Airflow process of the line imports first (besides the CLI): the launcher imports it once
    preload: tuple[str, ...]
    # what runs one task: imported by the launcher before it forks a component that runs tasks
    task_preload: tuple[str, ...]
    environment: Callable[[Settings], dict[str, str]]  # the derived values only this line reads
    # settings only this line reads, and the Airflow names it reads them under (setting name -> variable)
    reads: Mapping[str, str]
    rest: RestAPI
    # `airflow users reset-password` works (else the admin is deleted and re-created)
    admin_reset_password: bool
    # PSS (MiB) of one running task, per executor: doctor's memory check (see the profiles for how measured)
    task_pss_mib: Mapping[str, int]
    # where `airflow standalone` of this line leaves its admin password (the benchmark's baseline)
    standalone_password: Callable[[Path], str]
    # the environment that moves `airflow standalone`'s web server to a host and port (the benchmark)
    web_listen_env: Callable[[str, int, str], dict[str, str]]
    ui: WebUI
    # the setting for how often the DAG folder is listed for new files (DAG_DIR_REFRESH_SECONDS)
    dag_refresh_setting: str
    # the component that parses the DAG files (the benchmark's per-file cost)
    dag_parser: str

    def dag_refresh_env(self) -> dict[str, str]:
        return {self.dag_refresh_setting: str(DAG_DIR_REFRESH_SECONDS)}

    @property
    def constraints_file(self) -> Path:
        """The line's pinned constraints in the repo (config/constraints/airflow-<line>.txt)."""
        return CONSTRAINTS_DIR / f"airflow-{self.name}.txt"

    def pinned_version(self) -> str:
        """The apache-airflow release the line's constraints pin (the constraints are the truth)."""
        path = self.constraints_file
        try:
            match = re.search(r"^apache-airflow==(\S+)", path.read_text(), re.M)
        except FileNotFoundError:
            raise StackError(f"{path} is missing; regenerate it: invoke setup.constraints --line {self.name}") from None
        if not match:
            raise StackError(f"{path} pins no apache-airflow; regenerate it: "
                             f"invoke setup.constraints --line {self.name}")
        return match.group(1)

    def check_release(self, version: str) -> None:
        if not re.fullmatch(r"\d+\.\d+\.\d+", version) or not version.startswith(self.name + "."):
            raise StackError(f"{version!r} is not an Airflow {self.name}.x release; give e.g. {self.default_version}")

    @property
    def lowest_python(self) -> str:
        return "{}.{}".format(*self.python[0])

    def check_python(self, version: tuple[int, int] | None = None) -> None:
        """Say so before an install fails oddly on a Python the line does not support."""
        low, high = self.python
        version = version or sys.version_info[:2]
        if not low <= version <= high:
            raise StackError(f"Airflow {self.name} supports Python {low[0]}.{low[1]}-{high[0]}.{high[1]}, this is "
                             f"{version[0]}.{version[1]}; recreate .venv with a supported python3 "
                             f"(rm -rf .venv; scripts/up)")

    def for_executor(self, executor: str | None = None, extras: tuple[str, ...] = ()) -> tuple[Component, ...]:
        """The line's components; with ``executor``, those it runs (optional ones only when in ``extras``)."""
        if executor is None:
            return self.components
        return tuple(c for c in self.components
                     if executor in c.executors and (not c.optional or c.name in extras))

    def component(self, name: str) -> Component:
        for comp in self.components:
            if comp.name == name:
                return comp
        names = ", ".join(c.name for c in self.components)
        raise StackError(f"no component {name!r} in Airflow {self.name}; use one of: {names}")

    @property
    def web(self) -> Component:
        """The component that serves the UI and the REST API."""
        return next(c for c in self.components if c.probe.port_setting == "api_port")

    def preload_for(self, comp: Component) -> tuple[str, ...]:
        """The modules the launcher imports just before forking ``comp``."""
        return comp.preload + (self.task_preload if comp.runs_tasks else ())

    def all_preloads(self) -> tuple[str, ...]:
        """Every module the launcher may import for this line (CI checks each imports)."""
        found = list(self.preload)
        for comp in self.components:
            found += [m for m in self.preload_for(comp) if m not in found]
        return tuple(found)


def _profiles() -> dict[str, AirflowLine]:
    from . import airflow_2_11, airflow_3_3

    found = {profile.name: profile for profile in (airflow_3_3.PROFILE, airflow_2_11.PROFILE)}
    assert tuple(found) == AIRFLOW_LINES, "the settings' AIRFLOW_LINES and the profiles name the same lines, in order"
    return found


LINES: dict[str, AirflowLine] = _profiles()
NAMES = AIRFLOW_LINES
DEFAULT = NAMES[0]
HELP = AIRFLOW_LINES_HELP


def get(name: str) -> AirflowLine:
    try:
        return LINES[name]
    except KeyError:
        raise StackError(f"unknown Airflow line {name!r}; use one of: {', '.join(NAMES)}") from None


def of(settings: Settings) -> AirflowLine:
    """The profile of the configured Airflow line."""
    return get(settings.airflow_line)


def release(settings: Settings) -> str:
    """The Airflow release to run: STACK_AIRFLOW_VERSION, else the one the line's constraints pin."""
    profile = of(settings)
    if settings.airflow_version:
        profile.check_release(settings.airflow_version)
        return settings.airflow_version
    return profile.pinned_version()
