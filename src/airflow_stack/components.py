"""What can run: a component is one supervised process, described once (its command, its probe,
its ports); the line profiles (apache_airflow/profiles/) list which components each Airflow line runs.

run, stop, status, logs, doctor and the benchmark read these descriptions; the registry
(runtime/registry.py) says which of them run now. A probe is data (kind + target); runtime/health.py
knows how to check each kind. The services the stack runs for Airflow (our Redis, memcached) are
components too: started, waited for and stopped the same way (runtime/lifecycle.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings


@dataclass(frozen=True)
class Probe:
    """How to tell a component is healthy.

    kind ``http``: GET ``path`` on the port named by ``port_setting``; 200 and, when ``json_key``
    is set, that key's ``status`` is "healthy" (HTTPS on the web component when it serves TLS, verified
    with the stack's CA).
    kind ``job``: a ``job`` row of ``job_type`` in the metadata DB, running, started after the
    process, with a heartbeat fresher than the health threshold (read with psycopg: no CLI).
    kind ``celery``: the worker answers a ping through Celery's control API (over the broker).
    kind ``redis``: our Redis answers PING with the configured password (through its Unix socket here).
    kind ``memcached``: our memcached answers ``version``.
    kind ``backup``: the last backup's record (runtime/backup_schedule.py) says it was verified, its file is
    as it was then, and the next one is not overdue.
    """

    kind: str
    port_setting: str = ""
    path: str = ""
    json_key: str = ""
    job_type: str = ""
    # http: a path GET once the probe passes, before the component counts as started (it must answer
    # 200): for what a server builds on its first request instead of at start (see the API server)
    warmup: str = ""

    def url(self, settings: Settings, path: str | None = None) -> str:
        """An http probe's URL on loopback: its ``path``, or another path on the same port (the web component's
        is HTTPS when it serves TLS: settings.api_tls)."""
        scheme = "https" if self.port_setting == "api_port" and settings.api_tls else "http"
        return f"{scheme}://127.0.0.1:{getattr(settings, self.port_setting)}{self.path if path is None else path}"

    def ca_file(self, settings: Settings) -> str:
        """The CA an https probe verifies the server with ("": plain http)."""
        return str(settings.tls_ca_file) if self.kind == "http" and self.url(settings).startswith("https:") else ""

    def liveness_url(self, settings: Settings) -> str:
        """What the resident launcher GETs to tell a hung process from a live one ("": nothing it can ask
        without our package: the job, Celery, Redis and memcached probes)."""
        return self.url(settings) if self.kind == "http" else ""

    def describe(self, settings: Settings) -> str:
        if self.kind == "http":
            return f"GET {self.url(settings)}"
        if self.kind == "celery":
            return "celery control ping over the broker"
        if self.kind == "redis":
            return f"PING on {settings.redis_address} with the password"
        if self.kind == "memcached":
            return f"version on {settings.limiter_storage_uri}"
        if self.kind == "backup":
            return f"the last backup's record ({settings.paths.backup_record})"
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
    # modules the launcher imports just before forking this component (after the line's preload):
    # shared with those forked after it, and off this component's own start-up path
    preload: tuple[str, ...] = ()
    # when it dies, what it left in its whole session is stopped, not only its process group: its
    # task processes (which leave the group) cannot finish without it and would run beside their retry
    reap_session: bool = False
    runs_tasks: bool = False  # forks the processes that run tasks (LocalExecutor scheduler, Celery worker)
    airflow: bool = True  # an Airflow process (started by lifecycle.start); False: a service setup.* runs
    # secrets only this process may see (Flower's login): added to its environment alone, never to the one
    # every process shares, and so never to a task's
    own_env: Callable[[Settings], dict[str, str]] | None = None

    @property
    def serves_logs(self) -> bool:
        """It runs one of Airflow's log servers (task or trigger logs for the API server to fetch)."""
        return any(p in LOG_PORTS for p in self.ports + self.local_ports)

    def command(self, airflow_bin: str, settings: Settings | None = None) -> list[str]:
        extra = self.options(settings) if self.options and settings else ()
        if settings is not None and self.serves_logs and not settings.serve_logs:
            extra = (*extra, "--skip-serve-logs")
        return [airflow_bin, *self.argv, *extra]

    def listen_ports(self, settings: Settings, executor: str = "local") -> list[tuple[str, int]]:
        names = self.ports + (self.local_ports if executor == "local" else ())
        return [(p, getattr(settings, p)) for p in names
                if (settings.serve_logs or p not in LOG_PORTS) and (settings.redis_tcp or p != "redis_port")]


def listen_hosts(settings: Settings, port_setting: str) -> tuple[str, ...]:
    """The interfaces the port ``port_setting`` is listened on: where a port chosen for it must be free."""
    if port_setting == "api_port":
        return (settings.api_host or "0.0.0.0",)
    if port_setting == "redis_port":
        return tuple(addr.removeprefix("-") for addr in settings.redis_bind.split())
    if port_setting in LOG_PORTS:
        return ("0.0.0.0",)  # Airflow hard-codes every interface
    return ("127.0.0.1",)  # the scheduler's health server and Flower: apache_airflow/config.py keeps them on loopback


def web_tls_options(settings: Settings) -> tuple[str, ...]:
    """The web component's certificate (the server's, then the CA's) and key, when it serves HTTPS: on its
    command line, so that no other process reads [api] ssl_cert as its own (see the line profiles)."""
    if not settings.api_tls:
        return ()
    return "--ssl-cert", str(settings.paths.tls_server_chain), "--ssl-key", str(settings.paths.tls_server_key)


# Airflow's log servers listen on every interface (serve_logs hard-codes the host): they
# only run when a worker on another machine needs them (see Settings.serve_logs); on one machine the
# API server reads task logs from disk.
LOG_PORTS = ("worker_log_port", "trigger_log_port")

# Components every line runs alike. The line profiles put them in their tables.
TRIGGERER = Component("triggerer", ("triggerer",), Probe("job", job_type="TriggererJob"), ports=("trigger_log_port",),
                      preload=("airflow.jobs.triggerer_job_runner",))
# the default Celery worker; run.worker adds more (worker-NAME) with the same command and probe
DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue
WORKER_PREFIX = "worker-"
WORKER = Component("worker", ("celery", "worker"), Probe("celery"), ports=("worker_log_port",), executors=("celery",),
                   options=lambda s: ("--queues", DEFAULT_QUEUE, "--concurrency", str(s.worker_concurrency),
                                      "--celery-hostname", "worker@%h"),
                   preload=("airflow.providers.celery.executors.celery_executor",), runs_tasks=True)
# Flower shows every task's arguments and can revoke tasks: behind basic auth, from a generated secret
# (its /healthcheck, which the probe reads, answers without)
FLOWER = Component("flower", ("celery", "flower"), Probe("http", port_setting="flower_port", path="/healthcheck"),
                   ports=("flower_port",), executors=("celery",), optional=True,
                   own_env=lambda s: {"AIRFLOW__CELERY__FLOWER_BASIC_AUTH": f"{s.admin_user}:{s.flower_password}"})
# our Redis: started by setup.redis (services/redis_server.py gives its argv), stopped last; its port only when
# it listens on TCP (settings.redis_tcp), else only its Unix socket
REDIS = Component("redis", (), Probe("redis"), ports=("redis_port",), airflow=False)
# our memcached, when the login limiter's storage is one on this machine (services/memcached_server.py)
MEMCACHED = Component("memcached", (), Probe("memcached"), airflow=False)
# takes a verified backup every STACK_BACKUP_EVERY while the stack runs: ops/backup_service.py on the tooling's
# own Python (command(sys.executable, settings)), started by invoke up beside Airflow, never by run.worker
BACKUPS = Component("backups", ("-m", "airflow_stack.ops.backup_service"), Probe("backup"), airflow=False,
                    options=lambda s: ("--every", s.backup_every, "--keep", str(s.backup_keep)))


def worker_command(airflow_bin: str, name: str, queues: str, concurrency: int, serve_logs: bool) -> list[str]:
    """An additional Celery worker: its own queues, concurrency and Celery node name (NAME@host)."""
    argv = [airflow_bin, *WORKER.argv, "--queues", queues, "--concurrency", str(concurrency),
            "--celery-hostname", f"{name}@%h"]
    # a second worker on one machine cannot serve logs on the same port; its log files are local anyway
    return argv if serve_logs else [*argv, "--skip-serve-logs"]


def celery_node_name(component_name: str) -> str:
    """The Celery node-name prefix (before @host) of a worker component."""
    return component_name[len(WORKER_PREFIX):] if component_name.startswith(WORKER_PREFIX) else "worker"
