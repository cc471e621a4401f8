"""Which Airflow release the stack runs, and why: the one the settings name, else the one the project's
Dockerfile pins, else the default. And what the stack knows of every release it can run.

    STACK_AIRFLOW_VERSION=3.1.7   that release (any patch of a supported minor)
    STACK_AIRFLOW_LINE=3.1        the newest patch of that minor the stack knows (SERIES)
    Dockerfile FROM ...           astro Runtime `runtime:3.1-5` (Airflow 3.1), `astro-runtime:12.6.0`
                                  (Airflow 2.10), `apache/airflow:3.1.8[-python3.11]` (that release)
    nothing                       the default line's pinned release (config/constraints/)

A release is installed against constraints resolved as of its own publication date (uv's
--exclude-newer), so that an old release never meets dependencies newer than itself (Airflow 3.1.8 with
today's cryptography cannot read a connection). The dates of the newest patches are known here; another
patch's date is asked of the package index once.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import urllib.request
from dataclasses import dataclass

from ..errors import StackError
from ..project import folder
from ..settings import AIRFLOW_LINES, Settings


@dataclass(frozen=True)
class Series:
    """One minor of Airflow as the stack runs it (each found by installing and running it here)."""

    newest: str  # the newest patch the stack knows
    python: tuple[tuple[int, int], tuple[int, int]]  # lowest and highest Python it supports (its classifiers)
    # the lowest Python its constraints are resolved for, where the release's own floor is a patch release
    # (2.10 requires Python >= 3.8.1: a resolution from 3.8.0 finds no solution)
    resolve_from: str = ""


SERIES: dict[str, Series] = {
    "3.3": Series("3.3.2", ((3, 10), (3, 14))),
    "3.2": Series("3.2.2", ((3, 10), (3, 14))),
    "3.1": Series("3.1.8", ((3, 10), (3, 13))),
    "3.0": Series("3.0.6", ((3, 9), (3, 12))),
    "2.11": Series("2.11.2", ((3, 10), (3, 12))),
    "2.10": Series("2.10.5", ((3, 8), (3, 12)), resolve_from="3.8.1"),
}
# the first day after each release on which its whole set resolves (core and the task SDK were uploaded
# seconds after the apache-airflow wheel: its exact upload time finds no solution)
RESOLVE_AS_OF = {"3.3.2": "2026-09-18", "3.2.2": "2026-05-30", "3.1.8": "2026-03-12", "3.0.6": "2025-08-30",
                 "2.11.2": "2026-03-15", "2.10.5": "2025-02-11"}
VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Release:
    version: str  # 3.1.8
    source: str  # where the choice came from, as `invoke versions` says it

    @property
    def series(self) -> str:
        return series_of(self.version)

    @property
    def major(self) -> str:
        return self.version.split(".", 1)[0]


def series_of(version: str) -> str:
    return ".".join(version.split(".")[:2])


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def check(version: str, source: str) -> str:
    """A release the stack can run, or one line saying which it can."""
    if not VERSION.fullmatch(version):
        raise StackError(f"{source} names Airflow {version!r}, which is not a release (X.Y.Z); give e.g. "
                         f"{SERIES[AIRFLOW_LINES[0]].newest}")
    if series_of(version) not in SERIES:
        raise StackError(f"{source} names Airflow {version}; the stack runs {supported()}")
    return version


def supported() -> str:
    majors: dict[str, list[str]] = {}
    for name in SERIES:
        majors.setdefault(name.split(".")[0], []).append(name)
    return "; ".join(f"{', '.join(sorted(names, key=as_tuple))}.x" for names in majors.values())


# ---- what the project's Dockerfile pins --------------------------------------------------------------
def of_image(image: str) -> str | None:
    """The Airflow release (X.Y.Z) or minor (X.Y) a Dockerfile's base image implies, when it says.

    Astro Runtime 3.x tags are ``3.Y-N`` (Airflow 3.Y); the 2.x-era tags ``N.M.P`` with N >= 6 carry
    Airflow 2.(N-2) (Runtime 12 carries Airflow 2.10); apache/airflow tags name the release.
    """
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return None
    if name.endswith("apache/airflow"):
        found = re.match(r"(?:slim-)?(\d+\.\d+\.\d+)", tag)
        return found.group(1) if found else None
    if name.rsplit("/", 1)[-1] in ("astro-runtime", "runtime"):
        if found := re.match(r"(\d+)\.(\d+)-\d+", tag):
            return f"{found.group(1)}.{found.group(2)}"
        if (found := re.match(r"(\d+)\.\d+\.\d+", tag)) and int(found.group(1)) >= 6:
            return f"2.{int(found.group(1)) - 2}"
    return None


def pinned_by_project(settings: Settings) -> Release | None:
    """The release the project's Dockerfile pins (a minor: its newest patch here), or None (no Dockerfile,
    or an image that names no Airflow)."""
    image = folder.get(settings).dockerfile_image()
    implied = of_image(image) if image else None
    if implied is None:
        return None
    source = f"the project's Dockerfile ({image})"
    if implied.count(".") == 1:  # a minor (astro Runtime): its newest patch
        if implied not in SERIES:
            raise StackError(f"{source} implies Airflow {implied}; the stack runs {supported()}: change the "
                             f"image, or choose one with STACK_AIRFLOW_LINE")
        return Release(SERIES[implied].newest, source)
    return Release(check(implied, source), source)


def resolve(settings: Settings) -> Release:
    """The release to run: STACK_AIRFLOW_VERSION, else STACK_AIRFLOW_LINE's newest patch, else the one the
    project's Dockerfile pins, else the default line's pinned release."""
    if settings.airflow_version:
        return Release(check(settings.airflow_version, "STACK_AIRFLOW_VERSION"), "STACK_AIRFLOW_VERSION")
    if settings.airflow_line:
        return Release(SERIES[settings.airflow_line].newest, f"STACK_AIRFLOW_LINE={settings.airflow_line}")
    return pinned_by_project(settings) or Release(SERIES[AIRFLOW_LINES[0]].newest, "the default")


# ---- when a release was published --------------------------------------------------------------------
def index_url() -> str:
    """The package index uv uses (its own variables, then pip's), in its simple-API form."""
    for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        if os.environ.get(name):
            return os.environ[name].rstrip("/")
    return "https://pypi.org/simple"


@functools.lru_cache(maxsize=32)
def resolve_as_of(version: str) -> str:
    """The date the release's constraints are resolved as of: the day after it was published."""
    if version in RESOLVE_AS_OF:
        return RESOLVE_AS_OF[version]
    url = f"{index_url()}/apache-airflow/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            files = json.load(resp).get("files", [])
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot ask {url} when Airflow {version} was published "
                         f"({getattr(exc, 'reason', exc.__class__.__name__)}); check the network, or choose "
                         f"a release the stack knows ({', '.join(RESOLVE_AS_OF)})") from None
    wheel = f"apache_airflow-{version}-py3-none-any.whl"
    uploaded = [f.get("upload-time") for f in files if f.get("filename") in (wheel, f"apache_airflow-{version}.tar.gz")]
    uploaded = [u for u in uploaded if u]
    if not uploaded:
        raise StackError(f"Airflow {version} does not exist on {index_url()}; choose a published release, e.g. "
                         f"{SERIES[series_of(version)].newest}")
    day = dt.datetime.fromisoformat(min(uploaded).replace("Z", "+00:00")).date() + dt.timedelta(days=1)
    return day.isoformat()


# ---- what the project's Dockerfile means here -------------------------------------------------------
def project_note(settings: Settings) -> str | None:
    """One sentence on the project's Dockerfile, when there is one: the release it pins and whether the stack
    runs it (a setting can win over it)."""
    image = folder.get(settings).dockerfile_image()
    if image is None:
        return None
    chosen = resolve(settings)
    implied = of_image(image)
    if implied is None:
        return (f"the project's Dockerfile ({image}) names no Airflow release we can read; the stack runs Airflow "
                f"{chosen.version} ({chosen.source})")
    if chosen.source.startswith("the project's Dockerfile"):
        return f"the stack runs Airflow {chosen.version} natively, the release the project's Dockerfile ({image}) pins"
    return (f"the project's Dockerfile ({image}) pins Airflow {implied}; {chosen.source} wins: the stack runs Airflow "
            f"{chosen.version}")


def project_note_once(settings: Settings) -> list[str]:
    """project_note, said again only when it changes."""
    note = project_note(settings)
    said = settings.paths.dockerfile_note
    if note is None or (said.exists() and said.read_text() == note):
        return []
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    said.write_text(note)
    return [note]
