"""Airflow on PostgreSQL with the LocalExecutor, from nothing through `invoke up`, on one line
(STACK_TEST_AIRFLOW_LINE; nox runs both). Tests run in file order: the login-limit test is last
because it leaves this client rate limited for 40 s."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from airflow_stack import components, supervisor

from .conftest import EXECUTOR, airflow_api
from .test_bad_input import assert_one_line_error

pytestmark = pytest.mark.integration


def status(stack) -> dict[str, dict]:
    rows = json.loads(stack.inv("status", "--json").stdout)
    return {row["name"]: row for row in rows}


def test_up_brings_every_component_to_healthy(stack, airflow_up):
    print(f"\n[figure] invoke up --executor {EXECUTOR} from nothing (Airflow {stack.settings().airflow_line}): "
          f"{airflow_up['up_seconds']:.1f} s")
    rows = status(stack)
    expected = {c.name for c in components.for_line(stack.settings().airflow_line, EXECUTOR)}
    assert expected <= set(rows)
    for name in [*expected, "postgresql", "redis"]:
        assert rows[name]["up"] and rows[name]["healthy"], rows[name]


def test_up_again_does_nothing(stack, airflow_up):
    began = time.monotonic()
    out = stack.inv("up").stdout
    print(f"\n[figure] invoke up, second time: {time.monotonic() - began:.1f} s")
    assert "already running" in out
    for line in out.strip().splitlines():  # every step reports that it had nothing to do
        assert "already" in line or line.startswith("run: Airflow UI"), out


def test_no_sqlite_anywhere_and_the_executor_is_ours(stack, airflow_up):
    home = stack.settings().airflow_home
    assert not [p for p in home.rglob("*") if p.suffix in (".db", ".sqlite", ".sqlite3")]
    assert "sqlite" not in (home / "airflow.cfg").read_text()
    out = stack.inv("airflow", "--args", "config get-value core executor").stdout
    assert out.strip().splitlines()[-1] == {"local": "LocalExecutor", "celery": "CeleryExecutor"}[EXECUTOR]
    # the running scheduler heartbeats into our PostgreSQL database
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        alive = conn.execute("SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
                             "AND latest_heartbeat > now() - interval '30 seconds'").fetchone()[0]
    assert alive == 1


def test_eight_sleeps_run_in_parallel(stack, api):
    dag_id = "parallel_sleep"
    api.wait_for_dag(dag_id)
    api.unpause(dag_id)
    began = time.monotonic()
    run_id = api.trigger(dag_id)
    state = api.wait_for_run(dag_id, run_id)
    wall = time.monotonic() - began
    print(f"\n[figure] 8 x sleep(5) on {EXECUTOR}, trigger -> {state}: {wall:.1f} s")
    assert state == "success"
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        rows = conn.execute("SELECT task_id, state, start_date, end_date FROM task_instance "
                            "WHERE dag_id = %s AND run_id = %s", (dag_id, run_id)).fetchall()
    assert len(rows) == 8 and {r[1] for r in rows} == {"success"}
    # all eight were running at one moment: the latest start precedes the earliest end
    assert max(r[2] for r in rows) < min(r[3] for r in rows)


def test_new_dag_file_becomes_triggerable(stack, api):
    folder = stack.settings().dags_folder
    source = (folder / "parallel_sleep.py").read_text()
    (folder / "fresh_file.py").write_text(source.replace("def parallel_sleep", "def fresh_file")
                                          .replace("parallel_sleep()", "fresh_file()"))
    seconds = api.wait_for_dag("fresh_file", timeout=90)
    print(f"\n[figure] new DAG file -> visible in the API: {seconds:.1f} s")


def test_restarts_only_what_is_down_and_refuses_a_taken_port(stack, airflow_up):
    settings = stack.settings()
    pids = {c.name: supervisor.running(settings, c.name).pid
            for c in components.for_line(settings.airflow_line, EXECUTOR)}
    assert "triggerer: stopped" in stack.inv("stop", "-c", "triggerer").stdout
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("0.0.0.0", settings.trigger_log_port))
    holder.listen()
    try:
        proc = stack.inv(f"run.{EXECUTOR}", check=False)
        assert_one_line_error(proc, str(settings.trigger_log_port), "STACK_TRIGGER_LOG_PORT")
    finally:
        holder.close()
    out = stack.inv("up").stdout
    assert "started triggerer" in out
    for name, pid in pids.items():
        now = supervisor.running(settings, name).pid
        assert (now != pid) if name == "triggerer" else (now == pid), name


def test_run_refuses_missing_services_and_folders(stack, airflow_up, tmp_path):
    cases = [
        ({"STACK_DAGS_FOLDER": str(tmp_path / "no-such-folder")}, "STACK_DAGS_FOLDER"),
        ({"STACK_PG_PORT": "1"}, "invoke setup.postgres"),
        ({"STACK_REDIS_PORT": "1"}, "invoke setup.redis"),
    ]
    for env, needle in cases:
        proc = stack.inv(f"run.{EXECUTOR}", check=False, env=env)
        assert_one_line_error(proc, needle)
    # the other executor while this one runs: refused, nothing stopped
    other = "local" if EXECUTOR == "celery" else "celery"
    assert_one_line_error(stack.inv(f"run.{other}", check=False), "stop it first")
    assert all(row["healthy"] for row in status(stack).values())


def test_setup_resets_the_admin_password_to_the_one_in_env(stack, airflow_up):
    env_file = Path(stack.env["STACK_ENV_FILE"])
    old = stack.settings().admin_password
    env_file.write_text(env_file.read_text().replace(f"_AIRFLOW_WWW_USER_PASSWORD={old}\n",
                                                     f"_AIRFLOW_WWW_USER_PASSWORD={uuid.uuid4().hex}\n"))
    assert stack.settings().admin_password != old
    assert "set the password of Airflow user" in stack.inv("setup.airflow").stdout
    assert airflow_api(stack.settings()).dag_count() >= 1  # the new password logs in
    assert "already installed, migrated, admin present" in stack.inv("setup.airflow").stdout


def _login_page(client: httpx.Client, line: str) -> tuple[str, str]:
    path = "/login/" if line == "2.11" else "/auth/login/"
    page = client.get(path)
    assert page.status_code == 200, page.status_code
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text)
    assert token, "no CSRF token on the login page"
    return path, token.group(1)


def test_no_production_warnings(stack, airflow_up):
    settings = stack.settings()
    web = components.web(settings.airflow_line).name
    # 3.x: the FAB auth manager in the api-server warns at start when Flask-Limiter keeps limits in memory
    log = supervisor.log_file(settings, web).read_text().lower()
    assert "application startup complete" in log or "listening at" in log or "booting worker" in log
    assert "in-memory storage" not in log
    if settings.airflow_line != "2.11":
        return
    # 2.11: the UI banners this project exists to remove
    # from another loopback address: logins are limited per client address, and this successful
    # one must not count against the limit test below
    transport = httpx.HTTPTransport(local_address="127.0.0.5")
    with httpx.Client(base_url=settings.api_url, timeout=30, transport=transport) as client:
        path, token = _login_page(client, settings.airflow_line)
        resp = client.post(path, data={"username": settings.admin_user, "password": settings.admin_password,
                                       "csrf_token": token})
        assert resp.status_code == 302
        home = client.get("/home")
        assert home.status_code == 200 and "DAGs" in home.text
        assert "Do not use SQLite" not in home.text
        assert "Do not use the SequentialExecutor" not in home.text


def test_login_attempts_are_limited_in_redis_across_restarts(stack, airflow_up):
    settings = stack.settings()
    web = components.web(settings.airflow_line).name
    limiter = redis.Redis(port=settings.redis_port, password=settings.redis_password, db=1)
    with httpx.Client(base_url=settings.api_url, timeout=30) as client:
        path, token = _login_page(client, settings.airflow_line)
        codes = [client.post(path, data={"username": settings.admin_user, "password": "wrong",
                                         "csrf_token": token}).status_code for _ in range(6)]
    print(f"\n[figure] six wrong logins: {codes}")
    assert all(code in (200, 302, 401) for code in codes[:5]) and codes[5] == 429, codes
    assert [k for k in limiter.keys("LIMITS*")], "no Flask-Limiter key in our Redis"
    stack.inv("stop", "-c", web)
    stack.inv(f"run.{EXECUTOR}")
    with httpx.Client(base_url=settings.api_url, timeout=30) as client:
        path, token = _login_page(client, settings.airflow_line)
        after = client.post(path, data={"username": settings.admin_user, "password": "wrong",
                                        "csrf_token": token}).status_code
    assert after == 429, f"the limit did not survive a restart of {web}"
