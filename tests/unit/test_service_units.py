"""invoke service.install / uninstall on both platforms, driven through MockContext: the unit's text (read
back as systemd reads it, and checked by `systemd-analyze verify`), the launchd plist (parsed with
plistlib), the commands each platform runs, twice, and where no service manager runs."""

from __future__ import annotations

import getpass
import os
import plistlib
import re
import shlex
import shutil
import sys

import pytest
from invoke import Context, MockContext, Result

from airflow_stack.errors import StackError
from airflow_stack.ops import service_units
from airflow_stack.settings import PROJECT_DIR
from tests.support import systemd_unit

from .conftest import SECRETS

OK, FAIL = Result(""), Result("", exited=1)
ENVIRON = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/someone", "LANG": "C.UTF-8",
           "STACK_API_PORT": "18080", "AIRFLOW__CORE__PARALLELISM": "4",
           "STACK_PG_PASSWORD": SECRETS[0], "AIRFLOW__CORE__FERNET_KEY": SECRETS[3]}


def ctx(mapping: dict) -> MockContext:
    return MockContext(run={re.compile(k): v for k, v in mapping.items()}, repeat=True)


def commands(c: MockContext) -> list[str]:
    return [call.args[0] for call in c.run.call_args_list]


@pytest.fixture
def odd_settings(settings, tmp_path):
    """A state dir and .env whose paths need quoting: a space, a % (a systemd specifier), a $ and a quote."""
    state = tmp_path / "my stack %h $HOME 'q'"
    return settings.replace(state_dir=state, env_file=state / ".env")


@pytest.fixture
def systemd(tmp_path):
    running = tmp_path / "run-systemd-system"
    running.mkdir()
    return running


def test_the_systemd_unit_brings_the_stack_up_as_invoke_up_does(odd_settings, tmp_path, systemd):
    c = ctx({"^loginctl show-user": Result("no\n"), "^systemctl --user": OK})
    said = service_units.install(c, odd_settings, "linux", tmp_path, ENVIRON, systemd)
    unit = service_units.unit_for(odd_settings, "linux", tmp_path, ENVIRON)
    assert unit.path.parent == tmp_path / ".config" / "systemd" / "user"
    assert re.fullmatch(r"airflow-stack-[a-z0-9-]+-[0-9a-f]{8}\.service", unit.name)
    read = systemd_unit.read(unit.path)
    assert read.workdir == PROJECT_DIR
    assert read.exec_start == [sys.executable, "-m", "invoke", "up", "--quiet"]
    assert read.options["Type"] == ["oneshot"] and read.options["RemainAfterExit"] == ["yes"]
    assert read.options["ExecStop"] == [f"{sys.executable} -m invoke stop"]
    assert read.environment["STACK_STATE_DIR"] == str(odd_settings.state_dir)
    assert read.environment["STACK_ENV_FILE"] == str(odd_settings.env_file)
    assert read.environment["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    # what the command ran with is carried, secrets are not (they stay in .env)
    assert read.environment["STACK_API_PORT"] == "18080" and read.environment["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert "HOME" not in read.environment and "STACK_PG_PASSWORD" not in read.environment
    assert not any(secret in unit.path.read_text() for secret in SECRETS)
    assert commands(c) == ["systemctl --user daemon-reload", f"systemctl --user enable {unit.name}",
                           f"loginctl show-user {getpass.getuser()} --property=Linger --value"]
    assert any("does not carry AIRFLOW__CORE__FERNET_KEY, STACK_PG_PASSWORD" in line for line in said)
    assert any(f"installed {unit.name}" in line for line in said)
    assert said[-1].endswith(f"loginctl enable-linger {getpass.getuser()}")


def test_values_env_holds_are_not_frozen_into_the_unit(settings, tmp_path):
    """A shell with direnv exports all of .env: the unit reads .env at boot, and a copy in its Environment
    would override a later edit there. Only what the shell sets otherwise is carried."""
    with settings.env_file.open("a") as dotenv:
        dotenv.write("STACK_API_PORT=18080\nSTACK_REDIS_PORT=16380\n")
    environ = {"PATH": "/usr/bin", "STACK_API_PORT": "18080", "STACK_REDIS_PORT": "26380",
               "STACK_PG_PASSWORD": settings.pg_password}
    unit = service_units.unit_for(settings, "linux", tmp_path, environ)
    assert "STACK_API_PORT" not in unit.environment and unit.environment["STACK_REDIS_PORT"] == "26380"
    assert unit.skipped == ()  # the password is in .env already: nothing to move there


def test_install_twice_is_the_same_unit_and_one_line(settings, tmp_path, systemd):
    environ = {"PATH": "/usr/bin"}
    service_units.install(ctx({"^loginctl": Result("yes\n"), "^systemctl": OK}), settings, "linux", tmp_path,
                          environ, systemd)
    unit = service_units.unit_for(settings, "linux", tmp_path, environ)
    before = unit.path.read_text()
    c = ctx({"^systemctl --user is-enabled": Result("enabled\n"), "^loginctl": Result("yes\n")})
    said = service_units.install(c, settings, "linux", tmp_path, environ, systemd)
    assert said == [f"service: already installed: {unit.name} ({unit.path})"]
    assert unit.path.read_text() == before and not any("enable " in cmd for cmd in commands(c))


def test_where_no_systemd_runs_the_unit_is_written_and_one_line_says_what_to_do(settings, tmp_path):
    environ = {"PATH": "/usr/bin"}
    c = ctx({})
    with pytest.raises(StackError) as err:
        service_units.install(c, settings, "linux", tmp_path, environ, tmp_path / "no-systemd")
    unit = service_units.unit_for(settings, "linux", tmp_path, environ)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"service: wrote {unit.path}, but no systemd runs here")
    assert f"after each boot run cd {PROJECT_DIR} && {sys.executable} -m invoke up --quiet" in message
    assert unit.path.exists() and commands(c) == []
    with pytest.raises(StackError, match=r"^service: already installed: .* but no systemd runs here"):
        service_units.install(c, settings, "linux", tmp_path, environ, tmp_path / "no-systemd")


def test_uninstall_disables_and_removes_the_unit(settings, tmp_path, systemd):
    environ = {"PATH": "/usr/bin"}
    service_units.install(ctx({"^loginctl": Result("yes\n"), "^systemctl": OK}), settings, "linux", tmp_path,
                          environ, systemd)
    unit = service_units.unit_for(settings, "linux", tmp_path, environ)
    c = ctx({"^systemctl --user": OK})
    assert service_units.uninstall(c, settings, "linux", tmp_path, environ, systemd)[0].startswith(
        f"service: removed {unit.path}")
    assert commands(c) == [f"systemctl --user disable {unit.name}", "systemctl --user daemon-reload"]
    assert not unit.path.exists()
    assert service_units.uninstall(ctx({}), settings, "linux", tmp_path, environ, systemd) == [
        f"service: not installed (no {unit.path})"]


def test_a_failing_systemctl_is_one_line_with_its_reason(settings, tmp_path, systemd):
    c = ctx({"^systemctl --user daemon-reload": Result("", stderr="Failed to connect to bus: No medium found\n",
                                                       exited=1)})
    with pytest.raises(StackError, match=r"^service: reloading the user manager failed \(Failed to connect to bus"):
        service_units.install(c, settings, "linux", tmp_path, {"PATH": "/usr/bin"}, systemd)


def test_the_launchd_agent_runs_invoke_up_at_login(odd_settings, tmp_path):
    c = ctx({"^launchctl print": FAIL, "^launchctl bootstrap": OK})
    said = service_units.install(c, odd_settings, "darwin", tmp_path, ENVIRON)
    unit = service_units.unit_for(odd_settings, "darwin", tmp_path, ENVIRON)
    assert unit.path.parent == tmp_path / "Library" / "LaunchAgents" and unit.path.name == f"{unit.name}.plist"
    agent = plistlib.loads(unit.path.read_bytes())
    assert agent["Label"] == unit.name and agent["RunAtLoad"] is True and agent["AbandonProcessGroup"] is True
    assert agent["ProgramArguments"] == [sys.executable, "-m", "invoke", "up", "--quiet"]
    assert agent["WorkingDirectory"] == str(PROJECT_DIR)
    assert agent["EnvironmentVariables"]["STACK_STATE_DIR"] == str(odd_settings.state_dir)
    assert agent["EnvironmentVariables"]["STACK_ENV_FILE"] == str(odd_settings.env_file)
    assert "STACK_PG_PASSWORD" not in agent["EnvironmentVariables"]
    assert agent["StandardOutPath"] == str(odd_settings.state_dir / "logs" / "service.log")
    domain = f"gui/{os.getuid()}"
    assert commands(c) == [f"launchctl print {domain}/{unit.name}",
                           f"launchctl bootstrap {domain} {shlex.quote(str(unit.path))}"]
    assert said[-1].startswith(f"service: installed {unit.name}")
    # twice: loaded and the same file
    again = ctx({"^launchctl print": OK})
    assert service_units.install(again, odd_settings, "darwin", tmp_path, ENVIRON)[-1] == (
        f"service: already installed: {unit.name} ({unit.path})")
    assert commands(again) == [f"launchctl print {domain}/{unit.name}"]
    # changed (another port): launchd reads it again only after a bootout
    changed = ctx({"^launchctl": OK})
    service_units.install(changed, odd_settings, "darwin", tmp_path, ENVIRON | {"STACK_API_PORT": "18081"})
    assert [cmd.split()[1] for cmd in commands(changed)] == ["print", "bootout", "bootstrap"]
    # uninstall: unloaded, removed
    gone = ctx({"^launchctl": OK})
    assert service_units.uninstall(gone, odd_settings, "darwin", tmp_path, ENVIRON)[0].startswith("service: removed")
    assert [cmd.split()[1] for cmd in commands(gone)] == ["print", "bootout"] and not unit.path.exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_written_unit_passes_systemd_analyze_verify(odd_settings, tmp_path, systemd):
    """systemd itself parses the unit (a user manager's view); it says nothing when all is well (a key it does
    not know or a quote it cannot read is a warning on stderr, with exit 0)."""
    service_units.install(ctx({"^loginctl": Result("yes\n"), "^systemctl": OK}), odd_settings, "linux", tmp_path,
                          ENVIRON, systemd)
    unit = service_units.unit_for(odd_settings, "linux", tmp_path, ENVIRON)
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    result = Context().run(f"systemd-analyze --user verify '{unit.path}'", hide=True, warn=True, in_stream=False,
                           env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.ok and result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr
    # and it reads back the values given, quotes and specifiers undone
    assert systemd_unit.read(unit.path).environment["STACK_STATE_DIR"] == str(odd_settings.state_dir)
    # a broken unit is not silently accepted by this check
    unit.path.write_text(unit.path.read_text().replace("Type=oneshot", "Type=oneshoot"))
    broken = Context().run(f"systemd-analyze --user verify '{unit.path}'", hide=True, warn=True, in_stream=False,
                           env={"XDG_RUNTIME_DIR": str(runtime)})
    assert "oneshoot" in broken.stderr
