"""Back after a reboot: a user service that brings the stack up at boot the way `invoke up` does.

Linux: a systemd user unit, ``~/.config/systemd/user/airflow-stack-<checkout>-<hash>.service`` (the hash
is of the state dir: two checkouts, or two state dirs of one, get a unit each). ``Type=oneshot`` with
``RemainAfterExit=yes``: ExecStart (``invoke up --quiet``) returns once the stack is healthy and leaves its
resident supervisors running, detached (each in a session of its own) but still in the unit's cgroup; the
unit stays active, so systemd leaves them alone. (A ``Type=simple`` unit whose ExecStart returns is stopped
at once, and its cgroup killed with it: the stack would die right after boot. A foreground command that waits
would have to watch several supervisors it did not start.) ExecStop runs ``invoke stop``: pid files first,
so no supervisor starts again what stops, Celery's warm shutdown; ``KillMode=control-group`` then ends
whatever is left. ``Restart=on-failure``: a boot where PostgreSQL comes up late is tried again. A user
manager runs at boot only when the user lingers (``loginctl enable-linger USER``); else at login.

macOS: a launchd agent, ``~/Library/LaunchAgents/local.airflow-stack.<checkout>-<hash>.plist`` (RunAtLoad,
``invoke up --quiet``, its output in the state dir's logs/service.log). An agent runs at login; launchd
would end what a finished job left in its process group, which the supervisors are not in (they made
sessions of their own), and ``AbandonProcessGroup`` says so again.

Both carry what the command needs without a login shell: the checkout as working directory, the Python
that runs this command, and in their environment STACK_ENV_FILE, STACK_STATE_DIR, PATH and every other
STACK_* or AIRFLOW__* variable set now, except secrets (those stay in .env: unit files are not private) and
values .env holds already (a shell with direnv exports all of .env: frozen into the unit, they would
override a later edit of .env).

Where no service manager runs (a Linux whose PID 1 is not systemd: a container, WSL without systemd) the
unit is still written (it is right, and works once systemd runs) and the command fails in one line that
says what to do instead: nothing would bring the stack back, and a script must not believe otherwise.
Every command goes through the invoke Context.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import plistlib
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from invoke import Context

from .. import settings as settings_mod
from .. import statedir
from ..errors import StackError
from ..services import host
from ..settings import PROJECT_DIR, Settings
from ..statedir import StateDir

# what a unit carries from the environment of the command that writes it (never a secret)
CARRIED_PREFIXES = ("STACK_", "AIRFLOW__")
CARRIED_NAMES = ("LANG", "LC_ALL")
LAUNCHD_PREFIX = "local.airflow-stack."


@dataclass(frozen=True)
class Unit:
    """One checkout's service: where its file goes, its text, and how it runs."""

    system: str  # "linux" (systemd) or "darwin" (launchd)
    name: str  # systemd: NAME.service; launchd: the label
    path: Path
    workdir: Path
    argv: tuple[str, ...]  # what brings the stack up
    stop_argv: tuple[str, ...]
    environment: dict[str, str]
    skipped: tuple[str, ...] = ()  # secrets set in the environment that the unit does not carry

    @property
    def text(self) -> str:
        return _systemd_text(self) if self.system != "darwin" else _plist_text(self)


def _slug(settings: Settings) -> str:
    checkout = re.sub(r"[^a-z0-9]+", "-", PROJECT_DIR.name.lower()).strip("-") or "checkout"
    return f"{checkout[:40]}-{hashlib.sha256(str(settings.state_dir).encode()).hexdigest()[:8]}"


def unit_for(settings: Settings, system: str | None = None, home: Path | None = None,
             environ: dict[str, str] | None = None, python: str | None = None) -> Unit:
    """The unit this checkout and state dir get on ``system`` (default: this one)."""
    system = sys.platform if system is None else system
    environ = dict(os.environ if environ is None else environ)
    home = Path.home() if home is None else home
    python = python or sys.executable
    carried, skipped = {}, []
    in_env_file = statedir.read_env_file(settings.env_file)  # read at boot anyway (direnv exports all of it)
    for key, value in sorted(environ.items()):
        if not (key.startswith(CARRIED_PREFIXES) or key in CARRIED_NAMES) or "\n" in value \
                or in_env_file.get(key) == value:
            continue
        if settings_mod.is_secret(settings, key, value):
            skipped.append(key)
        else:
            carried[key] = value
    bin_dir = str(Path(python).parent)
    path = dict.fromkeys([bin_dir, *(p for p in environ.get("PATH", os.defpath).split(os.pathsep) if p)])
    carried |= {"STACK_ENV_FILE": str(settings.env_file), "STACK_STATE_DIR": str(settings.state_dir),
                "PATH": os.pathsep.join(path)}
    up = (python, "-m", "invoke", "up", "--quiet")
    stop = (python, "-m", "invoke", "stop")
    if system == "darwin":
        label = LAUNCHD_PREFIX + _slug(settings)
        return Unit(system, label, home / "Library" / "LaunchAgents" / f"{label}.plist", PROJECT_DIR, up, stop,
                    carried, tuple(skipped))
    name = f"airflow-stack-{_slug(settings)}.service"
    config_home = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else home / ".config"
    return Unit(system, name, config_home / "systemd" / "user" / name, PROJECT_DIR, up, stop, carried,
                tuple(skipped))


# ---- the files ------------------------------------------------------------------------------------
def _systemd_quote(arg: str, command: bool = False) -> str:
    """One word of a unit file value: % is a specifier (and $ a variable on command lines), quotes and
    backslashes are escapes inside double quotes."""
    escaped = arg.replace("%", "%%")
    if command:
        escaped = escaped.replace("$", "$$")
    if escaped and not re.search(r'[\s"\'\\;]', escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_text(unit: Unit) -> str:
    env = "\n".join(f"Environment={_systemd_quote(f'{key}={value}')}" for key, value in unit.environment.items())
    state = unit.environment["STACK_STATE_DIR"]
    return f"""# airflow-stack: brings the stack of {unit.workdir} (state dir {state}) up at boot, as `invoke up`
# does. Written by `invoke service.install`, removed by `invoke service.uninstall`; see
# src/airflow_stack/ops/service_units.py for why it is a oneshot that remains active.
[Unit]
Description=airflow-stack in {str(unit.workdir).replace("%", "%%")}
Documentation={(unit.workdir / "README.md").as_uri().replace("%", "%%")}

[Service]
Type=oneshot
RemainAfterExit=yes
WorkingDirectory={str(unit.workdir).replace("%", "%%")}
{env}
ExecStart={" ".join(_systemd_quote(arg, command=True) for arg in unit.argv)}
ExecStop={" ".join(_systemd_quote(arg, command=True) for arg in unit.stop_argv)}
# the first boot may install Airflow; a stop waits for running tasks (Celery's warm shutdown)
TimeoutStartSec=30min
TimeoutStopSec=5min
KillMode=control-group
Restart=on-failure
RestartSec=30

[Install]
WantedBy=default.target
"""


def _plist_text(unit: Unit) -> str:
    log = str(StateDir(Path(unit.environment["STACK_STATE_DIR"])).service_log)
    return plistlib.dumps({
        "Label": unit.name, "ProgramArguments": list(unit.argv), "WorkingDirectory": str(unit.workdir),
        "EnvironmentVariables": unit.environment, "RunAtLoad": True, "AbandonProcessGroup": True,
        "ProcessType": "Background", "StandardOutPath": log, "StandardErrorPath": log,
    }).decode()


def _write(unit: Unit) -> bool:
    """Write the unit file; False when it already held this text."""
    if unit.path.exists() and unit.path.read_text() == unit.text:
        return False
    unit.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unit.path.with_name(f".{unit.path.name}.tmp")
    tmp.write_text(unit.text)
    tmp.chmod(0o644)
    tmp.replace(unit.path)
    return True


# ---- install and uninstall ------------------------------------------------------------------------
def _run(c: Context, cmd: str, what: str) -> str:
    result = c.run(cmd, hide=True, warn=True, in_stream=False)
    if result.failed:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise StackError(f"service: {what} failed ({detail[-1] if detail else f'exit {result.exited}'}): {cmd}")
    return result.stdout.strip()


def _probe(c: Context, cmd: str) -> str | None:
    """A command's output, or None when it fails (not loaded, not enabled)."""
    result = c.run(cmd, hide=True, warn=True, in_stream=False)
    return result.stdout.strip() if result.ok else None


def _by_hand(unit: Unit) -> str:
    return f"cd {shlex.quote(str(unit.workdir))} && {shlex.join(unit.argv)}"


def install(c: Context, settings: Settings, system: str | None = None, home: Path | None = None,
            environ: dict[str, str] | None = None, systemd_dir: Path | None = None) -> list[str]:
    """Write this checkout's unit and enable it; the lines to say. No service manager: StackError."""
    unit = unit_for(settings, system, home, environ)
    written = _write(unit)
    said = [f"service: {unit.path} does not carry {', '.join(unit.skipped)} (secrets stay in .env: put them "
            f"there)"] if unit.skipped else []
    if unit.system == "darwin":
        return said + _install_launchd(c, unit, written)
    if not host.systemd_runs(systemd_dir):
        raise StackError(f"service: {'wrote' if written else 'already installed:'} {unit.path}, but no systemd "
                         f"runs here (PID 1 is not systemd), so nothing starts it at boot: after each boot run "
                         f"{_by_hand(unit)} (or from whatever this machine runs at boot)")
    if written:
        _run(c, "systemctl --user daemon-reload", "reloading the user manager")
    name = shlex.quote(unit.name)
    if not written and _probe(c, f"systemctl --user is-enabled {name}") == "enabled":
        said.append(f"service: already installed: {unit.name} ({unit.path})")
    else:
        _run(c, f"systemctl --user enable {name}", f"enabling {unit.name}")
        said.append(f"service: installed {unit.name} ({unit.path}): it brings the stack up at boot; through "
                    f"systemd now: systemctl --user start {unit.name}; its log: journalctl --user -u {unit.name}")
    user = getpass.getuser()
    if _probe(c, f"loginctl show-user {shlex.quote(user)} --property=Linger --value") != "yes":
        said.append(f"service: your user manager runs only while you are logged in; to start at boot: "
                    f"loginctl enable-linger {user}")
    return said


def _launchd_domain() -> str:
    return f"gui/{os.getuid()}"


def _install_launchd(c: Context, unit: Unit, written: bool) -> list[str]:
    target = shlex.quote(f"{_launchd_domain()}/{unit.name}")
    loaded = _probe(c, f"launchctl print {target}") is not None
    if loaded and not written:
        return [f"service: already installed: {unit.name} ({unit.path})"]
    if loaded:  # an older version of the agent: launchd reads the file again only when it is bootstrapped
        _run(c, f"launchctl bootout {target}", f"unloading the old {unit.name}")
    _run(c, f"launchctl bootstrap {_launchd_domain()} {shlex.quote(str(unit.path))}", f"loading {unit.name}")
    return [f"service: installed {unit.name} ({unit.path}): launchd runs `invoke up` at each login (and ran it "
            f"now); its output: {StateDir(Path(unit.environment['STACK_STATE_DIR'])).service_log}"]


def uninstall(c: Context, settings: Settings, system: str | None = None, home: Path | None = None,
              environ: dict[str, str] | None = None, systemd_dir: Path | None = None) -> list[str]:
    """Disable and remove this checkout's unit; the running stack is left as it is."""
    unit = unit_for(settings, system, home, environ)
    if unit.system == "darwin":
        target = shlex.quote(f"{_launchd_domain()}/{unit.name}")
        if _probe(c, f"launchctl print {target}") is not None:
            _run(c, f"launchctl bootout {target}", f"unloading {unit.name}")
    elif host.systemd_runs(systemd_dir) and unit.path.exists():
        _run(c, f"systemctl --user disable {shlex.quote(unit.name)}", f"disabling {unit.name}")
    if not unit.path.exists():
        return [f"service: not installed (no {unit.path})"]
    unit.path.unlink()
    if unit.system != "darwin" and host.systemd_runs(systemd_dir):
        _run(c, "systemctl --user daemon-reload", "reloading the user manager")
    return [f"service: removed {unit.path}; the stack was left as it runs (invoke stop stops it)"]
