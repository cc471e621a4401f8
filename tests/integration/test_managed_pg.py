"""A managed PostgreSQL (the RDS case): a server this stack does not run, reached over TLS with the server's
certificate verified (sslmode=verify-full), with only a DSN given; the role and database were made there
beforehand by its admin.

The "managed server" is a cluster of the test's own (pg_createcluster) on a free port, listening on
127.0.0.3 with a certificate from a CA of its own, admitting clients over TLS only (hostssl); dropped
afterwards."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from urllib.parse import quote

import psycopg
import pytest

from airflow_stack import settings as settings_mod
from airflow_stack.netutil import wait_until
from airflow_stack.ops import scratch
from airflow_stack.runtime import backup_schedule
from airflow_stack.services import tls

from .conftest import LINE, TEST_DAGS, Stack, airflow_api

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]
MANAGED_ADDRESS = "127.0.0.3"


def as_admin(port: int, statement: str, dbname: str = "postgres") -> str:
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                           "-p", str(port), "-d", dbname, "-c", statement], check=True, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL).stdout.strip()


@pytest.fixture(scope="module")
def managed(clusters, tmp_path_factory):
    """The managed server, its CA file (what the provider hands out) and the DSN of the role its admin made."""
    with clusters("m") as (version, name, port):
        provider = tmp_path_factory.mktemp("provider ca")
        # the provider's CA and server certificate (made with the stack's own tls module, in a folder of its own)
        made = settings_mod.load(environ={"STACK_ENV_FILE": str(provider / ".env"), "STACK_STATE_DIR": str(provider),
                                          "STACK_TLS_NAMES": MANAGED_ADDRESS})
        tls.ensure(made)
        files = tls.Files.of(made)
        data_dir = as_admin(port, "SHOW data_directory")
        for source, target in ((files.cert, "managed.crt"), (files.key, "managed.key")):
            subprocess.run(["install", "-o", "postgres", "-g", "postgres", "-m", "600", str(source),
                            f"{data_dir}/{target}"], check=True)
        hba = as_admin(port, "SHOW hba_file")
        with open(hba, "w") as fh:  # TLS only, from anywhere on loopback; the superuser over the socket
            fh.write("local all postgres peer\nhostssl all all 127.0.0.0/8 scram-sha-256\n")
        for statement in ("ALTER SYSTEM SET ssl = on", "ALTER SYSTEM SET ssl_cert_file = 'managed.crt'",
                          "ALTER SYSTEM SET ssl_key_file = 'managed.key'",
                          f"ALTER SYSTEM SET listen_addresses = 'localhost,{MANAGED_ADDRESS}'"):
            as_admin(port, statement)
        subprocess.run(["pg_ctlcluster", version, name, "restart"], check=True, stdin=subprocess.DEVNULL)
        # what the provider's admin does for a new application: a role and a database it owns
        role, password = f"etl_{os.getpid()}", secrets.token_urlsafe(18)
        as_admin(port, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        as_admin(port, f"CREATE DATABASE airflow_{role} OWNER {role}")
        ca = provider / "provider-ca.pem"
        shutil.copy(files.ca, ca)
        dsn = (f"postgresql://{role}:{quote(password, safe='')}@{MANAGED_ADDRESS}:{port}/airflow_{role}"
               f"?sslmode=verify-full&sslrootcert={quote(str(ca), safe='/')}")
        yield {"port": port, "dsn": dsn, "password": password, "database": f"airflow_{role}", "ca": ca}


def connections(port: int, database: str) -> list[tuple[bool, str]]:
    """(encrypted, client address) of every connection to the database, as the server sees them."""
    rows = as_admin(port, "SELECT s.ssl, a.client_addr FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                          f"WHERE a.datname = '{database}'")
    return [(ssl == "t", addr) for ssl, addr in (row.split("|") for row in rows.splitlines() if row)]


def test_a_managed_server_given_only_a_dsn_runs_dags_over_verified_tls_and_stays_chosen(managed, tmp_path_factory):
    state = tmp_path_factory.mktemp("managed stack")
    shutil.copytree(TEST_DAGS, state / "dags")
    env_file = state / ".env"
    env_file.write_text(f"STACK_PG_DSN={managed['dsn']}\n")
    env_file.chmod(0o600)
    stack = Stack.create(state, LINE, "local", state, "unused_by_the_dsn")
    try:
        out = stack.inv("setup.postgres").stdout
        settings = stack.settings()
        assert (settings.pg_host, settings.pg_port, settings.pg_database) == (
            MANAGED_ADDRESS, managed["port"], managed["database"])
        assert not settings.pg_is_local and "installed" not in out  # nothing installed or started for it
        assert "STACK_PG_PASSWORD" not in env_file.read_text()  # the DSN's password is the one used
        stack.inv("up", timeout=900)
        api = airflow_api(settings)
        api.wait_for_dag("noop_forty", timeout=120)
        api.unpause("noop_forty")
        assert api.wait_for_run("noop_forty", api.trigger("noop_forty")) == "success"
        seen = connections(managed["port"], managed["database"])
        assert seen and all(encrypted for encrypted, _ in seen), seen  # every component's connection: TLS
        # its scheduled backup, over the same TLS: the role may not create a scratch database there (NOCREATEDB,
        # no superuser DSN), so the archive is read back and every table's rows compared instead
        assert wait_until(lambda: backup_schedule.read(settings) is not None, 120)
        last = backup_schedule.read(settings).last
        assert last.verified and last.how == scratch.READ_BACK, last
        print(f"\n[figure] a backup of the managed server's database ({last.tables} tables, {last.rows} rows): "
              f"dumped in {last.dump_seconds:.1f} s, read back and counted in {last.verify_seconds:.1f} s")
        # a plain `invoke up` after a stop still uses the managed server: nothing falls back to 127.0.0.1
        stack.inv("stop")
        stack.inv("up", timeout=900)
        assert api.wait_for_run("noop_forty", api.trigger("noop_forty")) == "success"
        runs = as_admin(managed["port"], "SELECT count(*) FROM dag_run WHERE dag_id = 'noop_forty'",
                        dbname=managed["database"])
        assert runs == "2"
        # the server's certificate is verified: with another CA the stack refuses to start, in one line
        stack.inv("stop")
        wrong = dict(stack.env, STACK_PG_DSN=managed["dsn"].replace(quote(str(managed["ca"]), safe="/"),
                                                                   quote(str(tls.Files.of(settings).ca), safe="/")))
        tls.ensure(settings)  # a CA of the stack's own, which did not sign the managed server's certificate
        proc = stack.inv("up", check=False, env=wrong)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        assert proc.returncode != 0 and "certificate verify failed" in lines[-1] and "Traceback" not in proc.stderr
        with pytest.raises(psycopg.OperationalError):  # and a plain-text client is refused by the server
            psycopg.connect(**settings.pg_conninfo(sslmode="disable")).close()
        assert not any(managed["password"] in out for out in stack.outputs)
    finally:
        stack.inv("stop", "--timeout", "20", check=False)
        survivors = stack.leftovers()
        for proc in survivors:
            proc.kill()
        assert not survivors, f"processes survived invoke stop: {survivors}"
