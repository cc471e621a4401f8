"""The user's project: its folder, requirements, packages.txt through each platform, its Dockerfile,
airflow_settings.yaml read and checked, and what every Airflow process gets from it."""

from __future__ import annotations

import json
import re

import pytest
from invoke import MockContext, Result

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.apache_airflow import install
from airflow_stack.errors import StackError
from airflow_stack.project import dags, folder, objects, scaffold
from airflow_stack.services import host, limiter

OK, FAIL = Result(""), Result("", exited=1)

ASTRO_TEMPLATE = scaffold.SETTINGS  # the empty template `astro dev init` writes (invoke init writes it too)

FULL = """\
airflow:
  connections:
    - conn_id: warehouse
      conn_type: postgres
      conn_host: db.example.com
      conn_login: etl
      conn_password: pre-${WAREHOUSE_PASSWORD}-post
      conn_port: "5432"
      conn_extra:
        sslmode: require
        token: ${WAREHOUSE_TOKEN}
  pools:
    - pool_name: warehouse
      pool_slot: 4
  variables:
    - variable_name: environment
      variable_value: dev
    - variable_name: limits
      variable_value: {rows: 10}
"""

APT = "apt-get -o DPkg::Lock::Timeout=300"  # waits for another apt run instead of failing
INSTALL = f"env DEBIAN_FRONTEND=noninteractive {APT} install -y -q"


@pytest.fixture
def proj_settings(env, tmp_path):
    root = tmp_path / "proj"
    (root / "dags").mkdir(parents=True)
    (tmp_path / ".env").write_text("WAREHOUSE_PASSWORD=s3cr3t-value\nWAREHOUSE_TOKEN=tok-value-123\n")
    return settings_mod.load(environ=env | {"STACK_PROJECT_DIR": str(root)})


def ctx(mapping: dict) -> MockContext:
    return MockContext(run={re.compile(k) if k.startswith("^") else k: v for k, v in mapping.items()}, repeat=True)


def commands(c: MockContext) -> list[str]:
    return [call.args[0] for call in c.run.call_args_list]


# ---- the folder ----------------------------------------------------------------------------
def test_the_project_defaults_to_the_repo_and_its_folders_follow_it(env, proj_settings):
    default = settings_mod.load(environ={k: v for k, v in env.items() if k != "STACK_PROJECT_DIR"})
    assert default.project_dir == settings_mod.PROJECT_DIR and default.dags_folder == settings_mod.PROJECT_DIR / "dags"
    assert proj_settings.dags_folder == proj_settings.project_dir / "dags"
    assert proj_settings.plugins_folder == proj_settings.project_dir / "plugins"


def test_a_missing_project_or_dags_folder_is_named(proj_settings, tmp_path):
    with pytest.raises(StackError, match="does not exist; point STACK_PROJECT_DIR"):
        folder.Project(tmp_path / "nowhere").check()
    with pytest.raises(StackError, match="has no dags/ folder"):
        folder.Project(tmp_path).check()
    folder.get(proj_settings).check()


def test_requirements_comments_do_not_count(proj_settings):
    proj = folder.get(proj_settings)
    assert proj.requirement_lines() == []
    proj.requirements.write_text("# ours\ncowsay==5.0  # pinned\n\n")
    digest = proj.requirements_digest()
    assert proj.requirement_lines() == ["cowsay==5.0"]
    proj.requirements.write_text("cowsay==5.0\n# a new comment\n")
    assert proj.requirements_digest() == digest
    proj.requirements.write_text("cowsay==6.1\n")
    assert proj.requirements_digest() != digest


def test_the_venv_stamp_follows_the_requirements(proj_settings):
    proj = folder.get(proj_settings)
    without = install._wanted_stamp(proj_settings)
    assert "project_requirements_sha256" not in without  # no requirements: the stamp of a plain install
    proj.requirements.write_text("cowsay==5.0\n")
    assert install._wanted_stamp(proj_settings)["project_requirements_sha256"] == proj.requirements_digest()


def test_packages_txt_names_and_what_is_refused(proj_settings):
    proj = folder.get(proj_settings)
    proj.packages.write_text("# build deps\nlibpq-dev gcc\nlibpq-dev\ncurl=7.88.1-10\n")
    assert proj.os_packages() == ["libpq-dev", "gcc", "curl=7.88.1-10"]
    proj.packages.write_text("tree; rm -rf /\n")
    with pytest.raises(StackError, match="is not a package name"):
        proj.os_packages()


# ---- packages.txt, per platform ---------------------------------------------------------------
def test_apt_installs_only_what_is_missing_once(proj_settings):
    folder.get(proj_settings).packages.write_text("tree\njq\n")
    c = ctx({"^dpkg-query .* tree$": Result("installed"), "^dpkg-query .* jq$": Result("not-installed"),
             "apt-cache show --no-all-versions jq": Result("Package: jq\n"), f"{APT} update -q": OK,
             f"^{INSTALL} jq$": OK})
    done = folder.ensure_os_packages(c, host.AptPgCtlcluster(), proj_settings)
    assert done == ["installed jq (from packages.txt)"]
    assert commands(c)[-1] == f"{INSTALL} jq"
    c = ctx({"^dpkg-query": Result("installed")})
    assert folder.ensure_os_packages(c, host.AptSystemd(), proj_settings) == []
    assert all(cmd.startswith("dpkg-query") for cmd in commands(c))


def test_apt_names_an_unknown_package_after_refreshing_its_lists_and_installs_nothing(proj_settings):
    folder.get(proj_settings).packages.write_text("no-such-pkg\n")
    c = ctx({"^dpkg-query": FAIL, "^apt-cache show": FAIL, f"{APT} update -q": OK})
    with pytest.raises(StackError, match=r"apt\+pg_ctlcluster does not know no-such-pkg; .*nothing was installed"):
        folder.ensure_os_packages(c, host.AptPgCtlcluster(), proj_settings)
    assert f"{APT} update -q" in commands(c) and not any(" install -y" in cmd for cmd in commands(c))


def test_apt_without_root_uses_sudo(proj_settings):
    folder.get(proj_settings).packages.write_text("jq\n")
    c = ctx({"^dpkg-query": FAIL, "^apt-cache show": OK, f"sudo -n {APT} update -q": OK,
             f"sudo -n {INSTALL} jq": OK})
    folder.ensure_os_packages(c, host.AptSystemd(sudo="sudo -n "), proj_settings)
    assert commands(c)[-1] == f"sudo -n {INSTALL} jq"


def test_brew_installs_what_is_missing_and_names_what_it_does_not_know(proj_settings):
    folder.get(proj_settings).packages.write_text("jq\nwget\n")
    c = ctx({"brew list --versions jq": Result("jq 1.7\n"), "brew list --versions wget": FAIL,
             "brew info wget": OK, "brew install wget": OK})
    assert folder.ensure_os_packages(c, host.Homebrew(), proj_settings) == ["installed wget (from packages.txt)"]
    c = ctx({"^brew list": FAIL, "brew info jq": OK, "brew info wget": FAIL})
    with pytest.raises(StackError, match="brew does not know wget"):
        folder.ensure_os_packages(c, host.Homebrew(), proj_settings)


def test_no_packages_txt_runs_nothing(proj_settings):
    c = ctx({})
    assert folder.ensure_os_packages(c, host.AptPgCtlcluster(), proj_settings) == []
    assert commands(c) == []


# ---- airflow_settings.yaml ----------------------------------------------------------------
def test_astros_empty_template_defines_nothing(proj_settings):
    folder.get(proj_settings).objects_file.write_text(ASTRO_TEMPLATE)
    assert objects.load(proj_settings) is None
    assert objects.apply(ctx({}), proj_settings) == []  # and nothing runs


def test_a_full_file_is_read_with_names_from_env(proj_settings):
    folder.get(proj_settings).objects_file.write_text(FULL)
    loaded = objects.load(proj_settings)
    conn = loaded["connections"][0]
    assert conn | {"extra": None} == {"conn_id": "warehouse", "conn_type": "postgres", "host": "db.example.com",
                                      "schema": None, "login": "etl", "password": "pre-s3cr3t-value-post",
                                      "port": 5432, "extra": None}
    assert json.loads(conn["extra"]) == {"sslmode": "require", "token": "tok-value-123"}
    assert loaded["pools"] == [{"name": "warehouse", "slots": 4, "description": ""}]
    assert loaded["variables"] == [{"key": "environment", "value": "dev"}, {"key": "limits", "value": '{"rows": 10}'}]


@pytest.mark.parametrize(("text", "message"), [
    ("airflow:\n  connections:\n    - conn_id: a\n     conn_type: http\n", r"line \d+: .*fix the YAML"),
    (FULL.replace("WAREHOUSE_TOKEN", "NOT_SET_ANYWHERE"), r"\$\{NOT_SET_ANYWHERE\}.*add NOT_SET_ANYWHERE="),
    (FULL.replace("conn_type: postgres", "conn_type:"), "warehouse.*has no conn_type"),
    (FULL.replace("pool_slot: 4", "pool_slot: four"), "pool_slot 'four' is not a number"),
    (FULL.replace('conn_port: "5432"', "conn_port: 99999"), "is not a port number"),
    (FULL.replace("variable_name: limits", "variable_name: environment"), "environment defined more than once"),
    ("- just\n- a list\n", "must hold a mapping 'airflow:'"),
    ("airflow:\n  pools: {a: 1}\n", "airflow.pools must be a list"),
])
def test_a_bad_file_is_one_sentence_without_values(proj_settings, text, message):
    folder.get(proj_settings).objects_file.write_text(text)
    with pytest.raises(StackError, match=message) as err:
        objects.load(proj_settings)
    assert "s3cr3t-value" not in str(err.value) and "tok-value-123" not in str(err.value)


def test_the_report_names_objects_never_values():
    report = {"connections": {"created": ["warehouse"], "updated": [], "unchanged": []},
              "variables": {"created": [], "updated": ["environment"], "unchanged": ["limits"]},
              "pools": {"created": [], "updated": [], "unchanged": ["warehouse"]}}
    assert objects.summarize(report) == ["airflow_settings.yaml connections: created warehouse",
                                         "airflow_settings.yaml variables: updated environment"]
    unchanged = {kind: {"created": [], "updated": [], "unchanged": ["x"]} for kind in objects.KINDS}
    assert objects.summarize(unchanged) == []  # nothing to report: setup says "already ..."


# ---- what the processes get ------------------------------------------------------------
def test_every_process_gets_the_projects_plugins_and_its_root_on_pythonpath(settings):
    env = airflow_config.environment(settings)
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(settings.project_dir / "plugins")
    # the project's root first, then the stack's modules Airflow imports by name (its auth manager ...)
    ours = airflow_config.AIRFLOW_MODULES
    assert env["PYTHONPATH"].split(":") == [str(settings.project_dir), str(ours)]
    assert (ours / "airflow_stack_auth_manager.py").is_file() and (ours / "airflow_stack_basic_auth.py").is_file()
    proc_env = airflow_config.process_environment(settings, env, {"PYTHONPATH": "/opt/mine", "PATH": "/bin"})
    assert proc_env["PYTHONPATH"].split(":") == [str(settings.project_dir), str(ours), "/opt/mine"]
    cfg = airflow_config.render_airflow_cfg(env, settings)
    assert f"plugins_folder = {settings.project_dir / 'plugins'}" in cfg and "PYTHONPATH" not in cfg


# ---- uv's errors, DAG test input --------------------------------------------------------
def test_uvs_reason_names_the_package_and_the_pin():
    piped = ("Using Python 3.11.7 environment at: /x\nerror: No solution found when resolving dependencies\n"
             "  cause: Because you require requests==2.0.0 and requests==2.34.2, we can conclude that your "
             "requirements are unsatisfiable.\n")
    terminal = ("  \u00d7 No solution found when resolving dependencies:\n"
                "  ╰─▶ Because nope was not found in the package registry and you require nope==1.0, we can\n"
                "      conclude that your requirements are unsatisfiable.\n\n      hint: something\n")
    assert install.uv_reason(piped).startswith("Because you require requests==2.0.0 and requests==2.34.2")
    assert install.uv_reason(terminal) == ("Because nope was not found in the package registry and you "
                                                   "require nope==1.0, we can conclude that your requirements are "
                                                   "unsatisfiable.")
    assert install.uv_reason("error: Failed to fetch: https://pypi.org/simple/x\n") == \
        "Failed to fetch: https://pypi.org/simple/x"


@pytest.mark.parametrize("conf", ["[1", "[1, 2]", "not json"])
def test_dags_test_refuses_a_conf_that_is_not_a_json_object_before_running_anything(settings, conf):
    c = ctx({})
    with pytest.raises(StackError, match="is not a JSON object"):
        dags.test(c, settings, "hello_stack", conf)
    assert commands(c) == []


# ---- memcached as the limiter's storage ---------------------------------------------------
def test_memcached_is_ours_only_on_this_machine(env):
    def load(uri):
        return settings_mod.load(environ=env | {"STACK_RATELIMIT_STORAGE_URI": uri})

    from airflow_stack.runtime import registry
    from airflow_stack.services import memcached_server

    assert memcached_server.address(load("memcached://127.0.0.1:11212")) == ("127.0.0.1", 11212)
    assert memcached_server.managed(load("memcached://localhost"))  # the default port
    assert memcached_server.address(load("memcached://localhost")) == ("localhost", 11211)
    assert not memcached_server.managed(load("memcached://cache.internal:11211"))  # used as it is
    assert memcached_server.address(load("redis://:x@127.0.0.1:6380/1")) is None
    names = [inst.name for inst in registry.instances(load("memcached://127.0.0.1:11212"))]
    assert names[:2] == ["redis", "memcached"]  # started, listed, stopped like our Redis
    assert "memcached" not in [inst.name for inst in registry.instances(load("memcached://cache.internal"))]
    with pytest.raises(StackError, match="port that is not a number"):
        memcached_server.address(load("memcached://127.0.0.1:abc"))


def test_the_airflow_venv_gets_the_limiter_storages_client(env):
    settings = settings_mod.load(environ=env | {"STACK_RATELIMIT_STORAGE_URI": "memcached://127.0.0.1:11212"})
    assert limiter.client_package(settings) == "pymemcache"
    assert install._wanted_stamp(settings)["limiter_client"] == "pymemcache"
    assert limiter.client_package(settings_mod.load(environ=env)) is None  # Redis: in Airflow's extras


def test_apt_and_brew_install_memcached():
    c = ctx({f"{APT} update -q": OK, f"{INSTALL} memcached": OK})
    host.AptPgCtlcluster().memcached_install(c)
    assert commands(c)[-1].endswith(f"{APT} install -y -q memcached")
    c = ctx({"brew list --versions memcached": Result("memcached 1.6.29\n"),
             "brew --prefix": Result("/opt/homebrew\n")})
    assert host.Homebrew().memcached_bin(c) == "/opt/homebrew/bin/memcached"
