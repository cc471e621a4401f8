"""Each platform path issues the right commands, driven through invoke's MockContext."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from invoke import MockContext, Result

from airflow_stack.errors import StackError
from airflow_stack.services import host, postgres

OK, FAIL = Result(""), Result("", exited=1)
DOWN = Result("15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/postgresql/x.log\n")

APT = "apt-get -o DPkg::Lock::Timeout=300"  # waits for another apt run instead of failing
INSTALL = f"env DEBIAN_FRONTEND=noninteractive {APT} install -y -q"


def ctx(mapping: dict) -> MockContext:
    return MockContext(run={re.compile(k) if k.startswith("^") else k: v for k, v in mapping.items()}, repeat=True)


@pytest.fixture
def ready_after_start(monkeypatch):
    """The server is down until something starts it; no real port is looked at."""
    state = {"started": False}
    monkeypatch.setattr(postgres, "is_ready", lambda c, p, s: state["started"])
    monkeypatch.setattr(postgres.netutil, "port_open", lambda *a, **k: False)
    return state


def on_command(c: MockContext, needle: str, action) -> None:
    """Call ``action`` when a command containing ``needle`` runs (e.g. the server becomes ready)."""
    real = c.run._mock_wraps

    def run(cmd, **kw):
        if needle in cmd:
            action()
        return real(cmd, **kw)

    c.run.side_effect = run


def commands(c: MockContext) -> list[str]:
    return [call.args[0] for call in c.run.call_args_list]


# ---- Homebrew ------------------------------------------------------------------------------
def test_brew_installs_and_starts_postgres_when_missing(settings, ready_after_start):
    c = ctx({"brew list --versions postgresql@16": FAIL, "brew install postgresql@16": OK,
             "brew services start postgresql@16": OK})
    on_command(c, "brew services start", lambda: ready_after_start.update(started=True))
    done = postgres.ensure_server(c, host.Homebrew(), settings)
    # asked once before the machine-wide lock and once holding it (another checkout may have installed it)
    assert commands(c) == ["brew list --versions postgresql@16", "brew list --versions postgresql@16",
                           "brew install postgresql@16", "brew services start postgresql@16"]
    assert done == ["installed PostgreSQL (brew)", "started PostgreSQL on port 5432"]


def test_brew_already_installed_and_running_does_nothing(settings, monkeypatch):
    monkeypatch.setattr(postgres, "is_ready", lambda c, p, s: True)
    c = ctx({"brew list --versions postgresql@16": Result("postgresql@16 16.4\n")})
    assert postgres.ensure_server(c, host.Homebrew(), settings) == []
    assert commands(c) == ["brew list --versions postgresql@16"]


def test_brew_superuser_is_the_login_user_through_the_keg_psql(settings):
    c = ctx({"brew --prefix postgresql@16": Result("/opt/homebrew/opt/postgresql@16\n")})
    psql = host.Homebrew().pg_admin_psql(c, 5432, "16")
    assert psql.startswith("/opt/homebrew/opt/postgresql@16/bin/psql ") and "sudo" not in psql


def test_brew_redis_install(settings):
    c = ctx({"brew list --versions redis": FAIL, "brew install redis": OK})
    brew = host.Homebrew()
    assert brew.redis_server_bin(c) is None
    brew.redis_install(c)
    assert "brew install redis" in commands(c)


# ---- apt -----------------------------------------------------------------------------------
def _apt_run(strategy: host.Apt, settings, ready_after_start, mapping: dict) -> MockContext:
    c = ctx(mapping)
    on_command(c, "start", lambda: ready_after_start.update(started=True))
    postgres.ensure_server(c, strategy, settings)
    return c


def test_apt_systemd_as_root_starts_the_cluster_unit(settings, ready_after_start):
    c = _apt_run(host.AptSystemd(""), settings, ready_after_start,
                 {"pg_lsclusters -h": DOWN, "systemctl start postgresql@15-main": OK})
    assert "systemctl start postgresql@15-main" in commands(c)
    assert not any("apt-get" in cmd or "sudo" in cmd for cmd in commands(c))


def test_apt_systemd_not_root_uses_sudo(settings, ready_after_start):
    c = _apt_run(host.AptSystemd("sudo -n "), settings, ready_after_start,
                 {"pg_lsclusters -h": DOWN, "sudo -n systemctl start postgresql@15-main": OK})
    assert "sudo -n systemctl start postgresql@15-main" in commands(c)


def test_apt_without_systemd_uses_pg_ctlcluster(settings, ready_after_start):
    c = _apt_run(host.AptPgCtlcluster(""), settings, ready_after_start,
                 {"pg_lsclusters -h": DOWN, "pg_ctlcluster 15 main start": OK})
    assert commands(c)[-1] == "pg_ctlcluster 15 main start"


def test_apt_without_systemd_not_root_uses_sudo(settings, ready_after_start):
    c = _apt_run(host.AptPgCtlcluster("sudo -n "), settings, ready_after_start,
                 {"pg_lsclusters -h": DOWN, "sudo -n pg_ctlcluster 15 main start": OK})
    assert commands(c) == ["pg_lsclusters -h"] * 3 + ["sudo -n pg_ctlcluster 15 main start"]


def test_apt_install_path_runs_update_then_install(settings):
    c = ctx({"pg_lsclusters -h": FAIL, f"sudo -n {APT} update -q": OK,
             f"sudo -n {INSTALL} postgresql": OK})
    apt = host.AptPgCtlcluster("sudo -n ")
    assert not apt.pg_installed(c, "16")
    apt.pg_install(c, "16")
    assert commands(c)[1:] == [f"sudo -n {APT} update -q",
                               f"sudo -n {INSTALL} postgresql"]


def test_apt_failed_sudo_is_one_actionable_line(settings):
    c = ctx({f"sudo -n {APT} update -q": Result("", stderr="sudo: a password is required\n", exited=1)})
    with pytest.raises(StackError, match=r"apt-get update failed \(sudo: a password is required\); run as root"):
        host.AptPgCtlcluster("sudo -n ").pg_install(c, "16")


def test_apt_no_cluster_on_the_port(settings):
    c = ctx({"pg_lsclusters -h": DOWN})
    with pytest.raises(StackError, match="no PostgreSQL cluster listens on port 5433"):
        host.AptPgCtlcluster("").pg_start(c, 5433, "16")


def test_apt_superuser_is_the_postgres_account(settings):
    c = ctx({})
    assert host.AptPgCtlcluster("").pg_admin_psql(c, 5432, "16").startswith("runuser -u postgres -- psql ")
    assert host.AptSystemd("sudo -n ").pg_admin_psql(c, 5432, "16").startswith("sudo -n -u postgres psql ")


def test_apt_redis_installed_is_not_reinstalled():
    c = ctx({"command -v redis-server": Result("/usr/bin/redis-server\n")})
    assert host.AptPgCtlcluster("").redis_server_bin(c) == "/usr/bin/redis-server"
    assert commands(c) == ["command -v redis-server"]


def test_apt_redis_missing_is_installed():
    c = ctx({"command -v redis-server": FAIL, f"{APT} update -q": OK,
             f"{INSTALL} redis-server": OK})
    apt = host.AptPgCtlcluster("")
    assert apt.redis_server_bin(c) is None
    apt.redis_install(c)
    assert commands(c)[-1] == f"{INSTALL} redis-server"


def test_a_missing_program_is_installed_then_found_and_the_install_reported():
    installs, finds = [], iter([None, "/usr/bin/memcached"])
    apt = host.AptPgCtlcluster("")
    found, done = apt.ensure_installed(MockContext(), "memcached", lambda c: next(finds),
                                       lambda c: installs.append("memcached"))
    assert (found, installs) == ("/usr/bin/memcached", ["memcached"])
    assert done == ["installed memcached (apt+pg_ctlcluster)"]


def test_a_program_already_there_is_not_installed_again():
    found, done = host.Homebrew("").ensure_installed(
        MockContext(), "redis-server", lambda c: "/opt/homebrew/bin/redis-server",
        lambda c: pytest.fail("installed although found"))
    assert (found, done) == ("/opt/homebrew/bin/redis-server", [])


def test_a_program_still_missing_after_its_install_is_one_line():
    with pytest.raises(StackError) as err:
        host.AptPgCtlcluster("").ensure_installed(MockContext(), "memcached", lambda c: None, lambda c: None)
    assert "\n" not in str(err.value) and "memcached is still not found after installing it" in str(err.value)


def test_a_remote_server_is_never_installed_or_started(env):
    from airflow_stack import settings as settings_mod

    s = settings_mod.load(environ=env | {"STACK_PG_HOST": "db.example.internal"})
    c = ctx({})
    assert postgres.ensure_server(c, host.AptPgCtlcluster(""), s) == []
    assert commands(c) == []


def test_a_ready_server_is_used_without_waiting_for_another_checkouts_lock(settings, monkeypatch):
    """Two lanes' setup.postgres at once: the one that finds the server ready neither waits nor says so
    (its one-line error must stay one line)."""
    from airflow_stack import locks
    monkeypatch.setattr(postgres, "_pg_isready", lambda c, p, s: 0)
    monkeypatch.setattr(locks, "machine_wide", lambda *a, **k: pytest.fail("locked for a ready server"))
    c = ctx({"pg_lsclusters -h": Result("15 main 5432 online postgres /x /y.log\n")})
    assert postgres.ensure_server(c, host.AptPgCtlcluster(""), settings) == []


@pytest.fixture
def pg_answers(monkeypatch):
    """pg_isready's answers in turn, the last one repeated (0 ready, 1 starting, 2 no answer); no real port is
    looked at, and a silent port counts as another program's after 0.6 s, not 10 s."""
    answers = [2]

    def answer(c, p, s):
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(postgres, "_pg_isready", answer)
    monkeypatch.setattr(postgres, "RACE_WAIT", 0.6)
    monkeypatch.setattr(postgres.netutil, "port_open", lambda *a, **k: False)
    return answers


def test_a_server_another_checkout_is_starting_is_waited_for_not_started_again(settings, pg_answers, monkeypatch):
    """Two stacks that find the server down at once: the second sees it starting (pg_isready 1)."""
    pg_answers[:] = [1, 1, 1, 0]  # before the lock, in it, then polled until it accepts
    monkeypatch.setattr(postgres.netutil, "port_open", lambda *a, **k: True)
    c = ctx({"pg_lsclusters -h": DOWN})
    assert postgres.ensure_server(c, host.AptPgCtlcluster(""), settings) == []
    assert not any("start" in cmd for cmd in commands(c))


def test_a_server_that_binds_its_port_but_does_not_answer_yet_is_waited_for(settings, pg_answers, monkeypatch):
    """CI, 2026-12-07: the other stack's postmaster had bound the port but did not answer yet (pg_isready: no
    answer), and the stack called the port another program's at once."""
    pg_answers[:] = [2, 2, 2, 0]
    monkeypatch.setattr(postgres.netutil, "port_open", lambda *a, **k: True)
    c = ctx({"pg_lsclusters -h": DOWN})
    assert postgres.ensure_server(c, host.AptPgCtlcluster(""), settings) == []
    assert not any("start" in cmd for cmd in commands(c))


LOST_RACE = Result(stderr="The PostgreSQL server failed to start. Please check the log output:\n"
                          "FATAL:  lock file \"postmaster.pid\" already exists\n", exited=1)


def test_a_start_that_loses_the_race_to_another_starter_uses_the_server_it_started(settings, pg_answers):
    """Two stacks with user state folders of their own (CI's two test lanes, 2026-12-07) both start the stopped
    server: the loser's pg_ctlcluster fails on the winner's postmaster.pid while the winner's server comes up."""
    pg_answers[:] = [2, 2, 2, 0]  # before the lock, in it, after the failed start, then ready
    c = ctx({"pg_lsclusters -h": DOWN, "pg_ctlcluster 15 main start": LOST_RACE})
    assert postgres.ensure_server(c, host.AptPgCtlcluster(""), settings) == []  # it started nothing itself
    assert commands(c).count("pg_ctlcluster 15 main start") == 1


def test_a_start_that_fails_with_no_server_coming_up_is_its_own_one_line_error(settings, pg_answers):
    c = ctx({"pg_lsclusters -h": DOWN, "pg_ctlcluster 15 main start": LOST_RACE})
    with pytest.raises(StackError) as err:
        postgres.ensure_server(c, host.AptPgCtlcluster(""), settings)
    assert str(err.value) == ('pg_ctlcluster start failed (FATAL:  lock file "postmaster.pid" already exists); '
                              "see /var/log/postgresql/postgresql-15-main.log")


def test_a_port_held_by_something_that_is_not_postgresql_is_refused(settings, pg_answers, monkeypatch):
    # pg_answers: no PostgreSQL answer, ever
    monkeypatch.setattr(postgres.netutil, "port_open", lambda *a, **k: True)
    c = ctx({"pg_lsclusters -h": DOWN})
    with pytest.raises(StackError, match="port 5432 is taken by a program that is not a ready PostgreSQL; free it"):
        postgres.ensure_server(c, host.AptPgCtlcluster(""), settings)
    assert not any("start" in cmd for cmd in commands(c))


def test_starting_the_shared_server_is_one_checkout_at_a_time(settings, tmp_path, capsys):
    from airflow_stack import locks

    mine = settings.replace(user_state_dir=tmp_path / "user state")
    # a second holder (another checkout's invoke) waits, then gives up in one line
    with locks.machine_wide(mine, "postgresql-5432", "starting PostgreSQL"), \
            pytest.raises(StackError, match=r"starting PostgreSQL \(pid \d+\) still runs on this machine"), \
            locks.machine_wide(mine, "postgresql-5432", "starting PostgreSQL", wait=0.5):
        pass
    assert "waiting for starting PostgreSQL" in capsys.readouterr().err
    with locks.machine_wide(mine, "postgresql-5432", "starting PostgreSQL", wait=0.5):
        pass  # released when its holder ended
    assert oct((tmp_path / "user state" / "locks").stat().st_mode & 0o777) == "0o700"


def test_a_planted_lock_folder_or_link_is_refused_and_nothing_it_points_to_is_touched(settings, tmp_path):
    """Another local user may create the lock folder first (open to all, or theirs), or put a link where the
    lock file goes: the lock refuses in one line, and the file the link points to keeps its content."""
    import os

    from airflow_stack import locks

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    planted = tmp_path / "planted"
    (planted / "locks").mkdir(parents=True)
    (planted / "locks" / "postgresql-5432.lock").symlink_to(target)
    with pytest.raises(StackError, match=r"postgresql-5432\.lock cannot be opened as a lock file of ours"), \
            locks.machine_wide(settings.replace(user_state_dir=planted), "postgresql-5432", "starting"):
        pass
    assert target.read_text() == "keep me"
    os.chown(planted, 65534, 65534)  # now the folder is another user's (nobody's)
    with pytest.raises(StackError, match=r"planted belongs to another user \(uid 65534\), so nothing was written"), \
            locks.machine_wide(settings.replace(user_state_dir=planted), "postgresql-5432", "starting"):
        pass
    link = tmp_path / "linked"
    link.symlink_to(planted)
    with pytest.raises(StackError, match=r"linked is not a folder \(a link or a file is there\)"), \
            locks.machine_wide(settings.replace(user_state_dir=link), "postgresql-5432", "starting"):
        pass
    assert target.read_text() == "keep me" and os.stat(planted).st_uid == 65534


# ---- detection -----------------------------------------------------------------------------
def which_of(*present: str):
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_detect(tmp_path):
    systemd = tmp_path / "systemd"
    systemd.mkdir()
    assert isinstance(host.detect(which_of("brew"), "darwin", systemd, ""), host.Homebrew)
    assert isinstance(host.detect(which_of("apt-get"), "linux", systemd, ""), host.AptSystemd)
    assert isinstance(host.detect(which_of("apt-get"), "linux", tmp_path / "none", ""), host.AptPgCtlcluster)


def test_detect_neither_brew_nor_apt():
    with pytest.raises(StackError, match="neither Homebrew nor apt-get"):
        host.detect(which_of(), "linux", Path("/nonexistent"), "")
    with pytest.raises(StackError, match=r"install it from brew\.sh"):
        host.detect(which_of(), "darwin", Path("/nonexistent"), "")


def test_sudo_prefix():
    assert host.sudo_prefix(euid=0) == ""
    assert host.sudo_prefix(euid=1000, interactive=True) == "sudo "
    assert host.sudo_prefix(euid=1000, interactive=False) == "sudo -n "


def test_restart_per_platform():
    c = ctx({"pg_lsclusters -h": DOWN, "pg_ctlcluster 15 main restart": OK,
             "sudo -n systemctl restart postgresql@15-main": OK, "brew services restart postgresql@16": OK})
    host.AptPgCtlcluster("").pg_restart(c, 5432, "16")
    host.AptSystemd("sudo -n ").pg_restart(c, 5432, "16")
    host.Homebrew().pg_restart(c, 5432, "16")
    assert [cmd for cmd in commands(c) if "restart" in cmd] == [
        "pg_ctlcluster 15 main restart", "sudo -n systemctl restart postgresql@15-main",
        "brew services restart postgresql@16"]


def test_server_files_are_written_through_tee_with_sudo():
    c = ctx({"sudo -n tee -a /etc/postgresql/15/main/pg_hba.conf": OK})
    host.AptSystemd("sudo -n ").append_line(c, "/etc/postgresql/15/main/pg_hba.conf", "host a b 10.0.0.0/8 x")
    assert c.run.call_args.kwargs["in_stream"].getvalue() == "host a b 10.0.0.0/8 x\n"


def test_a_servers_key_file_is_written_0600_for_the_user_the_server_runs_as():
    key = "/var/lib/postgresql/15/main/airflow-stack-server.key"
    c = ctx({f"sudo -n install -o postgres -g postgres -m 600 /dev/stdin {key}": OK})
    host.AptSystemd("sudo -n ").write_private_file(c, key, "KEY")
    assert c.run.call_args.kwargs["in_stream"].getvalue() == "KEY"  # on stdin, never on a command line
    c = ctx({f"install -o postgres -g postgres -m 600 /dev/stdin {key}": OK})
    host.AptPgCtlcluster().write_private_file(c, key, "KEY")
    # Homebrew's server runs as the user who runs the stack: no owner to set, no sudo
    c = ctx({"install -m 600 /dev/stdin /opt/homebrew/var/postgresql@16/airflow-stack-server.key": OK})
    host.Homebrew().write_private_file(c, "/opt/homebrew/var/postgresql@16/airflow-stack-server.key", "KEY")


# ---- the UI tests' browser ------------------------------------------------------------------
def test_apt_finds_or_installs_debians_chromium_and_its_driver():
    c = ctx({"command -v chromium chromedriver": Result("/usr/bin/chromium\n/usr/bin/chromedriver\n")})
    assert host.AptPgCtlcluster().browser(c) == ("/usr/bin/chromium", "/usr/bin/chromedriver")
    c = ctx({"command -v chromium chromedriver": Result("/usr/bin/chromium\n", exited=1)})
    assert host.AptPgCtlcluster().browser(c) is None  # a browser without its driver is not enough
    c = ctx({f"{APT} update -q": OK,
             f"{INSTALL} chromium chromium-driver": OK})
    host.AptSystemd().browser_install(c)
    assert commands(c)[-1].endswith(f"{APT} install -y -q chromium chromium-driver")


def test_brew_uses_the_macs_chrome_and_never_installs_a_browser(monkeypatch):
    monkeypatch.setattr(host.Homebrew, "CHROME", "/nonexistent/Google Chrome")
    c = ctx({})
    with pytest.raises(StackError, match="Google Chrome is not installed"):
        host.Homebrew().browser_install(c)
    assert commands(c) == []


def test_standard_input_is_handed_over_whole_not_a_byte_per_read():
    """invoke reads a non-terminal in_stream with read(1) and a 10 ms nap between reads; WholeStdin answers
    the first read with everything (a server certificate: 7 s before, instant now), then EOF."""
    text = "-----BEGIN CERTIFICATE-----\n" + "A" * 700 + "\n"
    stdin = host.WholeStdin(text)
    assert stdin.read(1) == text and stdin.read(1) == ""
    assert host.WholeStdin(text).getvalue() == text  # what the MockContext tests read back
    from invoke import Context

    assert Context().run("cat", in_stream=host.WholeStdin(text), hide=True).stdout == text
