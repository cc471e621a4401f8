"""invoke docs.*: what the README shows, taken from the running stack."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from ..apache_airflow import profiles
from ..errors import StackError
from ..runtime import registry
from ..services import host
from ..settings import PROJECT_DIR
from ._common import load, one_line_errors, say


@task(help={"output": "folder for the images (default: docs/img)"})
@one_line_errors
def screenshots(c: Context, output: str | None = None) -> None:
    """Take the README's screenshots of the running stack's UI in a headless browser (invoke setup.browser)."""
    settings = load()
    if not registry.running(settings):
        raise StackError("the stack is not running; start it first: invoke up")
    found = host.detect().browser(c)
    if found is None:
        raise StackError("no headless browser found; install one: invoke setup.browser")
    try:
        from ..ops.browser import Browser, pins_for
    except ImportError:
        raise StackError("Selenium is not in the tooling venv; scripts/up installs it (the dev group)") from None
    folder = Path(output).resolve() if output else PROJECT_DIR / "docs" / "img"
    browser = Browser(*found, folder, pins=pins_for(settings))
    try:
        if browser.login(settings.api_url, settings.airflow_line, settings.admin_user, settings.admin_password):
            raise StackError("the login was rate limited; wait a minute and run this again")
        if not browser.logged_in():
            raise StackError(f"the admin's password in {settings.env_file} does not log in; run: invoke setup.airflow")
        browser.get(settings.api_url + profiles.of(settings).ui.dag_list_path)
        browser.wait_text("hello_stack" if (settings.dags_folder / "hello_stack.py").exists() else "DAG")
        path = browser.shot(f"dag-list-{settings.airflow_line}", numbered=False)
    finally:
        browser.quit()
    say(f"docs: wrote {path}")
