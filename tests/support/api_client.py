"""A small client for the REST API of any Airflow line, as the tests and the benchmark use it.

The line's profile says how: ``auth="token"``, a JWT from ``POST /auth/token`` (the FAB and the
simple auth manager both issue one); ``auth="basic"``, user and password on every request (the stack
enables that backend). Over HTTPS (STACK_TLS with the API beyond loopback) the server is verified with the
stack's CA (``verify_for``). Needs httpx, which the ``test`` and ``bench`` dependency groups install.
"""

from __future__ import annotations

import ssl
import time

import httpx

from airflow_stack.apache_airflow import profiles
from airflow_stack.settings import Settings


def verify_for(settings: Settings) -> ssl.SSLContext | bool:
    """What httpx verifies the stack's API server with: the stack's CA when it serves HTTPS."""
    return ssl.create_default_context(cafile=str(settings.tls_ca_file)) if settings.api_tls else True


class AirflowAPI:
    def __init__(self, base_url: str, line: str, user: str, password: str, timeout: float = 30,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.rest = profiles.get(line).rest
        self.prefix = self.rest.prefix
        # the stack's own address: never through a proxy the environment names
        self.client = httpx.Client(base_url=base_url, timeout=timeout, trust_env=False, verify=verify)
        if self.rest.auth == "basic":
            self.client.auth = (user, password)
        else:
            token = self.client.post(self.rest.token_path, json={"username": user, "password": password})
            token.raise_for_status()
            self.client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def close(self) -> None:
        self.client.close()

    def dag_count(self, containing: str = "") -> int:
        """DAGs the API lists (those whose id contains ``containing``)."""
        resp = self.client.get(f"{self.prefix}/dags", params={"dag_id_pattern": containing} if containing else None)
        assert resp.status_code == 200, resp.status_code
        return resp.json()["total_entries"]

    def wait_for_dag(self, dag_id: str, timeout: float = 60) -> float:
        """Seconds until ``dag_id`` is known to the API."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            status = self.client.get(f"{self.prefix}/dags/{dag_id}").status_code
            if status in (401, 403):
                raise AssertionError(f"the API refused our credentials ({status})")
            if status == 200:
                return time.monotonic() - began
            time.sleep(0.2)
        raise AssertionError(f"DAG {dag_id} did not appear through the API within {timeout} s")

    def unpause(self, dag_id: str) -> None:
        resp = self.client.patch(f"{self.prefix}/dags/{dag_id}", json={"is_paused": False})
        assert resp.status_code == 200, resp.text

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        body = dict(self.rest.trigger_body) | ({"conf": conf} if conf else {})
        resp = self.client.post(f"{self.prefix}/dags/{dag_id}/dagRuns", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()["dag_run_id"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> tuple[int, str]:
        """(HTTP status, text) of a task's log as the UI shows it (its ``content``: a text, or a list
        of structured log events on newer lines)."""
        resp = self.client.get(f"{self.prefix}/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/"
                               f"{try_number}", headers={"Accept": "application/json"})
        try:
            content = resp.json().get("content", "")
        except ValueError:
            return resp.status_code, resp.text
        return resp.status_code, content if isinstance(content, str) else "\n".join(map(str, content))

    def run_state(self, dag_id: str, run_id: str) -> str:
        resp = self.client.get(f"{self.prefix}/dags/{dag_id}/dagRuns/{run_id}")
        resp.raise_for_status()  # an error body has no state: say which status it was
        return resp.json()["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 180, interval: float = 0.5) -> str:
        """The run's final state (success/failed), or its state when ``timeout`` ran out."""
        began = time.monotonic()
        state = "unknown"
        while time.monotonic() - began < timeout:
            try:
                state = self.run_state(dag_id, run_id)
            except httpx.TimeoutException:
                # an API server busy with a wide run (standalone's, on SQLite) may answer late: ask again
                continue
            except httpx.HTTPStatusError as exc:
                # standalone's SQLite answers 500 while "database is locked"; the run goes on: ask again
                if exc.response.status_code < 500:
                    raise
                time.sleep(interval)
                continue
            if state in ("success", "failed"):
                return state
            time.sleep(interval)
        return state


def all_healthy(base_url: str, line: str, timeout: float = 2, verify: ssl.SSLContext | bool = True) -> bool:
    """True when the API answers and every component its health endpoint lists is healthy
    (the metadatabase, scheduler, triggerer and, where it runs apart, the dag-processor)."""
    try:
        resp = httpx.get(base_url + profiles.get(line).rest.health_path, timeout=timeout, trust_env=False,
                         verify=verify)
        body = resp.json()
    except (httpx.HTTPError, ValueError):
        return False
    if resp.status_code != 200 or not isinstance(body, dict):
        return False
    states = [part.get("status") for part in body.values() if isinstance(part, dict)]
    return bool(states) and all(state == "healthy" for state in states if state is not None)
