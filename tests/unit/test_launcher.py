"""launcher.py with real processes and a stand-in ``airflow`` package: preloaded forks run the CLI's
main() in-process; anything unsafe to fork (a thread, a socket) falls back to exec. Off Linux (macOS, and the
`darwin` session that forces its paths here) the launcher refuses to preload: every child execs, and says why
in its log."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from invoke import Context

from airflow_stack.netutil import wait_until
from airflow_stack.runtime import supervisor


def forks() -> bool:
    """The launcher forks Airflow's components from its preload on Linux only (read while a test runs: the
    darwin session forces another platform)."""
    return sys.platform.startswith("linux")


def said_by_launcher(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines() if "airflow-stack launcher" in line]


@pytest.fixture
def fake_airflow(tmp_path) -> Path:
    """A package named airflow whose CLI records how it was started, then sleeps."""
    root = tmp_path / "fake"
    (root / "airflow" / "cli").mkdir(parents=True)
    (root / "airflow" / "__init__.py").write_text("")
    (root / "airflow" / "cli" / "__init__.py").write_text("")
    (root / "airflow" / "cli" / "cli_parser.py").write_text("def get_parser():\n    return None\n")
    (root / "airflow" / "__main__.py").write_text(textwrap.dedent("""
        import json, os, platform, secrets, sys, threading, time

        def main():
            preloaded = "preloaded_marker" in sys.modules
            print(json.dumps({"argv": sys.argv, "pid": os.getpid(), "preloaded": preloaded,
                              "stdlib": [secrets.__file__, platform.__file__]}), flush=True)
            time.sleep(60)
    """))
    (root / "preloaded_marker.py").write_text("VALUE = 1\n")
    (root / "renamed_module.py").write_text("raise ImportError('renamed in this release')\n")
    (root / "starts_a_thread.py").write_text("import threading, time\n"
                                             "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    # what exec runs when the preload is unsafe: a script that reports the same way
    script = root / "bin" / "airflow"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(root)!r})\n"
                      "from airflow.__main__ import main\nmain()\n")
    script.chmod(0o755)
    return root


def launch(settings, fake_airflow: Path, names: list[str], preload: tuple[str, ...], own: tuple[str, ...] = ()):
    launches = [supervisor.Launch(name, [str(fake_airflow / "bin" / "airflow"), name, "--flag"], own)
                for name in names]
    env = {"PYTHONPATH": str(fake_airflow)}
    pids = supervisor.start_many(Context(), settings, launches, env, python=sys.executable, preload=preload)
    reports = {}
    for name in names:
        log = settings.paths.log_file(name)
        assert wait_until(lambda log=log: '"argv"' in log.read_text(), 15), log.read_text()
        reports[name] = json.loads(next(line for line in log.read_text().splitlines() if '"argv"' in line))
    return pids, reports


def test_preloaded_children_run_the_cli_in_their_own_sessions(settings, fake_airflow):
    pids, reports = launch(settings, fake_airflow, ["scheduler", "triggerer"], ("preloaded_marker",))
    try:
        for name, pid in pids.items():
            report = reports[name]
            assert report["pid"] == pid and os.getpgid(pid) == pid  # supervised by PID = process group
            assert report["argv"][1:] == [name, "--flag"]
            assert report["preloaded"] == forks(), "a preloaded child runs the module it inherited; else it execs"
            said = said_by_launcher(settings.paths.log_file(name).read_text())
            assert said == [] if forks() else [f"airflow-stack launcher: {name} starts on its own "
                                               f"(no preload on {sys.platform})"]
            # the launcher runs as a script beside our platform.py and secrets.py: never shadowing the stdlib's
            assert not any("airflow_stack" in path for path in report["stdlib"]), report["stdlib"]
            info = supervisor.running(settings, name)
            assert info and info.pid == pid and list(info.argv)[1:] == [name, "--flag"]
            assert psutil.Process(pid).ppid() != os.getpid()  # detached: the launcher has exited
    finally:
        for name in pids:
            supervisor.stop(settings, name, timeout=5)
    assert all(supervisor.running(settings, name) is None for name in pids)


def test_a_preload_that_starts_a_thread_falls_back_to_exec(settings, fake_airflow):
    _pids, reports = launch(settings, fake_airflow, ["api-server"], ("preloaded_marker",), own=("starts_a_thread",))
    try:
        assert not reports["api-server"]["preloaded"]  # a fresh interpreter, not a fork of the launcher
    finally:
        supervisor.stop(settings, "api-server", timeout=5)


def test_a_module_that_fails_to_import_costs_only_its_component_a_fork(settings, fake_airflow):
    """A preload is best effort: the component that wanted a missing module starts plainly (exec), with
    one line in its log saying why; the components after it are still forked from the preload."""
    launches = [supervisor.Launch("dag-processor", [str(fake_airflow / "bin" / "airflow"), "dag-processor"],
                                  ("renamed_module",)),
                supervisor.Launch("triggerer", [str(fake_airflow / "bin" / "airflow"), "triggerer"])]
    pids = supervisor.start_many(Context(), settings, launches, {"PYTHONPATH": str(fake_airflow)},
                                 python=sys.executable, preload=("preloaded_marker",))
    try:
        reports = {}
        for name in pids:
            log = settings.paths.log_file(name)
            assert wait_until(lambda log=log: '"argv"' in log.read_text(), 15), log.read_text()
            reports[name] = log.read_text()
        if not forks():  # nothing is preloaded, so nothing fails to import: each execs, and says why
            for name, text in reports.items():
                assert said_by_launcher(text) == [f"airflow-stack launcher: {name} starts on its own (no preload "
                                                  f"on {sys.platform})"] and '"preloaded": false' in text
            return
        said = said_by_launcher(reports["dag-processor"])
        assert len(said) == 1 and "cannot preload renamed_module (ImportError: renamed in this release)" in said[0]
        assert '"preloaded": false' in reports["dag-processor"]
        assert '"preloaded": true' in reports["triggerer"] and "airflow-stack launcher" not in reports["triggerer"]
    finally:
        for name in pids:
            supervisor.stop(settings, name, timeout=5)


def test_a_killed_component_is_started_again_the_way_it_was_started(settings, fake_airflow):
    """kill -9 of a component: its resident supervisor starts it again, forked from the preload it kept (Linux)
    or by exec (macOS), with no command run."""
    pids, _ = launch(settings, fake_airflow, ["scheduler"], ("preloaded_marker",))
    log = settings.paths.log_file("scheduler")
    try:
        os.kill(pids["scheduler"], 9)
        assert wait_until(lambda: (proc := supervisor.running(settings, "scheduler")) is not None
                          and proc.pid != pids["scheduler"], 15), log.read_text()
        assert wait_until(lambda: log.read_text().count('"argv"') == 2, 15), log.read_text()
        again = json.loads([line for line in log.read_text().splitlines() if '"argv"' in line][-1])
        proc = supervisor.running(settings, "scheduler")
        assert again["pid"] == proc.pid and (proc.restarts, proc.last_exit) == (1, -9)
        assert again["preloaded"] == forks() and again["argv"][1:] == ["scheduler", "--flag"]
        assert "after exit -9 (restart 1)" in log.read_text()
    finally:
        supervisor.stop(settings, "scheduler", timeout=5)


def test_the_pid_file_holds_the_pid_alone(settings, fake_airflow):
    pids, _ = launch(settings, fake_airflow, ["scheduler"], ("preloaded_marker",))
    try:
        assert settings.paths.pid_file("scheduler").read_text() == f"{pids['scheduler']}\n"
        record = settings.paths.meta_file("scheduler")
        assert record.stat().st_mode & 0o777 == 0o600  # the launch fingerprint sits beside it, private
        assert json.loads(record.read_text())["argv"][1] == "scheduler"
    finally:
        supervisor.stop(settings, "scheduler", timeout=5)


def test_without_preload_every_process_is_execed(settings, fake_airflow):
    _pids, reports = launch(settings, fake_airflow, ["worker"], preload=None)
    try:
        assert not reports["worker"]["preloaded"]
    finally:
        supervisor.stop(settings, "worker", timeout=5)


@pytest.fixture
def health_endpoint():
    """A health URL on loopback whose answer the test sets (200 or 503)."""
    import http.server
    import threading

    answer = {"status": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(answer["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/health", answer
    server.shutdown()


def test_a_child_that_stops_answering_its_health_url_is_stopped_then_killed(tmp_path, health_endpoint):
    """The liveness watchdog: a hung process (alive, its health URL failing for the whole allowance) gets
    SIGTERM, and SIGKILL when it ignores that; the supervisor's crash path then starts it again."""
    import signal
    import subprocess
    import time

    from airflow_stack.apache_airflow.airflow_side import launcher, upkeep

    url, answer = health_endpoint
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline().strip() == "ready"
    child = launcher.Child({"name": "scheduler", "log": str(tmp_path / "scheduler.log"), "liveness": url}, "exec")
    child.pid, child.started = stubborn.pid, time.time() - 300  # long past its startup
    try:
        answer["status"] = 200
        upkeep.watch_liveness([child], after=60, now=1000.0)
        assert child.failing_since is None and stubborn.poll() is None  # answers: left alone
        answer["status"] = 503
        upkeep.watch_liveness([child], after=60, now=1010.0)
        upkeep.watch_liveness([child], after=60, now=1060.0)
        assert child.failing_since == 1010.0 and not child.stopped_hung  # failing, not yet for 60 s
        upkeep.watch_liveness([child], after=60, now=1070.0)
        assert child.stopped_hung == 1070.0 and "has not answered" in (tmp_path / "scheduler.log").read_text()
        time.sleep(0.5)
        assert stubborn.poll() is None  # it ignores SIGTERM
        upkeep.watch_liveness([child], after=60, now=1070.0 + upkeep.KILL_AFTER)
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
    # a watchdog turned off (0), or a child without a URL, is never touched
    quiet = launcher.Child({"name": "redis", "log": str(tmp_path / "redis.log")}, "exec")
    quiet.pid, quiet.started = 1, time.time() - 300
    upkeep.watch_liveness([quiet], after=60, now=5000.0)
    assert quiet.failing_since is None
