"""Every login counted, without Airflow: the middleware in front of Airflow 3's token logins (driven with a
fake ASGI app and an in-memory window in place of Flask-Limiter's storage), whose address counts behind a
proxy, STACK_TRUSTED_PROXIES and what each line gets of it, the password policy of webserver_config.py."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from collections import namedtuple

import pytest

from airflow_stack import settings as settings_mod
from airflow_stack.apache_airflow import config as airflow_config
from airflow_stack.apache_airflow import profiles
from airflow_stack.errors import StackError

Item = namedtuple("Item", "amount")  # a `limits` RateLimitItem, as far as the budget reads one


@pytest.fixture
def limit(monkeypatch):
    """airflow_stack_login_limit, imported as Airflow imports it: from the folder on its PYTHONPATH."""
    monkeypatch.syspath_prepend(str(airflow_config.AIRFLOW_MODULES))
    monkeypatch.delitem(sys.modules, "airflow_stack_login_limit", raising=False)
    import airflow_stack_login_limit

    return airflow_stack_login_limit


class Window:
    """A fixed window of `limits` in memory (the strategy Flask-Limiter uses by default), keyed as it keys."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, ...], int] = {}

    def test(self, item, *ids) -> bool:
        return self.counts.get(ids, 0) < item.amount

    def hit(self, item, *ids) -> bool:
        self.counts[ids] = self.counts.get(ids, 0) + 1
        return self.counts[ids] <= item.amount

    def get_window_stats(self, item, *ids):
        return time.time() + 37.2, max(0, item.amount - self.counts.get(ids, 0))


class Airflow:
    """What stands behind the middleware: 201 for the right password, 401 for any other; it counts its calls."""

    def __init__(self, delay: float = 0) -> None:
        self.calls = 0
        self.delay = delay

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        body = (await receive())["body"]
        await asyncio.sleep(self.delay)
        right = scope["method"] == "POST" and body and json.loads(body).get("password") == "right"
        await send({"type": "http.response.start", "status": 201 if right else 401, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def request(app, path: str, client: str, password: str = "wrong", method: str = "POST"):
    """One HTTP request through ``app``: (status, headers, body)."""
    sent = []
    body = json.dumps({"username": "admin", "password": password}).encode()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "client": (client, 50000), "headers": []}
    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def stack_of(limit, airflow, window, amount=5):
    budget = limit.LoginBudget(window, [Item(amount)], "AuthDBView.login")
    return limit.LoginLimitMiddleware(airflow, budget=lambda: budget)


def test_only_posts_to_the_token_logins_are_counted(limit):
    def post(path: str, method: str = "POST", kind: str = "http") -> bool:
        return limit.is_token_login({"type": kind, "method": method, "path": path})

    for path in ("/auth/token", "/auth/token/", "/auth/token/cli", "/airflow/auth/token"):  # under a base_url too
        assert post(path), path
    for path in ("/auth/login/", "/auth/tokens", "/auth/token/refresh", "/api/v2/dags", "/auth/fab/v1/users"):
        assert not post(path), path
    assert not post("/auth/token", method="GET") and not post("/auth/token", kind="websocket")


def test_the_sixth_wrong_password_answers_429_without_reaching_airflow(limit):
    airflow, window = Airflow(), Window()
    app = stack_of(limit, airflow, window)

    async def attack():
        wrong = [await request(app, "/auth/token", "127.0.0.11") for _ in range(6)]
        cli = await request(app, "/auth/token/cli", "127.0.0.11")
        right_here = await request(app, "/auth/token", "127.0.0.11", "right")
        right_elsewhere = await request(app, "/auth/token", "127.0.0.12", "right")
        return wrong, cli, right_here, right_elsewhere

    wrong, cli, right_here, right_elsewhere = asyncio.run(attack())
    print(f"\n[figure] six wrong passwords: {[status for status, _, _ in wrong]}")
    assert [status for status, _, _ in wrong] == [401] * 5 + [429]
    _, headers, body = wrong[5]
    assert headers[b"content-type"] == b"application/json" and headers[b"retry-after"] == b"38"
    assert json.loads(body) == {"detail": limit.REFUSED}
    assert airflow.calls == 6  # the five wrong ones and the other address's: no refused one reached Airflow
    assert window.counts == {("127.0.0.11", "AuthDBView.login"): 5}  # the form's key: its endpoint, this address
    # the CLI's token route and the right password from that address wait too; another address does not
    assert cli[0] == 429 and right_here[0] == 429 and right_elsewhere[0] == 201


def test_a_failure_is_counted_before_its_answer_leaves(limit):
    """Whoever reads the counter once the 401 arrived (doctor's probe does) finds the failure in it."""
    window = Window()
    app = stack_of(limit, Airflow(), window)
    seen = []

    async def receive():
        return {"type": "http.request", "body": json.dumps({"password": "wrong"}).encode(), "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            seen.append((message["status"], dict(window.counts)))

    asyncio.run(app({"type": "http", "method": "POST", "path": "/auth/token", "client": ("127.0.0.9", 1)},
                    receive, send))
    assert seen == [(401, {("127.0.0.9", "AuthDBView.login"): 1})]


def test_successes_are_not_counted_and_other_routes_pass_untouched(limit):
    airflow, window = Airflow(), Window()
    app = stack_of(limit, airflow, window, amount=1)

    async def use():
        good = [(await request(app, "/auth/token", "127.0.0.12", "right"))[0] for _ in range(8)]
        await request(app, "/auth/token", "127.0.0.11")  # spends 127.0.0.11's one attempt
        # the form (Flask-Limiter counts it itself) and the API reach Airflow from the spent address
        others = [(await request(app, path, "127.0.0.11", method=method))[0]
                  for path, method in (("/auth/login/", "POST"), ("/api/v2/dags", "GET"))]
        return good, others

    good, others = asyncio.run(use())
    assert good == [201] * 8 and ("127.0.0.12", "AuthDBView.login") not in window.counts
    assert others == [401, 401] and airflow.calls == 11


def test_parallel_guesses_from_one_address_take_turns(limit):
    """Reading the budget and counting a failure are two storage calls: parallel guesses that all read it
    before the first was counted would all be checked. Twenty at once: five reach the password check."""
    airflow, window = Airflow(delay=0.01), Window()
    app = stack_of(limit, airflow, window)

    async def burst():
        return await asyncio.gather(*(request(app, "/auth/token", "127.0.0.11") for _ in range(20)))

    statuses = sorted(status for status, _, _ in asyncio.run(burst()))
    assert statuses == [401] * 5 + [429] * 15 and airflow.calls == 5
    assert app._turns == {} and app._queued == {}  # nothing kept per address once its attempts are done


def test_without_a_limit_nothing_is_counted(limit):
    airflow = Airflow()
    app = limit.LoginLimitMiddleware(airflow, budget=lambda: None)  # [fab] auth_rate_limited off

    async def attempts():
        return [(await request(app, "/auth/token", "127.0.0.11"))[0] for _ in range(7)]

    assert asyncio.run(attempts()) == [401] * 7


def test_the_budget_is_the_login_forms_own(limit, monkeypatch):
    """Built from FAB's Flask app: its Flask-Limiter's strategy (so its storage), [fab] auth_rate_limit, the
    key prefix, and the form's endpoint; no budget when the form is not limited."""
    parsed = []
    monkeypatch.setitem(sys.modules, "limits", types.SimpleNamespace(
        parse_many=lambda text: parsed.append(text) or [Item(5)]))
    window = Window()
    limiter = types.SimpleNamespace(enabled=True, limiter=window)
    security = types.SimpleNamespace(limiter=limiter, auth_view=types.SimpleNamespace(endpoint="AuthDBView"))
    app = types.SimpleNamespace(config={"AUTH_RATE_LIMIT": "5 per 40 second", "RATELIMIT_KEY_PREFIX": "stack"},
                                appbuilder=types.SimpleNamespace(sm=security))
    budget = limit.LoginBudget.of(app)
    budget.spend("203.0.113.7")
    assert parsed == ["5 per 40 second"] and window.counts == {("stack", "203.0.113.7", "AuthDBView.login"): 1}
    app.config["AUTH_RATE_LIMITED"] = False
    assert limit.LoginBudget.of(app) is None


# ---- behind a reverse proxy --------------------------------------------------------------------------
def test_x_forwarded_for_names_the_client_only_behind_a_trusted_proxy(limit):
    trusted = limit.trusted_networks("127.0.0.2, 10.0.0.0/24")
    client = limit.forwarded_client
    assert client("127.0.0.5", "203.0.113.7", trusted) == "127.0.0.5"  # not a proxy: its header is ignored
    assert client("127.0.0.2", "203.0.113.7", trusted) == "203.0.113.7"
    # a client that writes its own header: the proxy appends the real peer, read from the right
    assert client("127.0.0.2", "198.51.100.1, 203.0.113.7", trusted) == "203.0.113.7"
    assert client("127.0.0.2", "203.0.113.7, 10.0.0.4", trusted) == "203.0.113.7"  # past a trusted inner proxy
    assert client("::ffff:127.0.0.2", "203.0.113.8", trusted) == "203.0.113.8"  # a server bound to ::
    assert client("127.0.0.2", "", trusted) == "127.0.0.2" and client("127.0.0.2", "10.0.0.9", trusted) == "10.0.0.9"
    assert client("127.0.0.2", "203.0.113.7", ()) == "127.0.0.2"  # nothing trusted


@pytest.mark.parametrize("given, kept", [("", ""), ("127.0.0.2", "127.0.0.2"),
                                         (" 127.0.0.2 , 10.0.0.5/24,", "127.0.0.2,10.0.0.0/24"),
                                         ("::1,fd00::/8", "::1,fd00::/8")])
def test_trusted_proxies_are_addresses_or_networks(env, given, kept):
    assert settings_mod.load(environ=env | {"STACK_TRUSTED_PROXIES": given}).trusted_proxies == kept


@pytest.mark.parametrize("given", ["bogus", "127.0.0.2,proxy.example", "10.0.0.0/33"])
def test_anything_else_is_refused_in_one_line_with_an_example(env, given):
    with pytest.raises(StackError) as caught:
        settings_mod.load(environ=env | {"STACK_TRUSTED_PROXIES": given})
    message = str(caught.value)
    assert message.startswith(f"STACK_TRUSTED_PROXIES={given!r} (environment): ") and "\n" not in message
    assert "is not an IP address or network" in message and "e.g. STACK_TRUSTED_PROXIES=127.0.0.2" in message


def test_each_line_hears_of_the_proxies_its_own_way(settings):
    behind = settings.replace(trusted_proxies="127.0.0.2,10.0.0.0/24")
    for s, option in ((settings, []), (behind, ["--proxy-headers"])):
        new = profiles.get("3.3")  # uvicorn: --proxy-headers, and FORWARDED_ALLOW_IPS names whom it believes
        env = airflow_config.environment(s.replace(airflow_line=new.name))
        assert new.web.command("airflow", s)[2:] == option
        assert env["FORWARDED_ALLOW_IPS"] == s.trusted_proxies and "STACK_TRUSTED_PROXIES" not in env
        # Airflow syncs DAG permissions and cleans FAB's sessions when this contains 'FabAuthManager' (a text test)
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == "airflow_stack_auth_manager.RateLimitedFabAuthManager"
        old = profiles.get("2.11")  # gunicorn: webserver_config.py's key function reads the list
        env = airflow_config.environment(s.replace(airflow_line=old.name))
        assert old.web.command("airflow", s)[2:] == [] and "FORWARDED_ALLOW_IPS" not in env
        assert env["STACK_TRUSTED_PROXIES"] == s.trusted_proxies
        assert env["AIRFLOW__API__AUTH_BACKENDS"].split(",")[0] == "airflow_stack_basic_auth"
    for s in (settings, behind):  # never Airflow's proxy fixes, which believe any client's header
        for line in profiles.NAMES:
            assert not [k for k in airflow_config.environment(s.replace(airflow_line=line)) if "PROXY_FIX" in k]


# ---- webserver_config.py -----------------------------------------------------------------------------
def run_webserver_config(monkeypatch, environ: dict[str, str]) -> dict:
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(airflow_config.AIRFLOW_MODULES))

    class PasswordComplexityValidationError(Exception):
        pass

    monkeypatch.setitem(sys.modules, "flask_appbuilder", types.ModuleType("flask_appbuilder"))
    monkeypatch.setitem(sys.modules, "flask_appbuilder.const", types.SimpleNamespace(AUTH_DB=1))
    monkeypatch.setitem(sys.modules, "flask_appbuilder.exceptions", types.SimpleNamespace(
        PasswordComplexityValidationError=PasswordComplexityValidationError))
    namespace: dict = {"Refused": PasswordComplexityValidationError}
    exec(compile(airflow_config.render_webserver_config(), "webserver_config.py", "exec"), namespace)
    return namespace


def test_users_added_in_the_ui_need_twelve_characters(monkeypatch):
    namespace = run_webserver_config(monkeypatch, {"STACK_RATELIMIT_STORAGE_URI": "redis://x"})
    assert namespace["FAB_PASSWORD_COMPLEXITY_ENABLED"] is True
    check = namespace["FAB_PASSWORD_COMPLEXITY_VALIDATOR"]
    for short in ("", "abc", "elevenchars"):
        with pytest.raises(namespace["Refused"], match="at least 12 characters"):
            check(short)
    assert check("twelve chars") is None and check("correct horse battery staple") is None


def test_the_limiter_keys_behind_a_trusted_proxy_only_when_one_is_named(monkeypatch, limit):
    plain = run_webserver_config(monkeypatch, {"STACK_RATELIMIT_STORAGE_URI": "redis://x", "STACK_TRUSTED_PROXIES": ""})
    assert "RATELIMIT_KEY_FUNC" not in plain  # Flask-Limiter's default: the peer's address
    behind = run_webserver_config(monkeypatch, {"STACK_RATELIMIT_STORAGE_URI": "redis://x",
                                                "STACK_TRUSTED_PROXIES": "127.0.0.2"})
    key = behind["RATELIMIT_KEY_FUNC"]
    peers = {"127.0.0.2": "203.0.113.7", "127.0.0.5": "127.0.0.5"}
    for peer, counted in peers.items():
        request = types.SimpleNamespace(environ={}, remote_addr=peer, headers={"X-Forwarded-For": "203.0.113.7"})
        monkeypatch.setitem(sys.modules, "flask", types.SimpleNamespace(request=request))
        assert key() == counted
    # a ProxyFix that believed the header (enable_proxy_fix) does not fool it: the real peer decides
    request = types.SimpleNamespace(environ={"werkzeug.proxy_fix.orig": {"REMOTE_ADDR": "127.0.0.5"}},
                                    remote_addr="203.0.113.7", headers={"X-Forwarded-For": "203.0.113.7"})
    monkeypatch.setitem(sys.modules, "flask", types.SimpleNamespace(request=request))
    assert key() == "127.0.0.5"
