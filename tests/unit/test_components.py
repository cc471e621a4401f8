from __future__ import annotations

import pytest

from airflow_stack import components
from airflow_stack.errors import StackError


def test_3x_runs_four_components_with_a_separate_dag_processor():
    names = [c.name for c in components.for_line("3.3", "local")]
    # the web component first: the longest way to healthy starts first, and stops last
    assert names == ["api-server", "scheduler", "dag-processor", "triggerer"]
    assert [c.name for c in components.for_line("3.3", "celery")] == [*names, "worker"]
    assert [c.name for c in components.for_line("3.3", "celery", ("flower",))] == [*names, "worker", "flower"]
    assert components.web("3.3").probe.path == "/api/v2/monitor/health"


def test_211_runs_the_webserver_and_parses_dags_in_the_scheduler():
    names = [c.name for c in components.for_line("2.11", "local")]
    assert names == ["webserver", "scheduler", "triggerer"]
    assert components.web("2.11").command("/venv/bin/airflow") == ["/venv/bin/airflow", "webserver"]
    assert components.web("2.11").probe.path == "/health"


def test_each_component_has_a_probe_and_known_ports(settings):
    for line in components.TABLE:
        for comp in components.for_line(line):
            assert comp.probe.kind in ("http", "job", "celery")
            for name, port in comp.listen_ports(settings):
                assert isinstance(port, int) and name.endswith("port")
            assert comp.probe.describe(settings)


def test_unknown_component_names_the_valid_ones():
    with pytest.raises(StackError, match="use one of: webserver, scheduler, triggerer"):
        components.by_name("2.11", "dag-processor")


def test_the_scheduler_serves_task_logs_only_with_the_local_executor(settings):
    assert ("worker_log_port", 8793) in components.SCHEDULER.listen_ports(settings, "local")
    assert ("worker_log_port", 8793) not in components.SCHEDULER.listen_ports(settings, "celery")
    assert ("worker_log_port", 8793) in components.WORKER.listen_ports(settings, "celery")


def test_worker_commands(settings):
    main = components.WORKER.command("/v/bin/airflow", settings.replace(worker_concurrency=12))
    assert main == ["/v/bin/airflow", "celery", "worker", "--queues", "default", "--concurrency", "12",
                    "--celery-hostname", "worker@%h"]
    extra = components.worker_command("/v/bin/airflow", "w2", "default,other", 4, serve_logs=False)
    assert extra == ["/v/bin/airflow", "celery", "worker", "--queues", "default,other", "--concurrency", "4",
                     "--celery-hostname", "w2@%h", "--skip-serve-logs"]
    assert components.celery_node_name("worker") == "worker"
    assert components.celery_node_name("worker-w2") == "w2"


def test_211_scheduler_is_probed_through_its_heartbeat_not_a_forked_health_server(settings):
    scheduler = components.by_name("2.11", "scheduler")
    assert scheduler.probe.kind == "job" and scheduler.probe.job_type == "SchedulerJob"
    assert ("scheduler_health_port", 8974) not in scheduler.listen_ports(settings, "local")
    from airflow_stack import airflow_config

    env = airflow_config.environment(settings.replace(airflow_line="2.11"))
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "False"


def test_components_that_run_tasks_get_the_task_modules_preloaded():
    scheduler = components.by_name("3.3", "scheduler")
    assert "airflow.sdk.execution_time.task_runner" in components.preload(scheduler, "3.3")
    assert "airflow.cli.commands.task_command" in components.preload(components.WORKER, "2.11")
    api = components.by_name("3.3", "api-server")
    assert components.preload(api, "3.3") == api.preload  # the API server runs no task


def test_the_api_server_counts_as_started_only_once_its_execution_api_answered(settings):
    """Its first execution-API request builds the versioned routes: done at start, not under tasks."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from airflow_stack import health

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
        probe = components.by_name("3.3", "api-server").probe
        local = settings.__class__(**{**settings.__dict__, "api_port": server.server_address[1]})
        assert health.warm_up(probe, local) == (True, "warm-up /execution/health: HTTP 200")
        missing = components.Probe("http", port_setting="api_port", warmup="/nope")
        assert health.warm_up(missing, local) == (False, "warm-up /nope: HTTP 404")
        assert seen == ["/execution/health", "/nope"]
    finally:
        server.shutdown()
