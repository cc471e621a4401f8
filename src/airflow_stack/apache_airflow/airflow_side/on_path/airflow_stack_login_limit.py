"""Every login counted: the budget the FAB login form keeps per client address (Flask-Limiter,
``[fab] auth_rate_limit``, 5 per 40 s, in the storage STACK_RATELIMIT_STORAGE_URI names) is spent by wrong
passwords on the API's logins too: Airflow 3's ``POST /auth/token`` and ``/auth/token/cli``
(``LoginLimitMiddleware``, added by airflow_stack_auth_manager.py) and Airflow 2's basic auth
(airflow_stack_basic_auth.py). Once the form's budget is spent, each of them answers 429.

The folder of this module (on_path/) is on every Airflow process's PYTHONPATH, after the project's root
(apache_airflow/config.py): its modules run inside Airflow, on Airflow's Python, where nothing of
airflow-stack is installed. This one imports the standard library only (``limits``, which Flask-Limiter
brings, when a budget is built), so the unit tests drive the middleware without Airflow.

What is counted: on the API, wrong passwords only (a 401 from Airflow). The form counts every POST, but
an API client that logs in often (a script, the remote CLI, Airflow 2's basic auth where every request
carries the password) would be locked out by its own successes. Reading the budget before the password
is checked and spending it after is not atomic, so the attempts of one address take turns here: parallel
guesses cannot all pass the check before the first is counted (within one API server process).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

# the API's password logins (also under a base_url's path prefix): Airflow 3's FAB auth manager routes
TOKEN_PATHS = ("/auth/token", "/auth/token/cli")
# the form's view method: its counter is kept under the endpoint "<auth view>.login" (AuthDBView.login)
LOGIN_METHOD = "login"
REFUSED = "Too many login attempts from this address; try again later"
# the proxies whose X-Forwarded-For names the client (Airflow 2's webserver_config.py reads it; on Airflow 3
# uvicorn's --proxy-headers with FORWARDED_ALLOW_IPS does the same before any of this runs)
TRUSTED_PROXIES_VAR = "STACK_TRUSTED_PROXIES"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class LoginBudget:
    """The login form's rate limit, read and spent for one client address from outside the form."""

    def __init__(self, strategy: Any, limits: list[Any], scope: str, prefix: str = "") -> None:
        self.strategy = strategy  # the `limits` strategy of the form's Flask-Limiter: its storage, its windows
        self.limits = limits  # the RateLimitItems of [fab] auth_rate_limit
        self.scope = scope  # the form's endpoint, as Flask-Limiter keys the form's counter
        self.prefix = prefix  # RATELIMIT_KEY_PREFIX, when webserver_config.py sets one

    @classmethod
    def of(cls, flask_app: Any) -> LoginBudget | None:
        """The budget of ``flask_app``'s login form (FAB's Flask app); None when its logins are not limited."""
        from limits import parse_many

        config = flask_app.config
        security = flask_app.appbuilder.sm
        limiter = security.limiter
        if not config.get("AUTH_RATE_LIMITED", True) or not limiter.enabled:
            return None
        view = getattr(getattr(security, "auth_view", None), "endpoint", None) or "AuthDBView"
        return cls(limiter.limiter, list(parse_many(config["AUTH_RATE_LIMIT"])), f"{view}.{LOGIN_METHOD}",
                   config.get("RATELIMIT_KEY_PREFIX", ""))

    def _ids(self, client: str) -> tuple[str, ...]:
        # Flask-Limiter's identifiers for the form's limit: [prefix,] key_func(), scope
        return (self.prefix, client, self.scope) if self.prefix else (client, self.scope)

    def wait_seconds(self, client: str) -> int:
        """0 while ``client`` may try a password; else the seconds until its window lets it again."""
        ids = self._ids(client)
        spent = [item for item in self.limits if not self.strategy.test(item, *ids)]
        if not spent:
            return 0
        reset = max(self.strategy.get_window_stats(item, *ids)[0] for item in spent)
        return max(1, math.ceil(reset - time.time()))

    def spend(self, client: str) -> None:
        """Count one failed login of ``client``, as the form counts its own."""
        ids = self._ids(client)
        for item in self.limits:
            self.strategy.hit(item, *ids)


def is_token_login(scope: Scope) -> bool:
    """An HTTP POST to one of the API's password logins."""
    if scope.get("type") != "http" or scope.get("method") != "POST":
        return False
    return str(scope.get("path", "")).rstrip("/").endswith(TOKEN_PATHS)


class LoginLimitMiddleware:
    """Pure ASGI: a token login from an address whose budget is spent answers 429 without reaching Airflow;
    one that Airflow answers 401 (wrong user or password) is counted. ``budget`` gives the form's budget
    (None: logins are not limited)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 budget: Callable[[], LoginBudget | None]) -> None:
        self.app = app
        self.budget = budget
        self._turns: dict[str, asyncio.Lock] = {}  # one per address with an attempt in flight
        self._queued: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget = self.budget() if is_token_login(scope) else None
        if budget is None:
            await self.app(scope, receive, send)
            return
        # the address the form's counter is keyed by: the peer, or the client a trusted proxy named
        # (uvicorn's --proxy-headers rewrote it before this runs)
        client = (scope.get("client") or ("",))[0] or "unknown"
        async with self._turn(client):
            wait = await asyncio.to_thread(budget.wait_seconds, client)  # the storage is a network call
            if wait:
                await refuse(send, wait)
                return

            async def counted(message: Message) -> None:
                # a failure is counted before its answer leaves: whoever reads the counter after a 401 finds it
                if message["type"] == "http.response.start" and message["status"] == 401:
                    await asyncio.to_thread(budget.spend, client)
                await send(message)

            await self.app(scope, receive, counted)

    @contextlib.asynccontextmanager
    async def _turn(self, client: str) -> AsyncIterator[None]:
        """The attempts of one address, one at a time (the event loop is one thread: no race on the dicts)."""
        lock = self._turns.setdefault(client, asyncio.Lock())
        self._queued[client] = self._queued.get(client, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._queued[client] -= 1
            if not self._queued[client]:
                del self._queued[client], self._turns[client]


async def refuse(send: Send, wait: int) -> None:
    body = json.dumps({"detail": REFUSED}).encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(wait).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---- behind a reverse proxy (Airflow 2: webserver_config.py's RATELIMIT_KEY_FUNC) ---------------------
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(text: str) -> tuple[Network, ...]:
    """STACK_TRUSTED_PROXIES's addresses and networks (the stack refused a wrong value before starting us)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _within(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        found = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    found = getattr(found, "ipv4_mapped", None) or found  # ::ffff:127.0.0.2 from a server bound to ::
    return any(found in network for network in trusted)


def forwarded_client(peer: str, forwarded_for: str, trusted: tuple[Network, ...]) -> str:
    """The client's address: a peer that is no trusted proxy is the client, whatever header it sent;
    behind a trusted one, X-Forwarded-For is read from the right (the hop our proxy appended) past every
    trusted proxy, and the first other hop is the client (what uvicorn's proxy headers do)."""
    if not _within(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop
    return hops[0] if hops else peer


@functools.lru_cache(maxsize=1)
def _trusted_from_environment() -> tuple[Network, ...]:
    return trusted_networks(os.environ.get(TRUSTED_PROXIES_VAR, ""))


def flask_client_address() -> str:
    """Flask-Limiter's key function behind a trusted proxy (RATELIMIT_KEY_FUNC)."""
    from flask import request

    # the real peer, even when [webserver] enable_proxy_fix (which believes any peer) rewrote remote_addr
    peer = request.environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR") or request.remote_addr
    return forwarded_client(peer or "127.0.0.1", request.headers.get("X-Forwarded-For", ""),
                            _trusted_from_environment())
