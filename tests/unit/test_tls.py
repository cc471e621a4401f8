"""STACK_TLS: the stack's CA and server certificate, and what every client URL and config file says."""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.apache_airflow import profiles
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


def test_every_redis_client_of_a_worker_machine_verifies_the_server_against_the_ca(tls_settings):
    worker = tls_settings.replace(redis_host="10.0.0.5")  # a worker machine dials the stack's TCP port
    for url in (worker.airflow_redis_url(1), worker.limiter_storage_uri):
        parts = urlsplit(url)
        assert parts.scheme == "rediss" and parts.hostname == "10.0.0.5"
        query = parse_qs(parts.query)
        assert query == {"ssl_cert_reqs": ["required"], "ssl_ca_certs": [str(worker.tls_ca_file)]}
    params = redis_server.connection_params(worker)
    assert params["ssl_cert_reqs"] == "required" and params["ssl_check_hostname"] and params["host"] == "10.0.0.5"
    plain = worker.replace(tls=False)
    assert plain.airflow_redis_url(0).startswith("redis://airflow:") and "?" not in plain.airflow_redis_url(0)
    # on the stack machine itself: the Unix socket, no TCP and so no TLS
    assert tls_settings.airflow_redis_url(0).startswith("redis+socket://airflow:")
    assert redis_server.connection_params(tls_settings) == {"unix_socket_path": str(tls_settings.paths.redis_socket)}


def test_redis_speaks_only_tls_on_its_port_and_plain_text_only_on_its_socket(tls_settings, tmp_path):
    conf = redis_server.render_conf(tls_settings)  # its bind names 10.0.0.5: TCP for other machines
    assert "\nport 0\n" in conf and f"\ntls-port {tls_settings.redis_port}\n" in conf
    assert "tls-auth-clients no" in conf and f"tls-ca-cert-file {tls_settings.tls_ca_file}" in conf
    assert f"\nunixsocket {tls_settings.paths.redis_socket}\nunixsocketperm 700\n" in conf
    (tmp_path / "redis.conf").write_text(conf)  # the port a running Redis holds is read back from tls-port
    assert redis_server._conf_port(tmp_path / "redis.conf") == tls_settings.redis_port
    plain = redis_server.render_conf(tls_settings.replace(tls=False))
    assert f"\nport {tls_settings.redis_port}\n" in plain and "tls-" not in plain and "unixsocket " in plain
    # nothing beyond loopback: no TCP port at all (TLS or not), only the socket
    for tls_on in (True, False):
        alone = redis_server.render_conf(tls_settings.replace(tls=tls_on, redis_bind="127.0.0.1 -::1"))
        assert "\nport 0\n" in alone and "tls-" not in alone and "unixsocket " in alone


def test_the_api_server_serves_https_only_for_other_machines_with_stack_tls(tls_settings):
    wide = tls_settings.replace(api_host="0.0.0.0", api_port=18080)
    assert wide.api_tls and wide.api_url == "https://127.0.0.1:18080"
    assert not tls_settings.api_tls and tls_settings.api_url.startswith("http://")  # loopback only: plain
    assert not wide.replace(tls=False).api_tls  # without STACK_TLS: plain HTTP (doctor warns)
    files = tls.Files.of(wide)
    for line in ("3.3", "3.0", "2.11"):
        s = wide.replace(airflow_line=line)
        web = profiles.of(s).web
        # its certificate and key on its command line, the chain first: clients with only ca.pem verify it
        argv = web.command("airflow", s)
        assert argv[argv.index("--ssl-cert") + 1] == str(files.chain)
        assert argv[argv.index("--ssl-key") + 1] == str(files.key)
        assert web.probe.url(s).startswith("https://127.0.0.1:18080/") and web.probe.ca_file(s) == str(files.ca)
        assert "--ssl-cert" not in web.command("airflow", tls_settings.replace(airflow_line=line))
        env = airflow_config.environment(s)
        if line == "2.11":
            assert env["AIRFLOW__WEBSERVER__BASE_URL"] == "https://127.0.0.1:18080"
            assert env["AIRFLOW__WEBSERVER__COOKIE_SECURE"] == "True"
        else:
            # tasks call the execution API over HTTPS and trust the file [api] ssl_cert names: the CA
            assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "https://127.0.0.1:18080/execution/"
            assert env["AIRFLOW__API__SSL_CERT"] == str(files.ca)
            assert "AIRFLOW__API__SSL_KEY" not in env
    assert "AIRFLOW__API__SSL_CERT" not in airflow_config.environment(tls_settings)


def test_the_certificate_names_the_api_host_and_keeps_its_names_when_issued_again(tls_settings):
    files = tls.Files.of(tls_settings)
    tls.ensure(tls_settings.replace(api_host="10.0.0.7"), listen="192.168.5.5")
    assert {"10.0.0.7", "192.168.5.5", "stack.example.org"} <= sans(files.cert)
    assert files.chain.read_text() == files.cert.read_text() + files.ca.read_text()
    made = tls.ensure(tls_settings.replace(tls_names="workers.example.org"))  # a new name, without PG's listen
    assert made and {"workers.example.org", "192.168.5.5", "10.0.0.7"} <= sans(files.cert)
    assert files.chain.read_text().startswith(files.cert.read_text())  # the chain follows the new certificate


def test_postgres_clients_of_a_worker_machine_require_scram(tls_settings):
    worker = tls_settings.replace(pg_host="10.0.0.5")
    assert worker.pg_ssl_params()["require_auth"] == "scram-sha-256"
    assert parse_qs(urlsplit(airflow_config.sql_alchemy_conn(worker)).query)["require_auth"] == ["scram-sha-256"]
    # on loopback verify-full alone (a local server may admit loopback with trust); never without STACK_TLS
    assert "require_auth" not in tls_settings.pg_ssl_params()
    assert "require_auth" not in worker.replace(tls=False).pg_ssl_params()


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


@pytest.fixture
def https_server(tls_settings):
    """A server on loopback presenting the stack's certificate chain, as the API server does with STACK_TLS."""
    import http.server
    import threading

    tls.ensure(tls_settings)
    files = tls.Files.of(tls_settings)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"metadatabase": {"status": "healthy"}}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.chain, files.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tls_settings.replace(api_host="0.0.0.0", api_port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_the_probes_and_the_launchers_liveness_watch_verify_https_with_the_stacks_ca(https_server):
    from airflow_stack.apache_airflow.airflow_side import upkeep
    from airflow_stack.runtime import health

    probe = profiles.of(https_server).web.probe
    assert health.check(probe, https_server) == (True, "metadatabase healthy")
    url, ca = probe.liveness_url(https_server), probe.ca_file(https_server)
    assert url.startswith("https://127.0.0.1:") and upkeep.answers(url, ca_file=ca)
    # without the stack's CA the certificate is refused: nothing is believed unverified
    assert not upkeep.answers(url)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        health.http_get(url)


def test_backups_pass_the_same_libpq_requirements_as_every_client(tls_settings):
    from airflow_stack.ops import backup

    worker = tls_settings.replace(pg_host="10.0.0.5")
    env = backup._libpq_env(worker)
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"], env["PGREQUIREAUTH"]) == (
        "verify-full", str(worker.tls_ca_file), "scram-sha-256")
    assert "PGREQUIREAUTH" not in backup._libpq_env(tls_settings)
