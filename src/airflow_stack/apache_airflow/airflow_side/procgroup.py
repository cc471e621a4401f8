"""Process groups and sessions: who is in one, and stopping what a dead process left in it.

Through psutil and ``os.getpgid`` / ``os.getsid`` / signals only, which Linux and macOS both have (no
/proc). Used by the tooling (runtime.supervisor) and by the launcher, which runs on Airflow's own Python
(Airflow depends on psutil): the standard library and psutil only, nothing of ours.

A process-group or session id is never reused while any member lives, so within one boot every live
member of a dead leader's group or session is something that leader started.
"""

from __future__ import annotations

import contextlib
import os

import psutil


def members(ident: int, kind: str = "group") -> list[psutil.Process]:
    """Live (not zombie) processes whose process group (``kind`` "group") or session ("session") id is
    ``ident``."""
    of = os.getpgid if kind == "group" else os.getsid
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if of(proc.pid) == ident and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


# Seconds what a dead leader left gets between SIGTERM and SIGKILL: a killed scheduler's LocalExecutor workers
# ignore SIGTERM (they inherit a handler that acts only in the scheduler itself), and the tasks they run are
# given these seconds to finish and report (test_faults: a run in flight finishes). At 3 s they were killed
# mid-task and stayed "running" until the new scheduler's orphan check (every 300 s); the price is the
# restart of a killed scheduler waiting up to this long.
REAP_GRACE = 10.0


def reap(pgid: int, whole_session: bool = False, timeout: float = REAP_GRACE) -> int:
    """Stop what is left in process group ``pgid`` (its leader died): SIGTERM (its members may stop what they
    supervise), SIGKILL after ``timeout``. ``whole_session``: what is still in the leader's session, having
    left the group for one of its own (a task process whose supervisor was just stopped), is killed too.
    Returns how many processes that was."""
    group = members(pgid, "group")
    for proc in group:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(group, timeout=timeout)
    stragglers = members(pgid, "session") if whole_session else []
    for proc in [*alive, *stragglers]:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(stragglers, timeout=timeout)
    return len(group) + len(stragglers)
