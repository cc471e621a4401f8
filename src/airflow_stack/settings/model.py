"""Settings: declared once, with defaults, and resolved flag > environment > .env > default.

Every setting has one ``Spec``: its environment name (Airflow's own name where Airflow has one,
everything else ``STACK_*``), default, kind, help, whether it is a secret (and how it is generated
once into .env), and the name under which it reaches every Airflow process's environment
(``airflow``; a name only one Airflow line reads is in that line's profile). The Airflow
environment, the help texts, redaction, fingerprints and writes to .env all come from the specs.
Values that are derived (URLs, the sslmode in effect) are properties, never typed by hand.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ..statedir import ENV_FILE_VAR, SUN_PATH_BYTES, USER_STATE_DEFAULT, StateDir, UserStateDir
from .grammar import interval, ip_networks, parse_interval

PROJECT_DIR = Path(__file__).resolve().parents[3]

EXECUTORS = ("local", "celery")
# The minors of Airflow the stack runs, the first being the default. Each has its row in
# apache_airflow/releases.py (newest patch, Pythons) and its line's profile (apache_airflow/profiles/).
AIRFLOW_LINES = ("3.3", "3.2", "3.1", "3.0", "2.11", "2.10")
AIRFLOW_LINES_HELP = f"Airflow minor: {', '.join(AIRFLOW_LINES)}"
# the Redis ACL user of Airflow's processes; the stack's own operations use Redis's default user
REDIS_AIRFLOW_USER = "airflow"
LIMITER_DB = 1  # our Redis's DB the login limiter counts in (Celery's broker: DB 0)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# what STACK_PG_DSN fills in, libpq keyword -> setting
DSN_FIELDS = {"host": "pg_host", "port": "pg_port", "dbname": "pg_database", "user": "pg_user",
              "password": "pg_password", "sslmode": "pg_sslmode", "sslrootcert": "pg_sslrootcert"}


def _cpu_count() -> int:
    return os.cpu_count() or 2


@dataclass(frozen=True)
class Spec:
    """How one setting is named, typed and defaulted."""

    env: str
    default: Any = None
    kind: type = str
    choices: tuple[str, ...] = ()
    secret: bool = False  # never printed, never written outside .env (and files only we read)
    # generated at first setup into .env when missing: "password", "fernet", "token" or "id"
    generate: str = ""
    # every Airflow process must have the same value, a Celery worker on another machine too
    shared: bool = False
    # a worker on another machine needs it too (invoke worker.env writes it; the shared secrets always go)
    worker: bool = False
    minimum: float = 1  # the smallest number a kind=int or kind=float setting takes
    help: str = ""
    # the name it reaches every Airflow process's environment under, on every line ("": it does not, or
    # only as part of a derived value; a line that reads it under another name says so in its profile)
    airflow: str = ""
    # a text setting's check: its value as used, or ValueError saying what is wrong and what to write instead
    parse: Callable[[str], str] | None = None


def _spec(env: str, default: Any = None, **kw: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(env=env, default=default, **kw)})


def _airflow_spec(env: str, default: Any = None, **kw: Any) -> Any:
    """A setting that is one of Airflow's own: it reaches Airflow under its environment name."""
    return _spec(env, default, airflow=env, **kw)


@dataclass(frozen=True)
class Settings:
    # Where everything lives
    state_dir: Path = _spec("STACK_STATE_DIR", ".stack", kind=Path,
                            help="all runtime state: pids, logs, Redis data, AIRFLOW_HOME, the Airflow venv")
    env_file: Path = _spec(ENV_FILE_VAR, ".env", kind=Path, help="the .env file with settings and secrets")
    user_state_dir: Path = _spec("STACK_USER_STATE_DIR", USER_STATE_DEFAULT, kind=Path,
                                 help="what every checkout of this user shares: the list of stacks on this machine "
                                      "(invoke stacks), defaults.env (your defaults for every checkout)")
    checkout_id: str = _spec("STACK_CHECKOUT_ID", generate="id", worker=True,
                             help="names this checkout's stack; the database it set up is marked with it, so another "
                                  "checkout never takes it over (a machine with a copy of this .env is the same stack)")
    project_dir: Path = _spec("STACK_PROJECT_DIR", ".", kind=Path,
                              help="your Airflow project, in the astro CLI's layout: dags/, plugins/, include/, "
                                   "requirements.txt, packages.txt, airflow_settings.yaml, tests/dags/ "
                                   "(default: this repo)")

    # Airflow
    airflow_line: str = _spec("STACK_AIRFLOW_LINE", "", choices=("", *AIRFLOW_LINES),
                              help=f"{AIRFLOW_LINES_HELP}: its newest patch (default: what the project's "
                                   f"Dockerfile pins, else {AIRFLOW_LINES[0]})")
    airflow_version: str = _spec("STACK_AIRFLOW_VERSION", "", worker=True,
                                 help="an Airflow release (X.Y.Z of a supported minor); wins over STACK_AIRFLOW_LINE "
                                      "and the project's Dockerfile; its constraints are resolved into the state dir "
                                      "as of its own date, no tracked file changes")
    airflow_python: str = _spec("STACK_AIRFLOW_PYTHON", "",
                                help="the Python Airflow's venv is built on (a path or a name on PATH); default: "
                                     "the tooling's own when the release supports it, else the newest python3.X on "
                                     "PATH that it supports")
    executor: str = _spec("STACK_EXECUTOR", "local", choices=EXECUTORS, help="local or celery")
    api_host: str = _spec("STACK_API_HOST", "127.0.0.1", help="interface the API server / webserver binds")
    api_port: int = _spec("STACK_API_PORT", 8080, kind=int, worker=True,
                          help="port of the web component (API server / webserver)")
    scheduler_health_port: int = _spec("STACK_SCHEDULER_HEALTH_PORT", 8974, kind=int,
                                       airflow="AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
                                       help="scheduler health-check server port")
    worker_log_port: int = _spec("STACK_WORKER_LOG_PORT", 8793, kind=int, help="task log server port",
                                 airflow="AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT")
    trigger_log_port: int = _spec("STACK_TRIGGER_LOG_PORT", 8794, kind=int, help="triggerer log server port",
                                  airflow="AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")
    parallelism: int = _airflow_spec("AIRFLOW__CORE__PARALLELISM", max(8, 4 * _cpu_count()), kind=int,
                             help="task slots per scheduler; the fork LocalExecutor starts them all")
    # Airflow 3's task supervisor notices that its task process exited either by a closed socket or at its next
    # heartbeat; when the sockets close a moment before the process is reaped (seen in ~1 of 4 no-op tasks
    # under Celery) it sleeps until the heartbeat, and the task's slot stays taken that long: Airflow's 5 s
    # made a burst of 40 no-op tasks 2-3x slower on Celery (docs/benchmarks.md, tuning log 7)
    task_heartbeat_seconds: int = _spec(
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", 1, kind=int,
        help="Airflow 3: seconds between a running task's heartbeats, and the longest a finished task may hold "
             "its slot (Airflow's default: 5)")
    # a scheduler loop that found nothing to do sleeps this long before it looks for new runs and finished
    # tasks again: Airflow's 1 s adds up to a second at each end of every run and between waves of tasks;
    # 0.5 s measured 40 no-op tasks 11.4 -> 8.2 s on Celery for ~1% of a core more at idle (tuning log 8)
    scheduler_idle_sleep: float = _airflow_spec(
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", 0.5, kind=float, minimum=0.1,
        help="seconds an idle scheduler loop sleeps: lower starts and ends runs sooner, for more idle CPU "
             "(Airflow's default: 1)")
    passthrough: str = _spec("STACK_PASSTHROUGH", "",
                             help="comma-separated names of more environment variables the Airflow processes (and "
                                  "so DAG code) may see, e.g. AWS_PROFILE; see apache_airflow/config.py, PASSED_NAMES")
    load_examples: bool = _spec("STACK_LOAD_EXAMPLES", False, kind=bool, help="load Airflow's example DAGs",
                                airflow="AIRFLOW__CORE__LOAD_EXAMPLES")
    preload: bool = _spec("STACK_PRELOAD", True, kind=bool,
                          help="start Airflow's components from one launcher that imported Airflow once "
                               "(false: each component starts on its own, as `airflow COMPONENT` would)")
    liveness_seconds: int = _spec(
        "STACK_LIVENESS_SECONDS", 120, kind=int, minimum=0,
        help="a component whose health endpoint fails this long while its process runs (hung, e.g. a scheduler "
             "stuck shutting down after a lost database) is stopped and started again by its supervisor; 0: never")
    log_max_mb: int = _spec("STACK_LOG_MAX_MB", 100, kind=int,
                            help="a component's log is rotated when it grows past this many MiB")
    retention_days: int = _spec("STACK_RETENTION_DAYS", 30, kind=int,
                                help="invoke db.clean removes task logs and metadata rows older than this")
    log_keep: int = _spec("STACK_LOG_KEEP", 3, kind=int, help="rotated logs kept per component (NAME.log.1 ...)")
    backup_every: str = _spec("STACK_BACKUP_EVERY", "1d", parse=interval,
                              help="while the stack runs, its backups component takes a verified backup this often "
                                   "(90s, 6h, 1d ...; off: none)")
    backup_keep: int = _spec("STACK_BACKUP_KEEP", 7, kind=int,
                             help="backups kept in STATE/backups (the oldest go; the newest verified one always stays)")
    progress: str = _spec("STACK_PROGRESS", "auto", choices=("auto", "plain", "off"),
                          help="progress of long steps: auto (a live line on a terminal, plain lines elsewhere), "
                               "plain (timestamped lines), off (invoke up --quiet)")
    import_fernet_key: str = _spec("STACK_IMPORT_FERNET_KEY", "", secret=True,
                                   help="the fernet key of a SQLite Airflow whose objects db.import-sqlite carries "
                                        "over (never on a command line)")
    admin_user: str = _spec("_AIRFLOW_WWW_USER_USERNAME", "admin", help="the Airflow admin user")
    admin_password: str = _spec("_AIRFLOW_WWW_USER_PASSWORD", secret=True, generate="password",
                                help="the Airflow admin's password")
    fernet_key: str = _airflow_spec("AIRFLOW__CORE__FERNET_KEY", secret=True, generate="fernet", shared=True,
                            help="encrypts connections and variables")
    jwt_secret: str = _spec("AIRFLOW__API_AUTH__JWT_SECRET", secret=True, generate="token", shared=True,
                            help="signs task and API tokens")
    api_secret_key: str = _spec("AIRFLOW__API__SECRET_KEY", secret=True, generate="token", shared=True,
                                help="signs web sessions")
    ratelimit_storage_uri: str = _spec("STACK_RATELIMIT_STORAGE_URI", "", secret=True,
                                       help="Flask-Limiter storage; default: our Redis, DB 1")
    trusted_proxies: str = _spec(
        "STACK_TRUSTED_PROXIES", "", parse=ip_networks,
        help="comma-separated addresses or networks of the reverse proxies in front of the UI and API: only "
             "their X-Forwarded-For names the client whose logins are counted (empty: the peer's address is "
             "the client's, whatever header it sends)")

    # PostgreSQL
    pg_host: str = _spec("STACK_PG_HOST", "127.0.0.1",
                         help="PostgreSQL host; another host than the local one is used as it is")
    pg_port: int = _spec("STACK_PG_PORT", 5432, kind=int, worker=True, help="PostgreSQL port")
    pg_database: str = _spec("STACK_PG_DATABASE", "airflow", worker=True, help="Airflow's metadata database")
    pg_user: str = _spec("STACK_PG_USER", "airflow", worker=True, help="the role that owns it")
    pg_password: str = _spec("STACK_PG_PASSWORD", secret=True, generate="password", shared=True,
                             help="that role's password")
    pg_sslmode: str = _spec("STACK_PG_SSLMODE", "", worker=True, choices=("", *SSLMODES),
                            help="libpq sslmode (default: verify-full with STACK_TLS, else prefer)")
    pg_sslrootcert: str = _spec("STACK_PG_SSLROOTCERT", "",
                                help="the CA file libpq verifies the server's certificate with (verify-ca, "
                                     "verify-full); default with STACK_TLS: the stack's CA (STATE/tls/ca.pem)")
    pg_dsn: str = _spec("STACK_PG_DSN", "", secret=True, worker=True,
                        help="a PostgreSQL server this stack does not run (managed, e.g. RDS), as a libpq DSN for "
                             "Airflow's role and database, made there by its admin: "
                             "postgresql://USER:PASSWORD@HOST:PORT/DB?sslmode=verify-full&sslrootcert=CA. Nothing is "
                             "installed or started; it fills STACK_PG_HOST, _PORT, _DATABASE, _USER, _PASSWORD, "
                             "_SSLMODE and _SSLROOTCERT")
    pg_admin_dsn: str = _spec("STACK_PG_ADMIN_DSN", "", secret=True,
                              help="superuser DSN for a server we do not run (managed); empty: local superuser")
    pg_version: str = _spec("STACK_PG_VERSION", "16", help="PostgreSQL major version to install with Homebrew")

    # TLS for workers on other machines
    tls: bool = _spec("STACK_TLS", False, kind=bool, worker=True,
                      help="TLS only, from a CA the stack makes in STATE/tls, verified by every client: Redis's TCP "
                           "port, PostgreSQL (when this machine runs it), and the API server / webserver with "
                           "STACK_API_HOST beyond loopback (HTTPS). A worker machine needs STATE/tls/ca.pem too")
    tls_names: str = _spec("STACK_TLS_NAMES", "",
                           help="more host names or IP addresses (comma-separated) the server certificate covers, as "
                                "workers reach this machine; loopback, this machine's name, STACK_API_HOST and the "
                                "addresses Redis and PostgreSQL listen on always are")

    # Redis
    redis_port: int = _spec("STACK_REDIS_PORT", 6380, kind=int, worker=True,
                            help="port of the Redis this project runs (not a user's 6379)")
    redis_password: str = _spec("STACK_REDIS_PASSWORD", secret=True, generate="password",
                                help="our Redis's requirepass")
    redis_airflow_password: str = _spec(
        "STACK_REDIS_AIRFLOW_PASSWORD", secret=True, generate="password", shared=True,
        help=f"password of the Redis ACL user {REDIS_AIRFLOW_USER!r} Airflow's processes log in as (Celery's broker, "
             f"the login limiter): no administrative or destructive commands")
    redis_host: str = _spec("STACK_REDIS_HOST", "127.0.0.1",
                            help="where Airflow reaches our Redis (loopback: its Unix socket; a worker: the stack's)")
    redis_bind: str = _spec("STACK_REDIS_BIND", "127.0.0.1 -::1",
                            help="where our Redis listens on TCP, for workers elsewhere (loopback only: no TCP)")

    # Celery
    worker_concurrency: int = _airflow_spec("AIRFLOW__CELERY__WORKER_CONCURRENCY", max(8, 2 * _cpu_count()), kind=int,
                                    help="task slots per Celery worker")
    celery_visibility_timeout: int = _airflow_spec(
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT", 86400, kind=int,
        help="seconds before Redis re-delivers an unacknowledged task (acks are late): above your longest task")
    flower_port: int = _spec("STACK_FLOWER_PORT", 5555, kind=int, help="Flower (run.celery --flower) port",
                             airflow="AIRFLOW__CELERY__FLOWER_PORT")
    flower_password: str = _spec("STACK_FLOWER_PASSWORD", secret=True, generate="password",
                                 help="Flower's basic-auth password (user: the Airflow admin's name)")

    # ---- derived values -------------------------------------------------------------------
    @property
    def paths(self) -> StateDir:
        """Every path under the state dir."""
        return StateDir(self.state_dir)

    @property
    def user_paths(self) -> UserStateDir:
        """Every path under the user's machine-wide folder."""
        return UserStateDir(self.user_state_dir)

    @property
    def backup_interval(self) -> float | None:
        """Seconds between scheduled backups; None: STACK_BACKUP_EVERY=off."""
        return parse_interval(self.backup_every)

    @property
    def dags_folder(self) -> Path:
        return self.project_dir / "dags"

    @property
    def plugins_folder(self) -> Path:
        return self.project_dir / "plugins"

    @property
    def serve_logs(self) -> bool:
        """Run Airflow's log servers: only when workers on other machines are let in (the API server
        listens beyond loopback); they listen on all interfaces, whatever is configured."""
        return self.api_host not in LOOPBACK

    @property
    def pg_is_local(self) -> bool:
        """PostgreSQL is this machine's to install, start and administer."""
        return self.pg_host in ("127.0.0.1", "localhost", "::1", "") and not self.pg_admin_dsn and not self.pg_dsn

    @property
    def tls_ca_file(self) -> Path:
        """The stack's CA certificate: every client verifies our Redis and PostgreSQL with it."""
        return self.paths.tls_ca

    @property
    def pg_tls_ours(self) -> bool:
        """PostgreSQL presents the stack's certificate: STACK_TLS, and the server is the stack's (not one
        named by a DSN of a managed server)."""
        return self.tls and not self.pg_dsn and not self.pg_admin_dsn

    @property
    def pg_ssl_mode(self) -> str:
        """The sslmode in effect: the chosen one, else verify-full when the stack serves TLS."""
        return self.pg_sslmode or ("verify-full" if self.pg_tls_ours else "prefer")

    @property
    def pg_ssl_root(self) -> str:
        """The CA file libpq verifies the server with ("": libpq's default, ~/.postgresql/root.crt)."""
        return self.pg_sslrootcert or (str(self.tls_ca_file) if self.pg_tls_ours else "")

    def pg_ssl_params(self) -> dict[str, str]:
        """libpq's TLS keywords for the Airflow role's connections; to the stack's TLS server over the network also
        libpq 16+'s require_auth=scram-sha-256 (not on loopback: README, "A worker on another machine")."""
        params = {"sslmode": self.pg_ssl_mode} | ({"sslrootcert": self.pg_ssl_root} if self.pg_ssl_root else {})
        return params | ({"require_auth": "scram-sha-256"} if self.pg_tls_ours and self.pg_host not in LOOPBACK else {})

    def pg_conninfo(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect as the Airflow role."""
        info = dict(host=self.pg_host, port=self.pg_port, dbname=self.pg_database, user=self.pg_user,
                    password=self.pg_password, connect_timeout=5, **self.pg_ssl_params())
        info.update(extra)
        return info

    def pg_url(self, scheme: str) -> str:
        """The Airflow role's database as a URL (``scheme``: SQLAlchemy's dialect+driver or Celery's db+...)."""
        return (f"{scheme}://{quote(self.pg_user, safe='')}:{quote(self.pg_password or '', safe='')}"
                f"@{_url_host(self.pg_host)}:{self.pg_port}/{quote(self.pg_database, safe='')}"
                f"?{urlencode(self.pg_ssl_params(), quote_via=quote)}")

    @property
    def redis_socket_fits(self) -> bool:
        """The socket's path fits in a Unix socket address (else our Redis listens on TCP loopback instead)."""
        return len(os.fsencode(str(self.paths.redis_socket))) < SUN_PATH_BYTES

    @property
    def redis_tcp(self) -> bool:
        """Our Redis has a TCP port: for other machines (a bind beyond loopback), or if its socket path is too long."""
        return any(a.removeprefix("-") not in LOOPBACK for a in self.redis_bind.split()) or not self.redis_socket_fits

    @property
    def redis_via_socket(self) -> bool:
        """Clients here reach our Redis through its Unix socket (0700 in the 0700 state dir), a worker its TCP port."""
        return self.redis_host in LOOPBACK and self.redis_socket_fits

    @property
    def redis_address(self) -> str:
        """Where clients here reach our Redis, for messages."""
        return str(self.paths.redis_socket) if self.redis_via_socket else f"{self.redis_host}:{self.redis_port}"

    def _redis_url(self, user: str, password: str | None, db: int, socket_scheme: str) -> str:
        """Through the socket (kombu's redis+socket, limits' redis+unix), else TCP (TLS with STACK_TLS)."""
        auth = f"{user}:{quote(password or '', safe='')}"
        if self.redis_via_socket:
            db_key = "virtual_host" if socket_scheme == "redis+socket" else "db"
            return f"{socket_scheme}://{auth}@{quote(str(self.paths.redis_socket))}?{db_key}={db}"
        url = f"{'rediss' if self.tls else 'redis'}://{auth}@{_url_host(self.redis_host)}:{self.redis_port}/{db}"
        if self.tls:  # redis-py reads these from the URL: the server is verified against the stack's CA
            url += "?" + urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": str(self.tls_ca_file)},
                                   quote_via=quote)
        return url

    def airflow_redis_url(self, db: int) -> str:
        """Celery's broker URL (and the stack's pings): the ACL user Airflow logs in as (no CONFIG, FLUSHALL ...)."""
        return self._redis_url(REDIS_AIRFLOW_USER, self.redis_airflow_password, db, "redis+socket")

    @property
    def limiter_storage_uri(self) -> str:
        return self.ratelimit_storage_uri or self._redis_url(REDIS_AIRFLOW_USER, self.redis_airflow_password,
                                                             LIMITER_DB, "redis+unix")

    @property
    def api_tls(self) -> bool:
        """The web component serves HTTPS (the stack's certificate): STACK_TLS and STACK_API_HOST beyond loopback."""
        return self.tls and self.api_host not in LOOPBACK

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "::", "") else self.api_host
        return f"{'https' if self.api_tls else 'http'}://{_url_host(host)}:{self.api_port}"

    @staticmethod
    def url_host(host: str) -> str:
        return _url_host(host)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def specs() -> dict[str, Spec]:
    """Setting name -> its Spec, in declaration order."""
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(Settings)}


def help_for(name: str, more: str = "") -> str:
    """A task flag's help that mirrors a setting: the setting's help, its default and its name."""
    spec = specs()[name]
    default = "" if spec.default in (None, "") else f"default {spec.default}, "
    return f"{more or spec.help} ({default}{spec.env})"


def shared_secret_names() -> list[str]:
    """The secrets every Airflow process must share (a worker on another machine needs them too)."""
    return [name for name, spec in specs().items() if spec.shared]


def missing_shared_secrets(settings: Settings) -> list[str]:
    """The environment names of the shared secrets ``settings`` lacks."""
    all_specs = specs()
    return [all_specs[name].env for name in shared_secret_names() if not getattr(settings, name)]
