"""The UI in a real browser (headless Chromium from the OS's packages, installed by `invoke setup.browser`):
the page a user sees, not only the config behind it. Every test saves its screenshots in its own
temporary directory (the path is printed). The rate-limit test is last: it leaves this client
rate limited for the limit's window."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from invoke import Context

from airflow_stack.apache_airflow import profiles
from airflow_stack.netutil import wait_until
from airflow_stack.services import host, redis_server
from airflow_stack.settings import LIMITER_DB

from .conftest import LINE
from .test_airflow import status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser_paths(stack, airflow_up) -> tuple[str, str]:
    """The browser and its driver, installed through the project's own task (as CI does)."""
    stack.inv("setup.browser", timeout=900)
    found = host.detect().browser(Context())
    assert found, "invoke setup.browser succeeded, yet no browser and driver are found"
    return found


@pytest.fixture
def browser(stack, browser_paths, tmp_path):
    from airflow_stack.ops.browser import Browser, pins_for

    shots = tmp_path / "screenshots"
    b = Browser(*browser_paths, shots, pins=pins_for(stack.settings()))  # HTTPS in the Celery session
    try:
        yield b
    finally:
        b.quit()
        print(f"\n[screenshots] {shots}: {', '.join(sorted(p.name for p in shots.glob('*.png')))}")


def test_the_login_form_lets_the_admin_in_and_the_dag_list_shows_the_projects_dags(stack, browser):
    settings = stack.settings()
    assert browser.login(settings.api_url, settings.airflow_line, settings.admin_user, settings.admin_password) is None
    assert browser.logged_in(), "still on the login form after the admin's password from .env"
    browser.get(settings.api_url + profiles.of(settings).ui.dag_list_path)
    for dag_id in ("hello_stack", "project_probe", "noop_forty"):
        browser.wait_text(dag_id)
    browser.shot("dag-list")
    warnings = [w for w in profiles.of(settings).ui.production_warnings if w in browser.text()]
    assert not warnings, f"the stack's UI shows the production warnings {warnings}"


def test_a_dag_triggered_in_the_ui_runs_to_success_there(stack, browser):
    settings = stack.settings()
    browser.login(settings.api_url, settings.airflow_line, settings.admin_user, settings.admin_password)
    ui = profiles.of(settings).ui
    assert browser.run_states(settings.api_url, ui, "hello_stack") == []  # so the run seen is the one triggered here
    began = time.monotonic()
    browser.trigger(settings.api_url, ui, "hello_stack")
    browser.wait_runs(settings.api_url, ui, "hello_stack", ["success"])
    print(f"\n[figure] hello_stack triggered in the UI -> success shown there: {time.monotonic() - began:.1f} s")


if profiles.get(LINE).ui.production_warnings:
    @pytest.mark.once_per_line
    def test_the_check_for_production_warnings_sees_them_on_a_default_standalone(stack, browser, tmp_path):
        """The same page check, pointed at `airflow standalone` of the same release (SQLite, the line's
        default executor): there it finds the banners, so on the stack it could have failed."""
        from tests.support.bench import Standalone

        settings = stack.settings()
        dags = tmp_path / "dags"
        dags.mkdir()
        standalone = Standalone(stack, dags)
        standalone.prepare()
        try:
            standalone.start()
            password = standalone.profile.standalone_password(standalone.home)
            browser.login(standalone.url, settings.airflow_line, "admin", password)
            browser.get(standalone.url + profiles.of(settings).ui.dag_list_path)
            for warning in profiles.of(settings).ui.production_warnings:
                browser.wait_text(warning)
            browser.shot("standalone-home")
        finally:
            standalone.stop()


@pytest.mark.once_per_line
def test_six_wrong_logins_in_the_browser_show_the_rate_limit_page_counted_in_redis(stack, browser):
    settings = stack.settings()
    client = redis_server.airflow_client(settings, db=LIMITER_DB)  # as the limiter counts: through the socket
    # the logins of the tests before count in the same window: start when no login counter is live
    deadline = time.monotonic() + 90
    while client.keys("LIMITS*") and time.monotonic() < deadline:
        time.sleep(1)
    answers = [browser.login(settings.api_url, settings.airflow_line, settings.admin_user, "wrong-password")
               for _ in range(6)]
    browser.shot("sixth-login")
    print(f"\n[figure] six wrong logins in the browser: {answers}")
    assert answers[:5] == [None] * 5 and answers[5] == 429, answers
    assert "Too Many Requests" in browser.text()
    assert any(b"LIMITER" in key for key in client.keys("LIMITS*")), "no login counter in Redis"
    assert all(row["healthy"] for row in status(stack).values())  # and the stack is unharmed


@pytest.fixture(scope="module")
def memcached_limiter(stack, airflow_up):
    """One setting (STACK_RATELIMIT_STORAGE_URI=memcached://...): the stack installs memcached, runs it on
    loopback, supervises it like Redis, and the web component restarted with it counts logins there; back on
    Redis afterwards. Gives the setting and the stack's settings with it."""
    from airflow_stack.runtime import supervisor

    from .conftest import free_ports

    settings = stack.settings()
    web = profiles.of(settings).web.name
    uri = {"STACK_RATELIMIT_STORAGE_URI": f"memcached://127.0.0.1:{free_ports(1)[0]}"}
    cached = settings.replace(ratelimit_storage_uri=uri["STACK_RATELIMIT_STORAGE_URI"])
    try:
        out = stack.inv("setup.memcached", env=uri, timeout=600).stdout
        assert "started memcached on 127.0.0.1" in out
        stack.inv("stop", "-c", web)
        stack.inv("up", env=uri)  # the web component starts again, counting in memcached
        yield uri, cached
    finally:
        stack.inv("stop", "-c", web, env=uri, check=False)
        stack.inv("stop", "-c", "memcached", env=uri, check=False)
        stack.inv("up")  # back on Redis
    assert supervisor.running(cached, "memcached") is None
    assert all(row["healthy"] for row in status(stack).values())


@pytest.mark.once_per_line
def test_with_memcached_the_sixth_wrong_password_on_the_api_is_refused_and_counted_there(stack, memcached_limiter):
    """The API's logins (3.x: POST /auth/token; 2.11: basic auth) spend the form's budget where it is kept.
    Before the test that kills memcached: the first API login after memcached came back answered 500 (seen
    once; the limiter's client still held its connection to the killed one), the next ones 401 again."""
    from airflow_stack.services import memcached_server

    from .test_login_limits import ATTACKER, FORM_KEY, api_login

    _, cached = memcached_limiter
    settings = stack.settings()
    codes = [api_login(settings, ATTACKER, "wrong-password") for _ in range(6)]
    key = FORM_KEY.format(client=ATTACKER)
    count = memcached_server.counter(cached, key)
    print(f"\n[figure] six wrong passwords on the API, memcached as the storage: {codes}; {key} = {count}")
    assert set(codes[:5]) <= {401, 403} and codes[5] == 429, codes
    assert count == 5


@pytest.mark.once_per_line
def test_with_memcached_as_the_limiter_storage_the_sixth_wrong_login_is_refused_and_counted_there(
        stack, memcached_limiter, browser):
    from airflow_stack.runtime import supervisor
    from airflow_stack.services import memcached_server

    uri, cached = memcached_limiter
    settings = stack.settings()
    proc = supervisor.running(cached, "memcached")
    assert proc is not None and memcached_server.ping(cached)[0]
    listening = {conn.laddr.ip for conn in psutil.Process(proc.pid).net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    answers = [browser.login(settings.api_url, settings.airflow_line, settings.admin_user, "wrong-password")
               for _ in range(6)]
    browser.shot("sixth-login-memcached")
    assert answers[:5] == [None] * 5 and answers[5] == 429, answers
    assert [key for key in memcached_server.keys(cached) if key.startswith("LIMITER/")], "no counter in memcached"
    assert "kept in our memcached" in stack.inv("doctor", env=uri, check=False).stdout
    # supervised like Redis: killed, it comes back by itself
    os.kill(proc.pid, signal.SIGKILL)
    assert wait_until(lambda: (supervisor.running(cached, "memcached") or proc).pid != proc.pid
                      and memcached_server.ping(cached)[0], 30)
