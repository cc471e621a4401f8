"""The user's Airflow project: a folder in the astro CLI's layout, resolved once from Settings.

    dags/                   Airflow's DAG folder
    plugins/                Airflow's plugins folder
    include/                modules DAG code imports (``from include.x import y``): the project root
                            is on every Airflow process's PYTHONPATH
    requirements.txt        installed into the stack's Airflow venv against the line's constraints
    packages.txt            OS packages, through the platform's package manager
    airflow_settings.yaml   connections, variables and pools (objects.py)
    tests/dags/             the project's own pytest tests (invoke dags.pytest, nox -s dags)
    Dockerfile              the Airflow release its image pins is the one the stack runs (natively)

An existing astro project runs unchanged: point STACK_PROJECT_DIR at it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from invoke import Context

from ..errors import StackError
from ..services.host import Platform
from ..settings import Settings
from ..statedir import Under

# an apt or Homebrew package name, optionally apt's =version: nothing a shell would read otherwise
PACKAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._@/-]*(=[A-Za-z0-9+.:~_-]+)?$")
RUNTIME_IMAGE = re.compile(r"^FROM\s+(?:--\S+\s+)*(?P<image>\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Project:
    root: Path

    dags = Under("dags")
    plugins = Under("plugins")
    include = Under("include")
    requirements = Under("requirements.txt")
    packages = Under("packages.txt")
    objects_file = Under("airflow_settings.yaml")
    tests = Under("tests", "dags")
    dockerfile = Under("Dockerfile")
    env_file = Under(".env")  # what astro passes into every Airflow container (config.project_environment)

    def check(self) -> None:
        """The project folder exists and has its dags/ (everything else is optional, as in astro)."""
        if not self.root.is_dir():
            raise StackError(f"project folder {self.root} does not exist; point STACK_PROJECT_DIR at your "
                             f"Airflow project (dags/, plugins/, include/, requirements.txt ...)")
        if not self.dags.is_dir():
            raise StackError(f"project folder {self.root} has no dags/ folder; create it, or point "
                             f"STACK_PROJECT_DIR at your Airflow project")

    def requirement_lines(self) -> list[str]:
        """requirements.txt without comments and blank lines ([] when there is none)."""
        return _meaningful_lines(self.requirements)

    def requirements_digest(self) -> str:
        """What the venv install depends on: the requirements as pip reads them (comments do not count)."""
        return hashlib.sha256("\n".join(self.requirement_lines()).encode()).hexdigest()

    def os_packages(self) -> list[str]:
        """The names in packages.txt; a name a package manager would not take is an error."""
        names = [name for line in _meaningful_lines(self.packages) for name in line.split()]
        for name in names:
            if not PACKAGE_NAME.match(name):
                raise StackError(f"{self.packages}: {name!r} is not a package name; one OS package per line "
                                 f"(e.g. libpq-dev)")
        return list(dict.fromkeys(names))

    def dockerfile_image(self) -> str | None:
        try:
            found = RUNTIME_IMAGE.search(self.dockerfile.read_text(errors="replace"))
        except (FileNotFoundError, IsADirectoryError):
            return None
        return found["image"] if found else None


def _meaningful_lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise StackError(f"cannot read {path} ({type(exc).__name__}); it must be a UTF-8 text file") from None
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def get(settings: Settings) -> Project:
    return Project(settings.project_dir)


def ensure_os_packages(c: Context, plat: Platform, settings: Settings) -> list[str]:
    """Install what packages.txt lists and the machine lacks (re-run safe: installed ones are skipped).
    A name the package manager does not know stops it before anything is installed."""
    proj = get(settings)
    names = proj.os_packages()
    if not names:
        return []
    missing = plat.os_packages_missing(c, names)
    if not missing:
        return []
    unknown = plat.os_packages_unknown(c, missing)
    if unknown:
        raise StackError(f"{proj.packages}: {plat.name} does not know {', '.join(unknown)}; fix the name or remove "
                         f"that line (nothing was installed)")
    plat.os_packages_install(c, missing)
    return [f"installed {', '.join(missing)} (from {proj.packages.name})"]
