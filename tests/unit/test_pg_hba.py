"""Homebrew's PostgreSQL trusts every local user on 127.0.0.1 and ::1: the stack's role gets scram-sha-256
lines of its own above those rules (pg_hba.conf is first-match), idempotently, with a reload. Driven through
MockContext, on a real pg_hba.conf in tmp_path shaped as Homebrew's initdb writes it; the write command
itself runs for real."""

from __future__ import annotations

import re

import pytest
from invoke import Context, MockContext, Result

from airflow_stack.services import host, pg_access, postgres
from tests.support.homebrew import HOMEBREW_HBA

OURS = ["host airflow airflow 127.0.0.1/32 scram-sha-256 # airflow-stack airflow airflow",
        "host airflow airflow ::1/128 scram-sha-256 # airflow-stack airflow airflow"]


class FileAdmin(postgres.Admin):
    """The server's superuser channel, reading a real pg_hba.conf as pg_read_file does."""

    def __init__(self, path):
        self.path, self.executed = path, []

    def value(self, query, dbname="postgres"):
        text = query.as_string()
        if text == "SHOW hba_file":
            return str(self.path)
        if text.startswith("SELECT pg_read_file"):
            return self.path.read_text()
        raise AssertionError(text)

    def execute(self, statements, dbname="postgres"):
        self.executed += [statement.as_string() for statement in statements]


@pytest.fixture
def hba(tmp_path):
    path = tmp_path / "var" / "postgresql@16" / "pg_hba.conf"
    path.parent.mkdir(parents=True)
    path.write_text(HOMEBREW_HBA)
    return path


def writing_context() -> MockContext:
    """Records every command; the file write (sh -c ... cat > tmp && mv) runs for real on the file."""
    c = MockContext(run={re.compile(r"^sh -c "): Result("")}, repeat=True)
    c.run.side_effect = lambda cmd, **kw: Context().run(cmd, **kw)
    return c


def rules(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_homebrew_gets_scram_lines_above_its_trust_rules_and_a_reload(settings, hba):
    c, admin = writing_context(), FileAdmin(hba)
    changes = pg_access.ensure_auth(c, host.Homebrew(), admin, settings)
    assert len(changes) == 1 and "(scram-sha-256) on 127.0.0.1 and ::1" in changes[0]
    assert rules(hba.read_text()) == OURS + rules(HOMEBREW_HBA)  # first match: ours, before every trust line
    # the rest of the file as it was, comments included; ours just above the first rule
    assert [line for line in hba.read_text().splitlines() if line not in OURS] == HOMEBREW_HBA.splitlines()
    assert hba.read_text().splitlines()[15:17] == OURS
    assert admin.executed == ["SELECT pg_reload_conf()"]
    assert [cmd.split()[0] for cmd in (call.args[0] for call in c.run.call_args_list)] == ["sh"]


def test_a_second_setup_changes_nothing(settings, hba):
    pg_access.ensure_auth(writing_context(), host.Homebrew(), FileAdmin(hba), settings)
    before = hba.read_text()
    c, admin = writing_context(), FileAdmin(hba)
    assert pg_access.ensure_auth(c, host.Homebrew(), admin, settings) == []
    assert hba.read_text() == before and admin.executed == [] and c.run.call_args_list == []


def test_our_lines_below_a_trust_rule_are_moved_above_it(settings, hba):
    hba.write_text(HOMEBREW_HBA + "\n".join(OURS) + "\n")  # appended by hand: trust would match first
    pg_access.ensure_auth(writing_context(), host.Homebrew(), FileAdmin(hba), settings)
    assert rules(hba.read_text()) == OURS + rules(HOMEBREW_HBA)


class TlsFileAdmin(FileAdmin):
    """The same server, not serving TLS yet, its data directory beside pg_hba.conf."""

    def value(self, query, dbname="postgres"):
        answers = {"SHOW listen_addresses": "localhost", "SHOW data_directory": str(self.path.parent),
                   "SHOW ssl": "off", "SHOW ssl_cert_file": "server.crt"}
        return answers.get(query.as_string()) or super().value(query, dbname)


def test_with_tls_the_loopback_lines_stay_host_so_plain_text_cannot_fall_through_to_trust(settings, hba):
    remote = "host airflow airflow 127.0.0.2/32 scram-sha-256 # airflow-stack airflow airflow"  # an opt-in
    hba.write_text(HOMEBREW_HBA + remote + "\n")
    admin = TlsFileAdmin(hba)
    pg_access.ensure_auth(writing_context(), host.Homebrew(), admin, settings.replace(tls=True))
    assert rules(hba.read_text()) == OURS + rules(HOMEBREW_HBA) + ["hostssl" + remote.removeprefix("host")]
    assert "ALTER SYSTEM SET ssl = on" in admin.executed


def test_debian_is_left_as_it_is(settings, hba):
    """Debian's pg_hba asks for scram on loopback already: nothing to add."""
    c, admin = writing_context(), FileAdmin(hba)
    assert pg_access.ensure_auth(c, host.AptPgCtlcluster(""), admin, settings) == []
    assert hba.read_text() == HOMEBREW_HBA and c.run.call_args_list == []


def test_dropping_the_database_removes_the_loopback_lines_too(settings, hba):
    pg_access.ensure_auth(writing_context(), host.Homebrew(), FileAdmin(hba), settings)
    assert pg_access.forget_remote(writing_context(), host.Homebrew(), FileAdmin(hba), settings)
    assert hba.read_text() == HOMEBREW_HBA
