"""Bootstrap logic against a recording Admin: the statements, their quoting, and idempotence."""

from __future__ import annotations

import io

import pytest
from invoke import MockContext, Result

from airflow_stack.errors import StackError
from airflow_stack.services import pg_access, pg_database, postgres


class RecordingAdmin(postgres.Admin):
    def __init__(self, role=None, owner=None, marker="", public_connect="f"):
        self.role, self.owner, self.marker = role, owner, marker  # role: (rolsuper, rolconfig) or None
        self.public_connect = public_connect
        self.executed: list[tuple[str, str]] = []

    def value(self, query, dbname="postgres"):
        text = query.as_string()
        if text.startswith("SELECT has_database_privilege('public'"):
            return self.public_connect
        raise AssertionError(text)

    def rows(self, query, dbname="postgres"):
        text = query.as_string()
        if "FROM pg_roles" in text:
            return [self.role] if self.role else []
        if "FROM pg_database" in text:
            return [(self.owner, self.marker)] if self.owner else []
        raise AssertionError(text)

    def execute(self, statements, dbname="postgres"):
        self.executed += [(s.as_string(), dbname) for s in statements]


@pytest.fixture(autouse=True)
def role_works(monkeypatch):
    monkeypatch.setattr(postgres, "check_role_can_create", lambda s: None)
    monkeypatch.setattr(postgres, "role_can_login", lambda s: (True, ""))
    monkeypatch.setattr(pg_database, "mark_database", lambda s, take_over=False: False)
    monkeypatch.setattr(pg_database, "database_marker", lambda s: None)


ALL_SET = "client_encoding=utf8,default_transaction_isolation=read committed,TimeZone=UTC"


def test_fresh_server_gets_role_then_database_owned_by_it(settings):
    admin = RecordingAdmin()
    changes = pg_database.bootstrap(admin, settings)
    sql = [s for s, _ in admin.executed]
    assert "SET log_statement = 'none'" in sql
    create_role = next(s for s in sql if s.startswith("CREATE ROLE"))
    assert create_role.startswith('CREATE ROLE "airflow" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD')
    assert 'CREATE DATABASE "airflow" OWNER "airflow"' in sql
    assert sql[sql.index('CREATE DATABASE "airflow" OWNER "airflow"') + 1] == \
        'REVOKE CONNECT, TEMPORARY ON DATABASE "airflow" FROM PUBLIC'  # no other role may even connect
    assert not any("GRANT ALL" in s for s in sql)
    assert any("SET \"timezone\" TO 'UTC'" in s for s in sql)
    assert changes[0] == "created role airflow"
    assert "created database airflow owned by airflow, closed to other roles" in changes


def test_a_database_made_before_it_was_closed_to_other_roles_is_closed_once(settings):
    admin = RecordingAdmin(role=("f", ALL_SET), owner="airflow", public_connect="t")
    assert pg_database.bootstrap(admin, settings) == ["closed database airflow to other roles (CONNECT revoked from "
                                                   "PUBLIC)"]
    assert admin.executed == [('REVOKE CONNECT, TEMPORARY ON DATABASE "airflow" FROM PUBLIC', "postgres")]


def test_second_run_executes_nothing(settings):
    admin = RecordingAdmin(role=("f", ALL_SET), owner="airflow")
    assert pg_database.bootstrap(admin, settings) == []
    assert admin.executed == []


def test_changed_password_is_resynced_from_env_file(settings, monkeypatch):
    monkeypatch.setattr(postgres, "role_can_login", lambda s: (False, "password authentication failed"))
    admin = RecordingAdmin(role=("f", ALL_SET), owner="airflow")
    changes = pg_database.bootstrap(admin, settings)
    assert [s for s, _ in admin.executed][1].startswith('ALTER ROLE "airflow" WITH LOGIN PASSWORD')
    assert changes == ["reset the password of role airflow to the one in .env"]


def test_another_checkouts_database_is_refused_before_anything_changes(settings, monkeypatch):
    """A second clone with the default names would reset the first's role password and take over its
    database; the first's mark on the database stops it, naming the settings to change."""
    monkeypatch.setattr(postgres, "role_can_login", lambda s: (False, "password authentication failed"))
    mine = settings.replace(checkout_id="aaaa1111")
    admin = RecordingAdmin(role=("f", ALL_SET), owner="airflow", marker=pg_database.OWNER_MARK + "bbbb2222")
    with pytest.raises(StackError, match=r"belongs to another airflow-stack checkout .* set STACK_PG_DATABASE "
                                         r"and STACK_PG_USER in \.env to new names"):
        pg_database.bootstrap(admin, mine)
    assert admin.executed == []  # no password reset, nothing
    with pytest.raises(StackError, match="another airflow-stack checkout"):
        pg_database.drop(admin, mine)
    assert admin.executed == []
    # its own mark, no mark (a database set up before marks existed), or a comment of the user's: go on
    for marker in (pg_database.OWNER_MARK + "aaaa1111", "", "the team's warehouse"):
        pg_database.check_owner(mine, marker)


def test_superuser_role_is_refused(settings):
    with pytest.raises(StackError, match="is a superuser"):
        pg_database.bootstrap(RecordingAdmin(role=("t", "")), settings)


def test_database_owned_by_someone_else_gets_schema_grants_in_that_database(settings):
    admin = RecordingAdmin(role=("f", ALL_SET), owner="postgres")
    pg_database.bootstrap(admin, settings)
    assert ('GRANT CREATE, USAGE ON SCHEMA public TO "airflow"', "airflow") in admin.executed


def test_identifiers_and_literals_are_quoted_by_psycopg(settings):
    odd = settings.replace(pg_user='air"flow', pg_database="air flow", pg_password="it's")
    admin = RecordingAdmin()
    pg_database.bootstrap(admin, odd)
    sql = " ".join(s for s, _ in admin.executed)
    assert 'CREATE ROLE "air""flow"' in sql and "PASSWORD 'it''s'" in sql
    assert 'CREATE DATABASE "air flow" OWNER "air""flow"' in sql


def test_no_superuser_access_uses_an_existing_role(env):
    from airflow_stack import settings as settings_mod

    remote = settings_mod.load(environ=env | {"STACK_PG_HOST": "db.example.internal", "STACK_PG_PASSWORD": "x"})
    assert postgres.admin_for(MockContext(), None, remote) is None
    assert pg_database.bootstrap(None, remote) == []


def test_no_superuser_access_and_no_role_says_what_to_do(env, monkeypatch):
    from airflow_stack import settings as settings_mod

    monkeypatch.setattr(postgres, "role_can_login", lambda s: (False, "role does not exist"))
    remote = settings_mod.load(environ=env | {"STACK_PG_HOST": "db.example.internal", "STACK_PG_PASSWORD": "x"})
    with pytest.raises(StackError, match="create that role and database on the server, or set STACK_PG_ADMIN_DSN"):
        pg_database.bootstrap(None, remote)


def test_psql_admin_sends_secrets_on_stdin_never_on_the_command_line(settings):
    c = MockContext(run=Result(""), repeat=True)
    admin = postgres.PsqlAdmin(c, "runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -p 5432", settings)
    admin.execute([postgres.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        postgres.sql.Identifier("airflow"), settings.pg_password)])
    call = c.run.call_args
    assert settings.pg_password not in call.args[0]
    stdin = call.kwargs["in_stream"]
    assert isinstance(stdin, io.StringIO) and settings.pg_password in stdin.getvalue()


def test_psql_admin_failure_is_one_redacted_line(settings):
    failing = Result("", stderr=f"ERROR:  oops {settings.pg_password}\n", exited=3)
    admin = postgres.PsqlAdmin(MockContext(run=failing), "psql", settings)
    with pytest.raises(StackError) as err:
        admin.execute([postgres.sql.SQL("SELECT 1")])
    assert settings.pg_password not in str(err.value) and "\n" not in str(err.value)


class RemoteAdmin(RecordingAdmin):
    def __init__(self, listen="localhost", hba="local all all peer\n"):
        super().__init__(role=("f", ALL_SET), owner="airflow")
        self.listen, self.hba = listen, hba

    def value(self, query, dbname="postgres"):
        text = query.as_string()
        if text == "SHOW hba_file":
            return "/etc/postgresql/15/main/pg_hba.conf"
        if text.startswith("SELECT pg_read_file"):
            return self.hba
        if text == "SHOW listen_addresses":
            return self.listen
        raise AssertionError(text)


class FakePlatform:
    def __init__(self):
        self.appended, self.restarted, self.written = [], 0, None

    def append_line(self, c, path, line):
        self.appended.append((path, line))

    def pg_restart(self, c, port, version):
        self.restarted += 1

    def write_file(self, c, path, text):
        self.written = (path, text)


def test_allow_remote_adds_a_tagged_scram_line_and_listen_address(settings, monkeypatch):
    monkeypatch.setattr(postgres, "is_ready", lambda c, p, s: True)
    admin, plat = RemoteAdmin(), FakePlatform()
    changes = pg_access.allow_remote(None, plat, admin, settings, "localhost,127.0.0.2", "127.0.0.2/32")
    assert plat.appended == [("/etc/postgresql/15/main/pg_hba.conf",
                              "host airflow airflow 127.0.0.2/32 scram-sha-256 # airflow-stack airflow airflow")]
    assert ("ALTER SYSTEM SET listen_addresses = 'localhost,127.0.0.2'", "postgres") in admin.executed
    assert plat.restarted == 1 and len(changes) == 3
    # the opt-in says what became reachable, from where, and that it travels in plain text
    assert "reachable from 127.0.0.2/32, in plain text" in changes[1] and "STACK_TLS=true" in changes[1]


def test_with_tls_the_opt_in_admits_tls_only_and_says_so(settings, monkeypatch):
    admin, plat = RemoteAdmin(), FakePlatform()
    changes = pg_access.allow_remote(None, plat, admin, settings.replace(tls=True), None, "10.0.0.0/24")
    assert plat.appended == [("/etc/postgresql/15/main/pg_hba.conf",
                              "hostssl airflow airflow 10.0.0.0/24 scram-sha-256 # airflow-stack airflow airflow")]
    assert "over TLS only" in changes[1] and str(settings.tls_ca_file) in changes[1]


class TlsAdmin(RemoteAdmin):
    """A server as ensure_tls reads it: ssl, its certificate file, the file's text."""

    def __init__(self, ssl="on", cert_file="/etc/ssl/certs/ssl-cert-snakeoil.pem", served="SNAKEOIL", **kw):
        super().__init__(**kw)
        self.ssl, self.cert_file, self.served = ssl, cert_file, served

    def value(self, query, dbname="postgres"):
        text = query.as_string()
        answers = {"SHOW data_directory": "/var/lib/postgresql/15/main", "SHOW ssl": self.ssl,
                   "SHOW ssl_cert_file": self.cert_file}
        if text in answers:
            return answers[text]
        if text.startswith("SELECT pg_read_file(") and "0, 65536, true" in text:
            return self.served
        return super().value(query, dbname)


class TlsPlatform(FakePlatform):
    def __init__(self):
        super().__init__()
        self.private = {}

    def write_private_file(self, c, path, text):
        self.private[path] = text


def test_ensure_tls_replaces_debians_snakeoil_and_secures_earlier_opt_ins(settings):
    line = "host airflow airflow 127.0.0.2/32 scram-sha-256 # airflow-stack airflow airflow"
    other = "host all all 10.9.0.0/16 scram-sha-256"  # the admin's own line: left as it is
    tls_settings = settings.replace(tls=True)
    admin, plat = TlsAdmin(hba=f"local all all peer\n{other}\n{line}\n"), TlsPlatform()
    changes = pg_access.ensure_tls(None, plat, admin, tls_settings)
    cert = "/var/lib/postgresql/15/main/airflow-stack-server.crt"
    assert plat.private[cert] == tls_settings.tls_ca_file.with_name("server.pem").read_text()
    assert "BEGIN PRIVATE KEY" in plat.private["/var/lib/postgresql/15/main/airflow-stack-server.key"]
    assert (f"ALTER SYSTEM SET ssl_cert_file = '{cert}'", "postgres") in admin.executed
    assert ("ALTER SYSTEM SET ssl = on", "postgres") in admin.executed
    assert plat.written[1].splitlines()[1:] == [other, "hostssl" + line.removeprefix("host")]
    assert any("serves TLS" in change for change in changes)


def test_ensure_tls_refuses_a_certificate_it_did_not_sign(settings):
    admin = TlsAdmin(cert_file="/etc/postgresql/server.crt", served="-----BEGIN CERTIFICATE-----\nxx\n")
    plat = TlsPlatform()
    with pytest.raises(StackError, match=r"already serves TLS with /etc/postgresql/server\.crt.*STACK_PG_SSLROOTCERT"):
        pg_access.ensure_tls(None, plat, admin, settings.replace(tls=True))
    assert plat.private == {} and admin.executed == []  # nothing written


def test_allow_remote_twice_changes_nothing(settings):
    line = "host airflow airflow 127.0.0.2/32 scram-sha-256 # airflow-stack airflow airflow"
    admin, plat = RemoteAdmin(listen="localhost,127.0.0.2", hba=f"local all all peer\n{line}\n"), FakePlatform()
    assert pg_access.allow_remote(None, plat, admin, settings, "127.0.0.2", "127.0.0.2/32") == []
    assert plat.appended == [] and plat.restarted == 0 and admin.executed == []


def test_allow_remote_rejects_a_bad_network(settings):
    with pytest.raises(StackError, match="is not a network"):
        pg_access.allow_remote(None, FakePlatform(), RemoteAdmin(), settings, None, "10.0.0.300/8")


def test_listen_everywhere_absorbs_the_rest():
    assert pg_access._merge_addresses("localhost", "*") == "*"
    assert pg_access._merge_addresses("*", "10.0.0.5") == "*"
    assert pg_access._merge_addresses("localhost", "localhost, 10.0.0.5") == "localhost,10.0.0.5"


def test_forget_remote_removes_only_our_lines(settings):
    ours = "host airflow airflow 127.0.0.2/32 scram-sha-256 # airflow-stack airflow airflow"
    theirs = "host other other 10.0.0.0/8 scram-sha-256"
    admin, plat = RemoteAdmin(hba=f"local all all peer\n{ours}\n{theirs}\n"), FakePlatform()
    assert pg_access.forget_remote(None, plat, admin, settings)
    assert plat.written == ("/etc/postgresql/15/main/pg_hba.conf", f"local all all peer\n{theirs}\n")


def test_a_database_whose_checkout_was_deleted_may_be_taken_over(settings, tmp_path):
    """A clone that was deleted (its .env is gone) cannot use its database any more: a new clone on
    the same machine takes it over; a living one, or one on another machine, is never taken over."""
    import socket

    mine = settings.replace(checkout_id="aaaa1111")
    other_env = tmp_path / "old-clone" / ".env"
    gone = f"{pg_database.OWNER_MARK}bbbb2222 {socket.gethostname()}:{other_env}"
    assert pg_database.check_owner(mine, gone) is True
    other_env.parent.mkdir()
    other_env.write_text("STACK_CHECKOUT_ID=bbbb2222\n")  # that clone is alive
    with pytest.raises(StackError, match="belongs to another airflow-stack checkout"):
        pg_database.check_owner(mine, gone)
    elsewhere = f"{pg_database.OWNER_MARK}bbbb2222 another-host:/does/not/exist/.env"
    with pytest.raises(StackError, match="belongs to another airflow-stack checkout"):
        pg_database.check_owner(mine, elsewhere)
    assert pg_database.owner_mark(mine).startswith(f"{pg_database.OWNER_MARK}aaaa1111 {socket.gethostname()}:/")
    assert pg_database.check_owner(mine, pg_database.owner_mark(mine)) is False  # its own


# ---- a database this stack migrated is gone (a major upgrade on apt, a drop by hand) ---------------
def test_a_vanished_database_is_explained_and_nothing_is_created(settings):
    from airflow_stack.services.host import Cluster

    admin = RecordingAdmin()  # no role, no database: what a new, empty cluster on our port holds
    clusters = [Cluster("15", "main", 5433, False), Cluster("16", "main", 5432, True)]
    with pytest.raises(StackError) as err:
        pg_database.bootstrap(admin, settings, migrated_by="3.3.2", clusters=clusters)
    message = str(err.value)
    assert "database airflow is not on the PostgreSQL at 127.0.0.1:5432" in message
    assert "no empty one is created" in message and "Airflow 3.3.2" in message
    assert "pg_upgradecluster 15 main" in message and "pg_dropcluster the new, empty 16/main" in message
    assert "STACK_PG_PORT=5433" in message and "--new-database" in message
    assert admin.executed == []  # not even the role


def test_a_vanished_database_without_an_older_cluster_points_at_the_backups(settings):
    with pytest.raises(StackError, match=r"restore a backup .*db.restore FILE --yes.*--new-database"):
        pg_database.bootstrap(RecordingAdmin(role=("f", ALL_SET)), settings, migrated_by="3.3.2", clusters=[])


def test_a_first_setup_or_a_new_database_on_purpose_creates_it(settings):
    admin = RecordingAdmin(role=("f", ALL_SET))
    changes = pg_database.bootstrap(admin, settings, migrated_by=None)
    assert "created database airflow owned by airflow, closed to other roles" in changes
