"""Carry-over from the SQLite Airflow a user runs today: connections (with a password), variables
and pools, re-encrypted with the stack's fernet key; dry run; a second run imports nothing."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest
import yaml

from airflow_stack.apache_airflow import install

from .test_bad_input import assert_one_line_error

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]
OLD_PASSWORD = "old-db-password-7"


@pytest.fixture(scope="module")
def old_airflow(stack, services, tmp_path_factory):
    """A default (SQLite) Airflow home of the same version, with one of each kind of object."""
    stack.inv("setup.airflow")
    home = tmp_path_factory.mktemp("old-airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "STACK_"))} | {"AIRFLOW_HOME": str(home)}
    airflow = str(install.airflow_bin(stack.settings()))
    for args in (["db", "migrate"],
                 ["connections", "add", "warehouse", "--conn-uri",
                  f"postgres://analyst:{OLD_PASSWORD}@db.internal.example:5432/sales"],
                 ["connections", "add", "local_files", "--conn-uri", "postgres://me:pw@localhost:5432/x"],
                 ["variables", "set", "region", "eu-west-1"],
                 ["pools", "set", "reports", "3", "report jobs"]):
        subprocess.run([airflow, *args], env=env, check=True, capture_output=True, timeout=300)
    return home / "airflow.db"


def test_dry_run_reports_and_writes_nothing(stack, old_airflow):
    out = stack.inv("db.import-sqlite", str(old_airflow), "--dry-run").stdout
    assert "would import" in out and "warehouse" in out and "region" in out and "reports" in out
    assert "local_files (postgres at localhost)" in out  # pointed at the old machine: listed to check
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM connection WHERE conn_id = 'warehouse'").fetchone()[0] == 0


def test_import_then_read_back_through_the_stack(stack, old_airflow, tmp_path):
    out = stack.inv("db.import-sqlite", str(old_airflow)).stdout
    assert "import: done" in out
    conn_json = stack.inv("airflow", "--args", "connections get warehouse -o json", env={}).stdout
    assert "db.internal.example" in conn_json
    assert stack.inv("airflow", "--args", "variables get region").stdout.strip().splitlines()[-1] == "eu-west-1"
    assert "reports" in stack.inv("airflow", "--args", "pools get reports").stdout
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        stored, encrypted = conn.execute("SELECT password, is_encrypted FROM connection "
                                         "WHERE conn_id = 'warehouse'").fetchone()
    assert encrypted and OLD_PASSWORD not in stored  # re-encrypted with the stack's fernet key
    # ... and it decrypts, with that key, to the old password: Airflow's own models read it back
    exported = tmp_path / "objects.yaml"
    stack.inv("objects.export", "--file", str(exported))
    found = yaml.safe_load(exported.read_text())["airflow"]["connections"]
    warehouse = next(c for c in found if c["conn_id"] == "warehouse")
    assert (warehouse["conn_password"], warehouse["conn_login"]) == (OLD_PASSWORD, "analyst")


def test_a_second_import_duplicates_nothing(stack, old_airflow):
    out = stack.inv("db.import-sqlite", str(old_airflow)).stdout
    assert "imported 0" in out and "already in the stack" in out
    with psycopg.connect(**stack.settings().pg_conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM connection WHERE conn_id = 'warehouse'").fetchone()[0] == 1


def test_a_file_that_is_not_an_airflow_database(stack, services, tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("not sqlite at all\n")
    assert_one_line_error(stack.inv("db.import-sqlite", str(text), check=False), "not a SQLite database")
    subprocess.run(["python3", "-c", f"import sqlite3; sqlite3.connect('{tmp_path / 'other.db'}')"
                    ".execute('CREATE TABLE t (x int)')"], check=True)
    assert_one_line_error(stack.inv("db.import-sqlite", str(tmp_path / "other.db"), check=False),
                          "not an Airflow database")
