"""A PostgreSQL whose pg_hba.conf is shaped as Homebrew's initdb writes it (trust for local, 127.0.0.1 and ::1),
on a cluster of the test's own: doctor fails for the stack's role, which gets in with no password; the scram
lines setup.postgres writes on the Homebrew path (pg_access.ensure_loopback_scram) are read by the real server
and close it; doctor passes and the role still logs in with its password. No Airflow: a few seconds."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from invoke import Config, Context

from airflow_stack import settings as settings_mod
from airflow_stack.ops import doctor_security
from airflow_stack.services import host, pg_access, pg_database, postgres
from tests.support.homebrew import HOMEBREW_HBA

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]


def test_doctor_is_red_on_homebrews_trust_and_the_scram_lines_close_it(clusters, tmp_path):
    with clusters("h") as (version, name, port):
        hba = Path(f"/etc/postgresql/{version}/{name}/pg_hba.conf")
        hba.write_text(HOMEBREW_HBA)
        subprocess.run(["pg_ctlcluster", version, name, "reload"], check=True, capture_output=True)
        env_file = tmp_path / ".env"
        env_file.write_text(f"STACK_PG_PASSWORD={secrets.token_urlsafe(18)}\n")
        role = f"ast_trust_{os.getpid()}"
        settings = settings_mod.load(environ={"STACK_ENV_FILE": str(env_file), "STACK_STATE_DIR": str(tmp_path),
                                              "STACK_PG_PORT": str(port), "STACK_PG_USER": role,
                                              "STACK_PG_DATABASE": role})
        c, plat = Context(Config(overrides={"run": {"in_stream": False}})), host.AptPgCtlcluster("")
        admin = postgres.PsqlAdmin(c, plat.pg_admin_psql(c, port, version), settings)
        pg_database.bootstrap(admin, settings)

        red = doctor_security.check_loopback_password(settings)
        assert not red.ok and f"lets {role} in on 127.0.0.1" in red.detail and "pg_hba.conf" in red.fix

        changes = pg_access.ensure_loopback_scram(c, plat, admin, settings)
        assert len(changes) == 1 and "scram-sha-256" in changes[0]
        assert pg_access.ensure_loopback_scram(c, plat, admin, settings) == []  # the server reads the same file
        green = doctor_security.check_loopback_password(settings)
        assert green.ok, green.detail
        assert postgres.role_can_login(settings) == (True, "")
        # the server parsed our lines: they are its first rules for the role (pg_hba_file_rules, as superuser)
        rows = admin.rows(postgres.sql.SQL(
            "SELECT line_number, type, address, auth_method, error FROM pg_hba_file_rules "
            "WHERE {} = ANY(user_name) ORDER BY line_number").format(role))
        assert [row[1:] for row in rows] == [("host", "127.0.0.1", "scram-sha-256", ""),
                                             ("host", "::1", "scram-sha-256", "")], rows
