"""The supervisor with real (tiny) processes: pid files, stale pids, graceful and forced stops."""

from __future__ import annotations

import json
import os
import sys

import pytest
from invoke import Context

from airflow_stack import stack, supervisor
from airflow_stack.errors import StackError
from airflow_stack.netutil import wait_until


@pytest.fixture
def started(settings):
    names: list[str] = []

    def start(name: str, argv: list[str]) -> int:
        names.append(name)
        return supervisor.start(Context(), settings, name, argv, env={})

    yield start
    for name in names:
        supervisor.stop(settings, name, timeout=2)


def test_start_records_pid_and_logs_and_stop_removes_them(settings, started):
    pid = started("sleeper", [sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(60)"])
    info = supervisor.running(settings, "sleeper")
    assert info and info.pid == pid and os.getpgid(pid) == pid  # its own process group
    log = supervisor.log_file(settings, "sleeper")
    assert wait_until(lambda: "hello" in log.read_text(), 10)
    assert supervisor.stop(settings, "sleeper", timeout=5) == "stopped"
    assert supervisor.running(settings, "sleeper") is None
    assert not supervisor.pid_file(settings, "sleeper").exists()


def test_a_process_that_ignores_sigterm_is_killed_after_the_bound(settings, started):
    started("stubborn", [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                         "print('ignoring TERM', flush=True); time.sleep(60)"])
    log = supervisor.log_file(settings, "stubborn")
    assert wait_until(lambda: "ignoring TERM" in log.read_text(), 10)
    assert supervisor.stop(settings, "stubborn", timeout=1).startswith("killed after")
    assert supervisor.running(settings, "stubborn") is None


def test_children_left_behind_in_the_group_are_stopped_too(settings, started):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)")
    pid = started("parent", [sys.executable, "-c", code])
    assert wait_until(lambda: len(supervisor._group_alive(pid)) == 2, 10)
    supervisor.stop(settings, "parent", timeout=5)
    assert supervisor._group_alive(pid) == []


def test_a_stale_pid_file_is_not_trusted(settings):
    settings.run_dir.mkdir(parents=True)
    # this PID exists (our own), but was not started at the recorded time: a recycled PID
    supervisor.pid_file(settings, "ghost").write_text(json.dumps({"pid": os.getpid(), "started": 1.0}))
    assert supervisor.running(settings, "ghost") is None
    assert not supervisor.pid_file(settings, "ghost").exists()
    assert supervisor.stop(settings, "ghost") == "not running"


def test_a_missing_program_fails_with_its_name_in_the_log(settings):
    supervisor.start(Context(), settings, "missing", ["/nonexistent/airflow"], env={})
    log = supervisor.log_file(settings, "missing")
    assert wait_until(lambda: "cannot start /nonexistent/airflow" in log.read_text(), 10)
    assert wait_until(lambda: supervisor.running(settings, "missing") is None, 10)


def test_start_refuses_a_second_executor_while_the_stack_runs(settings, started, monkeypatch):
    started("scheduler", [sys.executable, "-c", "import time; time.sleep(60)"])
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "stack.json").write_text(json.dumps({"executor": "celery", "line": "3.3"}))
    monkeypatch.setattr(stack, "preflight", lambda s: None)
    with pytest.raises(StackError, match=r"runs Airflow 3\.3 with the celery executor; stop it first"):
        stack.start(Context(), settings, "local")


def test_usage_sums_a_process_tree(settings, started):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)")
    pid = started("tree", [sys.executable, "-c", code])
    assert wait_until(lambda: len(supervisor._group_alive(pid)) == 2, 10)
    memory, cpu = stack.usage(pid)
    assert 5 < memory < 1000 and cpu >= 0
    assert stack.usage(2**22 + 7) is None  # no such process
    table = stack.status_table([stack.Row("tree", pid, True, True, "ok", [], memory, cpu)])
    assert "total (ours)" in table and f"{memory:.0f}" in table


def test_children_of_a_killed_leader_are_reaped_before_a_restart(settings, started):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)")
    pid = started("leader", [sys.executable, "-c", code])
    assert wait_until(lambda: len(supervisor._group_alive(pid)) == 2, 10)
    os.kill(pid, 9)  # the leader dies; its child lives on, holding whatever it held
    assert wait_until(lambda: supervisor.running(settings, "leader") is None, 10)
    assert len(supervisor._group_alive(pid)) == 1
    started("leader", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert supervisor._group_alive(pid) == []


def test_a_dead_leaders_session_is_reaped_only_when_asked(settings, started):
    """A task process that left the leader's group for its own (setpgid) is still in its session."""
    code = ("import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " preexec_fn=os.setpgrp); time.sleep(60)")
    pid = started("leader", [sys.executable, "-c", code])
    assert wait_until(lambda: len(supervisor._session_alive(pid)) == 2, 10)
    assert len(supervisor._group_alive(pid)) == 1  # the child has a group of its own
    os.kill(pid, 9)
    assert wait_until(lambda: supervisor.running(settings, "leader") is None, 10)
    stale = supervisor.pid_file(settings, "leader").with_suffix(".stale")
    saved = stale.read_text()
    assert supervisor.reap_orphans(settings, "leader", timeout=2) == 0  # the group is empty: the child stays
    assert len(supervisor._session_alive(pid)) == 1
    stale.write_text(saved)
    assert supervisor.reap_orphans(settings, "leader", timeout=2, whole_session=True) == 1
    assert wait_until(lambda: supervisor._session_alive(pid) == [], 5)
