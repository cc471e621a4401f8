"""One profile per major line of Airflow (3 and 2): everything that differs between releases, in one place.

A profile answers "what does this release of Airflow need?": the SQLAlchemy driver, the environment only
it reads, its components and their probes, what the launcher preloads, its REST paths, how its admin
password is reset, and what one running task costs in memory. What differs between the minors of a line
(each found by installing and running that release here) is applied by the line's ``for_release``; the
Pythons a minor supports and its newest patch are in releases.SERIES. Nothing outside this package
compares line names: a new minor is a row in releases.SERIES (and its name in the settings'
AIRFLOW_LINES) plus what differs in its line's ``for_release``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...components import Component
from ...errors import StackError
from ...settings import AIRFLOW_LINES, AIRFLOW_LINES_HELP
from .. import releases

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
    major: str  # "3"
    sql_driver: str  # SQLAlchemy driver for postgresql+DRIVER://
    components: tuple[Component, ...]  # start order; stop goes in reverse
    # what every Airflow process of the line imports first (besides the CLI): the launcher imports it once
    preload: tuple[str, ...]
    # what runs one task: imported by the launcher before it forks a component that runs tasks
    task_preload: tuple[str, ...]
    environment: Callable[[Settings, AirflowLine], dict[str, str]]  # the derived values only this line reads
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
    # the option of `airflow dags test` that parses one DAG file instead of the whole folder
    dag_file_option: str
    # what differs between the minors of the line: the profile for one release (found by running each)
    specialize: Callable[[AirflowLine, str], AirflowLine]
    release: str = ""  # the release this profile is for ("": the line as a whole)
    # 2.x: its gunicorn takes --control-socket (gunicorn 24+); 2.10 resolves gunicorn 23, which refuses it
    gunicorn_control_socket: bool = False
    # macOS: the first release of the line in which every process Airflow forks execs right after (tasks:
    # apache/airflow#64874; the DAG processor's and triggerer's: #69008). Before it, a forked child that touches
    # Apple's frameworks (DNS, HTTP proxies) dies with SIGSEGV/SIGABRT unless every Airflow process has
    # OBJC_DISABLE_INITIALIZE_FORK_SAFETY=YES. "": no release of the line has both (yet).
    darwin_fork_exec_from: str = ""
    # the driver `airflow db migrate` runs with, when it is not sql_driver ("": the same)
    migrate_sql_driver: str = ""

    @property
    def name(self) -> str:
        """The minor ("3.1"): the constraints file's name, and what messages call the line."""
        return releases.series_of(self.release)

    @property
    def default_version(self) -> str:
        """The newest patch of the minor the stack knows."""
        return releases.SERIES[self.name].newest

    @property
    def python(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The lowest and highest Python the minor supports."""
        return releases.SERIES[self.name].python

    def needs_objc_fork_workaround(self, release: str) -> bool:
        """On macOS, ``release`` forks without exec somewhere (see ``darwin_fork_exec_from``)."""
        return not self.darwin_fork_exec_from or \
            releases.as_tuple(release) < releases.as_tuple(self.darwin_fork_exec_from)

    def dag_refresh_env(self) -> dict[str, str]:
        return {self.dag_refresh_setting: str(DAG_DIR_REFRESH_SECONDS)}

    @property
    def constraints_file(self) -> Path:
        """The minor's pinned constraints in the repo (config/constraints/airflow-<minor>.txt): the default
        line's and the last 2.x's; other releases are resolved into the state dir as of their date."""
        return CONSTRAINTS_DIR / f"airflow-{self.name}.txt"

    def pinned_version(self) -> str | None:
        """The apache-airflow release the minor's constraints in the repo pin (None: the repo pins none)."""
        try:
            match = re.search(r"^apache-airflow==(\S+)", self.constraints_file.read_text(), re.M)
        except FileNotFoundError:
            return None
        return match.group(1) if match else None

    def supports_python(self, version: tuple[int, int]) -> bool:
        low, high = self.python
        return low <= version <= high

    def python_range(self) -> str:
        low, high = self.python
        return f"{low[0]}.{low[1]}-{high[0]}.{high[1]}"

    def check_python(self, version: tuple[int, int] | None = None) -> None:
        """Say so before an install fails oddly on a Python the release does not support."""
        version = version or sys.version_info[:2]
        if not self.supports_python(version):
            raise StackError(f"Airflow {self.release or self.name} needs Python {self.python_range()}, this is "
                             f"{version[0]}.{version[1]}; install one (python3.{self.python[1][1]}, say) and set "
                             f"STACK_AIRFLOW_PYTHON to it")

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


def _lines() -> dict[str, AirflowLine]:
    from . import airflow_2, airflow_3

    found = {profile.major: profile for profile in (airflow_3.PROFILE, airflow_2.PROFILE)}
    assert tuple(releases.SERIES) == AIRFLOW_LINES, "releases.SERIES and AIRFLOW_LINES name the same minors"
    assert {name.split(".")[0] for name in AIRFLOW_LINES} == set(found), "every supported minor has its line's profile"
    return found


LINES: dict[str, AirflowLine] = _lines()  # major -> the line's profile
NAMES = AIRFLOW_LINES  # the minors the stack runs, the default first
DEFAULT = NAMES[0]
HELP = AIRFLOW_LINES_HELP


@functools.lru_cache(maxsize=64)
def for_release(version: str) -> AirflowLine:
    """The profile of one release (its line's, with what differs for its minor)."""
    releases.check(version, "the stack")
    line = LINES[version.split(".", 1)[0]]
    return line.specialize(dataclasses.replace(line, release=version), version)


def get(name: str) -> AirflowLine:
    """The profile of a minor ("3.1": its newest patch) or of a release ("3.1.7")."""
    if name in releases.SERIES:
        return for_release(releases.SERIES[name].newest)
    if releases.VERSION.fullmatch(name) and releases.series_of(name) in releases.SERIES:
        return for_release(name)
    raise StackError(f"unknown Airflow line {name!r}; use one of: {', '.join(NAMES)}")


def release(settings: Settings) -> str:
    """The Airflow release to run (releases.resolve: the settings, else the project's Dockerfile, else the
    default)."""
    return releases.resolve(settings).version


def of(settings: Settings) -> AirflowLine:
    """The profile of the release to run."""
    return for_release(release(settings))
