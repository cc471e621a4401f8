"""invoke service.install / service.uninstall: the stack comes back after a reboot (a systemd user unit on
Linux, a launchd agent on macOS), through ops/service_units.py."""

from __future__ import annotations

from invoke import Context, task

from ._common import load, one_line_errors, say


@task
@one_line_errors
def install(c: Context) -> None:
    """Bring this stack up at boot (systemd user unit) or login (launchd agent), as `invoke up` does."""
    from ..ops import service_units

    say(*service_units.install(c, load()))


@task
@one_line_errors
def uninstall(c: Context) -> None:
    """Remove this checkout's unit (the running stack is left as it is)."""
    from ..ops import service_units

    say(*service_units.uninstall(c, load()))
