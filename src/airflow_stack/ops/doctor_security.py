"""doctor's security checks: our Redis refuses strangers and lets Airflow's user do only what it needs,
Airflow's database role needs its password on loopback, nothing of ours speaks plain text beyond loopback,
the login limiter counts in shared storage (a probe login proves it, and a wrong password on the API counts
there too), secret files are private, and every
Airflow process runs with the secrets in .env."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import ssl
import stat
import urllib.parse

import psutil
import psycopg
import redis

from .. import settings as settings_mod
from ..apache_airflow import config
from ..apache_airflow.profiles import RestAPI
from ..errors import StackError
from ..runtime import registry, supervisor
from ..services import host, limiter, memcached_server, redis_server
from ..settings import Settings
from .checks import Check, warning

# a client address of its own, so the doctor's login attempts (the form, the API) never use up a user's budget
PROBE_ADDRESS = "127.0.0.9"
PROBE_USER = "airflow-stack-doctor"


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
        return [Check("redis", False, f"our Redis is not running ({redis_server.where(settings)})",
                      "invoke setup.redis")]
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
    checks.append(check_redis_listens(settings, proc.pid))
    return checks


def check_redis_listens(settings: Settings, pid: int) -> Check:
    """Our Redis is reached through its private Unix socket; on TCP only where other machines need it."""
    name, fix = "redis listens", "invoke setup.redis"
    listening = _listening(pid)
    sock = settings.paths.redis_socket
    private = sock.is_socket() and stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0 if sock.exists() else False
    if settings.redis_socket_fits and not private:
        return Check(name, False, f"its Unix socket {sock} is " + ("open to others" if sock.exists() else "missing"),
                     fix)
    on_socket = f"on {sock} (only you)" if settings.redis_socket_fits else "on no Unix socket"
    if not settings.redis_tcp:
        return Check(name, not listening, f"{on_socket}; TCP " + (f"on {', '.join(sorted(listening))}, not off"
                                                               if listening else "off"), fix if listening else "")
    wanted = {addr.lstrip("-") for addr in settings.redis_bind.split()}
    extra = listening - wanted - ({"0.0.0.0", "::"} if wanted & {"0.0.0.0", "::", "*"} else set())
    detail = f"{on_socket}; TCP on {', '.join(sorted(listening)) or 'nothing'} (configured: {settings.redis_bind})"
    if not extra and listening and not settings.redis_socket_fits:  # the path is too long: TCP on loopback instead
        return warning(name, detail, "a shorter STACK_STATE_DIR (its socket path fits in "
                                     f"{settings_mod.SUN_PATH_BYTES - 1} bytes), then invoke setup.redis")
    return Check(name, not extra and bool(listening), detail, "" if not extra else fix)


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
    if settings.api_host not in settings_mod.LOOPBACK and not settings.api_tls:
        # without STACK_TLS the API server speaks HTTP here: logins and task tokens cross the network readable
        plain.append(f"the API server on {settings.api_host}:{settings.api_port} (HTTP)")
    if settings.serve_logs:
        # Airflow's log servers (serve-logs) have no TLS option in any release: log text travels readable
        # (each request is signed with the shared secret)
        ports = f"{settings.worker_log_port}, {settings.trigger_log_port}"
        plain.append(f"Airflow's log servers on ports {ports} (HTTP: Airflow cannot serve them over TLS)")
        if len(plain) == 1:
            fix = ("task logs cross the network readable: keep workers on a network you trust, or send task logs "
                   "to remote logging ([logging] remote_logging) instead")
    if plain:
        return warning(name, f"plain text beyond loopback: {'; '.join(plain)}", fix)
    if settings.tls:
        what = "Redis, PostgreSQL and the API server" if settings.api_tls else "Redis and PostgreSQL"
        return Check(name, encrypted, f"{what} over TLS, verified with {settings.tls_ca_file}"
                     if encrypted else "the Airflow role's connection to PostgreSQL is not encrypted",
                     "" if encrypted else "invoke setup.postgres")
    return Check(name, True, "nothing of ours listens beyond loopback")


# a pgpass path that cannot exist (a file below /dev/null): the probe must send no password, not one from ~/.pgpass
NO_PASSFILE = "/dev/null/airflow-stack-no-pgpass"


def check_loopback_password(settings: Settings) -> Check:
    """Airflow's role must give its password on loopback: a `trust` rule (Homebrew's initdb writes them for
    127.0.0.1 and ::1) lets anyone on this machine in as it. Probed: a login with no password must be refused
    (a client that offers none is not logged by the server; a wrong password would be)."""
    name = "database password"
    if not settings.pg_is_local:
        return Check(name, True, f"not probed: PostgreSQL at {settings.pg_host} is not this machine's")
    open_on = []
    for address in ("127.0.0.1", "::1"):
        with contextlib.suppress(psycopg.Error), psycopg.connect(**settings.pg_conninfo(
                host=address, password="", passfile=NO_PASSFILE, sslmode="prefer", connect_timeout=3)):
            open_on.append(address)
    if not open_on:
        return Check(name, True, f"{settings.pg_user} must give its password on loopback")
    try:
        ours = host.detect().trusts_loopback  # the server's pg_hba is one the stack amends (Homebrew)
    except StackError:
        ours = False
    fix = ("invoke setup.postgres (it puts scram-sha-256 lines for the role above the trust rules)" if ours else
           "change the trust rules for 127.0.0.1/32 and ::1/128 in pg_hba.conf (SHOW hba_file) to scram-sha-256, "
           "then SELECT pg_reload_conf()")
    return Check(name, False, f"PostgreSQL lets {settings.pg_user} in on {' and '.join(open_on)} with no password "
                              f"(a trust rule in pg_hba.conf): anyone on this machine can be Airflow", fix)


def check_limiter(settings: Settings, envs: dict[str, dict[str, str]], refused: bool = False) -> Check:
    line = registry.line(settings)
    web = line.web.name
    env = envs.get(web)
    if env is None:
        return Check("login rate limits", False, f"{web} is not running", "invoke up")
    if refused:  # the limiter URI holds the password too: comparing or probing it tells nothing more
        return Check("login rate limits", False, "not probed: our Redis refuses the configured password",
                     AFTER_PASSWORD)
    uri = env.get(config.LIMITER_VAR, "")
    scheme = uri.split(":", 1)[0]
    if scheme in ("", "memory"):
        return Check("login rate limits", False, f"{web} keeps them in memory: each worker and restart "
                     "counts from zero", f"unset STACK_RATELIMIT_STORAGE_URI, then invoke stop -c {web} && invoke up")
    ours_memcached = scheme == memcached_server.SCHEME and memcached_server.managed(settings)
    if scheme not in limiter.REDIS_SCHEMES and not ours_memcached:
        return Check("login rate limits", True, f"kept in {scheme} (shared storage you chose; not probed)")
    expected = supervisor.fingerprint(settings, {config.LIMITER_VAR: settings.limiter_storage_uri})
    if uri != expected[config.LIMITER_VAR]:
        return Check("login rate limits", False, f"{web} runs with another limiter storage than configured",
                     f"invoke stop -c {web} && invoke up")
    if ours_memcached:
        where, fix = f"our memcached ({settings.limiter_storage_uri})", "invoke setup.memcached && invoke up"

        def count() -> int:
            return sum(memcached_server.counter(settings, key) for key in memcached_server.keys(settings)
                       if _is_probe_counter(key))
    else:
        limiter_db = limiter.redis_db(settings)
        client = redis_server.client(settings, db=limiter_db)
        where, fix = f"our Redis (DB {limiter_db})", "invoke up"

        def count() -> int:
            keys = [key for key in client.keys(f"LIMITS*/{PROBE_ADDRESS}/*") if _is_probe_counter(key.decode())]
            return sum(int(value) for value in client.mget(keys) if value) if keys else 0
    api = _api_login(line.rest)
    try:
        form = _probe_login(settings, line.rest.login_path)
        before = count()
        status = _probe_api_login(settings, line.rest)
        after = count()
    except (OSError, http.client.HTTPException, redis.RedisError) as exc:
        return Check("login rate limits", False, f"probe failed ({exc.__class__.__name__})", fix)
    if not before:
        return Check("login rate limits", False, f"a login attempt (HTTP {form}) left no counter in {where}",
                     f"invoke setup.airflow && invoke stop -c {web} && invoke up")
    # counted once more, or refused since the probe address's budget is spent (a window that ended between the
    # two reads starts again at 1)
    if status != 429 and not (after and after != before):
        return Check("login rate limits", False, f"a wrong password on {api} was not counted with the login form's "
                     f"(answered {status})", f"invoke setup.airflow && invoke stop -c {web} && invoke up")
    return Check("login rate limits", True, f"kept in {where}; a probe login counted there, and a wrong password "
                                            f"on {api} too")


def _is_probe_counter(key: str) -> bool:
    # memcached keeps each counter's expiry time under the counter's key + "/expires"
    return f"/{PROBE_ADDRESS}/" in key and not key.endswith("/expires")


def _api_login(rest: RestAPI) -> str:
    """The API's way to try a password: its token route, or basic auth on every request."""
    return f"POST {rest.token_path}" if rest.token_path else f"the API's basic auth ({rest.prefix})"


def _request(settings: Settings, method: str, path: str, body: str = "",
             headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """One HTTP request to the web component from PROBE_ADDRESS: (status, Set-Cookie, body); HTTPS, the server
    verified with the stack's CA, when it serves TLS."""
    where = {"host": "127.0.0.1", "port": settings.api_port, "timeout": 10, "source_address": (PROBE_ADDRESS, 0)}
    if settings.api_tls:
        context = ssl.create_default_context(cafile=str(settings.tls_ca_file))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(**where, context=context)
    else:
        conn = http.client.HTTPConnection(**where)
    try:
        conn.request(method, path, body or None, headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Set-Cookie") or "", resp.read().decode(errors="replace")
    finally:
        conn.close()


def _probe_login(settings: Settings, path: str) -> int:
    """One failed login from PROBE_ADDRESS, as a browser sends it (session cookie + CSRF token):
    without them CSRF protection answers 400 before Flask-Limiter counts anything."""
    _, cookie, page = _request(settings, "GET", path)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    body = urllib.parse.urlencode({"username": PROBE_USER, "password": "-",
                                   "csrf_token": token.group(1) if token else ""})
    # the Referer a browser sends: over HTTPS Flask-WTF refuses a form POST without one (WTF_CSRF_SSL_STRICT)
    referer = f"{'https' if settings.api_tls else 'http'}://127.0.0.1:{settings.api_port}{path}"
    status, _, _ = _request(settings, "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                           "Cookie": cookie.split(";", 1)[0], "Referer": referer})
    return status


def _probe_api_login(settings: Settings, rest: RestAPI) -> int:
    """One wrong password on the line's API from PROBE_ADDRESS; its status (401/403, or 429 once the budget is
    spent)."""
    if rest.token_path:
        body = json.dumps({"username": PROBE_USER, "password": "-"})
        return _request(settings, "POST", rest.token_path, body, {"Content-Type": "application/json"})[0]
    basic = base64.b64encode(f"{PROBE_USER}:-".encode()).decode()
    return _request(settings, "GET", f"{rest.prefix}/dags", headers={"Authorization": f"Basic {basic}"})[0]


def check_files(settings: Settings) -> Check:
    loose = []
    for path in (settings.env_file, redis_server.conf_path(settings)):
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            loose.append(str(path))
    if loose:
        return Check("secret files", False, f"readable by others: {', '.join(loose)}", f"chmod 600 {' '.join(loose)}")
    return Check("secret files", True, f"{settings.env_file.name} and redis.conf are 0600")


def check_shared_secrets(settings: Settings, envs: dict[str, dict[str, str]]) -> Check:
    env = config.environment(settings, registry.executor(settings))
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
