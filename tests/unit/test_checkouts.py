"""A second checkout on one machine: the names it derives, the ports it chooses (with a fake machine: which
ports are held), what the user set kept, the choice made once, the list of stacks and the user's defaults.env."""

from __future__ import annotations

import json
import re
import socket

import pytest

from airflow_stack import netutil, statedir
from airflow_stack import settings as settings_mod
from airflow_stack.errors import StackError
from airflow_stack.runtime import checkouts
from airflow_stack.services import postgres

DEFAULT_PORTS = {"api_port": 8080, "scheduler_health_port": 8974, "worker_log_port": 8793, "trigger_log_port": 8794,
                 "redis_port": 6380, "flower_port": 5555}


# ---- the names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("base, folder, expected", [
    ("airflow", "airflow-stack-2", "airflow_stack_2_3f9a1c"),
    ("airflow", "airflow stack", "airflow_stack_3f9a1c"),
    ("airflow", "airflow", "airflow_3f9a1c"),
    ("airflow", "My Données", "airflow_my_donnees_3f9a1c"),
    ("airflow", "---", "airflow_3f9a1c"),
    ("9lives", "x", "_9lives_x_3f9a1c"),
    ("ast_test_123", "airflow stack", "ast_test_123_airflow_stack_3f9a1c"),
])
def test_a_derived_name_is_the_default_the_folder_and_the_checkout(base, folder, expected):
    assert checkouts.derived_name(base, folder, "3f9a1c2b4d5e6f70") == expected


@pytest.mark.parametrize("base, folder, checkout_id", [
    ("airflow", "a" * 200, "3f9a1c2b4d5e6f70"),
    ("b" * 100, "c" * 100, "3f9a1c2b4d5e6f70"),
    ("Air-Flow", "Ünïcode ☃ folder (copy 2)", "ÉÉÉ"),
    ("airflow", "airflow-stack", ""),
    ("DROP TABLE x; --", "'; select 1", "0123456789abcdef"),
])
def test_a_derived_name_is_a_plain_postgresql_identifier_of_at_most_63_bytes(base, folder, checkout_id):
    name = checkouts.derived_name(base, folder, checkout_id)
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
    assert len(name.encode()) <= 63 and name != base


def test_two_clones_in_folders_of_the_same_name_get_different_names():
    names = {checkouts.derived_name("airflow", "airflow-stack", cid) for cid in ("3f9a1c2b", "77e0aa10")}
    assert len(names) == 2


# ---- the ports ---------------------------------------------------------------------------------
def held(*ports: int):
    """A fake machine where ``ports`` are held (by anything)."""
    return lambda name, port: port not in ports


def test_free_defaults_are_kept():
    assert checkouts.choose_ports(DEFAULT_PORTS, {}, set(), held()) == DEFAULT_PORTS


def test_a_held_default_moves_to_the_next_free_port_and_the_others_stay():
    chosen = checkouts.choose_ports(DEFAULT_PORTS, {}, set(), held(8080, 8081, 6380))
    assert chosen == DEFAULT_PORTS | {"api_port": 8082, "redis_port": 6381}


def test_ports_another_stack_claims_are_skipped_even_when_free_now():
    # a stopped stack's ports are free on the machine but its own: the next stack does not take them
    chosen = checkouts.choose_ports(DEFAULT_PORTS, {}, set(DEFAULT_PORTS.values()) | {8081}, held())
    assert chosen == {"api_port": 8082, "scheduler_health_port": 8975, "worker_log_port": 8795,
                      "trigger_log_port": 8796, "redis_port": 6381, "flower_port": 5556}
    assert len(set(chosen.values())) == len(chosen)  # 8793 -> 8795 (8794 is a default), 8794 -> the next


def test_a_port_the_user_set_is_kept_even_when_held_and_never_given_to_another():
    chosen = checkouts.choose_ports(DEFAULT_PORTS, {"api_port": 8080, "flower_port": 8974}, set(), held(8080))
    assert "api_port" not in chosen and "flower_port" not in chosen
    assert chosen["scheduler_health_port"] == 8975  # the user's Flower port is not the scheduler's


def test_no_free_port_left_is_one_line():
    with pytest.raises(StackError, match="no free port from 65535 up for STACK_API_PORT; set it"):
        checkouts.choose_ports({"api_port": 65535}, {}, set(), held(65535))


def test_a_port_is_free_only_where_nothing_listens(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not netutil.port_free(port, ("127.0.0.1",)) and not netutil.port_free(port, ("0.0.0.0",))
        # an address this machine does not have (TEST-NET-1) holds nothing
        assert netutil.port_free(port, ("192.0.2.1",))


# ---- claim: what a checkout gets -------------------------------------------------------------
class MarkedServer(postgres.Admin):
    """A server whose default database ``airflow`` carries ``marker`` (or does not exist)."""

    def __init__(self, marker: str | None = None) -> None:
        self.marker = marker

    def rows(self, query, dbname="postgres"):
        return [("airflow", self.marker)] if self.marker is not None else []


@pytest.fixture
def machine(tmp_path):
    """A machine with one other checkout of airflow-stack, alive, that set up database airflow."""
    first = tmp_path / "first" / ".env"
    first.parent.mkdir()
    first.write_text("STACK_CHECKOUT_ID=aaaa1111\n")
    return MarkedServer(f"airflow-stack checkout aaaa1111 {socket.gethostname()}:{first}")


def checkout(tmp_path, folder: str, environ: dict[str, str] | None = None, env_text: str = "") -> settings_mod.Settings:
    """A checkout in ``tmp_path/folder`` with its own id, sharing ``tmp_path/user-state``."""
    root = tmp_path / folder
    root.mkdir(exist_ok=True)
    (root / ".env").write_text(f"STACK_CHECKOUT_ID={folder.replace('-', '')[:4]}0000\n{env_text}")
    return settings_mod.load(environ={"STACK_ENV_FILE": str(root / ".env"), "STACK_STATE_DIR": str(root / ".stack"),
                                      "STACK_USER_STATE_DIR": str(tmp_path / "user-state")} | (environ or {}))


def test_the_first_checkout_keeps_the_default_names_and_ports(tmp_path):
    s = checkout(tmp_path, "first")
    own = MarkedServer(f"airflow-stack checkout {s.checkout_id} {socket.gethostname()}:{s.env_file}")
    after, said = checkouts.claim(s, own, held())
    assert said == [] and (after.pg_database, after.pg_user, after.api_port) == ("airflow", "airflow", 8080)
    assert "PORT" not in s.env_file.read_text() and "STACK_PG_DATABASE" not in s.env_file.read_text()
    assert [entry.checkout_id for entry in checkouts.entries(s)] == [s.checkout_id]


def test_a_second_checkout_gets_its_own_names_and_ports_said_and_kept_in_its_env(tmp_path, machine):
    s = checkout(tmp_path, "airflow-stack-2")
    after, said = checkouts.claim(s, machine, held())  # the first stack is stopped: its ports are free
    name = f"airflow_stack_2_{s.checkout_id[:6]}"
    assert (after.pg_database, after.pg_user) == (name, name)
    assert after.api_port == 8081 and after.redis_port == 6381 and after.api_url == "http://127.0.0.1:8081"
    assert len(said) == 2 and f"this one gets its own role and database, {name}" in said[0]
    assert "API 8081" in said[1] and "http://127.0.0.1:8081/" in said[1] and said[1].endswith("(kept in .env)")
    kept = statedir.read_env_file(s.env_file)
    assert kept["STACK_PG_DATABASE"] == kept["STACK_PG_USER"] == name and kept["STACK_API_PORT"] == "8081"
    assert settings_mod.load(environ={"STACK_ENV_FILE": str(s.env_file), "STACK_USER_STATE_DIR":
                                      str(s.user_state_dir)}).pg_database == name


def test_the_choice_is_made_once(tmp_path, machine):
    s = checkout(tmp_path, "second")
    after, _ = checkouts.claim(s, machine, held())
    again = settings_mod.load(environ={"STACK_ENV_FILE": str(s.env_file), "STACK_STATE_DIR": str(s.state_dir),
                                       "STACK_USER_STATE_DIR": str(s.user_state_dir)})
    # later, the first stack is gone and 8082 is held: nothing moves, nothing is said
    assert checkouts.claim(again, MarkedServer(), held(8081, 8082)) == (after, [])


def test_a_third_checkout_avoids_the_second_even_while_it_is_stopped(tmp_path, machine):
    second, _ = checkouts.claim(checkout(tmp_path, "second"), machine, held())
    third, _ = checkouts.claim(checkout(tmp_path, "third"), machine, held())
    ports = lambda s: {getattr(s, name) for name in DEFAULT_PORTS}  # noqa: E731
    assert not ports(second) & ports(third) and not ports(third) & set(DEFAULT_PORTS.values())
    assert len({second.pg_database, third.pg_database, "airflow"}) == 3
    assert [row["this"] for row in checkouts.listing(third)] == [False, True]


def test_two_clones_on_a_fresh_server_do_not_both_take_the_defaults(tmp_path):
    # the first has registered but not yet made its database: the list of stacks says whose the names are
    first, said = checkouts.claim(checkout(tmp_path, "one"), MarkedServer(), held())
    second, said = checkouts.claim(checkout(tmp_path, "two"), MarkedServer(), held())
    assert first.pg_database == "airflow" and second.pg_database.startswith("airflow_two_")
    assert f"another checkout's ({tmp_path / 'one' / '.env'})" in said[0]


def test_what_the_user_set_is_kept(tmp_path, machine, monkeypatch):
    monkeypatch.setenv("STACK_API_PORT", "8080")  # in the environment of the command
    s = checkout(tmp_path, "mine", environ={"STACK_API_PORT": "8080"}, env_text="STACK_PG_DATABASE=mydb\n"
                                                                                 "STACK_PG_USER=me\n")
    after, said = checkouts.claim(s, machine, held(8080))
    assert (after.pg_database, after.pg_user, after.api_port) == ("mydb", "me", 8080)
    assert after.scheduler_health_port == 8975 and len(said) == 1  # what was not set: the first one's left alone
    assert "STACK_API_PORT" not in s.env_file.read_text()


def test_without_a_superuser_the_names_stay_and_only_ports_move(tmp_path, machine):
    checkouts.claim(checkout(tmp_path, "first"), MarkedServer(), held())  # registered with the default names
    after, said = checkouts.claim(checkout(tmp_path, "managed"), None, held())  # a server it cannot make roles on
    assert after.pg_database == "airflow" and after.api_port == 8081 and len(said) == 1


def test_a_machine_wide_folder_it_cannot_write_is_one_line(tmp_path, machine):
    (tmp_path / "user-state").write_text("a file, not a folder")
    with pytest.raises(StackError, match=r"user-state is not a folder \(a link or a file is there\); "
                                         r".*STACK_USER_STATE"):
        checkouts.claim(checkout(tmp_path, "x"), machine, held())


def test_a_running_stack_keeps_its_ports(tmp_path, machine, monkeypatch):
    monkeypatch.setattr(checkouts.registry, "running", lambda s: {"scheduler": object()})
    after, said = checkouts.claim(checkout(tmp_path, "running"), machine, held(*DEFAULT_PORTS.values()))
    assert after.api_port == 8080 and len(said) == 1  # its names only


def test_the_list_leaves_out_checkouts_that_are_gone_and_forgets_them(tmp_path, machine):
    gone = checkout(tmp_path, "gone")
    checkouts.claim(gone, machine, held())
    here, _ = checkouts.claim(checkout(tmp_path, "here"), machine, held())
    gone.env_file.unlink()  # the clone was deleted
    rows = checkouts.listing(here)
    assert [row["checkout"] for row in rows] == [str(settings_mod.PROJECT_DIR)]
    assert rows[0]["database"] == f"{here.pg_database} on 127.0.0.1:5432" and rows[0]["running"] == []
    table = checkouts.to_table(rows)
    assert table.splitlines()[0].split() == ["checkout", "URL", "database", "state"]
    assert f"(.env: {here.env_file})" in table and here.api_url in table and table.endswith("stopped")
    checkouts.register(here)
    assert {p.stem for p in here.user_paths.stacks.iterdir()} == {here.checkout_id}
    assert json.loads(here.user_paths.stack_entry(here.checkout_id).read_text())["ports"]["api_port"] == here.api_port
    assert (here.user_state_dir.stat().st_mode & 0o777) == 0o700


# ---- the user's defaults.env -------------------------------------------------------------------
def test_defaults_env_gives_defaults_that_a_checkout_may_move_off(tmp_path, machine):
    (tmp_path / "user-state").mkdir()
    (tmp_path / "user-state" / "defaults.env").write_text("STACK_API_PORT=9000\nSTACK_PG_DATABASE=af\n")
    s = checkout(tmp_path, "with-defaults")
    assert (s.api_port, s.pg_database, s.pg_user) == (9000, "af", "airflow")
    assert settings_mod.given(s, ["api_port", "pg_database"]) == set()
    after, _ = checkouts.claim(s, MarkedServer(), held(9000))
    assert after.api_port == 9001


@pytest.mark.parametrize("line, message", [
    ("STACK_PG_PASSWORD=x", "STACK_PG_PASSWORD is each checkout's own"),
    ("STACK_STATE_DIR=/tmp/x", "STACK_STATE_DIR is each checkout's own"),
    ("STACK_API_PROT=1", "STACK_API_PROT is not a setting"),
])
def test_defaults_env_refuses_what_is_each_checkouts_own(tmp_path, line, message):
    (tmp_path / "user-state").mkdir()
    (tmp_path / "user-state" / "defaults.env").write_text(line + "\n")
    with pytest.raises(StackError, match=f"defaults.env: {message}"):
        checkout(tmp_path, "x")


def test_invoke_stacks_lists_them_or_says_there_are_none(tmp_path, machine, monkeypatch, capsys):
    from invoke import MockContext

    from airflow_stack.tasks import ops

    s = checkout(tmp_path, "listed")
    for name, value in {"STACK_ENV_FILE": s.env_file, "STACK_STATE_DIR": s.state_dir,
                        "STACK_USER_STATE_DIR": s.user_state_dir}.items():
        monkeypatch.setenv(name, str(value))
    ops.stacks(MockContext())
    assert f"no stack has been set up on this machine yet ({s.user_paths.stacks})" in capsys.readouterr().out
    checkouts.claim(s, machine, held())
    ops.stacks(MockContext(), json=True)
    rows = json.loads(capsys.readouterr().out)
    assert [(row["this"], row["running"], row["url"]) for row in rows] == [(True, [], "http://127.0.0.1:8081")]
