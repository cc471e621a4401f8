"""Which machine this is: the host strategy for it (Homebrew, apt with systemd, apt with pg_ctlcluster)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..errors import StackError
from .host_apt import Apt, AptPgCtlcluster, AptSystemd
from .host_base import Cluster, Platform, WholeStdin, sudo_prefix
from .host_brew import Homebrew

__all__ = ["SYSTEMD_DIR", "Apt", "AptPgCtlcluster", "AptSystemd", "Cluster", "Homebrew", "Platform", "WholeStdin",
           "detect", "sudo_prefix", "systemd_runs"]


# systemd is PID 1 exactly when this directory exists (sd_booted)
SYSTEMD_DIR = Path("/run/systemd/system")


def systemd_runs(systemd_dir: Path | None = None) -> bool:
    """systemd is this machine's service manager (PID 1): its units start at boot."""
    return (SYSTEMD_DIR if systemd_dir is None else systemd_dir).is_dir()


def detect(which=shutil.which, system: str | None = None, systemd_dir: Path | None = None,
           sudo: str | None = None) -> Platform:
    """Pick the strategy for this machine (``system``: sys.platform, read now)."""
    sudo = sudo_prefix() if sudo is None else sudo
    system = sys.platform if system is None else system
    if system == "darwin" or (which("brew") and not which("apt-get")):
        if not which("brew"):
            raise StackError("Homebrew is not installed; install it from brew.sh, then re-run")
        return Homebrew()
    if which("apt-get"):
        return AptSystemd(sudo) if systemd_runs(systemd_dir) else AptPgCtlcluster(sudo)
    raise StackError("neither Homebrew nor apt-get is on this machine; airflow-stack supports macOS with "
                     "Homebrew and Debian/Ubuntu: install PostgreSQL and Redis yourself and pass --host/--port")
