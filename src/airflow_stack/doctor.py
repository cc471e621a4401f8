"""`invoke doctor`: proves the production warnings are gone, and says how to fix what is not.

Every check reads the running system itself (process environments, the job table, Redis, sockets),
not just our configuration: a stack started by hand with other settings is caught too. Each check
returns pass, warn or fail, a detail line (never a secret) and, unless it passes, the one command
that fixes it. A warning is printed but does not make doctor fail.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import stat
import sys
import urllib.parse
from dataclasses import asdict, dataclass

import psutil
import psycopg
import redis

from . import airflow_config, memcached_server, netutil, postgres, redis_server, registry, supervisor
from . import settings as settings_mod
from . import status as status_mod
from .components import WORKER, WORKER_PREFIX
from .errors import StackError
from .settings import Settings

# a client address of its own, so the doctor's one login attempt never uses up a user's budget
PROBE_ADDRESS = "127.0.0.9"
MIN_FREE_DISK = 1 << 30
MIB = 1 << 20

LEVELS = ("pass", "warn", "fail")


@dataclass
class Check:
    name: str
    ok: bool  # False only for a failure: a warning keeps it True (and doctor's exit code 0)
    detail: str
    fix: str = ""
    level: str = ""  # pass, warn or fail; derived from ok unless given

    def __post_init__(self) -> None:
        if not self.ok:
            self.level = "fail"
        elif self.level not in LEVELS[:2]:
            self.level = "pass"


def warning(name: str, detail: str, fix: str) -> Check:
    return Check(name, True, detail, fix, level="warn")


def check_database(settings: Settings, envs: dict[str, dict[str, str]]) -> Check:
    urls = {env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "") for env in envs.values()}
    if any(not url.startswith("postgresql") for url in urls):
        return Check("metadata database", False, "a running component uses SQLite (or no database URL)",
                     "invoke stop && invoke up")
    ok, reason = postgres.ping(settings)
    if not ok:
        return Check("metadata database", False, f"PostgreSQL not reachable ({reason})", "invoke setup.postgres")
    return Check("metadata database", True, f"PostgreSQL {settings.pg_host}:{settings.pg_port}/{settings.pg_database}")


def check_executor(settings: Settings, envs: dict[str, dict[str, str]]) -> Check:
    executors = {env.get("AIRFLOW__CORE__EXECUTOR", "") for env in envs.values()} or {
        airflow_config.EXECUTOR_CLASSES[settings.executor]}
    bad = executors - set(airflow_config.EXECUTOR_CLASSES.values())
    if bad or len(executors) > 1:
        return Check("executor", False, f"running with {', '.join(sorted(executors))}", "invoke stop && invoke up")
    return Check("executor", True, executors.pop())


def check_role(settings: Settings) -> Check:
    try:
        with psycopg.connect(**settings.pg_conninfo(connect_timeout=3)) as conn:
            superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    except psycopg.Error:
        return Check("database role", False, "cannot log in as the Airflow role", "invoke setup.postgres")
    if superuser:
        return Check("database role", False, f"{settings.pg_user} is a superuser",
                     "set STACK_PG_USER to a new role name, then invoke setup.postgres")
    return Check("database role", True, f"{settings.pg_user} is not a superuser")


def password_refused(settings: Settings) -> bool:
    """Our Redis refuses the configured password: the checks that read Redis with it cannot tell more."""
    try:
        redis_server.client(settings).ping()
    except redis.AuthenticationError:
        return True
    except redis.RedisError:
        pass  # not answering: check_redis says so
    return False


# what the checks that read Redis with the configured password say when it is refused
AFTER_PASSWORD = "fix the redis password check first"


def check_redis(settings: Settings, refused: bool = False) -> list[Check]:
    proc = supervisor.running(settings, redis_server.NAME)
    if proc is None:
        return [Check("redis", False, f"our Redis is not running on port {settings.redis_port}", "invoke setup.redis")]
    if refused:
        # not `invoke up` or `setup.redis` alone: they would restart our Redis with this password, and the
        # running Airflow processes keep the one they were started with
        return [Check("redis password", False, "our Redis refuses STACK_REDIS_PASSWORD as it is set now "
                      f"(environment or {settings.env_file.name}): it runs with another one",
                      f"set back the password our Redis runs with (requirepass in {redis_server.conf_path(settings)});"
                      " to change it on purpose: invoke setup.redis && invoke stop && invoke up")]
    checks = []
    try:
        redis_server.client(settings, password=None).ping()
        checks.append(Check("redis password", False, "Redis answers without a password", "invoke setup.redis"))
    except redis.AuthenticationError:
        checks.append(Check("redis password", True, "unauthenticated clients are refused"))
    except redis.RedisError as exc:
        checks.append(Check("redis password", False, f"Redis not answering ({exc.__class__.__name__})",
                            "invoke setup.redis"))
    checks.append(check_redis_acl(settings))
    wanted = {addr.lstrip("-") for addr in settings.redis_bind.split()}
    listening = _listening(proc.pid)
    extra = listening - wanted - ({"0.0.0.0", "::"} if wanted & {"0.0.0.0", "::", "*"} else set())
    checks.append(Check("redis listens", not extra and bool(listening),
                        f"on {', '.join(sorted(listening)) or 'nothing'} (configured: {settings.redis_bind})",
                        "" if not extra else "invoke setup.redis"))
    return checks


# what Airflow's Redis user must be refused, and what Celery's broker and the limiter need (ACL DRYRUN: the
# default user asks Redis whether the ACL user could run it, without running anything)
REDIS_REFUSED = (("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("ACL", "LIST"), ("DEBUG", "SLEEP", "0"),
                 ("SHUTDOWN",), ("MODULE", "LIST"))
REDIS_NEEDED = (("LPUSH", "celery", "x"), ("BRPOP", "celery", "1"), ("PUBLISH", "celeryev", "x"),
                ("EVALSHA", "0" * 40, "1", "LIMITS:x"), ("SET", "unacked_mutex", "x", "NX"))


def check_redis_acl(settings: Settings) -> Check:
    """Airflow's Redis user can do what Celery and the limiter do, and is refused what an admin does."""
    name, user = "redis acl", settings_mod.REDIS_AIRFLOW_USER
    fix = "invoke setup.redis (it writes the ACL user into redis.conf and restarts our Redis), then invoke up"
    try:
        redis_server.airflow_client(settings).ping()
        admin = redis_server.client(settings)

        def allowed(command: tuple[str, ...]) -> bool:
            return admin.execute_command("ACL", "DRYRUN", user, *command) in (b"OK", "OK")

        granted = [" ".join(cmd[:2]) if cmd[0] in ("CONFIG", "ACL", "MODULE") else cmd[0]
                   for cmd in REDIS_REFUSED if allowed(cmd)]
        missing = [cmd[0] for cmd in REDIS_NEEDED if not allowed(cmd)]
    except redis.AuthenticationError:
        return Check(name, False, f"the ACL user {user!r} cannot log in", fix)
    except redis.RedisError as exc:
        return Check(name, False, f"cannot check the ACL ({str(exc).splitlines()[0][:80]})", fix)
    if granted or missing:
        what = [f"may run {', '.join(granted)}"] if granted else []
        what += [f"may not run {', '.join(missing)}"] if missing else []
        return Check(name, False, f"Airflow's Redis user {user!r} {' and '.join(what)}", fix)
    return Check(name, True, f"Airflow logs in as {user!r}: CONFIG, FLUSHALL, ACL, DEBUG, SHUTDOWN, MODULE refused")


def _listening(pid: int) -> set[str]:
    """The addresses process ``pid`` listens on (empty when it is gone or not ours to read)."""
    try:
        return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return set()


def _beyond_loopback(addresses: set[str] | list[str]) -> list[str]:
    return sorted(a for a in addresses if a and a not in settings_mod.LOOPBACK and not a.startswith("127."))


def check_encryption(settings: Settings) -> Check:
    """Whatever listens beyond loopback must not carry passwords and data in plain text."""
    name, fix = "network encryption", ("set STACK_TLS=true in .env, then invoke setup.redis && invoke setup.postgres "
                                       "&& invoke stop && invoke up")
    plain = []
    proc = supervisor.running(settings, redis_server.NAME)
    if proc is not None and not settings.tls and (remote := _beyond_loopback(_listening(proc.pid))):
        plain.append(f"Redis on {', '.join(remote)}")
    encrypted, listen = True, ""
    if settings.pg_is_local:
        with contextlib.suppress(psycopg.Error), psycopg.connect(**settings.pg_conninfo(connect_timeout=3)) as conn:
            listen = conn.execute("SHOW listen_addresses").fetchone()[0]
            encrypted = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
        remote = _beyond_loopback([a.strip() for a in listen.split(",")])
        if remote and not settings.pg_tls_ours:
            plain.append(f"PostgreSQL on {', '.join(remote)}")
    elif settings.pg_ssl_mode in ("disable", "allow", "prefer"):
        plain.append(f"PostgreSQL at {settings.pg_host} with sslmode={settings.pg_ssl_mode} (not verified)")
    if settings.api_host not in settings_mod.LOOPBACK:
        # Airflow's API server speaks HTTP here: its task tokens cross the network readable
        plain.append(f"the API server on {settings.api_host}:{settings.api_port} (HTTP)")
        if len(plain) == 1:
            fix = ("workers elsewhere reach the API server in plain HTTP: keep them on a network you trust, or "
                   "put a TLS proxy in front and point their STACK_API_HOST at it")
    if plain:
        return warning(name, f"plain text beyond loopback: {'; '.join(plain)}", fix)
    if settings.tls:
        return Check(name, encrypted, f"Redis and PostgreSQL over TLS, verified with {settings.tls_ca_file}"
                     if encrypted else "the Airflow role's connection to PostgreSQL is not encrypted",
                     "" if encrypted else "invoke setup.postgres")
    return Check(name, True, "nothing of ours listens beyond loopback")


def check_limiter(settings: Settings, envs: dict[str, dict[str, str]], refused: bool = False) -> Check:
    line = registry.line(settings)
    web = line.web.name
    env = envs.get(web)
    if env is None:
        return Check("login rate limits", False, f"{web} is not running", "invoke up")
    if refused:  # the limiter URI holds the password too: comparing or probing it tells nothing more
        return Check("login rate limits", False, "not probed: our Redis refuses the configured password",
                     AFTER_PASSWORD)
    uri = env.get("STACK_RATELIMIT_STORAGE_URI", "")
    scheme = uri.split(":", 1)[0]
    if scheme in ("", "memory"):
        return Check("login rate limits", False, f"{web} keeps them in memory: each worker and restart "
                     "counts from zero", f"unset STACK_RATELIMIT_STORAGE_URI, then invoke stop -c {web} && invoke up")
    ours_memcached = scheme == memcached_server.SCHEME and memcached_server.managed(settings)
    if scheme not in ("redis", "rediss") and not ours_memcached:
        return Check("login rate limits", True, f"kept in {scheme} (shared storage you chose; not probed)")
    expected = supervisor.fingerprint(settings, {"STACK_RATELIMIT_STORAGE_URI": settings.limiter_storage_uri})
    if uri != expected["STACK_RATELIMIT_STORAGE_URI"]:
        return Check("login rate limits", False, f"{web} runs with another limiter storage than configured",
                     f"invoke stop -c {web} && invoke up")
    if ours_memcached:
        try:
            _probe_login(settings, line.rest.login_path)
            counted = [key for key in memcached_server.keys(settings) if PROBE_ADDRESS in key]
        except (OSError, http.client.HTTPException) as exc:
            return Check("login rate limits", False, f"probe failed ({exc.__class__.__name__})",
                         "invoke setup.memcached && invoke up")
        if not counted:
            return Check("login rate limits", False, "a login attempt left no counter in our memcached",
                         f"invoke setup.airflow && invoke stop -c {web} && invoke up")
        return Check("login rate limits", True, f"kept in our memcached ({settings.limiter_storage_uri}); a probe "
                                                f"login counted there")
    db_path = urllib.parse.urlsplit(settings.limiter_storage_uri).path.strip("/")
    limiter_db = int(db_path) if db_path.isdigit() else 0
    try:
        _probe_login(settings, line.rest.login_path)
        keys = redis_server.client(settings, db=limiter_db).keys(f"LIMITS*{PROBE_ADDRESS}*")
    except (OSError, http.client.HTTPException, redis.RedisError) as exc:
        return Check("login rate limits", False, f"probe failed ({exc.__class__.__name__})", "invoke up")
    if not keys:
        return Check("login rate limits", False, "a login attempt left no LIMITS key in our Redis",
                     f"invoke setup.airflow && invoke stop -c {web} && invoke up")
    return Check("login rate limits", True, f"kept in our Redis (DB {limiter_db}); a probe login counted there")


def _probe_login(settings: Settings, path: str) -> int:
    """One failed login from PROBE_ADDRESS, as a browser sends it (session cookie + CSRF token):
    without them CSRF protection answers 400 before Flask-Limiter counts anything."""

    def request(method: str, body: str = "", headers: dict[str, str] | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", settings.api_port, timeout=10,
                                          source_address=(PROBE_ADDRESS, 0))
        try:
            conn.request(method, path, body or None, headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Set-Cookie") or "", resp.read().decode(errors="replace")
        finally:
            conn.close()

    _, cookie, page = request("GET")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    body = urllib.parse.urlencode({"username": "airflow-stack-doctor", "password": "-",
                                   "csrf_token": token.group(1) if token else ""})
    status, _, _ = request("POST", body, {"Content-Type": "application/x-www-form-urlencoded",
                                          "Cookie": cookie.split(";", 1)[0]})
    return status


def check_files(settings: Settings) -> Check:
    loose = []
    for path in (settings.env_file, redis_server.conf_path(settings)):
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            loose.append(str(path))
    if loose:
        return Check("secret files", False, f"readable by others: {', '.join(loose)}", f"chmod 600 {' '.join(loose)}")
    return Check("secret files", True, f"{settings.env_file.name} and redis.conf are 0600")


def check_shared_secrets(settings: Settings, envs: dict[str, dict[str, str]]) -> Check:
    env = airflow_config.environment(settings, registry.executor(settings))
    # the settings that carry a secret every process must share (keys, and URLs with a password)
    shared = [getattr(settings, name) for name in settings_mod.shared_secret_names()]
    keys = {key for key, value in env.items() if any(secret and secret in value for secret in shared)}
    expected = supervisor.fingerprint(settings, env)
    differ = sorted({name for name, got in envs.items() for key in keys if got.get(key) != expected[key]})
    source = settings.env_file.name
    if differ:
        return Check("shared secrets", False, f"{', '.join(differ)} run with other secrets than {source}",
                     f"invoke stop -c {differ[0]} && invoke up")
    return Check("shared secrets", True, f"all {len(envs)} Airflow processes use the secrets in {source}")


def check_components(settings: Settings, refused: bool = False) -> list[Check]:
    checks = []
    for row in status_mod.rows(settings):
        if row.name in (status_mod.POSTGRESQL, redis_server.NAME):  # they have checks of their own
            continue
        fix = "" if row.healthy else ("invoke up" if not row.up else f"invoke logs -c {row.name}")
        if refused and row.up and not row.healthy and row.detail.startswith("broker unreachable"):
            fix = AFTER_PASSWORD  # the Celery ping goes through our Redis with the configured password
        checks.append(Check(row.name, row.healthy, row.detail, fix))
    return checks


def check_python(settings: Settings) -> Check:
    try:
        settings.line.check_python()
    except StackError as err:
        return Check("python", False, str(err).split(";")[0], "rm -rf .venv && PYTHON=python3.12 scripts/up")
    return Check("python", True, f"{sys.version.split()[0]} is supported by Airflow {settings.airflow_line}")


def check_ports(settings: Settings, running: dict[str, supervisor.Running]) -> Check:
    executor = registry.executor(settings)
    taken = []
    for comp in registry.line(settings).for_executor(executor):
        if comp.name in running:
            continue
        for setting, port in comp.listen_ports(settings, executor):
            if not netutil.port_bindable(port, "0.0.0.0"):
                taken.append(f"{port} ({comp.name}, STACK_{setting.upper()})")
    if taken:
        return Check("ports", False, f"taken by other programs: {', '.join(taken)}",
                     "free them, or set the named settings to free ports")
    return Check("ports", True, "every port is free or ours")


def check_disk(settings: Settings) -> Check:
    where = settings.log_dir
    while not where.exists() and where != where.parent:  # doctor reads: it creates no folder
        where = where.parent
    free = shutil.disk_usage(where).free
    ok = free >= MIN_FREE_DISK
    return Check("disk", ok, f"{free / (1 << 30):.1f} GiB free for logs in {settings.log_dir}",
                 "" if ok else "free space, or move STACK_STATE_DIR to a larger disk")


def _flag_value(argv: tuple[str, ...], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def _as_slots(value: object, default: int) -> int:
    try:
        return max(1, int(str(value)))
    except ValueError:
        return default


def task_slots(settings: Settings, executor: str, running: dict[str, supervisor.Running]) -> tuple[int, str, str]:
    """How many tasks could run at once on this machine: (slots, where that comes from, the setting
    that bounds it). Read from what the running processes were started with, else from the settings."""
    scheduler = running.get("scheduler")
    parallelism = _as_slots(scheduler.env.get("AIRFLOW__CORE__PARALLELISM") if scheduler else None,
                            settings.parallelism)
    if executor != "celery":
        return parallelism, f"parallelism {parallelism}", "AIRFLOW__CORE__PARALLELISM"
    workers = {name: proc for name, proc in running.items()
               if name == WORKER.name or name.startswith(WORKER_PREFIX)}
    if workers:
        concurrency = sum(_as_slots(_flag_value(proc.argv, "--concurrency"), settings.worker_concurrency)
                          for proc in workers.values())
        source = f"concurrency {concurrency} of {len(workers)} local Celery worker{'s' * (len(workers) > 1)}"
    else:
        concurrency = settings.worker_concurrency
        source = f"worker concurrency {concurrency}"
    if parallelism < concurrency:  # the scheduler never runs more than parallelism at once
        return parallelism, f"parallelism {parallelism}, below the {source}", "AIRFLOW__CORE__PARALLELISM"
    return concurrency, source, "AIRFLOW__CELERY__WORKER_CONCURRENCY"


def memory_verdict(slots: int, source: str, setting: str, task_mib: float, available: int) -> Check:
    """Warn when the task slots that could run at once need more memory than is available."""
    need, have = slots * task_mib, available / MIB
    detail = f"{slots} task slots ({source}) x {task_mib:.0f} MiB = {need:.0f} MiB; {have:.0f} MiB available"
    if need <= have:
        return Check("memory", True, detail)
    fit = max(1, int(have // task_mib))
    return warning("memory", f"{detail}: tasks may be killed for lack of memory",
                   f"set {setting} to {fit} (or less) in .env, then invoke stop && invoke up")


def check_memory(settings: Settings, running: dict[str, supervisor.Running]) -> Check:
    executor, line = registry.executor(settings), registry.line(settings)
    slots, source, setting = task_slots(settings, executor, running)
    task_mib = line.task_pss_mib.get(executor, max(line.task_pss_mib.values()))
    return memory_verdict(slots, source, setting, task_mib, psutil.virtual_memory().available)


def run_all(settings: Settings) -> list[Check]:
    running = registry.running(settings)
    # what each process was started with, as its launcher recorded it (secrets as hashes): reading
    # /proc/PID/environ fails for processes that set their title (setproctitle overwrites it)
    envs = {name: proc.env for name, proc in running.items()}
    refused = password_refused(settings)
    checks: list[Check] = [check_database(settings, envs), check_executor(settings, envs), check_role(settings)]
    checks += check_redis(settings, refused)
    checks.append(check_encryption(settings))
    checks += [check_limiter(settings, envs, refused), check_files(settings), check_shared_secrets(settings, envs)]
    checks += check_components(settings, refused)
    checks += [check_python(settings), check_ports(settings, running), check_disk(settings),
               check_memory(settings, running)]
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        line = f"{check.level.upper():<4}  {check.name:<18} {check.detail}"
        if check.level != "pass" and check.fix:
            line += f"\n      fix: {check.fix}"
        lines.append(line)
    failed = [c.name for c in checks if c.level == "fail"]
    warned = [c.name for c in checks if c.level == "warn"]
    summary = (f"doctor: all {len(checks)} checks pass" if not failed
               else f"doctor: {len(failed)} of {len(checks)} checks fail ({', '.join(failed)})")
    if warned:
        summary += f"; {len(warned)} warning{'s' * (len(warned) > 1)} ({', '.join(warned)})"
    lines.append(summary)
    return "\n".join(lines)


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]

