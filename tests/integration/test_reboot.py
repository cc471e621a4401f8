"""Back after a reboot: `invoke service.install` writes the unit; a simulated reboot kills every process of
the stack at once with SIGKILL (Redis and the supervisors included; PostgreSQL is the machine's, shared, and
stays); then the unit's own ExecStart, run alone in its WorkingDirectory with its Environment (read back from
the file), brings the stack back healthy. The unit carries the sandbox's STACK_ENV_FILE and STACK_STATE_DIR,
which are not the defaults."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from airflow_stack.apache_airflow.airflow_side import procgroup
from airflow_stack.runtime import registry, supervisor
from airflow_stack.services import host
from tests.support import systemd_unit

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line,
              pytest.mark.skipif(host.systemd_runs(), reason="systemd runs here: service.install would enable "
                                 "a unit in this user's own manager")]


def stack_processes(settings) -> tuple[set[int], set[int]]:
    """(the supervisors, every live process of the stack): each supervised process (its pid file), its
    supervisor (its record), what they started (their descendants) and what is in their process groups."""
    found, supervisors = set(), set()
    for pid_file in settings.paths.run.glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            boss = json.loads(pid_file.with_suffix(".json").read_text()).get("supervisor")
            found.add(int(pid_file.read_text()))
            supervisors |= {boss} if isinstance(boss, int) else set()
    found |= supervisors
    for pid in list(found):
        with contextlib.suppress(psutil.Error):
            found |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        found |= {proc.pid for proc in procgroup.members(pid)}
    alive = {pid for pid in found if psutil.pid_exists(pid) and pid != os.getpid()}
    return supervisors & alive, alive


def test_a_simulated_reboot_is_undone_by_the_units_own_command(stack, airflow_up, tmp_path):
    settings = stack.settings()
    home = tmp_path / "home"  # the unit goes into this HOME's ~/.config/systemd/user, never the real one
    installed = stack.inv("service.install", check=False, env={"HOME": str(home), "XDG_CONFIG_HOME": None})
    assert installed.returncode == 1 and "no systemd runs here" in installed.stderr, installed.stderr
    [unit_file] = (home / ".config" / "systemd" / "user").glob("airflow-stack-*.service")
    again = stack.inv("service.install", check=False, env={"HOME": str(home), "XDG_CONFIG_HOME": None})
    assert again.stderr.startswith(f"service: already installed: {unit_file}") and len(again.stderr.splitlines()) == 1
    unit = systemd_unit.read(unit_file)
    assert unit.environment["STACK_STATE_DIR"] == str(stack.state_dir)
    assert unit.environment["STACK_ENV_FILE"] == stack.env["STACK_ENV_FILE"]

    before = {name: proc.pid for name, proc in registry.running(settings).items()}
    redis_pid = supervisor.running(settings, "redis").pid
    supervisors, doomed = stack_processes(settings)
    assert redis_pid in doomed and supervisors and len(doomed) > len(before) + len(supervisors)
    procs = []
    for pid in doomed:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    began = time.monotonic()
    for proc in sorted(procs, key=lambda proc: proc.pid not in supervisors):  # the supervisors first
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not [proc for proc in alive if proc.status() != psutil.STATUS_ZOMBIE], alive
    assert registry.running(settings) == {} and supervisor.running(settings, "redis") is None

    # as systemd runs it: alone, in its working directory, with its environment (and the user's own, which a
    # user manager gives every unit)
    user = getpass.getuser()
    environ = unit.environment | {"HOME": os.environ.get("HOME", str(Path.home())), "USER": user, "LOGNAME": user}
    booted = subprocess.run(unit.exec_start, cwd=unit.workdir, env=environ, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=900)
    out = booted.stdout + booted.stderr
    assert not any(secret in out for secret in stack.secrets())
    assert booted.returncode == 0, out[-3000:]
    stack.inv("status")  # exit 0: every component up and healthy
    seconds = time.monotonic() - began
    after = {name: proc.pid for name, proc in registry.running(settings).items()}
    assert set(after) == set(before) and not set(after.values()) & set(before.values())
    assert registry.recorded(settings)["executor"] == stack.env["STACK_EXECUTOR"]
    print(f"\n[figure] simulated reboot ({settings.airflow_line}, {len(doomed)} processes killed with SIGKILL, "
          f"Redis and the supervisors included): healthy again through the unit's ExecStart in {seconds:.1f} s")

    removed = stack.inv("service.uninstall", env={"HOME": str(home), "XDG_CONFIG_HOME": None})
    assert removed.stdout.startswith(f"service: removed {unit_file}") and not unit_file.exists()
