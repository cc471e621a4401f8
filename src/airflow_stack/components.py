"""THE process table: what runs for each Airflow line, and how we know it is healthy.

run, stop, status, logs, doctor and the benchmarks all read this table; nothing else lists the
Airflow processes. A probe is data (kind + target); health.py knows how to check each kind.
"""

from __future__ import annotations

from collections.abc import Callable
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
    kind ``celery``: the worker answers a ping through Celery's control API (over the broker).
    """

    kind: str
    port_setting: str = ""
    path: str = ""
    json_key: str = ""
    job_type: str = ""
    # http: a path GET once the probe passes, before the component counts as started (it must answer
    # 200): for what a server builds on its first request instead of at start (see the API server)
    warmup: str = ""

    def describe(self, settings: Settings) -> str:
        if self.kind == "http":
            return f"GET http://127.0.0.1:{getattr(settings, self.port_setting)}{self.path}"
        if self.kind == "celery":
            return "celery control ping over the broker"
        return f"{self.job_type} heartbeat in the job table"


@dataclass(frozen=True)
class Component:
    name: str
    argv: tuple[str, ...]  # the airflow subcommand
    probe: Probe
    ports: tuple[str, ...] = ()  # settings names of the ports it listens on
    executors: tuple[str, ...] = ("local", "celery")
    local_ports: tuple[str, ...] = ()  # ports it listens on only with the LocalExecutor
    optional: bool = False  # started only when asked for (flower)
    options: Callable[[Settings], tuple[str, ...]] | None = None  # flags that depend on settings
    # modules the launcher imports just before forking this component (after the line's PRELOAD):
    # shared with those forked after it, and off this component's own start-up path
    preload: tuple[str, ...] = ()
    # when it dies, what it left in its whole session is stopped, not only its process group: its
    # task processes (which leave the group) cannot finish without it and would run beside their retry
    reap_session: bool = False
    runs_tasks: bool = False  # forks the processes that run tasks (LocalExecutor scheduler, Celery worker)

    def command(self, airflow_bin: str, settings: Settings | None = None) -> list[str]:
        extra = self.options(settings) if self.options and settings else ()
        return [airflow_bin, *self.argv, *extra]

    def listen_ports(self, settings: Settings, executor: str = "local") -> list[tuple[str, int]]:
        names = self.ports + (self.local_ports if executor == "local" else ())
        return [(p, getattr(settings, p)) for p in names]


# with the LocalExecutor the scheduler's task processes run here, so the scheduler serves their logs
SCHEDULER = Component("scheduler", ("scheduler",), Probe("http", port_setting="scheduler_health_port",
                                                          path="/health"),
                      ports=("scheduler_health_port",), local_ports=("worker_log_port",),
                      preload=("airflow.jobs.scheduler_job_runner",), runs_tasks=True)
TRIGGERER = Component("triggerer", ("triggerer",), Probe("job", job_type="TriggererJob"), ports=("trigger_log_port",),
                      preload=("airflow.jobs.triggerer_job_runner",))
# the default Celery worker; run.worker adds more (worker-NAME) with the same command and probe
DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue
WORKER = Component("worker", ("celery", "worker"), Probe("celery"), ports=("worker_log_port",), executors=("celery",),
                   options=lambda s: ("--queues", DEFAULT_QUEUE, "--concurrency", str(s.worker_concurrency),
                                      "--celery-hostname", "worker@%h"),
                   preload=("airflow.providers.celery.executors.celery_executor",), runs_tasks=True)
FLOWER = Component("flower", ("celery", "flower"), Probe("http", port_setting="flower_port", path="/healthcheck"),
                   ports=("flower_port",), executors=("celery",), optional=True)

# The order is the start order: the web component first, since it has the longest way to healthy
# (it builds the whole API app after its imports) and so starts on the second core while the
# launcher loads the others' modules; stop goes in reverse, so the API server, which 3.x tasks
# report to, stops last.
TABLE: dict[str, tuple[Component, ...]] = {
    "3.3": (
        # The execution API, which every task calls, builds its versioned routes (Cadwyn) on its first
        # request: ~2 s of CPU that blocked the server under the first DAG run's eight task starts
        # (seen here with py-spy; the first 8 x sleep(5) run took 11 s, later ones 7). Requested at start
        # instead: a start reports ready once tasks get a ready server (~3 s more; left for later, the
        # API did not even answer for those 3 s right after the start returned).
        Component("api-server", ("api-server",),
                  Probe("http", port_setting="api_port", path="/api/v2/monitor/health", json_key="metadatabase",
                        warmup="/execution/health"),
                  ports=("api_port",)),
        SCHEDULER,
        Component("dag-processor", ("dag-processor",), Probe("job", job_type="DagProcessorJob"),
                  preload=("airflow.dag_processing.manager",)),
        TRIGGERER,
        WORKER,
        FLOWER,
    ),
    "2.11": (
        # 2.11 serves the UI from gunicorn workers that it starts as new processes: nothing to share
        Component("webserver", ("webserver",),
                  Probe("http", port_setting="api_port", path="/health", json_key="metadatabase"),
                  ports=("api_port",)),
        # 2.11 forks its health-check server after opening its DB pool; polling /health then makes
        # the child share the parent's connection and the scheduler hangs (seen here): probe the
        # job table instead, and start no health server (see airflow_config)
        # A 2.11 task's raw process (in a process group of its own) is supervised by its `tasks run
        # --local` parent, in the scheduler's group: once that is reaped, Airflow retries the task, and a
        # raw process still there would only linger (seen here, kill -9 test) or run beside its retry.
        # 3.3's task supervisors report to the API server and finish their task after a scheduler dies.
        Component("scheduler", ("scheduler",), Probe("job", job_type="SchedulerJob"),
                  local_ports=("worker_log_port",), preload=("airflow.jobs.scheduler_job_runner",),
                  reap_session=True, runs_tasks=True),
        TRIGGERER,
        WORKER,
        FLOWER,
    ),
}
# What every Airflow process of a line imports first (besides Airflow's CLI, which the launcher
# always loads): imported once by the launcher, shared by all (see launcher.py)
PRELOAD: dict[str, tuple[str, ...]] = {
    "3.3": ("airflow.models", "airflow.jobs.job", "airflow.api_fastapi.execution_api.app"),
    "2.11": ("airflow.models", "airflow.jobs.job"),
}
# What runs one task (3.3: the Task SDK's supervisor and task runner; 2.11: `airflow tasks run` and
# its task job) is imported lazily, by each process that runs a task: every LocalExecutor worker and
# Celery pool child on its first task, eight at once on two cores (the first run of the 8 x sleep(5)
# DAG took 11 s, later ones 6-7 s), and on 3.3 every task process again. Imported by the launcher just
# before it forks a component that runs tasks, they come ready-made in each of those forks.
TASK_PRELOAD: dict[str, tuple[str, ...]] = {
    "3.3": ("airflow.sdk.execution_time.supervisor", "airflow.sdk.execution_time.task_runner"),
    "2.11": ("airflow.cli.commands.task_command", "airflow.jobs.local_task_job_runner",
             "airflow.task.task_runner.standard_task_runner"),
}
WORKER_PREFIX = "worker-"


def preload(comp: Component, line: str) -> tuple[str, ...]:
    """The modules the launcher imports just before forking ``comp`` on Airflow ``line``."""
    return comp.preload + (TASK_PRELOAD[line] if comp.runs_tasks else ())


def for_line(line: str, executor: str | None = None, extras: tuple[str, ...] = ()) -> tuple[Component, ...]:
    """The components of ``line``; with ``executor``, those it runs (optional ones only when in ``extras``)."""
    components = TABLE[line]
    if executor is None:
        return components
    return tuple(c for c in components if executor in c.executors and (not c.optional or c.name in extras))


def worker_command(airflow_bin: str, name: str, queues: str, concurrency: int, serve_logs: bool) -> list[str]:
    """An additional Celery worker: its own queues, concurrency and Celery node name (NAME@host)."""
    argv = [airflow_bin, *WORKER.argv, "--queues", queues, "--concurrency", str(concurrency),
            "--celery-hostname", f"{name}@%h"]
    # a second worker on one machine cannot serve logs on the same port; its log files are local anyway
    return argv if serve_logs else [*argv, "--skip-serve-logs"]


def celery_node_name(component_name: str) -> str:
    """The Celery node-name prefix (before @host) of a worker component."""
    return component_name[len(WORKER_PREFIX):] if component_name.startswith(WORKER_PREFIX) else "worker"


def by_name(line: str, name: str) -> Component:
    for component in TABLE[line]:
        if component.name == name:
            return component
    names = ", ".join(c.name for c in TABLE[line])
    raise StackError(f"no component {name!r} in Airflow {line}; use one of: {names}")


def web(line: str) -> Component:
    """The component that serves the UI and the REST API."""
    return next(c for c in TABLE[line] if c.probe.port_setting == "api_port")
