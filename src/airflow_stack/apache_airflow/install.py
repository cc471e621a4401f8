"""Airflow's own venv, built with uv against the pinned constraints in config/constraints/, with the
project's requirements.txt in it.

Airflow lives apart from the tooling venv so that its hundreds of pins never fight invoke's or
nox's. Whether anything needs doing is decided from a stamp file (constraints hash, requirements
hash, Python, version) without starting the ``airflow`` CLI, which costs ~5 s per call.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

from invoke import Context

from .. import progress
from ..errors import StackError
from ..project import folder as project
from ..settings import Settings
from . import profiles

EXTRAS = "postgres,celery,fab,redis"
# celery 5.7 breaks apache-airflow-providers-celery 3.26 on both lines ("cannot import name 'retry'")
EXTRA_PINS = ("celery<5.7",)


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def constraints_for(settings: Settings) -> Path:
    """The constraints the install uses: the repo's for the pinned release; for another release
    (STACK_AIRFLOW_VERSION) ones resolved into the state dir, so no tracked file changes."""
    profile, release = profiles.of(settings), profiles.release(settings)
    if release == profile.pinned_version():
        return profile.constraints_file
    return settings.paths.resolved_constraints(release)


def requirement(settings: Settings) -> str:
    return f"apache-airflow[{EXTRAS}]=={profiles.release(settings)}"


# the client library Flask-Limiter (through `limits`) needs for a storage other than Redis
LIMITER_CLIENTS = {"memcached": "pymemcache", "mongodb": "pymongo", "mongodb+srv": "pymongo"}


def limiter_client(settings: Settings) -> str | None:
    return LIMITER_CLIENTS.get(settings.limiter_storage_uri.split("://", 1)[0].lower())


def venv(settings: Settings) -> Path:
    """The venv of the release the settings name (one per release, in the state dir)."""
    return settings.paths.venv(profiles.release(settings))


def airflow_bin(settings: Settings) -> Path:
    return venv(settings) / "bin" / "airflow"


def airflow_python(settings: Settings) -> Path:
    return venv(settings) / "bin" / "python"


def _stamp_path(settings: Settings) -> Path:
    return venv(settings) / ".airflow-stack-install.json"


def _wanted_stamp(settings: Settings) -> dict[str, str] | None:
    try:
        constraints = constraints_for(settings).read_bytes()
    except FileNotFoundError:
        return None  # another release's constraints, not resolved yet
    stamp = {
        "requirement": requirement(settings),
        "constraints_sha256": hashlib.sha256(constraints).hexdigest(),
        "python": ".".join(map(str, sys.version_info[:3])),
    }
    proj = project.get(settings)
    if proj.requirement_lines():
        stamp["project_requirements_sha256"] = proj.requirements_digest()
    if limiter_client(settings):
        stamp["limiter_client"] = limiter_client(settings)
    return stamp


def installed_build(settings: Settings) -> str | None:
    """What the venv holds, in short (release, constraints, the project's requirements): a process
    started under another build runs code the venv no longer has."""
    try:
        return hashlib.sha256(_stamp_path(settings).read_bytes()).hexdigest()[:12]
    except FileNotFoundError:
        return None


def installed_version(settings: Settings) -> str | None:
    """The Airflow version installed in the venv, read from the stamp (None: not installed)."""
    try:
        stamp = json.loads(_stamp_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not airflow_bin(settings).exists():
        return None
    return stamp.get("requirement", "").rpartition("==")[2] or None


def is_current(settings: Settings) -> bool:
    try:
        stamp = json.loads(_stamp_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return airflow_bin(settings).exists() and stamp == _wanted_stamp(settings)


def ensure(c: Context, settings: Settings) -> list[str]:
    """Create the venv and install Airflow when the stamp says it is missing or outdated."""
    profiles.of(settings).check_python()
    if is_current(settings):
        return []
    done = []
    constraints = constraints_for(settings)
    release = profiles.release(settings)
    if not constraints.exists():
        regenerate_constraints(c, settings.airflow_line, release, constraints)
        done.append(f"resolved constraints for Airflow {release} into {constraints}")
    target = venv(settings)
    uv = shlex.quote(uv_bin())
    python = airflow_python(settings)
    if not python.exists():
        _run(c, f"{uv} venv -q --python {shlex.quote(sys.executable)} {shlex.quote(str(target))}", "creating the venv")
    req = requirement(settings)
    proj = project.get(settings)
    requirements = proj.requirement_lines()
    cmd = (f"{uv} pip install --python {shlex.quote(str(python))} "
           f"-c {shlex.quote(str(constraints))} {shlex.quote(req)}")
    if limiter_client(settings):  # the login limiter's storage client (memcached, MongoDB)
        cmd += f" {shlex.quote(limiter_client(settings))}"
    if requirements:
        # one resolution for Airflow and the project: a requirement that conflicts with a pin fails it
        # before anything is installed, so the venv (and what runs from it) stays as it was
        cmd += f" -r {shlex.quote(str(proj.requirements))}"
        with c.cd(str(proj.root)):  # a relative path in requirements.txt means the project's
            _run(c, cmd, f"installing {req} and {proj.requirements.name} ({len(requirements)} lines)",
                 failure=_requirements_failure(proj.requirements, constraints))
        done.append(f"installed {proj.requirements} ({len(requirements)} requirements) against the "
                    f"{settings.airflow_line} constraints")
    else:
        _run(c, cmd, f"installing {req}")
    _stamp_path(settings).write_text(json.dumps(_wanted_stamp(settings), indent=1))
    return [*done, f"installed {req} into {target}"]


def _requirements_failure(path: Path, constraints: Path) -> str:
    return (f"{path}: {{reason}}; nothing was installed, the stack's venv and what runs are as they were: "
            f"change that requirement (the pins are in {constraints})")


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


def regenerate_constraints(c: Context, line: str, version: str | None = None, out: Path | None = None) -> Path:
    """Resolve the line's Airflow + extras into a universal, fully pinned constraints file.

    Airflow's published constraint files cannot be downloaded here; this resolves our own, with uv,
    for every Python the line supports (environment markers where pins differ).
    """
    profile = profiles.get(line)
    if version is None:
        try:
            version = profile.pinned_version()  # re-resolve the current pin (new dependency releases)
        except StackError:
            version = profile.default_version
    profile.check_release(version)
    out = out or profile.constraints_file
    out.parent.mkdir(parents=True, exist_ok=True)
    reqs = out.parent / f".requirements-{version}.in"
    reqs.write_text("\n".join((f"apache-airflow[{EXTRAS}]=={version}", *EXTRA_PINS)) + "\n")
    try:
        _run(c, f"{shlex.quote(uv_bin())} pip compile -q --universal --python-version {profile.lowest_python} "
                f"--no-header --output-file {shlex.quote(str(out))} {shlex.quote(str(reqs))}",
             f"resolving Airflow {version}")
    finally:
        reqs.unlink(missing_ok=True)
    header = (f"# Constraints for apache-airflow[{EXTRAS}]=={version} ({', '.join(EXTRA_PINS)}), every Python\n"
              f"# the {line} line supports. Regenerate: invoke setup.constraints --line {line} --version X.Y.Z\n")
    out.write_text(header + out.read_text())
    return out
