"""`scripts/test` without arguments: lint and the unit tests (and the darwin session: the supervisor's and
launcher's tests with macOS's paths forced), then the integration sessions in lanes that run at the same time.

Each integration session brings up its own stack (state dir, free ports, role and database; the Celery
sessions a PostgreSQL cluster of their own), so two sessions never meet. A session spends most of its time
waiting on Airflow (a load of about 0.9 on this 2-core machine), so two lanes finish in a little more than
half the time of one. Sessions are dealt to lanes longest first (the LocalExecutor session holds the
once-per-line tests, so it runs as two halves).

A lane is one ``nox -s A -s B`` process: its lines are printed as they arrive, prefixed with the lane; its
whole output is also kept in .nox/lane-N.log. ``STACK_TEST_LANES`` sets the number of lanes (1: one after
another, as plain ``nox`` runs them); the default is 2 where there are at least 2 CPUs and 6 GiB of memory
per lane. At the end it prints how busy the CPUs were and which processes used them (cpu_ledger.py): the
suite's floor is that CPU work, so every CI log says where its time goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tests.support import cpu_ledger

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def default_lanes() -> int:
    chosen = os.environ.get("STACK_TEST_LANES", "")
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            sys.exit(f"scripts/test: STACK_TEST_LANES={chosen!r} is not a number of lanes; use 1, 2, ...")
        return int(chosen)
    fits = min(os.cpu_count() or 1, psutil.virtual_memory().total // (6 * GIB))
    return max(1, min(2, fits))


# minutes each session usually takes in CI (two lanes): how the lanes are dealt; the LocalExecutor session
# runs as two halves (noxfile.py, MACHINE_TESTS)
WEIGHTS = {"integration(local-machine)": 13, "integration(local-stack)": 13, "integration(celery)": 10}
RELEASE_WEIGHT = 3  # each releases(X.Y)
UNKNOWN_WEIGHT = 10  # a session not weighed yet


def integration_sessions() -> list[tuple[str, int]]:
    """(session, weight) of every integration and release session nox lists; weight: its usual minutes."""
    listed = subprocess.run([sys.executable, "-m", "nox", "-l", "--json"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    found = []
    for s in json.loads(listed):
        if s["name"] == "integration":
            found.append((s["session"], WEIGHTS.get(s["session"], UNKNOWN_WEIGHT)))
        elif s["name"] == "releases":
            found.append((s["session"], RELEASE_WEIGHT))
    return found


def deal(sessions: list[tuple[str, int]], lanes: int) -> list[list[str]]:
    """Longest first, each to the lane with the least work so far."""
    dealt: list[list[str]] = [[] for _ in range(lanes)]
    work = [0] * lanes
    for name, weight in sorted(sessions, key=lambda s: -s[1]):
        lane = work.index(min(work))
        dealt[lane].append(name)
        work[lane] += weight
    return [lane for lane in dealt if lane]


def _busy(times: Any) -> float:
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def busy_seconds(before: Any, after: Any) -> float:
    """CPU seconds all the CPUs were busy between two ``psutil.cpu_times()`` readings."""
    return _busy(after) - _busy(before)


def busy_share(before: Any, after: Any) -> float:
    """How much of all the CPUs' time between two ``psutil.cpu_times()`` readings was busy (0..1): near 1,
    the suite waits for CPU, and more lanes would only share it thinner."""
    total = sum(after) - sum(before)
    return busy_seconds(before, after) / total if total > 0 else 0.0


def lane_command(sessions: list[str]) -> list[str]:
    """One nox run of ``sessions``, in order: one -s followed by every name (nox keeps only the last of
    several -s options: `-s A -s B` would run B alone)."""
    return [sys.executable, "-m", "nox", "-s", *sessions]


def run_lane(number: int, sessions: list[str], lock: threading.Lock, results: dict[int, tuple[int, float]]) -> None:
    began = time.monotonic()
    log = ROOT / ".nox" / f"lane-{number}.log"
    log.parent.mkdir(exist_ok=True)
    args = lane_command(sessions)
    with log.open("w") as kept, subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            kept.write(line)
            with lock:
                sys.stdout.write(f"[lane {number}] {line}")
                sys.stdout.flush()
    # every session dealt to the lane must have run and passed, as nox itself reports it
    text = log.read_text()
    missing = [name for name in sessions if f"Session {name} was successful" not in text]
    code = proc.returncode or (1 if missing else 0)
    if missing and not proc.returncode:
        with lock:
            print(f"[lane {number}] scripts/test: nox did not report {', '.join(missing)} as run and successful")
    results[number] = (code, time.monotonic() - began)


def main() -> int:
    began = time.monotonic()
    # lint, the unit tests, and the supervisor's and launcher's again as on macOS (darwin: well under a minute)
    first = subprocess.run([sys.executable, "-m", "nox", "-s", "lint", "tests", "darwin"], cwd=ROOT,
                           stdin=subprocess.DEVNULL)
    if first.returncode != 0:
        return first.returncode
    lanes = deal(integration_sessions(), default_lanes())
    print(f"scripts/test: integration sessions in {len(lanes)} lane(s): "
          + "; ".join(f"lane {n}: {', '.join(s)}" for n, s in enumerate(lanes, 1)), flush=True)
    lock, results, cpu_before = threading.Lock(), {}, psutil.cpu_times()
    sampler = cpu_ledger.Sampler().start()
    threads = [threading.Thread(target=run_lane, args=(n, s, lock, results)) for n, s in enumerate(lanes, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for number, sessions in enumerate(lanes, 1):
        code, seconds = results.get(number, (1, 0.0))
        print(f"scripts/test: lane {number} ({', '.join(sessions)}) {'passed' if code == 0 else 'FAILED'} in "
              f"{seconds / 60:.1f} min (log: .nox/lane-{number}.log)")
    cpu_after, by_kind, cpus = psutil.cpu_times(), sampler.stop(), psutil.cpu_count() or 1
    print(f"scripts/test: the {cpus} CPUs were busy {busy_share(cpu_before, cpu_after):.0%} "
          f"of the time while the lanes ran")
    for line in cpu_ledger.report(by_kind, busy_seconds(cpu_before, cpu_after), cpus):
        print(f"scripts/test: {line}")
    if sampler.failed_passes:
        print(f"scripts/test: {sampler.failed_passes} passes of the CPU sampler failed (their CPU counts as not seen)")
    failed = any(code != 0 for code, _ in results.values()) or len(results) != len(lanes)
    print(f"scripts/test: {'FAILED' if failed else 'all passed'} in {(time.monotonic() - began) / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
