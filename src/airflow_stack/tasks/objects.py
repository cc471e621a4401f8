"""invoke objects.*: the project's connections, variables and pools (objects.py)."""

from __future__ import annotations

import time
from pathlib import Path

from invoke import Context, task

from ..errors import StackError
from ..project import objects as objects_mod
from ._common import load, one_line_errors, say, stack


@task(name="apply")
@one_line_errors
def apply(c: Context) -> None:
    """Apply the project's airflow_settings.yaml: create what is missing, update what differs.

    invoke up does this too."""
    the_stack = stack(c)
    settings = the_stack.settings
    defined = objects_mod.load(settings)
    if defined is None:
        say(f"objects: {settings.project_dir / 'airflow_settings.yaml'} defines no connections, variables or pools")
        return
    with the_stack.lock("invoke objects.apply"):
        changes = objects_mod.apply(c, settings)
    say(*(f"objects: {line}" for line in changes) if changes else
        [f"objects: airflow_settings.yaml: {objects_mod.count(defined)} objects, all as the file says"])


@task(name="export", help={"file": "where to write (default: <state dir>/exports/airflow_settings-<UTC time>.yaml)",
                           "force": "overwrite FILE when it exists"})
@one_line_errors
def export(c: Context, file: str | None = None, force: bool = False) -> None:
    """Write the stack's connections, variables and pools in airflow_settings.yaml's format (mode 0600)."""
    settings = load()
    if file:
        path = Path(file).expanduser().resolve()
        if path.exists() and not force:
            raise StackError(f"{path} exists; pass --force to overwrite it, or another --file")
        if not path.parent.is_dir():
            raise StackError(f"{path.parent} is not a folder; create it or give another --file")
    else:
        path = settings.paths.export_file(time.strftime('%Y%m%d-%H%M%S', time.gmtime()))
    counts = objects_mod.export(c, settings, path)
    say(f"objects: wrote {counts['connections']} connections, {counts['variables']} variables, "
        f"{counts['pools']} pools to {path} (mode 0600: it holds passwords)")
