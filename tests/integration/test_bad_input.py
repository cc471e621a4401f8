"""The bad-input catalogue: each task given a wrong flag or value, a taken port, a missing binary, a
wrong password, a broken or unreadable .env, a file that is not what it should be, or a state it
cannot act in. Every case must end with a non-zero exit and exactly one line on stderr that says what
to do (the case's needles), no traceback, no secret in the output, and nothing changed: .env
byte-identical, the database's fingerprint the same, the running stack's processes the same."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from airflow_stack.apache_airflow import install, profiles
from airflow_stack.runtime import registry, supervisor
from airflow_stack.services import postgres, redis_server

from .conftest import EXECUTOR, LINE, Stack, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]
FINGERPRINT_TABLES = ("dag_run", "task_instance", "connection", "variable", "slot_pool")
OTHER_EXECUTOR = "celery" if EXECUTOR == "local" else "local"


def env_digest(stack) -> str:
    return hashlib.sha256(Path(stack.env["STACK_ENV_FILE"]).read_bytes()).hexdigest()


def assert_one_line_error(proc, *needles: str) -> str:
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert len(proc.stderr.strip().splitlines()) == 1, out
    for needle in needles:
        assert needle in proc.stderr, out
    return proc.stderr.strip()


def db_fingerprint(settings) -> dict[str, object]:
    """What bad input must never change: row counts of Airflow's main tables and the schema revision,
    read as the Airflow role."""
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        found: dict[str, object] = {
            table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
            for table in FINGERPRINT_TABLES}
        found["alembic_version"] = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    return found


def server_config_files(settings) -> list[Path]:
    """PostgreSQL's pg_hba.conf, postgresql.conf and postgresql.auto.conf (what ALTER SYSTEM writes), when
    this machine runs the server and we may read them (root: the tests' CI)."""
    if os.geteuid() != 0 or not settings.pg_is_local:
        return []
    found = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-p", str(settings.pg_port),
                            "-c", "SELECT current_setting('hba_file'), current_setting('config_file'), "
                                  "current_setting('data_directory') || '/postgresql.auto.conf'"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return [Path(path) for path in found.stdout.strip().split("|")] if found.returncode == 0 else []


def guarded_files(settings, bench) -> list[Path]:
    """Every file bad input must leave byte-identical: .env, redis.conf, airflow.cfg, the server's config, what
    the case adds, and every file of a second state dir it made."""
    files = [settings.env_file, redis_server.conf_path(settings), settings.paths.airflow_home / "airflow.cfg",
             *server_config_files(settings), *bench.guarded]
    if "home" in bench.values:
        files += [path for path in Path(bench.values["home"]).rglob("*") if path.is_file() and not path.is_symlink()]
    return list(dict.fromkeys(files))


def running_pids(settings) -> dict[str, int]:
    found = {name: proc.pid for name, proc in registry.running(settings).items()}
    for name in (redis_server.NAME, "backups"):
        proc = supervisor.running(settings, name)
        found |= {name: proc.pid} if proc else {}
    return found


@dataclass
class Bench:
    """What a case prepares: files, a port held by a program that is not ours, a second state dir."""

    stack: Stack
    tmp: Path
    values: dict[str, object] = field(default_factory=dict)  # formatted into the case's needles
    guarded: list[Path] = field(default_factory=list)  # more files that must stay byte-identical
    secrets: list[str] = field(default_factory=list)  # values that must not show in the output
    verify: Callable[[subprocess.CompletedProcess[str]], None] | None = None  # a last check of the outcome
    sockets: list[socket.socket] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # undo what a case set up, always

    def hold_port(self) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", free_ports(1)[0]))
        sock.listen()
        self.sockets.append(sock)
        return sock.getsockname()[1]

    def env_copy(self, extra: bytes) -> Path:
        """A copy of the stack's .env with ``extra`` appended (the stack's own is never edited)."""
        path = self.tmp / "env-copy"
        path.write_bytes(Path(self.stack.env["STACK_ENV_FILE"]).read_bytes() + extra)
        path.chmod(0o600)
        self.guarded.append(path)
        return path

    def other_state_dir(self, **env: object) -> dict[str, str]:
        """A second state dir with its own copy of .env, set up as another user's would be (Airflow's
        venv and the schema stamp are there, so a start gets as far as the ports); nothing runs from it."""
        settings = self.stack.settings()
        home = self.tmp / "other-state"
        (home / "airflow").mkdir(parents=True)
        shutil.copy2(settings.env_file, home / ".env")
        (home / install.venv(settings).name).symlink_to(install.venv(settings))
        shutil.copy2(settings.paths.airflow_home / ".airflow-stack-migrated.json", home / "airflow")
        # its Redis answers (the running stack's, through a link where its own socket would be): our Redis has
        # no TCP port to share, and the start must get past Redis's check to the ports
        (home / "redis").mkdir(mode=0o700)
        (home / "redis" / settings.paths.redis_socket.name).symlink_to(settings.paths.redis_socket)
        self.guarded.append(home / ".env")
        self.values["home"] = home
        return {"STACK_ENV_FILE": str(home / ".env"), "STACK_STATE_DIR": str(home)} | {
            key: str(value) for key, value in env.items()}

    def path_without(self, *programs: str) -> str:
        """A PATH with every program of the stack's PATH but ``programs``."""
        folder = self.tmp / "bin"
        folder.mkdir()
        for entry in self.stack.env["PATH"].split(os.pathsep):
            for program in (sorted(Path(entry).iterdir()) if Path(entry).is_dir() else []):
                link = folder / program.name
                if program.name not in programs and not link.is_symlink():
                    link.symlink_to(program)
        return str(folder)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for cleanup in self.cleanups:
            cleanup()


CASES = []


def case(*needles: str, stdout: tuple[str, ...] = ()):
    """Register a case: the builder returns (invoke arguments, environment); its name is the test id."""

    def register(build: Callable[[Bench], tuple[list[str], dict[str, str]]]):
        CASES.append(pytest.param(build, needles, stdout, id=build.__name__.replace("_", "-")))
        return build

    return register


# ---- wrong flags and values -------------------------------------------------------------------------
@case("'--prot'")
def unknown_flag(b):
    return ["setup.redis", "--prot", "1"], {}


@case("'foo'", "use one of: local, celery")
def executor_foo(b):
    return ["up", "--executor", "foo"], {}


@case("'2.9'", "use one of: , 3.3, 3.2, 3.1, 3.0, 2.11, 2.10")
def line_2_9(b):
    return ["up", "--line", "2.9"], {}


@case("STACK_API_PORT=70000", "use 1-65535")
def api_port_70000(b):
    return [f"run.{EXECUTOR}"], {"STACK_API_PORT": "70000"}


@case("'sometimes'", "verify-full")
def bad_sslmode(b):
    return ["setup.postgres", "--sslmode", "sometimes"], {}


@case("worker name 'w 2'", "letters, digits")
def bad_worker_name(b):
    return ["run.worker", "--name", "w 2"], {}


@case("queues 'a,,b'", "e.g. --queues default,gpu")
def bad_worker_queues(b):
    return ["run.worker", "--queues", "a,,b"], {}


@case("--concurrency 'many' is not a number", "e.g. --concurrency 8")
def worker_concurrency_not_a_number(b):
    return ["run.worker", "--concurrency", "many"], {}


@case("STACK_BACKUP_EVERY='soon' (environment): not an interval", "90s, 15m, 6h, 1d, or off")
def backup_every_soon(b):
    return ["up"], {"STACK_BACKUP_EVERY": "soon"}


@case("--timeout 'soon' is not a number", "e.g. --timeout 180")
def timeout_not_a_number(b):
    return ["up", "--timeout", "soon"], {}


@case("STACK_TRUSTED_PROXIES='bogus' (environment): 'bogus' is not an IP address or network",
      "e.g. STACK_TRUSTED_PROXIES=127.0.0.2,10.0.0.0/24")
def trusted_proxies_bogus(b):
    """Refused when the settings load, before anything is set up or started."""
    return ["up"], {"STACK_TRUSTED_PROXIES": "bogus"}


@case("192.0.2.7 is not an address of this machine", "e.g. '127.0.0.1 10.0.0.5'")
def redis_bind_elsewhere(b):
    return ["setup.redis", "--bind", "127.0.0.1 192.0.2.7"], {}


# ---- ports in use -----------------------------------------------------------------------------------
@case("port {port} is in use", "STACK_REDIS_PORT")
def redis_port_in_use(b):
    """Our Redis needs its TCP port only for other machines (--bind beyond loopback): then a taken one is
    refused before the bind is kept (without TCP it has no port to take: test_transport)."""
    b.values["port"] = b.hold_port()
    return ["setup.redis", "--port", str(b.values["port"]), "--bind", "127.0.0.1 127.0.0.2"], {}


@case("port {port} is taken", "STACK_PG_PORT")
def postgres_port_in_use(b):
    b.values["port"] = b.hold_port()
    return ["setup.postgres", "--port", str(b.values["port"])], {}


@case("port {port} ({web}) is held by pid {pid} (", "set STACK_API_PORT to a free port")
def component_port_in_use(b):
    port = b.hold_port()  # held by this test's own process: "another program"
    ports = dict(zip(("STACK_SCHEDULER_HEALTH_PORT", "STACK_WORKER_LOG_PORT", "STACK_TRIGGER_LOG_PORT",
                      "STACK_FLOWER_PORT"), free_ports(4), strict=True))
    b.values |= {"port": port, "web": profiles.of(b.stack.settings()).web.name, "pid": os.getpid()}
    return [f"run.{EXECUTOR}"], b.other_state_dir(STACK_API_PORT=port, **ports)


@case("port {port} ({component}) is held by pid", "set {setting} to a free port")
def another_state_dirs_stack(b):
    """Another user's state dir whose stack needs the ports this running stack holds: the message
    names the port, its setting, and the process holding it (the running stack's: its log in that state dir)."""
    settings = b.stack.settings()
    component, setting, port = next((comp.name, name, port)
                                    for comp in profiles.of(settings).for_executor(EXECUTOR)
                                    for name, port in comp.listen_ports(settings, EXECUTOR))
    leader = supervisor.running(settings, component).pid
    b.values |= {"component": component, "setting": f"STACK_{setting.upper()}", "port": port, "leader": leader}

    def names_the_running_stack(proc) -> None:
        assert f"pid {leader} (" in proc.stderr, proc.stderr
        assert f"writing to {settings.paths.log_file(component)}" in proc.stderr, proc.stderr

    b.verify = names_the_running_stack
    return [f"run.{EXECUTOR}"], b.other_state_dir()


@case("cannot connect to 127.0.0.3:{port}", "STACK_PG_ADMIN_DSN")
def postgres_host_unreachable(b):
    b.values["port"] = free_ports(1)[0]
    return ["setup.postgres", "--host", "127.0.0.3", "--port", str(b.values["port"])], {}


# ---- missing binaries -------------------------------------------------------------------------------
@case("pg_dump is not installed", "apt-get install postgresql-client")
def pg_dump_missing(b):
    return ["db.backup"], {"PATH": b.path_without("pg_dump", "pg_restore")}


# ---- wrong passwords --------------------------------------------------------------------------------
@case("cannot connect with STACK_PG_ADMIN_DSN", "check that DSN's host, user and password")
def wrong_admin_dsn_password(b):
    b.secrets.append("not-the-admin-password")
    return ["setup.postgres"], {
        "STACK_PG_ADMIN_DSN": "postgresql://postgres:not-the-admin-password@127.0.0.1:5432/postgres"}


@case("refused the password", "invoke setup.redis && invoke stop && invoke up")
def wrong_redis_password_for_run(b):
    b.secrets.append("not-the-redis-password")
    return [f"run.{EXECUTOR}"], {"STACK_REDIS_PASSWORD": "not-the-redis-password"}


@case("doctor: some checks fail", stdout=("FAIL  redis password", "refuses STACK_REDIS_PASSWORD",
                                          "invoke setup.redis && invoke stop && invoke up"))
def wrong_redis_password_for_doctor(b):
    b.secrets.append("not-the-redis-password")

    def no_fix_that_restarts_with_it(proc) -> None:  # `invoke up` alone would restart Redis with it
        fixes = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("fix:")]
        assert not [fix for fix in fixes if fix in ("fix: invoke up", "fix: invoke setup.redis")], fixes

    b.verify = no_fix_that_restarts_with_it
    return ["doctor"], {"STACK_REDIS_PASSWORD": "not-the-redis-password"}


# ---- a broken or unreadable .env --------------------------------------------------------------------
@case("line {line} is not KEY=VALUE", "fix or remove that line")
def env_malformed_line(b):
    path = b.env_copy(b"this line is not an assignment\n")
    b.values["line"] = len(path.read_bytes().splitlines())
    return ["setup.postgres"], {"STACK_ENV_FILE": str(path)}


@case("STACK_PG_PORT='five-four-three-two' (env-copy) is not a number")
def env_non_numeric_port(b):
    # (the test stack sets the ports it uses in the environment, which rightly wins over .env)
    return ["status"], {"STACK_ENV_FILE": str(b.env_copy(b"STACK_PG_PORT=five-four-three-two\n"))}


@case("it is a directory", "set STACK_ENV_FILE to your .env file")
def env_is_a_directory(b):
    (b.tmp / "env-dir").mkdir()
    return [f"run.{EXECUTOR}"], {"STACK_ENV_FILE": str(b.tmp / "env-dir")}


@case("is not UTF-8 text", "save it as UTF-8")
def env_not_utf8(b):
    return ["db.backup"], {"STACK_ENV_FILE": str(b.env_copy(b"STACK_PG_USER=\xff\xfe\n"))}


# ---- files that are not what they should be ---------------------------------------------------------
@case("no backup at", "list them: ls")
def restore_missing_backup(b):
    return ["db.restore", str(b.tmp / "none.dump"), "--yes"], {}


@case("is not a readable backup (pg_restore: error:", "give a file made by invoke db.backup")
def restore_corrupt_backup(b):
    # a pg_dump archive's magic bytes, then garbage: refused while Airflow runs, before "stop it first"
    (b.tmp / "corrupt.dump").write_bytes(b"PGDMPgarbage, not a dump\n")
    return ["db.restore", str(b.tmp / "corrupt.dump"), "--yes"], {}


@case("is not a SQLite database", "give the old Airflow's airflow.db")
def import_plain_text(b):
    (b.tmp / "notes.db").write_text("not sqlite at all\n")
    return ["db.import-sqlite", str(b.tmp / "notes.db")], {}


@case("is not an Airflow database (no alembic_version", "give the old Airflow's airflow.db")
def import_sqlite_without_airflow_tables(b):
    with sqlite3.connect(b.tmp / "other.db") as conn:
        conn.execute("CREATE TABLE t (x int)")
    return ["db.import-sqlite", str(b.tmp / "other.db")], {}


# ---- a state the task cannot act in -----------------------------------------------------------------
@case("stop it first", f"invoke up --executor {OTHER_EXECUTOR}")
def other_executor_while_running(b):
    return [f"run.{OTHER_EXECUTOR}"], {}


@case("no component 'nosuch'", "use one of:")
def stop_unknown_component(b):
    return ["stop", "-c", "nosuch"], {}


@case("no component 'nosuch'", "use one of:")
def logs_unknown_component(b):
    return ["logs", "-c", "nosuch"], {}


@case("re-run with --yes")
def drop_without_yes(b):
    return ["db.drop"], {}


@case("nobody can confirm here: re-run with --yes")
def clean_without_yes_or_terminal(b):
    env = b.other_state_dir()  # not running (the stack's own would say: stop it first)

    def nothing_removed(proc) -> None:
        assert (b.values["home"] / "airflow" / ".airflow-stack-migrated.json").exists()

    b.verify = nothing_removed
    return ["clean"], env


@case("the login limiter's storage (memcached://127.0.0.1:{port}, STACK_RATELIMIT_STORAGE_URI) does not answer")
def limiter_storage_unreachable(b):
    """Flask-Limiter would silently count in memory: refused before anything starts."""
    b.values["port"] = free_ports(1)[0]
    return [f"run.{EXECUTOR}"], {"STACK_RATELIMIT_STORAGE_URI": f"memcached://127.0.0.1:{b.values['port']}"}


# ---- down onto a schema a newer release migrated ----------------------------------------------------
def schema_comment(settings, text: str | None = None) -> str | None:
    """The mark on the schema (which release migrated it); with ``text``, set it (as the Airflow role)."""
    with psycopg.connect(**settings.pg_conninfo(), autocommit=True) as conn:
        if text is not None:
            conn.execute(sql.SQL("COMMENT ON TABLE alembic_version IS {}").format(text))
        return conn.execute("SELECT obj_description('alembic_version'::regclass, 'pg_class')").fetchone()[0]


def nothing_installed(b) -> None:
    """No venv appeared, airflow.cfg and webserver_config.py stayed as they were."""
    settings = b.stack.settings()
    venvs = sorted(p.name for p in settings.state_dir.glob("venv-airflow-*"))
    b.guarded += [settings.paths.airflow_home / "airflow.cfg", settings.paths.airflow_home / "webserver_config.py"]

    def same_venvs(proc) -> None:
        assert sorted(p.name for p in settings.state_dir.glob("venv-airflow-*")) == venvs

    b.verify = same_venvs


@case("was migrated by Airflow 99.0.0 (schema revision", "nothing was installed or changed", "invoke db.restore")
def setup_on_a_schema_a_newer_release_migrated(b):
    settings = b.stack.settings()
    mark = schema_comment(settings)
    assert mark and mark.startswith("airflow-stack: migrated by Airflow "), mark  # setup.airflow wrote it
    schema_comment(settings, "airflow-stack: migrated by Airflow 99.0.0")
    b.cleanups.append(lambda: schema_comment(settings, mark))
    nothing_installed(b)
    return ["setup.airflow"], {}


def release(line: str) -> tuple[int, ...]:
    return tuple(int(part) for part in profiles.get(line).default_version.split("."))


OLDER_LINES = [name for name in profiles.NAMES if release(name) < release(LINE)]
OLDER_PATCH = ".".join(map(str, (*release(LINE)[:2], release(LINE)[2] - 1))) if release(LINE)[2] else ""


if OLDER_PATCH:
    @case("Airflow {older} cannot run on it, so nothing was installed or changed")
    def an_older_patch_of_the_line_on_its_schema(b):
        """STACK_AIRFLOW_VERSION picks a release of the line: an older one than migrated the schema is
        refused before its constraints are even resolved."""
        b.values["older"] = OLDER_PATCH
        nothing_installed(b)
        constraints = b.stack.settings().state_dir / "constraints" / f"airflow-{OLDER_PATCH}.txt"

        def nothing_resolved(proc) -> None:
            assert not constraints.exists()

        checks = [b.verify, nothing_resolved]
        b.verify = lambda proc: [check(proc) for check in checks]
        return ["setup.airflow"], {"STACK_AIRFLOW_VERSION": OLDER_PATCH}
if OLDER_LINES:
    @case("Airflow {older}", "cannot run on it, so nothing was installed or changed")
    def up_with_an_older_line_on_a_running_stack(b):
        b.values["older"] = profiles.get(OLDER_LINES[0]).default_version
        nothing_installed(b)
        return ["up", "--line", OLDER_LINES[0]], {}


# ---- the release a project pins, and its .env (issue 24) ---------------------------------------------
def project_copy(b) -> Path:
    """A copy of the running stack's project (its own is never edited), to give the case a bad file in it."""
    root = b.tmp / "project copy"
    shutil.copytree(b.stack.env["STACK_PROJECT_DIR"], root)
    return root


@case("Airflow 3.1.99 does not exist on", "choose a published release, e.g. 3.1.8")
def a_dockerfile_naming_a_release_that_does_not_exist(b):
    root = project_copy(b)
    (root / "Dockerfile").write_text("FROM apache/airflow:3.1.99\n")
    nothing_installed(b)
    # the project's Dockerfile decides only when no setting names a release
    return ["up"], {"STACK_PROJECT_DIR": str(root), "STACK_AIRFLOW_LINE": None}


@case("line 2 is not KEY=VALUE", "fix or remove that line")
def a_project_env_line_that_is_not_key_value(b):
    root = project_copy(b)
    (root / ".env").write_text("AIRFLOW_VAR_FINE=1\nthis is not a setting\n")
    nothing_installed(b)
    return ["up"], {"STACK_PROJECT_DIR": str(root)}


@case("sets AIRFLOW__CORE__FERNET_KEY, which is the stack's own", "remove it from the project's .env")
def a_project_env_name_that_clashes_with_a_stack_secret(b):
    root = project_copy(b)
    clash = "clash-" + os.urandom(8).hex()
    (root / ".env").write_text(f"AIRFLOW__CORE__FERNET_KEY={clash}\n")
    b.secrets.append(clash)  # never printed
    nothing_installed(b)
    return ["up"], {"STACK_PROJECT_DIR": str(root)}


@case("needs Python", "this is 3.15", "STACK_AIRFLOW_PYTHON")
def a_release_this_python_cannot_run(b):
    """A Python that says it is 3.15 (no release the stack runs supports it): named in one line, nothing
    installed."""
    fake = b.tmp / "python3.15"
    fake.write_text("#!/bin/sh\necho 3.15\n")
    fake.chmod(0o755)
    nothing_installed(b)
    return ["setup.airflow"], {"STACK_AIRFLOW_PYTHON": str(fake)}


# ---- security round two (issue 26) ---------------------------------------------------------------------
@case("belongs to another user (uid 65534), so nothing was written or locked in it", "STACK_USER_STATE_DIR")
def a_lock_folder_owned_by_someone_else(b):
    planted = b.tmp / "planted-user-state"
    (planted / "locks").mkdir(parents=True)
    os.chown(planted, 65534, 65534)
    os.chown(planted / "locks", 65534, 65534)
    return ["setup.postgres"], {"STACK_USER_STATE_DIR": str(planted)}


@case("is writable by other users (mode 1777); nothing was written", "in a folder only you can write to")
def a_worker_env_output_in_a_world_writable_folder(b):
    shared = b.tmp / "shared"
    shared.mkdir()
    shared.chmod(0o1777)

    def nothing_written(proc) -> None:
        assert not (shared / "worker.env").exists()

    b.verify = nothing_written
    return ["worker.env", "--output", str(shared / "worker.env")], {}


# ---- another checkout of the repo on the same PostgreSQL ---------------------------------------------
def second_checkout(b) -> dict[str, str]:
    """A fresh clone's state: its own state dir and .env (none yet: setup writes its own secrets and
    checkout id), the same role and database names as the running stack (its defaults, say)."""
    home = b.tmp / "second-clone"
    home.mkdir()

    def first_stack_still_logs_in(proc) -> None:
        assert postgres.ping(b.stack.settings()) == (True, "")  # its role's password was not reset

    b.verify = first_stack_still_logs_in
    return {"STACK_ENV_FILE": str(home / ".env"), "STACK_STATE_DIR": str(home)}


@case("belongs to another airflow-stack checkout", "set STACK_PG_DATABASE and STACK_PG_USER in .env to new names")
def setup_of_another_checkouts_database(b):
    return ["setup.postgres"], second_checkout(b)


@case("belongs to another airflow-stack checkout")
def drop_of_another_checkouts_database(b):
    return ["db.drop", "--yes"], second_checkout(b)


@pytest.mark.parametrize("build, needles, stdout_needles", CASES)
def test_bad_input_gets_one_line_and_changes_nothing(stack, airflow_up, tmp_path, build, needles, stdout_needles):
    settings = stack.settings()
    bench = Bench(stack, tmp_path)
    try:
        args, env = build(bench)
        guarded = guarded_files(settings, bench)
        files = {path: path.read_bytes() for path in guarded}
        assert len(guarded) >= 6 or os.geteuid() != 0, guarded  # the server's files are among them
        db, pids = db_fingerprint(settings), running_pids(settings)
        proc = stack.inv(*args, check=False, env=env)
    finally:
        bench.close()
    assert_one_line_error(proc, *(needle.format(**bench.values) for needle in needles))
    for needle in stdout_needles:
        assert needle.format(**bench.values) in proc.stdout, proc.stdout
    assert not [secret for secret in bench.secrets if secret in proc.stdout + proc.stderr]
    assert [path for path in guarded if path.read_bytes() != files[path]] == []
    assert db_fingerprint(settings) == db
    assert running_pids(settings) == pids
    if bench.verify:
        bench.verify(proc)
