"""invoke run.local / run.celery: start the Airflow processes, supervised, and wait until healthy."""

from __future__ import annotations

from invoke import Context, task

from .. import stack
from ._common import load, one_line_errors, say


def start_stack(c: Context, executor: str, timeout: float, line: str | None = None) -> None:
    settings = load(executor=executor, airflow_line=line)
    report = stack.start(c, settings, executor, timeout=timeout)
    web = "api-server" if settings.airflow_line != "2.11" else "webserver"
    if not report.started:
        say(f"run: already running ({', '.join(report.already)}), Airflow {settings.airflow_line}, {executor}")
    else:
        say(f"run: started {', '.join(report.started)}; all healthy in {report.seconds:.1f} s")
    say(f"run: Airflow UI and API ({web}) at {settings.api_url}/ ; user {settings.admin_user}, "
        f"password: _AIRFLOW_WWW_USER_PASSWORD in {settings.env_file}")


@task(help={"timeout": "seconds to wait for every component to be healthy (default 180)",
            "line": "Airflow line: 3.3 (default) or 2.11"})
@one_line_errors
def local(c: Context, timeout: float = stack.HEALTH_TIMEOUT, line: str | None = None) -> None:
    """Run Airflow with the LocalExecutor: scheduler, dag-processor, triggerer, API server."""
    start_stack(c, "local", timeout, line)
