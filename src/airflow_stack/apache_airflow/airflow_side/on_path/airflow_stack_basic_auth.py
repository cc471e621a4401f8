"""Airflow 2's REST API with a user and password on every request (FAB's basic auth), with wrong passwords
spending the login form's budget (airflow_stack_login_limit.py): once it is spent, the API answers 429
before it checks a password, for the right one too.

Listed first in ``[api] auth_backends`` (apache_airflow/profiles/): Airflow imports each backend by its
module name and asks them in turn. Everything but the counting is FAB's own backend. Only failures are
counted: every API call carries the password, and counting successes would allow 5 calls per 40 s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from airflow.providers.fab.auth_manager.api.auth.backend import basic_auth as fab_basic_auth
from airflow_stack_login_limit import REFUSED, LoginBudget
from flask import Response, abort, current_app, request
from flask_limiter.util import get_remote_address

CLIENT_AUTH = fab_basic_auth.CLIENT_AUTH
init_app = fab_basic_auth.init_app


def requires_authentication(function: Callable[..., Any]) -> Callable[..., Any]:
    checked = fab_basic_auth.requires_authentication(function)

    @wraps(function)
    def decorated(*args: Any, **kwargs: Any) -> Any:
        auth = request.authorization
        budget = LoginBudget.of(current_app) if auth is not None and auth.type == "basic" else None
        if budget is None:
            return checked(*args, **kwargs)
        # the form's own key function: the peer, or the client a trusted proxy named (webserver_config.py)
        client = current_app.config.get("RATELIMIT_KEY_FUNC", get_remote_address)()
        wait = budget.wait_seconds(client)
        if wait:
            # raised, not returned: Airflow would take a returned answer as "not this backend" and ask the next
            abort(Response(json.dumps({"detail": REFUSED}), 429,
                           {"Retry-After": str(wait), "Content-Type": "application/json"}))
        answer = checked(*args, **kwargs)
        if getattr(answer, "status_code", None) == 401:  # FAB's answer to a wrong user or password
            budget.spend(client)
        return answer

    return decorated
