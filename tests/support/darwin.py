"""The `darwin` test session's forcing (tests/unit/conftest.py applies it with ``--platform darwin``): the code
under test runs as on macOS, on this Linux machine.

- ``sys.platform`` is "darwin", in the pytest process and in every process the code under test starts through
  the supervisor (the launcher, and what it execs): darwin_site/sitecustomize.py does it there.
- /proc does not exist for that code (psutil, the portable path, still reads it): a read is recorded, and the
  test that caused it fails.
- The host detection finds Homebrew (and no apt-get).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_stack.runtime import supervisor
from airflow_stack.services import host

SITE = Path(__file__).with_name("darwin_site")


def _site():
    spec = importlib.util.spec_from_file_location("airflow_stack_test_darwin_site", SITE / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def homebrew_which(name: str) -> str | None:
    """`which` on a Mac with Homebrew: brew, and no apt-get."""
    if name == "brew":
        return "/opt/homebrew/bin/brew"
    return None if name == "apt-get" else shutil.which(name)


@dataclass(frozen=True)
class Forced:
    """The platform one unit test runs with: "native", or "darwin" forced (``record``: where /proc reads go)."""

    name: str
    record: Path | None = None

    def reads(self) -> list[str]:
        """The /proc reads the code under test tried ("PID PATH FILE:LINE"), in this process and its children."""
        return self.record.read_text().splitlines() if self.record and self.record.exists() else []

    def forget(self) -> None:
        """For a test that reads /proc on purpose (to prove it is refused)."""
        if self.record:
            self.record.unlink(missing_ok=True)


def force(monkeypatch: pytest.MonkeyPatch, record: Path) -> Forced:
    """Force the darwin paths for one test."""
    site = _site()
    for module, name, guarded in site.guards(str(record)):
        monkeypatch.setattr(module, name, guarded)
    monkeypatch.setattr(sys, "platform", "darwin")
    detect = host.detect
    monkeypatch.setattr(host, "detect", lambda which=None, *args, **kwargs: detect(which or homebrew_which,
                                                                                   *args, **kwargs))
    start_many = supervisor.start_many

    def forced_start_many(c, settings, launches, environ, *args, **kwargs):
        environ = dict(environ)
        environ["PYTHONPATH"] = os.pathsep.join([str(SITE), *filter(None, [environ.get("PYTHONPATH")])])
        environ[site.FORCE_VAR] = str(record)
        return start_many(c, settings, launches, environ, *args, **kwargs)

    monkeypatch.setattr(supervisor, "start_many", forced_start_many)
    return Forced("darwin", record)
