"""A clone of the repo in a folder whose path holds a space ("~/My Projects/airflow-stack"), brought up
with the README's quick start command 1 exactly as a new user runs it: its tooling venv, .env and state
dir (.stack) all inside that path. Its own ports, role and database; stopped and dropped afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import psutil
import pytest

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import install
from tests.support.sandbox import PORT_SETTINGS, clean_environ, free_ports

from .conftest import LINE, REPO

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]


def test_a_clone_in_a_folder_with_a_space_runs_the_quick_start(services, tmp_path_factory):
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("the repo is not a git checkout here: nothing to clone (CI and fresh-check clone it)")
    clone = tmp_path_factory.mktemp("My Projects") / "airflow stack"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, capture_output=True)
    name = f"ast_clone_{os.getpid()}"
    env = clean_environ() | {"CI": "true", "STACK_AIRFLOW_LINE": LINE, "STACK_PG_DATABASE": name,
                             "STACK_PG_USER": name}
    env |= dict(zip(PORT_SETTINGS, map(str, free_ports(len(PORT_SETTINGS))), strict=True))

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(argv), cwd=clone, env=env, capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    try:
        up = run("scripts/up")  # README quick start, command 1
        out = up.stdout + up.stderr
        assert "all healthy" in out and "Traceback" not in out, out
        rows = {row["name"]: row for row in json.loads(run("scripts/invoke", "status", "--json").stdout)}
        assert rows and all(row["up"] and row["healthy"] for row in rows.values()), rows
        # everything of it lives inside the clone's spaced path
        settings = settings_mod.load(environ={"STACK_ENV_FILE": str(clone / ".env"), "STACK_STATE_DIR":
                                              str(clone / ".stack")} | env)
        for row in [row for name, row in rows.items() if name != "postgresql"]:  # the server is not ours to run
            pid_file = clone / ".stack" / "run" / f"{row['name']}.pid"
            assert pid_file.read_text().strip() == str(row["pid"]), row
        assert (clone / ".venv" / "bin" / "invoke").exists() and install.venv(settings).is_relative_to(clone)
        secrets = [value for value in settings_mod.secret_values(settings) if len(value) >= 6]
        assert secrets and not [s for s in secrets if s in out], "a secret of .env in the quick start's output"
    finally:
        run("scripts/invoke", "stop", check=False)
        run("scripts/invoke", "db.drop", "--yes", check=False)
        left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(clone) in " ".join(p.info["cmdline"] or [])]
        for pid in left:
            psutil.Process(pid).kill()
        assert not left, f"processes of the clone survived invoke stop: {left}"
