"""Airflow 3's FAB auth manager, with wrong passwords on the API's logins (``POST /auth/token``,
``/auth/token/cli``) spending the login form's budget (airflow_stack_login_limit.py).

The stack sets it as ``[core] auth_manager`` (apache_airflow/profiles/): nothing goes into the project's
plugins/ folder, which is the user's, and only the API server, which asks its auth manager for
middlewares, runs the limit. FAB itself limits only its login form: its token routes are FastAPI routes
that Flask-Limiter never sees, and they are handed no client address.

The class name keeps "FabAuthManager": Airflow looks for that text in ``[core] auth_manager`` to sync DAG
permissions (the DAG processor) and to clean FAB's session table (``airflow db clean``).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
from airflow_stack_login_limit import LoginBudget, LoginLimitMiddleware


class RateLimitedFabAuthManager(FabAuthManager):
    def get_fastapi_middlewares(self) -> list[tuple[Any, dict[str, Any]]]:
        return [*super().get_fastapi_middlewares(), (LoginLimitMiddleware, {"budget": self.login_budget})]

    def login_budget(self) -> LoginBudget | None:
        """The FAB login form's budget. Its Flask app is built with the /auth routes when the API server
        starts, before it serves a request (None before that: nothing to count in yet)."""
        return None if self.flask_app is None else LoginBudget.of(self.flask_app)
