"""The state on disk: every path under the state dir (``STACK_STATE_DIR``, default ``.stack``), and the
``.env`` file's reading and writing. No other module builds a path under the state dir or writes ``.env``.

The state dir is 0700: logs, Redis data and records are the user's alone.

    run/NAME.pid                 the PID alone (`kill $(cat .stack/run/scheduler.pid)` works); the launcher
    run/NAME.json (0600)         start time, boot, argv, keyed fingerprint of the launch environment, Airflow
                                 release, venv build, its supervisor's PID, restarts, last exit; the launcher
    run/stack.json               the executor and line the running stack was started as; runtime.registry
    run/operation.lock           who holds the state dir now (up, stop, setup.* ...); locks
    run/fingerprint.key (0600)   the key of the fingerprints in the records; runtime.supervisor
    run/launch-PID.json          what one launcher run starts (removed once it reported); runtime.supervisor
    run/helper-PID*.json (0600)  the helper's input and answer (removed after); apache_airflow.commands
    run/dags-test-DAG.json/.lock a DAG a running dags.test paused (put back after), one test per DAG; project.dags
    run/gunicorn.ctl             2.x: gunicorn's control socket (else ~/.gunicorn, shared by two stacks)
    logs/NAME.log (.1 ...)       each process's stdout and stderr, rotated by size; the launcher
    logs/airflow/                Airflow's task logs
    logs/setup-airflow.log ...   what the Airflow CLI printed for setup steps; apache_airflow.commands
    logs/service.log             macOS: what the launchd agent's `invoke up` printed at login; ops.service_units
    redis/ (0700)                redis.conf (0600), its data, and redis.sock (0700), the Unix socket the stack's
                                 own processes reach it through; services.redis_server
    tls/                         with STACK_TLS: ca.pem (what workers copy), ca-key.pem, server.pem,
                                 server-key.pem (keys 0600), server-chain.pem (server.pem then ca.pem: what the
                                 API server presents); services.tls
    airflow/                     AIRFLOW_HOME: airflow.cfg, webserver_config.py, the schema and admin stamps
    venv-airflow-RELEASE/        Airflow's own venv, one per release, with its install stamp and its lock (the
                                 exact packages and their hashes); apache_airflow.install
    constraints/                 constraints resolved for a release other than the pinned one
    backups/                     the scheduled backups, db.backup's and the upgrade's (0600); ops.backup
    last-backup.json             the last scheduled backup (or a verified one by hand, db.backup): time, file,
                                 size, verified or why not, and the newest verified one; runtime.backup_schedule
    rehearsal-XXXX/ (0700)       upgrade --rehearse's AIRFLOW_HOME for the new release (removed after);
                                 ops.rehearsal
    exports/                     objects.export (0600: it holds passwords); project.objects
    project-dockerfile-note      the Dockerfile note said last (said again only when it changes); stack
    worker.env (0600)            what a worker machine needs (invoke worker.env); ops.worker_env
    import-XXXX/ (0700)          db.import-sqlite's working copy (removed after); ops.carryover

``.env`` (mode 0600, git-ignored) holds the settings a user chose and the secrets generated once;
every write replaces the whole file atomically with a new 0600 file.

The user's machine-wide folder (``STACK_USER_STATE_DIR``, default platformdirs' ``user_state_dir``:
~/.local/state/airflow-stack, ~/Library/Application Support/airflow-stack on macOS; 0700) is what every
checkout of this user shares (``UserStateDir``):

    stacks/CHECKOUT_ID.json      one per stack set up on this machine: its checkout, .env, state dir, URL,
                                 database and ports (`invoke stacks`; a new checkout avoids them);
                                 runtime.checkouts
    defaults.env                 the user's own defaults for every checkout (KEY=VALUE: ports, names ...),
                                 under each checkout's .env and environment; settings.resolve
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from dotenv.parser import parse_stream

from .errors import StackError

ENV_FILE_VAR = "STACK_ENV_FILE"
SUN_PATH_BYTES = 104 if sys.platform == "darwin" else 108  # a Unix socket's path, with its NUL, at most (sun_path)
USER_STATE_DEFAULT = Path(platformdirs.user_state_dir("airflow-stack", appauthor=False))
ENV_HEADER = ("# airflow-stack settings and secrets: written by `invoke setup`, kept out of git (mode 0600).\n"
              "# Values you set here win; missing secrets are generated once. A machine that runs a Celery\n"
              "# worker for this stack gets what it needs from `invoke worker.env`, not this file.\n")


class Under:
    """A path under a folder object's ``root``, declared once as a class attribute:
    ``run = Under("run")`` makes ``StateDir(root).run`` mean ``root / "run"``."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, obj: object, owner: type | None = None) -> Path:
        if obj is None:
            return self  # type: ignore[return-value]
        return Path(obj.root).joinpath(*self.parts)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StateDir:
    """The paths under one state dir."""

    root: Path

    run = Under("run")
    stack_record = Under("run", "stack.json")
    operation_lock = Under("run", "operation.lock")
    fingerprint_key = Under("run", "fingerprint.key")
    gunicorn_control = Under("run", "gunicorn.ctl")
    logs = Under("logs")
    task_logs = Under("logs", "airflow")
    service_log = Under("logs", "service.log")  # the launchd agent's output (systemd keeps it in the journal)
    redis = Under("redis")
    redis_conf = Under("redis", "redis.conf")
    redis_socket = Under("redis", "redis.sock")
    tls = Under("tls")
    tls_ca = Under("tls", "ca.pem")  # the stack's CA: every client verifies our Redis and PostgreSQL with it
    tls_ca_key = Under("tls", "ca-key.pem")
    tls_server_cert = Under("tls", "server.pem")
    tls_server_key = Under("tls", "server-key.pem")
    tls_server_chain = Under("tls", "server-chain.pem")  # the server certificate followed by the CA's
    airflow_home = Under("airflow")
    webserver_config = Under("airflow", "webserver_config.py")
    schema_stamp = Under("airflow", ".airflow-stack-migrated.json")
    admin_stamp = Under("airflow", ".airflow-stack-admin.json")
    backups = Under("backups")
    backup_record = Under("last-backup.json")
    exports = Under("exports")
    dockerfile_note = Under("project-dockerfile-note")
    worker_env = Under("worker.env")

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def meta_file(self, name: str) -> Path:
        return self.run / f"{name}.json"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def dags_test_note(self, dag_id: str) -> Path:
        """A DAG that a running `dags.test` paused, and the flag to put back."""
        return self.run / f"dags-test-{dag_id}.json"

    def dags_test_lock(self, dag_id: str) -> Path:
        return self.run / f"dags-test-{dag_id}.lock"

    def launch_spec(self, pid: int) -> Path:
        return self.run / f"launch-{pid}.json"

    def helper_files(self, pid: int) -> tuple[Path, Path]:
        """(input, answer) of one run of the Airflow-side helper."""
        return self.run / f"helper-{pid}-input.json", self.run / f"helper-{pid}.json"

    def export_file(self, stamp: str) -> Path:
        return self.exports / f"airflow_settings-{stamp}.yaml"

    def venv(self, release: str) -> Path:
        # one venv per release: another release is built beside the running one, and going back never reinstalls
        return self.root / f"venv-airflow-{release}"

    def install_stamp(self, release: str) -> Path:
        """What the venv was installed for (release, constraints, requirements), and its build."""
        return self.venv(release) / ".airflow-stack-install.json"

    def install_lock(self, release: str) -> Path:
        """The exact set of packages the venv holds, with their hashes (uv pip compile; synced to)."""
        return self.venv(release) / "airflow-stack.lock"

    def resolved_constraints(self, release: str) -> Path:
        return self.root / "constraints" / f"airflow-{release}.txt"

    def scratch(self, prefix: str) -> Path:
        """A new private folder for one operation's working files (the caller removes it)."""
        self.make_private()
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))

    def make_private(self) -> None:
        """The state dir (0700), run/ and logs/ in it."""
        _make_private(self.root, self.run, self.logs)


@dataclass(frozen=True)
class UserStateDir:
    """The paths under the user's machine-wide folder (what every checkout of this user shares)."""

    root: Path

    stacks = Under("stacks")
    defaults = Under("defaults.env")
    locks = Under("locks")  # machine-wide locks: installing or starting the shared PostgreSQL, choosing ports

    def stack_entry(self, checkout_id: str) -> Path:
        return self.stacks / f"{checkout_id}.json"

    def make_private(self) -> None:
        """The folder (0700), stacks/ and locks/ in it."""
        _make_private(self.root, self.stacks, self.locks)


def _make_private(root: Path, *inside: Path) -> None:
    """``root`` and the folders ``inside`` it: private_folder each."""
    for path in (root, *inside):
        private_folder(path)


def private_folder(path: Path) -> None:
    """A folder of this user's that no other user may enter: made 0700 when missing (tightened when it is this
    user's and open). One that is a link, not a folder, or another user's is refused in one line naming it, and
    nothing in it is touched (another local user could have planted it)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    found = os.lstat(path)
    if stat.S_ISLNK(found.st_mode) or not stat.S_ISDIR(found.st_mode):
        raise StackError(f"{path} is not a folder (a link or a file is there); remove it, or choose another place "
                         f"(STACK_STATE_DIR, STACK_USER_STATE_DIR)")
    if found.st_uid != os.geteuid():
        raise StackError(f"{path} belongs to another user (uid {found.st_uid}), so nothing was written or locked "
                         f"in it; remove it, or choose a folder of yours (STACK_STATE_DIR, STACK_USER_STATE_DIR)")
    if stat.S_IMODE(found.st_mode) & 0o077:
        path.chmod(0o700)


# ---- files that hold secrets --------------------------------------------------------------------
def write_private(path: Path, text: str) -> None:
    """Write a file that holds a secret with mode 0600 from its first byte, and move it over the old one:
    a reader that opened the old file keeps seeing the old content, never the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def secure_mode(path: Path) -> bool:
    """Make a secrets file 0600; True when it had to be tightened."""
    if not path.exists():
        return False
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(0o600)
        except PermissionError:
            raise StackError(f"{path} is readable by others and not ours to fix; run: chmod 600 {path}") from None
        return True
    return False


# ---- .env -----------------------------------------------------------------------------------------
def read_env_file(path: Path) -> dict[str, str]:
    """Parse ``.env``; a line that is not KEY=VALUE is an error, never silently skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # no such file (a folder on its path is a file: none either)
        return {}
    except IsADirectoryError:
        raise StackError(f"cannot read {path}: it is a directory; move it away, or set {ENV_FILE_VAR} "
                         f"to your .env file") from None
    except UnicodeDecodeError as exc:
        raise StackError(f"cannot read {path}: byte {exc.start} is not UTF-8 text; save it as UTF-8 "
                         f"(KEY=VALUE lines)") from None
    except PermissionError:
        raise StackError(f"cannot read {path} (permission denied); fix its permissions (chmod 600 {path}) "
                         f"or run as its owner") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise StackError(f"{path} line {binding.original.line} is not KEY=VALUE: "
                             f"fix or remove that line")
        if binding.key is not None:
            values[binding.key] = binding.value or ""
    return values


def checkout_lives(env_file: Path, checkout_id: str) -> bool:
    """The checkout ``checkout_id`` whose .env is ``env_file`` still exists: that file is there and names it
    (a deleted clone, or one whose .env was made anew, is gone)."""
    try:
        return read_env_file(env_file).get("STACK_CHECKOUT_ID") == checkout_id
    except StackError:
        return True  # there, but unreadable to us: somebody's


def _env_line(key: str, value: str) -> str:
    return f"{key}={value}" if " " not in value else f'{key}="{value}"'


def update_env_file(path: Path, values: dict[str, str]) -> list[str]:
    """Set KEY=value lines in ``.env`` (replacing a key's line, or appending); the keys whose value
    changed. The file is written anew (0600) and moved over the old one, never appended to in place."""
    existing = path.read_text() if path.exists() else ENV_HEADER
    lines = existing.splitlines()
    changed = []
    for key, value in values.items():
        new = _env_line(key, value)
        for i, line in enumerate(lines):
            if line.split("=", 1)[0].strip() == key:
                if line != new:
                    lines[i] = new
                    changed.append(key)
                break
        else:
            lines.append(new)
            changed.append(key)
    if changed or not path.exists():
        write_private(path, "\n".join(lines) + "\n")
    return changed
