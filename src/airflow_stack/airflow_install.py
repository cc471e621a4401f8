"""Airflow's own venv, built with uv against the pinned constraints in config/constraints/.

Airflow lives apart from the tooling venv so that its hundreds of pins never fight invoke's or
nox's. Whether anything needs doing is decided from a stamp file (constraints hash, Python,
version) without starting the ``airflow`` CLI, which costs ~5 s per call.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

from invoke import Context

from . import lines, progress
from .errors import StackError
from .settings import PROJECT_DIR, Settings

CONSTRAINTS_DIR = PROJECT_DIR / "config" / "constraints"
EXTRAS = "postgres,celery,fab,redis"
# celery 5.7 breaks apache-airflow-providers-celery 3.26 on both lines ("cannot import name 'retry'")
EXTRA_PINS = ("celery<5.7",)


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def constraints_file(line: str) -> Path:
    return CONSTRAINTS_DIR / f"airflow-{line}.txt"


def pinned_version(line: str) -> str:
    """The apache-airflow version the line's constraints pin (the constraints are the truth)."""
    path = constraints_file(line)
    try:
        match = re.search(r"^apache-airflow==(\S+)", path.read_text(), re.M)
    except FileNotFoundError:
        raise StackError(f"{path} is missing; regenerate it: invoke setup.constraints --line {line}") from None
    if not match:
        raise StackError(f"{path} pins no apache-airflow; regenerate it: invoke setup.constraints --line {line}")
    return match.group(1)


def requirement(line: str) -> str:
    return f"apache-airflow[{EXTRAS}]=={pinned_version(line)}"


def airflow_bin(settings: Settings) -> Path:
    return settings.airflow_venv / "bin" / "airflow"


def airflow_python(settings: Settings) -> Path:
    return settings.airflow_venv / "bin" / "python"


def _stamp_path(settings: Settings) -> Path:
    return settings.airflow_venv / ".airflow-stack-install.json"


def _wanted_stamp(settings: Settings) -> dict[str, str]:
    return {
        "requirement": requirement(settings.airflow_line),
        "constraints_sha256": hashlib.sha256(constraints_file(settings.airflow_line).read_bytes()).hexdigest(),
        "python": ".".join(map(str, sys.version_info[:3])),
    }


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
    settings.line.check_python()
    if is_current(settings):
        return []
    venv = settings.airflow_venv
    uv = shlex.quote(uv_bin())
    python = airflow_python(settings)
    if not python.exists():
        _run(c, f"{uv} venv -q --python {shlex.quote(sys.executable)} {shlex.quote(str(venv))}", "creating the venv")
    req = requirement(settings.airflow_line)
    _run(c, f"{uv} pip install --python {shlex.quote(str(python))} "
            f"-c {shlex.quote(str(constraints_file(settings.airflow_line)))} {shlex.quote(req)}",
         f"installing {req}")
    _stamp_path(settings).write_text(json.dumps(_wanted_stamp(settings), indent=1))
    return [f"installed {req} into {venv}"]


def _run(c: Context, cmd: str, what: str) -> None:
    with progress.step(what) as step:  # uv's own lines (Resolved, Prepared, Installed N packages) as detail
        result = c.run(cmd, hide=False, warn=True, out_stream=step, err_stream=step, in_stream=False)
    if result.failed:
        lines = [ln for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
        raise StackError(f"{what} failed: {lines[-1] if lines else f'exit {result.exited}'}; "
                         f"check that PyPI is reachable, then re-run invoke setup.airflow")


def regenerate_constraints(c: Context, line: str, version: str | None = None) -> Path:
    """Resolve the line's Airflow + extras into a universal, fully pinned constraints file.

    Airflow's published constraint files cannot be downloaded here; this resolves our own, with uv,
    for every Python the line supports (environment markers where pins differ).
    """
    profile = lines.get(line)
    if version is None:
        try:
            version = pinned_version(line)  # re-resolve the current pin (new dependency releases)
        except StackError:
            version = profile.default_version
    if not re.fullmatch(r"\d+\.\d+\.\d+", version) or not version.startswith(line + "."):
        raise StackError(f"version {version!r} is not a {line}.x release; pass e.g. --version "
                         f"{profile.default_version}")
    CONSTRAINTS_DIR.mkdir(parents=True, exist_ok=True)
    out = constraints_file(line)
    reqs = CONSTRAINTS_DIR / f".requirements-{line}.in"
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
