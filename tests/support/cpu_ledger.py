"""Where the test suite's CPU goes: every process that runs while the lanes run, its CPU seconds summed by
kind (Airflow's API server, its scheduler, ``airflow db migrate``, PostgreSQL, the browser, the stack's own
invoke tasks, ...), printed by ``scripts/test`` at the end.

The suite is CPU-bound on a small machine (``lanes.busy_share``), so its floor is the CPU work its tests
make Airflow and the services do; this says which work. Processes are sampled with psutil every
``INTERVAL`` seconds: one that starts and ends between two samples is not seen, and the report names what
the machine was busy with beyond what was seen as a rest."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable

import psutil

INTERVAL = 0.5  # a pass costs ~10 ms of CPU with ~200 processes: 2-3% of one CPU, shown in the report

# (kind, parts of a command line): the first kind with a part in the command line wins. Order matters:
# a test's Airflow runs in pytest's temporary folders ("/tmp/pytest-of-root/..."), and the sessions' own
# command lines name executors ("-m 'integration and not celery'"), so pytest and nox match on their
# programs only, and last; 2.11's parse processes are named "airflow scheduler - DagFileProcessor ...".
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("browser (UI tests)", ("chromium", "chromedriver")),
    ("PostgreSQL", ("postgres: ", "/bin/postgres ")),
    ("Redis, memcached", ("redis-server", "memcached")),
    ("installs (uv, apt, dpkg)", ("bin/uv ", "apt-get ", "apt-cache ", "dpkg")),
    ("the stack's invoke tasks", ("-m invoke ",)),
    ("Airflow API server / webserver", ("api_server", "api-server", "webserver", "gunicorn")),
    ("Airflow DAG processor", ("dag-processor", "dag_processor", "DagFileProcessor")),
    ("Airflow scheduler", ("airflow scheduler",)),
    ("Airflow triggerer", ("airflow triggerer",)),
    ("Celery workers and their tasks", ("celeryd", "airflow celery", "celery worker", "ForkPoolWorker")),
    ("Airflow task processes", ("airflow worker", "airflow task runner", "airflow task supervisor", " tasks run ")),
    ("airflow_helper (DAG checks, objects, dags.test)", ("airflow_helper.py",)),
    ("airflow db migrate", ("airflow db migrate",)),
    ("airflow users create / reset-password", ("users create", "users reset-password", "users delete")),
    ("other airflow CLI commands", ("bin/airflow ", "airflow.__main__")),
    ("the stack's launcher (preload, restarts)", ("launcher.py",)),
    ("scripts/test's lanes and this sampler", ("tests.support.lanes",)),
    ("pytest, nox (the tests themselves)", ("bin/pytest ", "-m pytest", "bin/nox ", "-m nox")),
)
OTHER = "other processes"
UNSEEN = "not seen by the sampler (shorter than a sample, the kernel)"


def kind(cmdline: str) -> str:
    for name, parts in KINDS:
        if any(part in cmdline for part in parts):
            return name
    return OTHER


class Ledger:
    """CPU seconds per process, since the ledger began, by the kind of its latest command line (a process
    forked by the launcher renames itself: its last name counts)."""

    def __init__(self) -> None:
        # (pid, create time) -> [CPU seconds it had when first seen (0 if it started after the first
        # sample), latest, kind]
        self.processes: dict[tuple[int, float], list] = {}
        self.retired: list[list] = []  # entries of processes whose pid was reused
        self._primed = False

    def add(self, pid: int, created: float, cmdline: str, cpu: float, existing: bool = False) -> None:
        """One reading of one process; ``existing``: it ran before the ledger began (only what it uses from
        now on counts)."""
        entry = self.processes.get((pid, created))
        if entry is not None and cpu < entry[1]:
            # CPU time never goes back: the pid was reused between two passes and psutil's cached process
            # kept the old start time. The old process's figure stands; the new one starts from zero.
            self.retired.append(entry)
            entry = None
        if entry is None:
            entry = self.processes[(pid, created)] = [cpu if existing else 0.0, cpu, OTHER]
        entry[1] = cpu
        if cmdline:  # unreadable for a moment (starting, exiting): it keeps the kind it had
            entry[2] = kind(cmdline)

    def by_kind(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for first, latest, name in [*self.processes.values(), *self.retired]:
            totals[name] += latest - first
        return dict(totals)

    def sample(self, processes: Iterable[psutil.Process] | None = None) -> None:
        """Read every process once; the first call marks what ran before the ledger began."""
        if processes is None:  # psutil's cached Process objects: half the cost of new ones (see add)
            processes = psutil.process_iter(["cmdline", "create_time", "cpu_times"])
        existing, self._primed = not self._primed, True
        for proc in processes:
            info = proc.info
            if info.get("cpu_times") is None or info.get("create_time") is None:
                continue  # gone, or a process we may not read
            times = info["cpu_times"]
            self.add(proc.pid, info["create_time"], " ".join(info.get("cmdline") or []), times.user + times.system,
                     existing)


def report(totals: dict[str, float], busy_seconds: float, cpus: int, top: int = 12) -> list[str]:
    """Lines: the machine's busy CPU seconds, the floor they make on ``cpus`` CPUs, then the kinds, largest
    first, the rest of the busy time as unseen."""
    seen = sum(totals.values())
    rows = sorted(totals.items(), key=lambda item: -item[1])
    shown, rest = rows[:top], sum(seconds for _, seconds in rows[top:])
    lines = [f"{busy_seconds:.0f} CPU seconds busy on {cpus} CPUs: at full use a floor of "
             f"{busy_seconds / max(cpus, 1) / 60:.1f} min; by kind of process:"]
    share = (lambda seconds: f"{100 * seconds / busy_seconds:3.0f}%") if busy_seconds > 0 else (lambda _: "  -")
    lines += [f"{seconds:7.0f} s {share(seconds)}  {name}" for name, seconds in shown]
    if rest:
        lines.append(f"{rest:7.0f} s {share(rest)}  {len(rows) - top} more kinds")
    if busy_seconds > seen:
        lines.append(f"{busy_seconds - seen:7.0f} s {share(busy_seconds - seen)}  {UNSEEN}")
    return lines


class Sampler:
    """Samples every process into a Ledger in a daemon thread until ``stop``."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.ledger, self.interval, self.failed_passes = Ledger(), interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-ledger")

    def _sample(self) -> None:
        try:
            self.ledger.sample()
        except Exception:  # a figure is never a reason for the suite to fail: the pass is lost, counted
            self.failed_passes += 1

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self._sample()

    def start(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        self._sample()
        return self.ledger.by_kind()
