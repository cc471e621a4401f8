"""The `darwin` session's forcing holds (tests/support/darwin.py): the code under test sees macOS, in this
process and in the processes it starts; psutil, the portable path, keeps working. Natively (without
``--platform darwin``) there is nothing forced to check: this module is not collected (tests/conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest
from invoke import Context

from airflow_stack.netutil import wait_until
from airflow_stack.runtime import measure, supervisor
from airflow_stack.services import host


@pytest.fixture
def darwin(forced_platform):
    assert forced_platform.name == "darwin", "collected only with --platform darwin (tests/conftest.py)"
    return forced_platform


def test_this_process_sees_macos_and_psutil_still_works(darwin):
    assert sys.platform == "darwin"
    with pytest.raises(FileNotFoundError):
        Path("/proc/self/status").read_text()
    assert not os.path.isdir("/proc")
    reads = darwin.reads()
    assert [line.split()[1] for line in reads] == ["/proc/self/status", "/proc"]
    assert all(__file__ in line for line in reads)  # the reader is named
    darwin.forget()
    assert psutil.Process().memory_info().rss > 0 and psutil.boot_time() > 0 and psutil.pids()


def test_the_host_is_homebrew(darwin):
    assert isinstance(host.detect(sudo=""), host.Homebrew)


def test_memory_is_measured_without_proc(darwin):
    assert measure.pss_mib([os.getpid()]) > 1  # RSS stands in for PSS


def test_a_process_the_code_starts_sees_macos_too(darwin, settings):
    code = ("import os, sys, psutil\n"
            "try:\n    open('/proc/self/status').read(); proc = 'readable'\n"
            "except FileNotFoundError:\n    proc = 'missing'\n"
            "print(sys.platform, proc, psutil.Process().pid == os.getpid(), flush=True)\n"
            "import time; time.sleep(30)\n")
    supervisor.start_many(Context(), settings, [supervisor.Launch("probe", [sys.executable, "-c", code])],
                          {"PATH": os.environ["PATH"]})
    log = settings.paths.log_file("probe")
    try:
        assert wait_until(lambda: "darwin" in log.read_text(), 15), log.read_text()
        assert "darwin missing True" in log.read_text()
        assert [line.split()[1] for line in darwin.reads()] == ["/proc/self/status"]
        darwin.forget()
    finally:
        supervisor.stop(settings, "probe", timeout=5)
