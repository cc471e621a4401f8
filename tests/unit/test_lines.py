"""The line profiles: what each Airflow line runs, how it is probed, what it preloads."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from airflow_stack import components
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.apache_airflow import install, profiles
from airflow_stack.errors import StackError
from airflow_stack.runtime import health, registry

SRC = Path(__file__).resolve().parents[2] / "src" / "airflow_stack"


def test_3x_runs_four_components_with_a_separate_dag_processor():
    line = profiles.get("3.3")
    names = [c.name for c in line.for_executor("local")]
    # the web component first: the longest way to healthy starts first, and stops last
    assert names == ["api-server", "scheduler", "dag-processor", "triggerer"]
    assert [c.name for c in line.for_executor("celery")] == [*names, "worker"]
    assert [c.name for c in line.for_executor("celery", ("flower",))] == [*names, "worker", "flower"]
    assert line.web.probe.path == "/api/v2/monitor/health" == line.rest.health_path


def test_211_runs_the_webserver_and_parses_dags_in_the_scheduler():
    line = profiles.get("2.11")
    assert [c.name for c in line.for_executor("local")] == ["webserver", "scheduler", "triggerer"]
    assert line.web.command("/venv/bin/airflow") == ["/venv/bin/airflow", "webserver"]
    assert line.web.probe.path == "/health" == line.rest.health_path


def test_each_component_has_a_probe_and_known_ports(settings):
    for line in map(profiles.get, profiles.NAMES):
        for comp in (*line.components, components.REDIS):
            assert comp.probe.kind in ("http", "job", "celery", "redis")
            for name, port in comp.listen_ports(settings):
                assert isinstance(port, int) and name.endswith("port")
            assert comp.probe.describe(settings)


def test_unknown_names_say_the_valid_ones(settings):
    with pytest.raises(StackError, match="use one of: webserver, scheduler, triggerer"):
        profiles.get("2.11").component("dag-processor")
    with pytest.raises(StackError, match=r"unknown Airflow line '2\.9'; use one of: 3\.3, 3\.2, 3\.1, 3\.0, 2\.11, "
                                         r"2\.10"):
        profiles.get("2.9")
    with pytest.raises(StackError, match=r"no component 'dag-procesor' .*use one of: redis, api-server, scheduler"):
        registry.find(settings, "dag-procesor")


def test_the_scheduler_serves_task_logs_only_with_the_local_executor(settings):
    scheduler = profiles.get("3.3").component("scheduler")
    opted_in = settings.replace(api_host="0.0.0.0")  # workers on other machines fetch logs from here
    assert ("worker_log_port", 8793) in scheduler.listen_ports(opted_in, "local")
    assert ("worker_log_port", 8793) not in scheduler.listen_ports(opted_in, "celery")
    assert ("worker_log_port", 8793) in components.WORKER.listen_ports(opted_in, "celery")


@pytest.mark.parametrize("line", profiles.NAMES)
def test_log_servers_run_only_when_other_machines_are_let_in(settings, line):
    """Airflow's log servers listen on every interface, whatever the settings: by default (loopback
    only) they are not started at all, and the API server reads the task logs from disk."""
    profile = profiles.get(line)
    for executor in ("local", "celery"):
        for comp in profile.for_executor(executor):
            names = {name for name, _ in comp.listen_ports(settings, executor)}
            assert not names & set(components.LOG_PORTS), (comp.name, names)
            assert ("--skip-serve-logs" in comp.command("airflow", settings)) == comp.serves_logs
            assert "--skip-serve-logs" not in comp.command("airflow", settings.replace(api_host="0.0.0.0"))
    assert {c.name for c in profile.components if c.serves_logs} >= {"scheduler", "triggerer", "worker"}


def test_worker_commands(settings):
    main = components.WORKER.command("/v/bin/airflow", settings.replace(worker_concurrency=12))
    assert main == ["/v/bin/airflow", "celery", "worker", "--queues", "default", "--concurrency", "12",
                    "--celery-hostname", "worker@%h", "--skip-serve-logs"]
    extra = components.worker_command("/v/bin/airflow", "w2", "default,other", 4, serve_logs=False)
    assert extra == ["/v/bin/airflow", "celery", "worker", "--queues", "default,other", "--concurrency", "4",
                     "--celery-hostname", "w2@%h", "--skip-serve-logs"]
    assert components.celery_node_name("worker") == "worker"
    assert components.celery_node_name("worker-w2") == "w2"


def test_211_scheduler_is_probed_through_its_heartbeat_not_a_forked_health_server(settings):
    scheduler = profiles.get("2.11").component("scheduler")
    assert scheduler.probe.kind == "job" and scheduler.probe.job_type == "SchedulerJob"
    assert ("scheduler_health_port", 8974) not in scheduler.listen_ports(settings, "local")
    env = airflow_config.environment(settings.replace(airflow_line="2.11"))
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "False"


def test_components_that_run_tasks_get_the_task_modules_preloaded():
    line = profiles.get("3.3")
    assert "airflow.sdk.execution_time.task_runner" in line.preload_for(line.component("scheduler"))
    old = profiles.get("2.11")
    assert "airflow.cli.commands.task_command" in old.preload_for(components.WORKER)
    api = line.component("api-server")
    assert line.preload_for(api) == api.preload  # the API server runs no task
    assert set(line.preload) | set(line.task_preload) <= set(line.all_preloads())


def test_the_registry_lists_redis_the_lines_components_extra_workers_and_backups(settings):
    settings.paths.run.mkdir(parents=True)
    (settings.paths.run / "worker-w2.pid").write_text("1\n")
    settings.paths.logs.mkdir(parents=True)
    (settings.paths.logs / "worker-gone.log").write_text("")
    names = [inst.name for inst in registry.instances(settings)]
    assert names == ["redis", "api-server", "scheduler", "dag-processor", "triggerer", "worker", "flower",
                     "worker-w2", "backups"]
    assert "worker-gone" in [inst.name for inst in registry.instances(settings, with_logs=True)]
    assert registry.find(settings, "worker-w2").component is components.WORKER
    assert registry.find(settings, "worker-gone").extra_worker  # its log can be read
    assert not {"redis", "backups"} & {inst.name for inst in registry.airflow_instances(settings)}
    # STACK_BACKUP_EVERY=off: no backups component, unless one still runs (or left a log to read)
    off = settings.replace(backup_every="off")
    assert "backups" not in [inst.name for inst in registry.instances(off, with_logs=True)]
    (settings.paths.logs / "backups.log").write_text("")
    assert registry.find(off, "backups").component is components.BACKUPS


def test_the_running_release_wins_over_the_configured_one(settings):
    registry.record(settings, "celery", "2.11.2")
    assert registry.line(settings).release == "2.11.2" and registry.executor(settings) == "celery"
    assert registry.recorded(settings)["line"] == "2.11"
    registry.forget(settings)
    assert registry.line(settings).release == profiles.release(settings) == "3.3.2"


def test_every_minor_has_a_default_release_and_the_pinned_ones_their_constraints():
    for name in profiles.NAMES:
        line = profiles.get(name)
        assert line.name == name and line.default_version.startswith(name + ".")
        assert set(line.task_pss_mib) == {"local", "celery"}
    for name in ("3.3", "2.11"):  # the default line's and the last 2.x's pins stay in the repo, with hashes
        line = profiles.get(name)
        assert line.pinned_version() == line.default_version and "--hash=sha256:" in line.constraints_file.read_text()
    assert profiles.get("3.1").pinned_version() is None  # resolved into the state dir as of its own date


def test_no_module_outside_the_profiles_names_a_line():
    """A new minor is a row in releases.SERIES, its name in the settings' AIRFLOW_LINES and what differs in its
    line's profile: nothing else compares line names."""
    names = "|".join(re.escape(name) for name in profiles.NAMES)
    pattern = re.compile(rf"[\"']({names})[\"']")  # a line name as a string, to compare with
    found = [f"{path.relative_to(SRC)}:{n}" for path in SRC.rglob("*.py")
             if path.parent.name != "profiles" and path.relative_to(SRC) not in (Path("settings/model.py"),
                                                                                   Path("apache_airflow/releases.py"))
             for n, text in enumerate(path.read_text().splitlines(), 1) if pattern.search(text)]
    assert found == []


def test_the_api_server_counts_as_started_only_once_its_execution_api_answered(settings):
    """Its first execution-API request builds the versioned routes: done at start, not under tasks."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200 if self.path == "/execution/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = profiles.get("3.3").component("api-server").probe
        local = settings.replace(api_port=server.server_address[1])
        assert health.warm_up(probe, local) == (True, "warm-up /execution/health: HTTP 200")
        missing = components.Probe("http", port_setting="api_port", warmup="/nope")
        assert health.warm_up(missing, local) == (False, "warm-up /nope: HTTP 404")
        assert seen == ["/execution/health", "/nope"]
    finally:
        server.shutdown()


def test_probes_ignore_a_proxy_the_environment_names(settings, monkeypatch):
    """A dead proxy in http_proxy must not make a healthy local server look down."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    closed.server_close()  # a port nothing answers on
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{closed.server_address[1]}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    try:
        probe = components.Probe("http", port_setting="api_port", path="/health")
        assert health.check(probe, settings.replace(api_port=server.server_address[1])) == (True, "HTTP 200")
    finally:
        server.shutdown()


def test_another_release_of_the_line_gets_its_own_venv_and_resolved_constraints(settings):
    """STACK_AIRFLOW_VERSION picks a patch without editing a tracked file: its constraints are resolved
    into the state dir and it is installed beside the running release."""
    pinned = profiles.of(settings).pinned_version()
    assert profiles.release(settings) == pinned and install.venv(settings).name == f"venv-airflow-{pinned}"
    assert install.constraints_for(settings) == profiles.of(settings).constraints_file
    other = settings.replace(airflow_version="3.3.1")
    assert install.venv(other).name == "venv-airflow-3.3.1"
    assert install.constraints_for(other) == settings.state_dir / "constraints" / "airflow-3.3.1.txt"
    assert install.requirement(other).endswith("==3.3.1")
    assert not install.is_current(other)  # nothing resolved or installed yet
    assert install.venv(settings.replace(airflow_version="2.11.2")).name == "venv-airflow-2.11.2"
    with pytest.raises(StackError, match=r"names Airflow 2\.9\.3; the stack runs 3\.0, 3\.1, 3\.2, 3\.3\.x; "
                                         r"2\.10, 2\.11\.x"):
        _ = install.venv(settings.replace(airflow_version="2.9.3"))
