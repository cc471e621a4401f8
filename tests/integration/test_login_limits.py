"""Every login counted: wrong passwords on the API (Airflow 3's POST /auth/token and /auth/token/cli, 2.11's
basic auth) spend the login form's budget in the limiter's storage, and get 429 after the same number; behind
a proxy named in STACK_TRUSTED_PROXIES the client X-Forwarded-For names is the one counted, and nobody else's
header is believed.

The budget is kept per client address, so every test here attacks from a loopback address of its own (doctor
probes from 127.0.0.9, the form's own limit test from 127.0.0.6): nobody else is locked out."""

from __future__ import annotations

import httpx
import pytest

from airflow_stack.apache_airflow import profiles
from airflow_stack.services import redis_server
from tests.support.api_client import verify_for

from .test_airflow import _login_page, status

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]
ATTACKER = "127.0.0.11"  # tries wrong passwords
USER = "127.0.0.12"  # the admin, who knows the password, from another machine
FORM_KEY = "LIMITER/{client}/AuthDBView.login/5/40/second"  # the form's counter, as Flask-Limiter keys it


def client_from(settings, source: str) -> httpx.Client:
    return httpx.Client(base_url=settings.api_url, timeout=30, trust_env=False,
                        transport=httpx.HTTPTransport(local_address=source, verify=verify_for(settings)))


def api_login(settings, source: str, password: str, path: str = "", headers: dict[str, str] | None = None) -> int:
    """One login on the line's API from ``source``: a token for user and password (3.x), or a request with
    them (basic auth, 2.11); its status."""
    rest = profiles.of(settings).rest
    with client_from(settings, source) as client:
        if rest.token_path:
            return client.post(path or rest.token_path, json={"username": settings.admin_user, "password": password},
                               headers=headers).status_code
        return client.get(f"{rest.prefix}/dags", auth=(settings.admin_user, password), headers=headers).status_code


def form_login(settings, source: str, password: str, headers: dict[str, str] | None = None) -> int:
    with client_from(settings, source) as client:
        path, token = _login_page(client, settings.airflow_line)
        return client.post(path, data={"username": settings.admin_user, "password": password, "csrf_token": token},
                           headers=headers).status_code


def limiter(settings):
    return redis_server.client(settings, db=1)  # our Redis, the limiter's DB (through its socket)


def counted(settings, client: str) -> tuple[int, int]:
    """(count, seconds left in its window) of ``client``'s login counter in our Redis."""
    key = "LIMITS:" + FORM_KEY.format(client=client)
    value = limiter(settings).get(key)
    return int(value or 0), limiter(settings).ttl(key)


def test_the_sixth_wrong_password_on_the_api_is_refused_and_counted_with_the_forms(stack, airflow_up):
    settings = stack.settings()
    rest = profiles.of(settings).rest
    codes = [api_login(settings, ATTACKER, "wrong-password") for _ in range(6)]
    count, ttl = counted(settings, ATTACKER)
    print(f"\n[figure] six wrong passwords on {rest.token_path or rest.prefix + ' (basic auth)'}: {codes}; "
          f"{'LIMITS:' + FORM_KEY.format(client=ATTACKER)} = {count}, ttl {ttl} s")
    # 401 on the token route; 2.11 answers a wrong basic login 403 (Public role, then the permission check)
    assert set(codes[:5]) <= {401, 403} and codes[5] == 429, codes
    assert count == 5 and 0 < ttl <= 40, (count, ttl)
    # one budget for every way to try a password: the form refuses this address now, and the right
    # password from it waits for the window too
    later = {"form": form_login(settings, ATTACKER, "wrong-password"),
             "right password": api_login(settings, ATTACKER, settings.admin_password)}
    if rest.token_path:
        later["token/cli"] = api_login(settings, ATTACKER, "wrong-password", path=rest.token_path + "/cli")
    print(f"[figure] from {ATTACKER} afterwards: {later}")
    assert set(later.values()) == {429}, later
    # the admin elsewhere gets in, as often as an API client does: successes are not counted
    good = [api_login(settings, USER, settings.admin_password) for _ in range(6)]
    print(f"[figure] six right passwords from {USER}: {good}")
    assert set(good) == {201 if rest.token_path else 200}, good
    assert counted(settings, USER)[0] == 0
    assert all(row["healthy"] for row in status(stack).values())


def test_x_forwarded_for_counts_only_when_the_proxy_is_named_in_stack_trusted_proxies(stack, airflow_up):
    """A proxy at 127.0.0.13 (STACK_TRUSTED_PROXIES): the client it names is counted, by the API and the form
    alike; a client at 127.0.0.14 that writes the header itself is counted under its own address."""
    settings = stack.settings()
    web = profiles.of(settings).web.name
    proxy, stranger = "127.0.0.13", "127.0.0.14"
    behind = {"STACK_TRUSTED_PROXIES": proxy}
    clients = {"api behind the proxy": "203.0.113.7", "form behind the proxy": "203.0.113.8",
               "stranger's own header": "203.0.113.9"}
    try:
        stack.inv("stop", "-c", web)
        stack.inv("up", env=behind)
        codes = [api_login(settings, proxy, "wrong-password",
                           headers={"X-Forwarded-For": clients["api behind the proxy"]}),
                 form_login(settings, proxy, "wrong-password",
                            headers={"X-Forwarded-For": f"198.51.100.1, {clients['form behind the proxy']}"}),
                 api_login(settings, stranger, "wrong-password",
                           headers={"X-Forwarded-For": clients["stranger's own header"]})]
        found = {name: counted(settings, address)[0] for name, address in clients.items()}
        found |= {"the proxy": counted(settings, proxy)[0], "the stranger": counted(settings, stranger)[0]}
        print(f"\n[figure] behind a trusted proxy: answers {codes}, counted {found}")
    finally:
        stack.inv("stop", "-c", web, check=False)
        stack.inv("up")
    assert found == {"api behind the proxy": 1, "form behind the proxy": 1, "stranger's own header": 0,
                     "the proxy": 0, "the stranger": 1}, found
    # without the setting the header is believed from nobody: the proxy's own address is counted
    api_login(settings, proxy, "wrong-password", headers={"X-Forwarded-For": "203.0.113.10"})
    assert (counted(settings, "203.0.113.10")[0], counted(settings, proxy)[0]) == (0, 1)
