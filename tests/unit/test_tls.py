"""STACK_TLS: the stack's CA and server certificate, and what every client URL and config file says."""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.errors import StackError
from airflow_stack.services import redis_server, tls


@pytest.fixture
def tls_settings(settings):
    return settings.replace(tls=True, redis_bind="127.0.0.1 10.0.0.5 -::1", tls_names="stack.example.org")


def sans(path) -> set[str]:
    ext = x509.load_pem_x509_certificate(path.read_bytes()).extensions
    names = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in names.get_values_for_type(x509.IPAddress)} | set(names.get_values_for_type(x509.DNSName))


def test_the_ca_is_made_once_and_the_server_certificate_covers_every_way_in(tls_settings):
    files = tls.Files.of(tls_settings)
    made = tls.ensure(tls_settings, listen="localhost,127.0.0.2")
    assert len(made) == 2 and "copy it to each worker" in made[0]
    assert {"127.0.0.1", "::1", "localhost", "10.0.0.5", "127.0.0.2", "stack.example.org"} <= sans(files.cert)
    assert files.ca_key.stat().st_mode & 0o077 == 0 and files.key.stat().st_mode & 0o077 == 0
    assert tls.signed_by(files.cert.read_bytes(), files.ca)
    # a client with only ca.pem verifies the server certificate (what Redis and libpq clients do)
    ctx = ssl.create_default_context(cafile=str(files.ca))
    assert ctx.get_ca_certs()[0]["subject"][0][0][1].startswith("airflow-stack CA")
    assert tls.ensure(tls_settings, listen="localhost,127.0.0.2") == []  # twice: nothing new


def test_a_new_address_reissues_the_server_certificate_from_the_same_ca(tls_settings):
    files = tls.Files.of(tls_settings)
    tls.ensure(tls_settings)
    ca_before, cert_before = files.ca.read_bytes(), files.cert.read_bytes()
    made = tls.ensure(tls_settings.replace(redis_bind="127.0.0.1 10.0.0.9"))
    assert made == [made[0]] and made[0].startswith("issued the server certificate")
    assert files.ca.read_bytes() == ca_before and files.cert.read_bytes() != cert_before  # workers keep their CA
    assert "10.0.0.9" in sans(files.cert) and tls.signed_by(files.cert.read_bytes(), files.ca)


def test_a_worker_machine_with_only_ca_pem_never_makes_a_ca_of_its_own(tls_settings):
    files = tls.Files.of(tls_settings)
    files.ca.parent.mkdir(parents=True)
    files.ca.write_text("copied from the stack machine")
    with pytest.raises(StackError, match="run this on the stack machine"):
        tls.ensure(tls_settings)
    assert files.ca.read_text() == "copied from the stack machine"


def test_a_client_without_the_ca_is_told_where_it_goes(tls_settings):
    with pytest.raises(StackError, match=r"tls/ca.pem is missing; copy tls/ca.pem from the stack machine"):
        tls.check_client(tls_settings)


def test_every_redis_client_url_verifies_the_server_against_the_ca(tls_settings):
    for url in (tls_settings.redis_url(0), tls_settings.airflow_redis_url(1), tls_settings.limiter_storage_uri):
        parts = urlsplit(url)
        assert parts.scheme == "rediss"
        query = parse_qs(parts.query)
        assert query == {"ssl_cert_reqs": ["required"], "ssl_ca_certs": [str(tls_settings.tls_ca_file)]}
    assert tls_settings.redis_tls_params()["ssl_cert_reqs"] == "required"
    plain = tls_settings.replace(tls=False)
    assert plain.redis_url(0).startswith("redis://:") and "?" not in plain.redis_url(0)


def test_redis_speaks_only_tls_on_its_port(tls_settings, tmp_path):
    conf = redis_server.render_conf(tls_settings)
    assert "\nport 0\n" in conf and f"\ntls-port {tls_settings.redis_port}\n" in conf
    assert "tls-auth-clients no" in conf and f"tls-ca-cert-file {tls_settings.tls_ca_file}" in conf
    (tmp_path / "redis.conf").write_text(conf)  # the port a running Redis holds is read back from tls-port
    assert redis_server._conf_port(tmp_path / "redis.conf") == tls_settings.redis_port
    plain = redis_server.render_conf(tls_settings.replace(tls=False))
    assert f"\nport {tls_settings.redis_port}\n" in plain and "tls-" not in plain


def test_postgres_urls_carry_verify_full_and_the_ca_also_through_a_space(tls_settings):
    spaced = tls_settings.replace(state_dir=tls_settings.state_dir / "my stack")
    assert spaced.pg_ssl_params() == {"sslmode": "verify-full", "sslrootcert": str(spaced.tls_ca_file)}
    query = parse_qs(urlsplit(airflow_config.sql_alchemy_conn(spaced)).query)
    assert query == {"sslmode": ["verify-full"], "sslrootcert": [str(spaced.tls_ca_file)]}
    assert "%20" in airflow_config.sql_alchemy_conn(spaced) and " " not in airflow_config.sql_alchemy_conn(spaced)
    assert spaced.pg_url("db+postgresql").startswith("db+postgresql://")
    # without TLS: libpq's prefer, no root certificate; a chosen mode always wins
    assert tls_settings.replace(tls=False).pg_ssl_params() == {"sslmode": "prefer"}
    assert tls_settings.replace(pg_sslmode="require").pg_ssl_mode == "require"


def test_a_managed_servers_dsn_fills_the_postgres_settings(env, tmp_path):
    dsn = ("postgresql://etl:s3cr%40t@db.example.org:6543/warehouse_airflow"
           "?sslmode=verify-full&sslrootcert=/etc/ssl/rds-ca.pem")
    loaded = settings_mod.load(environ=env | {"STACK_PG_DSN": dsn, "STACK_TLS": "true"})
    assert (loaded.pg_host, loaded.pg_port, loaded.pg_database, loaded.pg_user, loaded.pg_password) == (
        "db.example.org", 6543, "warehouse_airflow", "etl", "s3cr@t")
    assert loaded.pg_ssl_params() == {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/rds-ca.pem"}
    assert not loaded.pg_is_local and not loaded.pg_tls_ours  # its own CA, not the stack's
    assert dsn in settings_mod.secret_values(loaded)  # never printed, like any secret


def test_a_broken_dsn_is_one_line_without_the_password(env):
    with pytest.raises(StackError) as err:
        settings_mod.load(environ=env | {"STACK_PG_DSN": "postgresql://etl:hunter2-secret@host:port/db"})
    assert "hunter2" not in str(err.value) and "STACK_PG_DSN" in str(err.value)
