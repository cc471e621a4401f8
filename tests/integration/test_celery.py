"""CeleryExecutor: a password-protected broker, workers routed by queue, one joining "from another
machine" (its own state dir, hostname and address), and a worker killed under a running task."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import redis

from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.netutil import wait_until
from airflow_stack.runtime import registry, supervisor
from airflow_stack.services import redis_server, tls

from .conftest import REMOTE_ADDRESS, free_ports
from .test_bad_input import assert_one_line_error

pytestmark = [pytest.mark.integration, pytest.mark.celery]
REMOTE_HOSTNAME = "worker-b"


def rows(stack, env=None, runner=None) -> dict[str, dict]:
    out = (runner or stack.inv)("status", "--json", check=False, **({"env": env} if env else {})).stdout
    return {row["name"]: row for row in json.loads(out)}


def test_the_worker_answers_a_ping_through_the_broker(stack, airflow_up):
    worker = rows(stack)["worker"]
    assert worker["up"] and worker["healthy"] and "answers ping" in worker["detail"], worker


def test_a_plain_up_keeps_the_celery_executor_it_runs(stack, airflow_up):
    """`invoke up --executor celery`, then `invoke up` with no flag and no STACK_EXECUTOR in the
    environment: nothing is switched, nothing restarted, and .env remembers the choice."""
    settings = stack.settings()
    before = {name: proc.pid for name, proc in registry.running(settings).items()}
    out = stack.inv("up", env={"STACK_EXECUTOR": None}).stdout
    assert "already running" in out and "celery" in out and "switching" not in out, out
    assert {name: proc.pid for name, proc in registry.running(settings).items()} == before
    assert "worker" in before
    assert "STACK_EXECUTOR=celery" in settings.env_file.read_text().splitlines()


def test_the_broker_refuses_clients_without_the_password(stack, airflow_up):
    settings = stack.settings()
    for where in (settings, settings.replace(redis_host=REMOTE_ADDRESS)):  # its socket, and TCP for other machines
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(db=0, socket_timeout=5, **redis_server.connection_params(where)).llen("default")
    # a worker logs in as Airflow's ACL user (all a worker machine has): a wrong password for it is refused
    proc = stack.inv("run.worker", "--name", "intruder", check=False,
                     env={"STACK_REDIS_AIRFLOW_PASSWORD": "wrong-password"})
    assert_one_line_error(proc, "refused the password", "STACK_REDIS_AIRFLOW_PASSWORD")
    assert supervisor.running(settings, "worker-intruder") is None


def test_flower_asks_for_its_generated_password_and_only_flower_has_it(stack, airflow_up):
    settings = stack.settings()
    out = stack.inv("run.celery", "--flower").stdout
    assert "STACK_FLOWER_PASSWORD" in out and settings.flower_password not in out
    try:
        url = f"http://127.0.0.1:{settings.flower_port}"
        with httpx.Client(trust_env=False, timeout=10) as client:
            assert client.get(url + "/healthcheck").status_code == 200  # what the probe reads
            assert client.get(url + "/").status_code == 401
            assert client.get(url + "/", auth=(settings.admin_user, "wrong-password")).status_code == 401
            page = client.get(url + "/workers", auth=(settings.admin_user, settings.flower_password))
            assert page.status_code == 200 and "flower" in page.text.lower()
        # Flower's own launcher holds the login; the shared environment (every other process, tasks) does not
        assert "AIRFLOW__CELERY__FLOWER_BASIC_AUTH" not in airflow_config.environment(settings, "celery")
    finally:
        stack.inv("stop", "-c", "flower")
    assert rows(stack)["worker"]["healthy"]


def test_a_worker_without_the_shared_secrets_is_told_what_to_copy(stack, airflow_up, tmp_path):
    (tmp_path / ".env").write_text(f"STACK_PG_PASSWORD={stack.settings().pg_password}\n")
    proc = stack.inv("run.worker", "--name", "stranger", check=False,
                     env={"STACK_ENV_FILE": str(tmp_path / ".env"), "STACK_STATE_DIR": str(tmp_path)})
    err = assert_one_line_error(proc, "AIRFLOW__CORE__FERNET_KEY", "invoke worker.env", "copy the file it writes")
    assert "STACK_PG_PASSWORD" not in err  # it has that one


@contextlib.contextmanager
def connections_from_remote_address():
    """Connections to 127.0.0.2 come from 127.0.0.2 (Linux picks 127.0.0.1 for any loopback destination),
    so PostgreSQL sees the "remote" worker at the address its own pg_hba entry admits, as another machine
    would be seen: a route for that one address, removed afterwards."""
    route = ["local", f"{REMOTE_ADDRESS}/32", "dev", "lo", "src", REMOTE_ADDRESS, "table", "local"]
    subprocess.run(["ip", "route", "replace", *route], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "route", "del", *route], capture_output=True)


@pytest.fixture(scope="module")
def remote(stack, airflow_up, tmp_path_factory):
    """A worker "on another machine": its own state dir with what `invoke worker.env` writes as its .env and
    a copy of the stack's CA (tls/ca.pem), its own hostname (a UTS namespace) and name resolution (a private
    /etc/hosts), reaching
    PostgreSQL, Redis and the API server through 127.0.0.2 only, from 127.0.0.2, as the pg_hba entry and
    Redis bind opted in for; Redis and PostgreSQL over TLS, verified with the CA."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare(1) and ip(8) to give the remote worker its own hostname and address")
    home = tmp_path_factory.mktemp("remote-machine")
    settings = stack.settings()
    if settings.tls:  # what the opt-in tells the user to copy besides .env
        (home / "tls").mkdir()
        shutil.copy(settings.tls_ca_file, home / "tls" / "ca.pem")
    (home / "hosts").write_text(f"127.0.0.1 localhost\n"
                                f"{REMOTE_ADDRESS} {REMOTE_HOSTNAME}.stack.test {REMOTE_HOSTNAME}\n")
    # the worker machine's .env is what `invoke worker.env` writes, alone: no copy of the stack's .env
    stack.inv("worker.env", "--output", str(home / ".env"), "--host", REMOTE_ADDRESS)
    given = (home / ".env").read_text()
    for kept_home in (settings.redis_password, settings.admin_password, settings.flower_password):
        assert kept_home not in given  # the Redis default user's, the admin's and Flower's passwords stay home
    assert "STACK_PG_ADMIN_DSN" not in given
    machine = type(stack)(home, stack.env | {
        "STACK_ENV_FILE": str(home / ".env"), "STACK_STATE_DIR": str(home), "STACK_PG_HOST": REMOTE_ADDRESS,
        "STACK_REDIS_HOST": REMOTE_ADDRESS, "STACK_API_HOST": REMOTE_ADDRESS,
        "STACK_WORKER_LOG_PORT": str(free_ports(1)[0])})
    machine.wrapper = ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c",
                       f'mount --bind "$0" /etc/hosts && hostname {REMOTE_HOSTNAME} && exec "$@"',
                       str(home / "hosts")]
    with connections_from_remote_address():
        began = time.monotonic()
        out = machine.inv("run.worker", "--name", "b", "--queues", "other").stdout
        print(f"\n[figure] remote worker joined in {time.monotonic() - began:.1f} s (its own Airflow venv included)")
        assert "started worker-b" in out
        yield machine.inv
        machine.inv("stop", check=False)


def test_the_opt_in_says_what_became_reachable_from_where_and_how(stack, airflow_up):
    settings, said = stack.settings(), airflow_up["opt_in"]
    how = f"over TLS only (clients verify the stack's CA; give workers {settings.tls_ca_file} with .env)" \
        if settings.tls else "in plain text"
    assert f"our Redis (port {settings.redis_port}, password required) is now reachable from {REMOTE_ADDRESS}, " \
           f"{how}" in said, said
    assert f"database {settings.pg_database} (role {settings.pg_user}, port {settings.pg_port}) is now reachable " \
           f"from {REMOTE_ADDRESS}/32, {how}" in said, said


def test_from_the_remote_address_redis_and_postgresql_speak_tls_only(stack, remote):
    settings = stack.settings()
    if not settings.tls:
        pytest.skip("the session's PostgreSQL is the shared one (not root): no TLS opt-in there")
    # Redis: its port speaks TLS only; a plain-text client with the right password gets nowhere
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=REMOTE_ADDRESS, port=settings.redis_port, password=settings.redis_password,
                    socket_timeout=5, socket_connect_timeout=5).ping()
    assert redis_server.client(settings.replace(redis_host=REMOTE_ADDRESS)).ping()  # verified against the CA
    # PostgreSQL: the hostssl entry admits the role from 127.0.0.2 over TLS only, with the server verified
    remote_pg = settings.replace(pg_host=REMOTE_ADDRESS)
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(**remote_pg.pg_conninfo(sslmode="disable")).close()
    with psycopg.connect(**remote_pg.pg_conninfo()) as conn:
        assert remote_pg.pg_ssl_mode == "verify-full"
        row = conn.execute("SELECT s.ssl, host(a.client_addr) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                           "WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True, REMOTE_ADDRESS)
    # and a server certificate the stack's CA did not sign is refused by every client
    stranger = settings.replace(state_dir=stack.state_dir / "another-ca")
    tls.ensure(stranger)  # a CA of its own, as an impostor's would be
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(**stranger.replace(pg_host=REMOTE_ADDRESS).pg_conninfo()).close()
    with pytest.raises(redis.ConnectionError):
        redis_server.client(stranger.replace(redis_host=REMOTE_ADDRESS)).ping()


def test_a_worker_on_another_machine_joins_and_says_its_queue_is_unused(remote):
    status = rows(None, runner=remote)
    assert status["worker-b"]["healthy"], status["worker-b"]
    assert "no task has used its queues (other) yet" in status["worker-b"]["detail"]


def test_each_task_runs_on_a_worker_of_its_queue(stack, api, remote):
    api.wait_for_dag("queue_routing")
    api.unpause("queue_routing")
    run_id = api.trigger("queue_routing")
    assert api.wait_for_run("queue_routing", run_id) == "success"
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        hosts = dict(conn.execute("SELECT task_id, hostname FROM task_instance WHERE dag_id = 'queue_routing' "
                                  "AND run_id = %s", (run_id,)).fetchall())
    print(f"\n[figure] queue routing: {hosts}")
    assert hosts["on_other"].startswith(REMOTE_HOSTNAME)
    # Airflow's fqdn helper avoids socket.getfqdn's "localhost" answer: compare the short host name
    assert hosts["on_default"].split(".")[0] == socket.gethostname().split(".")[0]


def _task_instance(settings, run_id: str):
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        return conn.execute("SELECT state, pid, try_number, hostname FROM task_instance "
                            "WHERE dag_id = 'killed_worker' AND run_id = %s", (run_id,)).fetchone()


def test_a_task_whose_worker_is_killed_is_retried_on_another_worker(stack, api):
    settings = stack.settings()
    assert "started worker-c" in stack.inv("run.worker", "--name", "c", "--queues", "default").stdout
    # an extra worker is an instance like any other: its log by name, and among all logs
    log = str(settings.paths.log_file("worker-c"))
    assert f"==> {log} <==" in stack.inv("logs", "--lines", "1").stdout
    shown = stack.inv("logs", "-c", "worker-c", "--lines", "3").stdout.strip().splitlines()
    assert shown and shown[-1] in Path(log).read_text()
    api.wait_for_dag("killed_worker")
    api.unpause("killed_worker")
    began = time.monotonic()
    run_id = api.trigger("killed_worker")
    row = None
    while time.monotonic() - began < 120:
        row = _task_instance(settings, run_id)
        if row and row[0] == "running" and row[1]:
            break
        time.sleep(0.5)
    assert row and row[0] == "running" and row[1], f"the task never ran: {row}"
    time.sleep(2)  # well inside its 15 s
    task_process = psutil.Process(row[1])
    ancestors = {p.pid for p in task_process.parents()}
    victims = [name for name in ("worker", "worker-c") if (p := supervisor.running(settings, name))
               and p.pid in ancestors]
    assert victims, "the running task belongs to none of our local workers"
    victim_pid = supervisor.running(settings, victims[0]).pid
    victim = psutil.Process(victim_pid)
    doomed = [victim, *victim.children(recursive=True)]
    for proc in doomed:  # the whole worker dies at once, as with a machine failure
        proc.kill()
    psutil.wait_procs(doomed, timeout=10)
    killed_at = time.monotonic()
    state = api.wait_for_run("killed_worker", run_id, timeout=240)
    final = _task_instance(settings, run_id)
    print(f"\n[figure] killed {victims[0]} {killed_at - began:.1f} s after trigger; run {state} "
          f"{time.monotonic() - killed_at:.1f} s later, try {final[2]}")
    assert state == "success" and final[0] == "success" and final[2] == 2, final  # killed once, retried once
    survivor = "worker-c" if victims[0] == "worker" else "worker"
    assert supervisor.running(settings, survivor) is not None
    with psycopg.connect(**settings.pg_conninfo()) as conn:
        stuck = conn.execute("SELECT count(*) FROM task_instance WHERE state IN ('queued', 'running')").fetchone()
    assert stuck[0] == 0
    # and the killed worker came back by itself, no command run
    assert wait_until(lambda: rows(stack)[victims[0]]["healthy"], 60), rows(stack)[victims[0]]
    back = rows(stack)[victims[0]]
    assert back["pid"] != victim_pid and (back["restarts"], back["last_exit"]) == (1, -9), back
    stack.inv("stop", "-c", "worker-c")
