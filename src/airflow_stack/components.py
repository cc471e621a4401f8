"""THE process table: what runs for each Airflow line, and how we know it is healthy.

run, stop, status, logs, doctor and the benchmarks all read this table; nothing else lists the
Airflow processes. A probe is data (kind + target); health.py knows how to check each kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import StackError
from .settings import Settings


@dataclass(frozen=True)
class Probe:
    """How to tell a component is healthy.

    kind ``http``: GET ``path`` on the port named by ``port_setting``; 200 and, when ``json_key``
    is set, that key's ``status`` is "healthy".
    kind ``job``: a ``job`` row of ``job_type`` in the metadata DB, running, started after the
    process, with a heartbeat fresher than the health threshold (read with psycopg: no CLI).
    """

    kind: str
    port_setting: str = ""
    path: str = ""
    json_key: str = ""
    job_type: str = ""

    def describe(self, settings: Settings) -> str:
        if self.kind == "http":
            return f"GET http://127.0.0.1:{getattr(settings, self.port_setting)}{self.path}"
        return f"{self.job_type} heartbeat in the job table"


@dataclass(frozen=True)
class Component:
    name: str
    argv: tuple[str, ...]  # the airflow subcommand
    probe: Probe
    ports: tuple[str, ...] = ()  # settings names of the ports it listens on
    executors: tuple[str, ...] = ("local", "celery")

    def command(self, airflow_bin: str) -> list[str]:
        return [airflow_bin, *self.argv]

    def listen_ports(self, settings: Settings) -> list[tuple[str, int]]:
        return [(p, getattr(settings, p)) for p in self.ports]


SCHEDULER_PROBE = Probe("http", port_setting="scheduler_health_port", path="/health")

TABLE: dict[str, tuple[Component, ...]] = {
    "3.3": (
        Component("scheduler", ("scheduler",), SCHEDULER_PROBE,
                  # with LocalExecutor the scheduler also serves task logs
                  ports=("scheduler_health_port", "worker_log_port")),
        Component("dag-processor", ("dag-processor",), Probe("job", job_type="DagProcessorJob")),
        Component("triggerer", ("triggerer",), Probe("job", job_type="TriggererJob"), ports=("trigger_log_port",)),
        Component("api-server", ("api-server",),
                  Probe("http", port_setting="api_port", path="/api/v2/monitor/health", json_key="metadatabase"),
                  ports=("api_port",)),
    ),
    "2.11": (
        Component("scheduler", ("scheduler",), SCHEDULER_PROBE, ports=("scheduler_health_port", "worker_log_port")),
        Component("triggerer", ("triggerer",), Probe("job", job_type="TriggererJob"), ports=("trigger_log_port",)),
        Component("webserver", ("webserver",),
                  Probe("http", port_setting="api_port", path="/health", json_key="metadatabase"),
                  ports=("api_port",)),
    ),
}


def for_line(line: str, executor: str | None = None) -> tuple[Component, ...]:
    """The components of ``line``; with ``executor``, only those that executor needs."""
    components = TABLE[line]
    if executor is None:
        return components
    return tuple(c for c in components if executor in c.executors)


def by_name(line: str, name: str) -> Component:
    for component in TABLE[line]:
        if component.name == name:
            return component
    names = ", ".join(c.name for c in TABLE[line])
    raise StackError(f"no component {name!r} in Airflow {line}; use one of: {names}")


def web(line: str) -> Component:
    """The component that serves the UI and the REST API."""
    return next(c for c in TABLE[line] if c.probe.port_setting == "api_port")
