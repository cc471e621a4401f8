"""The supervisor with real (tiny) processes: pid files, stale pids, graceful and forced stops."""

from __future__ import annotations

import json
import os
import sys
import time

import psutil
import pytest
from invoke import Context

from airflow_stack.apache_airflow.airflow_side import launcher, procgroup, upkeep
from airflow_stack.errors import StackError
from airflow_stack.netutil import wait_until
from airflow_stack.runtime import lifecycle, registry, status, supervisor
from airflow_stack.stack import Stack


@pytest.fixture
def started(settings):
    names: list[str] = []

    def start(name: str, argv: list[str], resident: bool = True) -> int:
        names.append(name)
        return supervisor.start_many(Context(), settings, [supervisor.Launch(name, argv)], {"PATH": os.environ["PATH"]},
                                     resident=resident)[name]

    yield start
    for name in names:
        supervisor.stop(settings, name, timeout=2)


def test_start_records_pid_and_logs_and_stop_removes_them(settings, started):
    pid = started("sleeper", [sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(60)"])
    info = supervisor.running(settings, "sleeper")
    assert info and info.pid == pid and os.getpgid(pid) == pid  # its own process group
    log = settings.paths.log_file("sleeper")
    assert wait_until(lambda: "hello" in log.read_text(), 10)
    assert supervisor.stop(settings, "sleeper", timeout=5) == "stopped"
    assert supervisor.running(settings, "sleeper") is None
    assert not settings.paths.pid_file("sleeper").exists()
    assert not settings.paths.meta_file("sleeper").exists()


def test_a_process_that_ignores_sigterm_is_killed_after_the_bound(settings, started):
    started("stubborn", [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                         "print('ignoring TERM', flush=True); time.sleep(60)"])
    log = settings.paths.log_file("stubborn")
    assert wait_until(lambda: "ignoring TERM" in log.read_text(), 10)
    assert supervisor.stop(settings, "stubborn", timeout=1).startswith("killed after")
    assert supervisor.running(settings, "stubborn") is None


def test_children_left_behind_in_the_group_are_stopped_too(settings, started):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)")
    pid = started("parent", [sys.executable, "-c", code])
    assert wait_until(lambda: len(procgroup.members(pid)) == 2, 10)
    supervisor.stop(settings, "parent", timeout=5)
    assert procgroup.members(pid) == []


def test_a_stale_pid_file_is_not_trusted_and_reading_it_changes_nothing(settings):
    settings.paths.run.mkdir(parents=True)
    # this PID exists (our own), but was not started at the recorded time: a recycled PID
    settings.paths.pid_file("ghost").write_text(f"{os.getpid()}\n")
    settings.paths.meta_file("ghost").write_text(json.dumps({"started": 1.0, "boot": psutil.boot_time()}))
    before = sorted(p.name for p in settings.paths.run.iterdir())
    assert supervisor.running(settings, "ghost") is None
    assert sorted(p.name for p in settings.paths.run.iterdir()) == before  # status and doctor only read
    assert supervisor.stop(settings, "ghost") == "not running"  # an operation collects it
    assert not settings.paths.pid_file("ghost").exists() and not settings.paths.meta_file("ghost").exists()


def test_a_record_from_an_earlier_boot_is_forgotten_without_a_signal(settings, started):
    """PIDs start over after a reboot: a group id from before names somebody else's processes now."""
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)")
    pid = started("leader", [sys.executable, "-c", code], resident=False)
    assert wait_until(lambda: len(procgroup.members(pid)) == 2, 10)
    os.kill(pid, 9)
    assert wait_until(lambda: supervisor.running(settings, "leader") is None, 10)
    meta = json.loads(settings.paths.meta_file("leader").read_text())
    settings.paths.meta_file("leader").write_text(json.dumps(meta | {"boot": meta["boot"] - 3600}))
    assert supervisor.collect(settings, "leader", timeout=2) == 0
    assert len(procgroup.members(pid)) == 1  # not ours to prove: left alone
    assert not settings.paths.pid_file("leader").exists()
    os.killpg(pid, 9)  # the test's own cleanup, by the group it started


def test_a_missing_program_fails_with_its_name_in_the_log(settings):
    supervisor.start_many(Context(), settings, [supervisor.Launch("missing", ["/nonexistent/airflow"])], {})
    log = settings.paths.log_file("missing")
    assert wait_until(lambda: "cannot start /nonexistent/airflow" in log.read_text(), 10)
    assert wait_until(lambda: supervisor.running(settings, "missing") is None, 10)
    # its supervisor tries again with back-off until it is stopped; then it exits too
    boss = json.loads(settings.paths.meta_file("missing").read_text())["supervisor"]
    supervisor.stop(settings, "missing")
    assert wait_until(lambda: not psutil.pid_exists(boss) or psutil.Process(boss).status() == "zombie", 10)


def test_start_refuses_a_second_executor_while_the_stack_runs(settings, started, monkeypatch):
    started("scheduler", [sys.executable, "-c", "import time; time.sleep(60)"])
    registry.record(settings, "celery", "3.3.2")
    monkeypatch.setattr(lifecycle.preflight, "check_start", lambda s: None)
    with pytest.raises(StackError, match=r"runs Airflow 3\.3\.2 with the celery executor; stop it first"):
        Stack(Context(), settings).start("local")


def test_usage_sums_a_process_tree(settings, started):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)")
    pid = started("tree", [sys.executable, "-c", code])
    assert wait_until(lambda: len(procgroup.members(pid)) == 2, 10)
    memory, cpu = status.usage(pid)
    assert 5 < memory < 1000 and cpu >= 0
    assert status.usage(2**22 + 7) is None  # no such process
    table = status.to_table([status.Row("tree", pid, True, True, "ok", [], memory, cpu),
                             status.Row("worker-a-long-name", None, False, False, "not running", [])])
    assert "total (ours)" in table and f"{memory:.0f}" in table
    header, row, long_row = table.splitlines()[:3]
    # the columns line up, also for a worker-NAME longer than the heading
    assert header.index("STATE") == row.index(" up ") + 1 == long_row.index(" down ") + 1


def test_children_of_a_killed_leader_are_reaped_before_a_restart(settings, started):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "time.sleep(60)")
    pid = started("leader", [sys.executable, "-c", code], resident=False)  # nobody restarts it
    assert wait_until(lambda: len(procgroup.members(pid)) == 2, 10)
    os.kill(pid, 9)  # the leader dies; its child lives on, holding whatever it held
    assert wait_until(lambda: supervisor.running(settings, "leader") is None, 10)
    assert len(procgroup.members(pid)) == 1
    started("leader", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert procgroup.members(pid) == []


def test_a_dead_leaders_session_is_reaped_only_when_asked(settings, started):
    """A task process that left the leader's group for its own (setpgid) is still in its session."""
    code = ("import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " preexec_fn=os.setpgrp); time.sleep(60)")
    pid = started("leader", [sys.executable, "-c", code], resident=False)
    assert wait_until(lambda: len(procgroup.members(pid, "session")) == 2, 10)
    assert len(procgroup.members(pid)) == 1  # the child has a group of its own
    os.kill(pid, 9)
    assert wait_until(lambda: supervisor.running(settings, "leader") is None, 10)
    saved = {path: path.read_text() for path in (settings.paths.pid_file("leader"),
                                                 settings.paths.meta_file("leader"))}
    assert supervisor.collect(settings, "leader", timeout=2) == 0  # the group is empty: the child stays
    assert len(procgroup.members(pid, "session")) == 1
    for path, text in saved.items():
        path.write_text(text)
    assert supervisor.collect(settings, "leader", timeout=2, whole_session=True) == 1
    assert wait_until(lambda: procgroup.members(pid, "session") == [], 5)


CHILD_AND_GRANDCHILD = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                        "'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)")


def test_a_killed_process_is_started_again_by_its_supervisor(settings, started):
    """kill -9 (a crash, the OOM killer): its supervisor reaps what it left in its group and starts it
    again, without anyone running a command; status can tell how often and how it ended."""
    pid = started("crasher", [sys.executable, "-c", CHILD_AND_GRANDCHILD])
    assert wait_until(lambda: len(procgroup.members(pid)) == 2, 10)
    first = supervisor.running(settings, "crasher")
    assert first.supervisor and first.restarts == 0 and psutil.Process(first.supervisor).is_running()
    os.kill(pid, 9)
    assert wait_until(lambda: (p := supervisor.running(settings, "crasher")) is not None and p.pid != pid, 10)
    again = supervisor.running(settings, "crasher")
    assert (again.restarts, again.last_exit, again.supervisor) == (1, -9, first.supervisor)
    assert procgroup.members(pid) == []  # the grandchild it left was stopped before the restart
    log = settings.paths.log_file("crasher").read_text()
    assert "restarting crasher" in log and "after exit -9 (restart 1)" in log


# as the scheduler's LocalExecutor workers are: a grandchild that ignores SIGTERM
CHILD_AND_STUBBORN_GRANDCHILD = (
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); print('up', flush=True); time.sleep(60)")


def test_a_start_while_the_supervisor_restarts_a_killed_process_waits_for_it(settings, started):
    """`invoke up` right after a kill -9 (its supervisor still reaping what the process left): the start waits
    for the supervisor's restart instead of starting a second one, which found the port taken and left the
    restarted process unwanted (untracked) when tried by hand."""
    pid = started("stubborn", [sys.executable, "-c", CHILD_AND_STUBBORN_GRANDCHILD])
    assert wait_until(lambda: len(procgroup.members(pid)) == 2, 10)
    boss = supervisor.running(settings, "stubborn").supervisor
    began = time.monotonic()
    os.kill(pid, 9)
    assert wait_until(lambda: supervisor.restarting(settings, "stubborn") is not None, 5)
    assert supervisor.await_restarts(settings, ["stubborn"]) == ["stubborn"]
    again = supervisor.running(settings, "stubborn")
    assert again is not None and again.pid != pid and (again.supervisor, again.restarts) == (boss, 1)
    assert procgroup.members(pid) == []  # the grandchild that ignored SIGTERM was killed
    assert supervisor.await_restarts(settings, ["stubborn"]) == []  # running: nothing to wait for
    print(f"\n[figure] kill -9 to running again, a grandchild ignoring SIGTERM: {time.monotonic() - began:.1f} s")


def test_a_stopped_process_stays_stopped_and_its_supervisor_exits(settings, started):
    pid = started("quitter", [sys.executable, "-c", "import time; time.sleep(60)"])
    boss = supervisor.running(settings, "quitter").supervisor
    assert supervisor.stop(settings, "quitter", timeout=5) == "stopped"
    time.sleep(2 * launcher.POLL + 1.5)  # longer than the first back-off: a restart would have happened
    assert supervisor.running(settings, "quitter") is None and not psutil.pid_exists(pid)
    assert wait_until(lambda: not psutil.pid_exists(boss) or psutil.Process(boss).status() == "zombie", 5)


def test_a_process_that_keeps_crashing_is_tried_with_growing_pauses():
    assert [launcher.backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_log_past_its_cap_is_rotated_and_the_writer_goes_on(tmp_path):
    log = tmp_path / "scheduler.log"
    with open(log, "ab", buffering=0) as writer:  # as a child writes: O_APPEND
        writer.write(b"x" * 2000)
        assert upkeep.rotate(str(log), 1000, keep=2)
        writer.write(b"after\n")
        assert log.read_bytes() == b"after\n"  # appended at the new end, no hole of zeros
        assert (tmp_path / "scheduler.log.1").stat().st_size == 2000
        writer.write(b"y" * 2000)
        assert upkeep.rotate(str(log), 1000, keep=2)
    assert (tmp_path / "scheduler.log.2").stat().st_size == 2000
    assert (tmp_path / "scheduler.log.1").read_bytes().startswith(b"after")
    assert not upkeep.rotate(str(log), 1000, keep=2)  # small again: nothing to do


def test_a_component_running_another_airflow_release_is_started_again(settings, monkeypatch):
    """After the venv changed (another patch pinned), `invoke up` restarts what runs the old code and
    leaves the rest alone."""
    old = supervisor.Running(101, 1.0, (), version="3.3.1")
    current = supervisor.Running(102, 1.0, (), version="3.3.2")
    live = {"api-server": current, "scheduler": old, "dag-processor": current, "triggerer": current}
    stopped, launched = [], []
    monkeypatch.setattr(lifecycle.registry, "running", lambda s: dict(live))
    monkeypatch.setattr(lifecycle.preflight, "check_start", lambda s: None)
    monkeypatch.setattr(lifecycle.preflight, "check_ports", lambda *a: None)
    monkeypatch.setattr(lifecycle.install, "installed_version", lambda s: "3.3.2")

    def stop(s, names, timeout=None):
        stopped.extend(names)
        for name in names:
            live.pop(name)
        return [f"{name}: stopped" for name in names]

    monkeypatch.setattr(lifecycle, "stop", stop)
    monkeypatch.setattr(lifecycle, "launch_airflow", lambda c, s, launches, env: launched.extend(launches))
    monkeypatch.setattr(lifecycle, "wait_healthy", lambda *a: None)
    report = lifecycle.start(Context(), settings, "local", dict(live), {})
    assert stopped == ["scheduler"] and report.restarted == ["scheduler: stopped"]
    assert [(launch.name, launch.version) for launch in launched] == [("scheduler", "3.3.2")]
    assert report.started == ["scheduler"] and set(report.already) == {"api-server", "dag-processor", "triggerer"}
