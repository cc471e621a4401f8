"""Airflow 3's FAB auth manager, with wrong passwords on the API's logins (``POST /auth/token``,
``/auth/token/cli``) spending the login form's budget (airflow_stack_login_limit.py).

The stack sets it as ``[core] auth_manager`` (apache_airflow/profiles/): nothing goes into the project's
plugins/ folder, which is the user's, and only the API server, which builds the auth manager's FastAPI
app, runs the limit. FAB itself limits only its login form: its token routes are FastAPI routes that
Flask-Limiter never sees, and they are handed no client address.

The middleware goes onto FAB's own FastAPI app (mounted at /auth), which every 3.x release builds through
``get_fastapi_app``; the auth manager's ``get_fastapi_middlewares`` hook exists only from 3.3 on.

The class name keeps "FabAuthManager": Airflow looks for that text in ``[core] auth_manager`` to sync DAG
permissions (the DAG processor) and to clean FAB's session table (``airflow db clean``).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
from airflow_stack_login_limit import LoginBudget, LoginLimitMiddleware


class RateLimitedFabAuthManager(FabAuthManager):
    _mounted_flask_app: Any = None

    def get_fastapi_app(self) -> Any:
        app = super().get_fastapi_app()
        if app is not None:
            self._mounted_flask_app = mounted_flask_app(app)
            app.add_middleware(LoginLimitMiddleware, budget=self.login_budget)
        return app

    def login_budget(self) -> LoginBudget | None:
        """The FAB login form's budget (None before FAB's Flask app is built: nothing to count in yet)."""
        flask_app = getattr(self, "flask_app", None) or self._mounted_flask_app
        return None if flask_app is None else LoginBudget.of(flask_app)


def mounted_flask_app(app: Any) -> Any:
    """The Flask app FAB mounts under its FastAPI app (3.2 and later also keep it as ``flask_app``)."""
    for route in getattr(app, "routes", ()):
        inner = getattr(getattr(route, "app", None), "app", None)  # Mount -> WSGIMiddleware -> Flask
        if inner is not None and hasattr(inner, "appbuilder"):
            return inner
    return None
