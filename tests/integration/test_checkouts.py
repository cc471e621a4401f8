"""Two clones of the repo on one machine, each brought up with the README's quick start command 1 alone, at
the same time, with nothing edited, while another stack runs: each gets its own role, database, admin
password and ports, each is healthy, neither UI accepts the other's password, and `invoke stacks` lists
both. One clone's path holds a space ("~/My Projects/airflow stack"): its tooling venv, .env and state dir
all live inside that path.

The session's stack plays the first checkout: its names and ports are made this test's defaults (the
defaults.env of the clones' own machine-wide folder), so the clones find the defaults taken, as a second
clone finds 8080 and database airflow taken by the first, and the user's real defaults are never touched.
Stopped and dropped afterwards."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from airflow_stack import netutil, statedir
from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import install
from airflow_stack.runtime import checkouts
from airflow_stack.services import pg_database
from tests.support.sandbox import clean_environ

from .conftest import LINE, REPO, airflow_api
from .test_bad_input import running_pids

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]

DAG = '''import pendulum
try:
    from airflow.sdk import DAG
except ImportError:
    from airflow import DAG

with DAG("only_in_the_second_clone", start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None):
    pass
'''


class Clone:
    """A clone of the repo at ``path``, run as a user runs it: its scripts, in it, with no standard input."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path, self.env, self.log = path, env, path.parent / "up.log"
        subprocess.run(["git", "clone", "-q", str(REPO), str(path)], check=True, capture_output=True)

    def start(self, *argv: str) -> subprocess.Popen[bytes]:
        """Run ``argv`` in the background, its output into a file beside the clone (``output``)."""
        with self.log.open("wb") as out:
            return subprocess.Popen(list(argv), cwd=self.path, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        proc.wait(timeout=1200)
        return self.log.read_text()

    def run(self, *argv: str, check: bool = True) -> str:
        proc = subprocess.run(list(argv), cwd=self.path, env=self.env, capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def settings(self) -> settings_mod.Settings:
        """Its settings as its own tasks see them (its .env and state dir are inside the clone)."""
        return settings_mod.load(environ=self.env | {"STACK_ENV_FILE": str(self.path / ".env"),
                                                     "STACK_STATE_DIR": str(self.path / ".stack")})

    def teardown(self) -> list[int]:
        self.run("scripts/invoke", "stop", check=False)
        if (self.path / ".env").exists():
            self.run("scripts/invoke", "db.drop", "--yes", check=False)
        left = [p for p in psutil.process_iter(["cmdline"]) if str(self.path) in " ".join(p.info["cmdline"] or [])]
        for proc in left:
            proc.kill()
        return [proc.pid for proc in left]


def logs_in(settings: settings_mod.Settings, password: str) -> bool:
    """Whether the REST API at ``settings``' URL accepts its admin user with ``password``."""
    try:
        api = airflow_api(settings.replace(admin_password=password))
    except httpx.HTTPStatusError as exc:  # the token endpoint refused it
        assert exc.response.status_code in (401, 403), exc.response.status_code
        return False
    status = api.client.get(f"{api.prefix}/dags").status_code
    api.close()
    assert status in (200, 401, 403), status
    return status == 200


def dag_ids(settings: settings_mod.Settings) -> set[str]:
    api = airflow_api(settings)
    resp = api.client.get(f"{api.prefix}/dags", params={"limit": 100})
    api.close()
    assert resp.status_code == 200, resp.status_code
    return {dag["dag_id"] for dag in resp.json()["dags"]}


def test_two_clones_from_the_quick_start_alone_get_their_own_database_and_ports_at_once(
        stack, airflow_up, tmp_path_factory):
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("the repo is not a git checkout here: nothing to clone (CI and fresh-check clone it)")
    first = stack.settings()
    # the clones' machine-wide folder: the first stack's names and ports are its defaults
    machine = tmp_path_factory.mktemp("user state")
    taken = [*checkouts.PORTS, *checkouts.NAMES]
    (machine / "defaults.env").write_text("".join(f"{settings_mod.specs()[name].env}={getattr(first, name)}\n"
                                                  for name in taken))
    env = clean_environ() | {"CI": "true", "STACK_AIRFLOW_LINE": LINE, "STACK_USER_STATE_DIR": str(machine)}
    clones = [Clone(tmp_path_factory.mktemp("My Projects") / "airflow stack", env),
              Clone(tmp_path_factory.mktemp("code") / "airflow-stack", env)]
    (clones[1].path / "dags" / "only_in_the_second_clone.py").write_text(DAG)  # a DAG of its own project
    # the second clone's .env is the user's, made before the first setup the way the README's
    # `echo ... >> .env` makes it (0644 under umask 022), and another local user opened it then
    user_env = clones[1].path / ".env"
    by_hand = "# mine, written before the first setup\nSTACK_PROGRESS=plain\n"
    user_env.write_text(by_hand)
    user_env.chmod(0o644)
    reader = user_env.open("rb")
    first_pids = running_pids(first)
    try:
        began = time.monotonic()
        procs = [clone.start("scripts/up") for clone in clones]  # README quick start, command 1, both at once
        outs = [clone.output(proc) for clone, proc in zip(clones, procs, strict=True)]
        seconds = time.monotonic() - began
        for proc, out in zip(procs, outs, strict=True):
            assert proc.returncode == 0 and "all healthy" in out and "Traceback" not in out, out
        print(f"\n[figures] two clones' scripts/up at once: {seconds:.0f} s; what they chose:")
        print(*(line for out in outs for line in out.splitlines() if line.startswith(("checkout:", "run:"))),
              sep="\n")
        s1, s2 = (clone.settings() for clone in clones)

        # each its own role and database, named after the clone, kept in its .env; said in one line
        for clone, s, out in zip(clones, (s1, s2), outs, strict=True):
            assert s.pg_database == s.pg_user == checkouts.derived_name(first.pg_database, clone.path.name,
                                                                          s.checkout_id), s.pg_database
            assert f"this one gets its own role and database, {s.pg_database}" in out
            assert pg_database.marked_id(pg_database.database_marker(s)) == s.checkout_id
            kept = statedir.read_env_file(clone.path / ".env")
            assert kept["STACK_PG_DATABASE"] == s.pg_database and kept["STACK_API_PORT"] == str(s.api_port)
            assert f"its UI: {s.api_url}/" in out and f"at {s.api_url}/" in out
        assert len({first.pg_database, s1.pg_database, s2.pg_database}) == 3
        assert len({first.admin_password, s1.admin_password, s2.admin_password}) == 3
        with pytest.raises(psycopg.OperationalError):  # neither role reaches the other's database
            psycopg.connect(**s2.pg_conninfo(dbname=s1.pg_database)).close()
        # each its own ports, none of the first's (its defaults)
        ports = [{getattr(s, name) for name in checkouts.PORTS} for s in (first, s1, s2)]
        assert all(len(p) == len(checkouts.PORTS) for p in ports), ports
        assert not ports[0] & ports[1] and not ports[0] & ports[2] and not ports[1] & ports[2], ports

        # each healthy, everything of it inside its clone (the spaced path too)
        for clone in clones:
            rows = {row["name"]: row for row in json.loads(clone.run("scripts/invoke", "status", "--json"))}
            assert rows and all(row["up"] and row["healthy"] for row in rows.values()), rows
            for row in [row for name, row in rows.items() if name != "postgresql"]:  # the server is not ours
                assert (clone.path / ".stack" / "run" / f"{row['name']}.pid").read_text().strip() == str(row["pid"])
        assert (clones[0].path / ".venv" / "bin" / "invoke").exists()
        assert install.venv(s1).is_relative_to(clones[0].path)
        for s, out in zip((s1, s2), outs, strict=True):
            secrets = [value for value in settings_mod.secret_values(s) if len(value) >= 6]
            assert secrets and not [v for v in secrets if v in out], "a secret of .env in the quick start's output"
        # the descriptor opened while .env was 0644 still reads what the user wrote, and nothing more: the
        # secrets went into a new 0600 file moved over it; the user's own line is kept
        reader.seek(0)
        assert reader.read().decode() == by_hand
        reader.close()
        assert stat.S_IMODE(user_env.stat().st_mode) == 0o600 and "STACK_PROGRESS=plain" in user_env.read_text()

        # neither UI accepts the other's admin password (nor the first stack's)
        assert logs_in(s1, s1.admin_password) and not logs_in(s1, s2.admin_password)
        assert logs_in(s2, s2.admin_password) and not logs_in(s2, s1.admin_password)
        assert not logs_in(s1, first.admin_password)
        assert netutil.wait_until(lambda: "only_in_the_second_clone" in dag_ids(s2), 60)
        assert "only_in_the_second_clone" not in dag_ids(s1)

        # invoke stacks lists both, running; then one stopped
        listed = json.loads(clones[0].run("scripts/invoke", "stacks", "--json"))
        assert {(row["checkout"], row["url"], bool(row["running"])) for row in listed} == {
            (str(clones[0].path), s1.api_url, True), (str(clones[1].path), s2.api_url, True)}
        clones[0].run("scripts/invoke", "stop")
        table = clones[1].run("scripts/invoke", "stacks")
        print(table)
        rows = {clone.path: next(line for line in table.splitlines() if f"{clone.path} " in line) for clone in clones}
        assert rows[clones[0].path].endswith("stopped") and not rows[clones[0].path].startswith("*"), table
        assert rows[clones[1].path].startswith("*") and " running (" in rows[clones[1].path], table
        # the first stack ran on through all of it: same processes, same password
        assert running_pids(first) == first_pids and logs_in(first, first.admin_password)
    finally:
        survivors = [pid for clone in clones for pid in clone.teardown()]
        assert not survivors, f"processes of the clones survived invoke stop: {survivors}"
