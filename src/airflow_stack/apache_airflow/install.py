"""Airflow's own venv: exactly the release, its constraints and the project's requirements.txt.

Airflow lives apart from the tooling venv so that its hundreds of pins never fight invoke's or nox's.
An install compiles a lock with uv (the release with its extras, against the release's constraints, the
project's requirements.txt, the login limiter's storage client and pytest for `dags.pytest`), every
package pinned with its hashes, and syncs the venv to it with `uv pip sync --require-hashes`: what the
lock does not name is removed (a requirement taken out of requirements.txt cannot be imported by the next
task), and every file installed matches a hash. For the packages the constraints pin, the lock keeps only
the hashes the constraints list, so the repo's pinned files (config/constraints/, hashed) are what is
installed, byte for byte.

Constraints: the repo's for the default line's and 2.11's pinned releases; for any other release, Apache's
published file where the machine can reach it, else our own resolution as of the release's publication
date (uv --exclude-newer), kept in the state dir. Whether anything needs doing is decided from a stamp file
without starting the ``airflow`` CLI (~5 s per call); the venv's build (what processes record they run) is
the set of packages the lock pins, so a change that installs nothing new restarts nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import sys
import urllib.request
from pathlib import Path

from invoke import Context

from .. import progress
from ..errors import StackError
from ..project import folder as project
from ..services import limiter
from ..settings import Settings
from ..statedir import write_private
from . import profiles, releases

EXTRAS = "postgres,celery,fab,redis"
# celery 5.7 breaks apache-airflow-providers-celery 3.26 on both lines ("cannot import name 'retry'")
EXTRA_PINS = ("celery<5.7",)
# Apache's published constraints (unreachable from some networks: then we resolve our own)
APACHE_CONSTRAINTS = "https://raw.githubusercontent.com/apache/airflow/constraints-{version}/constraints-{python}.txt"
STAMP_FORMAT = 2  # a venv installed by an earlier airflow-stack (no lock) is synced to one


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def constraints_for(settings: Settings) -> Path:
    """The constraints the install uses: the repo's for a pinned release; for another release, ones
    resolved into the state dir, so no tracked file changes."""
    profile, release = profiles.of(settings), profiles.release(settings)
    if release == profile.pinned_version():
        return profile.constraints_file
    return settings.paths.resolved_constraints(release)


def requirement(settings: Settings) -> str:
    return f"apache-airflow[{EXTRAS}]=={profiles.release(settings)}"


def venv(settings: Settings) -> Path:
    """The venv of the release the settings name (one per release, in the state dir)."""
    return settings.paths.venv(profiles.release(settings))


def airflow_bin(settings: Settings) -> Path:
    return venv(settings) / "bin" / "airflow"


def airflow_python(settings: Settings) -> Path:
    return venv(settings) / "bin" / "python"


def _stamp_path(settings: Settings) -> Path:
    return settings.paths.install_stamp(profiles.release(settings))


def _lock_path(settings: Settings) -> Path:
    return settings.paths.install_lock(profiles.release(settings))


# ---- the Python the venv is built on ------------------------------------------------------------------
def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _version_of(c: Context, python: str) -> tuple[int, int] | None:
    found = c.run(f"{shlex.quote(python)} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'",
                  hide=True, warn=True, in_stream=False)
    text = found.stdout.strip() if found.ok else ""
    return tuple(int(part) for part in text.split(".")) if re.fullmatch(r"\d+\.\d+", text) else None  # type: ignore


def interpreter(c: Context, settings: Settings) -> tuple[str, tuple[int, int]]:
    """The Python Airflow's venv is built on: STACK_AIRFLOW_PYTHON, else the tooling's own when the release
    supports it, else the newest python3.X on PATH it supports. No Python is ever downloaded."""
    profile = profiles.of(settings)
    if settings.airflow_python:
        found = shutil.which(settings.airflow_python) or settings.airflow_python
        version = _version_of(c, found)
        if version is None:
            raise StackError(f"STACK_AIRFLOW_PYTHON={settings.airflow_python} is not a Python this machine can "
                             f"run; give the path of a python3 (Airflow {profile.release} needs "
                             f"{profile.python_range()})")
        profile.check_python(version)
        return found, version
    if profile.supports_python(sys.version_info[:2]):
        return sys.executable, sys.version_info[:2]
    low, high = profile.python
    for minor in range(high[1], low[1] - 1, -1):
        candidate = shutil.which(f"python3.{minor}")
        if candidate and (version := _version_of(c, candidate)) and profile.supports_python(version):
            return candidate, version
    raise StackError(f"Airflow {profile.release} needs Python {profile.python_range()}; this machine has "
                     f"{sys.version_info[0]}.{sys.version_info[1]} and no python3.{high[1]} ... python3.{low[1]} "
                     f"on PATH: install one (apt-get install python3.{high[1]}, brew install python@3.{high[1]}) "
                     f"or set STACK_AIRFLOW_PYTHON")


# ---- is the venv what the settings ask for? -----------------------------------------------------------
def _wanted_stamp(settings: Settings) -> dict[str, object] | None:
    try:
        constraints = constraints_for(settings).read_bytes()
    except FileNotFoundError:
        return None  # another release's constraints, not resolved yet
    stamp: dict[str, object] = {
        "format": STAMP_FORMAT,
        "requirement": requirement(settings),
        "constraints_sha256": hashlib.sha256(constraints).hexdigest(),
        "python_setting": settings.airflow_python,
    }
    proj = project.get(settings)
    if proj.requirement_lines():
        stamp["project_requirements_sha256"] = proj.requirements_digest()
    if limiter.client_package(settings):
        stamp["limiter_client"] = limiter.client_package(settings)
    return stamp


def _stamp(settings: Settings) -> dict[str, object]:
    try:
        found = json.loads(_stamp_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def installed_build(settings: Settings) -> str | None:
    """What the venv holds, in short: the set of packages its lock pins. A process started under another
    build runs code the venv no longer has."""
    build = _stamp(settings).get("build")
    return str(build) if build else None


def installed_version(settings: Settings) -> str | None:
    """The Airflow version installed in the venv, read from the stamp (None: not installed)."""
    if not airflow_bin(settings).exists():
        return None
    return str(_stamp(settings).get("requirement", "")).rpartition("==")[2] or None


def venv_python(settings: Settings) -> str | None:
    """The Python version (X.Y) the venv was built on, as its stamp says."""
    found = _stamp(settings).get("python")
    return str(found) if found else None


def is_current(settings: Settings) -> bool:
    stamp = {key: value for key, value in _stamp(settings).items() if key not in ("build", "python")}
    return airflow_bin(settings).exists() and stamp == _wanted_stamp(settings)


# ---- installing ----------------------------------------------------------------------------------------
def ensure(c: Context, settings: Settings) -> list[str]:
    """Lock and sync the venv when the stamp says it is missing or outdated; what was done."""
    if is_current(settings):
        return []
    done = []
    release = profiles.release(settings)
    python, version = interpreter(c, settings)
    constraints = constraints_for(settings)
    if not constraints.exists():
        done.append(resolve_constraints(c, release, constraints, version))
    target = venv(settings)
    uv = shlex.quote(uv_bin())
    if not airflow_python(settings).exists() or _stamp(settings).get("python") != _dotted(version):
        _run(c, f"{uv} venv -q --clear --python {shlex.quote(python)} {shlex.quote(str(target))}",
             "creating the venv")
    lock = compile_lock(c, settings, constraints)
    before = set(_pins(_lock_path(settings).read_text())) if _lock_path(settings).exists() else set()
    _run(c, f"{uv} pip sync -q --require-hashes --python {shlex.quote(str(airflow_python(settings)))} "
            f"{shlex.quote(str(lock))}", f"installing Airflow {release}")
    lock.replace(_lock_path(settings))
    pins = _pins(_lock_path(settings).read_text())
    stamp = (_wanted_stamp(settings) or {}) | {
        "python": _dotted(version), "build": hashlib.sha256("\n".join(sorted(pins)).encode()).hexdigest()[:12]}
    write_private(_stamp_path(settings), json.dumps(stamp, indent=1))
    proj = project.get(settings)
    if proj.requirement_lines():
        done.append(f"installed {proj.requirements} ({len(proj.requirement_lines())} requirements) against the "
                    f"constraints of Airflow {release}")
    changed = sorted(set(pins) ^ before) if before else []
    if before and changed:
        done.append(f"the venv changed: {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}")
    return [*done, f"installed {requirement(settings)} into {target} (python {version[0]}.{version[1]}, "
                   f"{len(pins)} packages, each checked against its hash)"]


def compile_lock(c: Context, settings: Settings, constraints: Path) -> Path:
    """The exact set to install, with hashes (a new file beside the lock: nothing installed changes if the
    project's requirements cannot be resolved with the pins). What it was compiled from is kept beside it."""
    out = _lock_path(settings).with_suffix(".new")
    out.unlink(missing_ok=True)
    proj = project.get(settings)
    wanted = [requirement(settings), *EXTRA_PINS, "pytest"]  # pytest: `dags.pytest` runs in this venv
    if limiter.client_package(settings):  # the login limiter's storage client (memcached, MongoDB)
        wanted.append(limiter.client_package(settings))
    if proj.requirement_lines():
        # one resolution for Airflow and the project: a requirement that conflicts with a pin fails it
        # before anything is installed, so the venv (and what runs from it) stays as it was
        wanted.append(f"-r {proj.requirements}")
    inputs = _lock_path(settings).with_suffix(".in")
    inputs.write_text("# what airflow-stack.lock is compiled from (invoke setup.airflow)\n" + "\n".join(wanted) + "\n")
    cmd = (f"{shlex.quote(uv_bin())} pip compile -q --generate-hashes --no-header --python "
           f"{shlex.quote(str(airflow_python(settings)))} -c {shlex.quote(str(constraints))} "
           f"-o {shlex.quote(str(out))} {shlex.quote(str(inputs))}")
    with c.cd(str(proj.root)):  # a relative path in requirements.txt means the project's
        _run(c, cmd, "resolving the venv's packages", failure=_requirements_failure(proj.requirements, constraints)
             if proj.requirement_lines() else "")
    keep_pinned_hashes(out, constraints)
    return out


def _requirements_failure(path: Path, constraints: Path) -> str:
    return (f"{path}: {{reason}}; nothing was installed, the stack's venv and what runs are as they were: "
            f"change that requirement (the pins are in {constraints})")


# ---- hashes --------------------------------------------------------------------------------------------
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^]]*\])?==([^\s;\\]+)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _blocks(text: str) -> list[tuple[tuple[str, str] | None, str, list[str], list[str]]]:
    """A requirements file with hashes, as (name and version, requirement line, hashes, the comment lines
    after it) per requirement; lines before the first requirement come as a block without one."""
    blocks: list[tuple[tuple[str, str] | None, str, list[str], list[str]]] = [(None, "", [], [])]
    for line in text.splitlines():
        stripped = line.strip()
        if match := REQUIREMENT.match(line):
            blocks.append(((_normal(match.group(1)), match.group(2)), line.rstrip(" \\"), [], []))
        elif stripped.startswith("--hash="):
            blocks[-1][2].append(stripped.removeprefix("--hash=").rstrip(" \\"))
        else:
            blocks[-1][3].append(line)
    return blocks


def _pins(text: str) -> list[str]:
    return [f"{key[0]}=={key[1]}" for key, *_ in _blocks(text) if key]


def keep_pinned_hashes(lock: Path, constraints: Path) -> None:
    """For every package the constraints pin with hashes, keep only those hashes in the lock: the install
    then accepts only the files the pinned constraints name. A pinned package none of whose files the
    index still serves under a pinned hash is refused in one line, nothing installed."""
    pinned: dict[tuple[str, str], set[str]] = {}
    for key, _, hashes, _ in _blocks(constraints.read_text()):
        if key and hashes:
            pinned.setdefault(key, set()).update(hashes)
    out = []
    for key, line, hashes, rest in _blocks(lock.read_text()):
        if key in pinned:
            kept = [h for h in hashes if h in pinned[key]]
            if not kept:
                raise StackError(f"the package index serves {key[0]}=={key[1]} with files whose hashes "
                                 f"{constraints.name} does not list; nothing was installed: regenerate the "
                                 f"constraints (invoke setup.constraints) only if you trust the new files")
            hashes = kept
        if line:
            out.append(" \\\n".join([line, *(f"    --hash={h}" for h in hashes)]))
        out += rest
    write_private(lock, "\n".join(out).strip("\n") + "\n")


# ---- constraints ---------------------------------------------------------------------------------------
def resolve_constraints(c: Context, release: str, out: Path, python: tuple[int, int]) -> str:
    """Constraints for a release the repo does not pin: Apache's published file where it can be reached,
    else our own resolution as of the release's date. What was done, for the report."""
    url = APACHE_CONSTRAINTS.format(version=release, python=_dotted(python))
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        regenerate_constraints(c, release, out)
        return f"resolved constraints for Airflow {release} as of {releases.resolve_as_of(release)} into {out}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Apache's published constraints for Airflow {release}, Python {python[0]}.{python[1]}: {url}\n"
                   + "\n".join(EXTRA_PINS) + "\n" + text)
    return f"took Apache's published constraints for Airflow {release} ({url}) into {out}"


def regenerate_constraints(c: Context, version: str, out: Path) -> Path:
    """Resolve a release's Airflow + extras into a universal, fully pinned constraints file with hashes, as of
    the release's own date (a release never meets dependencies newer than itself), for every Python its minor
    supports (environment markers where pins differ)."""
    profile = profiles.for_release(version)
    as_of = releases.resolve_as_of(version)
    out.parent.mkdir(parents=True, exist_ok=True)
    reqs = out.parent / f".requirements-{version}.in"
    reqs.write_text("\n".join((f"apache-airflow[{EXTRAS}]=={version}", *EXTRA_PINS)) + "\n")
    try:
        lowest = releases.SERIES[profile.name].resolve_from or _dotted(profile.python[0])
        _run(c, f"{shlex.quote(uv_bin())} pip compile -q --universal --generate-hashes --python-version "
                f"{lowest} --exclude-newer {as_of} --no-header "
                f"--output-file {shlex.quote(str(out))} {shlex.quote(str(reqs))}",
             f"resolving Airflow {version} as of {as_of}")
    finally:
        reqs.unlink(missing_ok=True)
    header = (f"# Constraints for apache-airflow[{EXTRAS}]=={version} ({', '.join(EXTRA_PINS)}), every Python the\n"
              f"# {profile.name} line supports, resolved as of {as_of} (the day after the release), with hashes.\n"
              f"# Regenerate: invoke setup.constraints --version {version}\n")
    out.write_text(header + out.read_text())
    return out


# ---- running uv ----------------------------------------------------------------------------------------
def uv_reason(output: str) -> str:
    """The sentence of uv's error that names the package and the pin ("Because you require ...")."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        at = line.find("Because ")
        if at >= 0:
            sentence = [line[at:]]
            for more in lines[i + 1:]:  # on a terminal uv wraps its sentence over several lines
                if more.startswith(("hint:", "help:", "cause:", "error:")) or "unsatisfiable" in sentence[-1]:
                    break
                sentence.append(more)
            return " ".join(sentence)
    return lines[-1].removeprefix("error:").strip() if lines else "uv failed"


def _run(c: Context, cmd: str, what: str, failure: str = "") -> None:
    with progress.step(what) as step:  # uv's own lines (Resolved, Prepared, Installed N packages) as detail
        result = c.run(cmd, hide=False, warn=True, out_stream=step, err_stream=step, in_stream=False)
    if result.failed:
        output = (result.stderr or "") + "\n" + (result.stdout or "")
        if failure:  # the sentence of uv's that names the package and the pin, put into ``failure``
            raise StackError(failure.replace("{reason}", uv_reason(output).rstrip(".")))
        lines = [ln for ln in output.strip().splitlines() if ln.strip()]
        raise StackError(f"{what} failed: {lines[-1] if lines else f'exit {result.exited}'}; "
                         f"check that PyPI is reachable, then re-run invoke setup.airflow")
