"""The benchmark's report: one section per Airflow line in docs/benchmarks.md, rewritten by each run
of that line between its markers; everything outside the markers (the tuning log) is kept."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_stack.runtime.measure import Summary

from . import bench_scale

# (Sample attribute, row label, unit)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("healthy", "start command → every component healthy", "s"),
    ("sleep8", "8 parallel sleep(5) tasks, trigger → success", "s"),
    ("noop40", "40 no-op tasks, trigger → success", "s"),
    ("new_dag", "new DAG file → triggerable through the API", "s"),
    ("airflow_pss", "idle PSS, Airflow processes", "MiB"),
    ("stack_pss", "idle PSS, whole stack (with PostgreSQL and Redis)", "MiB"),
    ("postgres_pss", "… of which PostgreSQL", "MiB"),
    ("redis_pss", "… of which Redis", "MiB"),
    ("processes", "Airflow processes, idle", ""),
    ("setup_rerun", "`invoke setup` with nothing to do", "s"),
)
LABELS = {"standalone": "`airflow standalone`", "local": "ours, Local", "celery": "ours, Celery"}


@dataclass(frozen=True)
class Target:
    """A goal from the benchmark issue: ``scenario``'s ``metric`` at most ``limit`` (a ratio to the
    baseline's ``baseline_metric`` when that is set, else an absolute value)."""

    scenario: str
    metric: str
    limit: float
    baseline_metric: str = ""
    text: str = ""

    def value(self, result: Result) -> float | None:
        mine = result.summary(self.scenario, self.metric)
        if not self.baseline_metric:
            return mine.median
        return mine.ratio_to(result.summary("standalone", self.baseline_metric))


# the performance issue's targets (round two); the round-one rows still held are kept below them
TARGETS: tuple[Target, ...] = (
    Target("local", "healthy", 0.6, "healthy", "Local start → healthy ≤ 0.60× standalone"),
    Target("celery", "healthy", 0.7, "healthy", "Celery start → healthy ≤ 0.70× standalone"),
    Target("local", "noop40", 0.8, "noop40", "40 no-op tasks, Local ≤ 0.80× standalone"),
    Target("celery", "noop40", 1.0, "noop40", "40 no-op tasks, Celery ≤ 1.00× standalone"),
    Target("local", "sleep8", 7.0, "", "8×sleep(5), Local ≤ 7.0 s"),
    Target("celery", "sleep8", 7.0, "", "8×sleep(5), Celery ≤ 7.0 s"),
    Target("local", "airflow_pss", 0.55, "airflow_pss", "idle PSS of Airflow's processes, Local ≤ 0.55× standalone"),
    Target("celery", "airflow_pss", 0.7, "airflow_pss", "idle PSS of Airflow's processes, Celery ≤ 0.70× standalone"),
    Target("local", "stack_pss", 0.75, "airflow_pss", "Local idle PSS with PostgreSQL and Redis ≤ 0.75× standalone"),
    Target("local", "new_dag", 15.0, "", "new DAG file → triggerable ≤ 15 s"),
    Target("local", "setup_rerun", 3.0, "", "setup re-run ≤ 3 s"),
)
# on 2.11 the baseline is the SequentialExecutor on SQLite
TARGETS_211: tuple[Target, ...] = (
    Target("local", "sleep8", 0.12, "sleep8", "Local 8×sleep(5) ≤ 0.12× the 2.11 SequentialExecutor baseline"),
)


@dataclass
class Result:
    line: str
    repeats: int
    command: str
    machine: dict[str, str]
    versions: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[Any]] = field(default_factory=dict)  # scenario -> [bench.Sample]
    scale: dict[str, bench_scale.ScaleSample] = field(default_factory=dict)  # scenario -> its curves
    finished: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    def summary(self, scenario: str, metric: str) -> Summary:
        return Summary.of([getattr(s, metric) for s in self.samples.get(scenario, []) if not s.error])

    def targets(self) -> tuple[Target, ...]:
        wanted = TARGETS + (TARGETS_211 if self.line == "2.11" else ())
        return tuple(t for t in wanted if t.scenario in self.samples
                     and (not t.baseline_metric or "standalone" in self.samples))


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "MiB" or abs(value) >= 100 or (not unit and float(value).is_integer()):
        return f"{value:.0f}"
    return f"{value:.1f}"


def cell(summary: Summary, unit: str) -> str:
    if summary.n == 0:
        return "—"
    if summary.n == 1:
        return number(summary.median, unit)
    return f"{number(summary.median, unit)} ({number(summary.low, unit)}–{number(summary.high, unit)})"


def ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}×" if value < 0.1 else f"{value:.2f}×"  # (a new DAG: seconds against minutes)


def render_table(result: Result) -> str:
    """The figures: median (min–max) per scenario, and each stack's ratio to the baseline's median."""
    scenarios = list(result.samples)
    head = ["measure"]
    for name in scenarios:
        head.append(LABELS.get(name, name))
        if name != "standalone" and "standalone" in scenarios:
            head.append("× standalone")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, label, unit in METRICS:
        cells = [f"{label}{f' ({unit})' if unit else ''}"]
        base = result.summary("standalone", metric if metric != "stack_pss" else "airflow_pss")
        for name in scenarios:
            mine = result.summary(name, metric)
            cells.append(cell(mine, unit))
            if name != "standalone" and "standalone" in scenarios:
                cells.append(ratio(mine.ratio_to(base)) if metric not in ("postgres_pss", "redis_pss",
                                                                         "setup_rerun", "processes") else "")
        if any(c not in ("—", "") for c in cells[1:]):
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render_components(result: Result) -> str:
    """Median idle PSS of each component, per scenario."""
    names: list[str] = []
    for samples in result.samples.values():
        for sample in samples:
            names += [n for n in sample.components if n not in names]
    scenarios = list(result.samples)
    rows = ["| component | " + " | ".join(LABELS.get(s, s) for s in scenarios) + " |",
            "|---|" + "---|" * len(scenarios)]
    for name in names:
        cells = [cell(Summary.of([s.components.get(name) for s in result.samples[sc] if not s.error]), "MiB")
                 for sc in scenarios]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render_targets(result: Result) -> str:
    rows = ["| target | measured | met |", "|---|---|---|"]
    for target in result.targets():
        value = target.value(result)
        shown = ratio(value) if target.baseline_metric or value is None else f"{number(value)} s"
        met = "—" if value is None else ("yes" if value <= target.limit else "**no**")
        rows.append(f"| {target.text} | {shown} | {met} |")
    return "\n".join(rows)


def render_failures(result: Result) -> str:
    lines = [f"- {name} #{i + 1}: {s.error}" for name, samples in result.samples.items()
             for i, s in enumerate(samples) if s.error]
    return ("Failed measurements (left out of the figures):\n\n" + "\n".join(lines) + "\n\n") if lines else ""


def render_section(result: Result) -> str:
    m, v = result.machine, result.versions
    baseline = ("SequentialExecutor on SQLite" if result.line == "2.11" else "LocalExecutor on SQLite")
    return f"""## Airflow {result.line}

Run {result.finished}: `{result.command}`, {result.repeats} repeat(s), scenarios taking turns within
each repeat. Machine: {m.get('cores')} cores, {m.get('memory')}, {m.get('os')}, Python {m.get('python')}.
Airflow {v.get('airflow', '?')}, PostgreSQL {v.get('postgresql', '?')}, Redis {v.get('redis', '?')}.
Baseline: `airflow standalone` of the same Airflow ({baseline}, example DAGs off as in ours).
Figures are median (min–max); ratios are medians over the baseline's median.

{render_table(result)}

{render_failures(result)}Idle PSS per component (MiB, median; a component counts every process it started):

{render_components(result)}

Targets:

{render_targets(result)}
"""


def _markers(line: str, part: str = "") -> tuple[str, str]:
    name = f"{line} {part}".strip()
    return f"<!-- bench {name} begin (written by nox -s bench) -->", f"<!-- bench {name} end -->"


def scale_image(path: Path, line: str) -> Path:
    """Where the scale plot of ``line`` goes: docs/img/ beside the report."""
    return path.parent / "img" / f"scale-{line}.png"


HEADER = """# Benchmarks

`nox -s bench` brings up, in turn and in one run, `airflow standalone` (the baseline a user has today)
and our Local and Celery stacks, and measures each the same way (see tests/support/bench.py).
`nox -s bench -- --line 2.11` does the same for the 2.11 line, whose baseline is the
SequentialExecutor on SQLite. Each run rewrites its own line's section below.

"""


def _replace(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the markers replaced by ``body`` (added at the end the first time)."""
    section = f"{begin}\n{body}{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    return pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"


def write(path: Path, result: Result) -> list[Path]:
    """Replace (or add) this line's sections in ``path`` (the figures, the scale curves: each when this run
    measured it) and write the scale plot beside it; keep everything else in the file. The files written."""
    text = path.read_text() if path.exists() else HEADER
    written = [path]
    if result.samples:
        text = _replace(text, *_markers(result.line), render_section(result))
    if result.scale:
        image = scale_image(path, result.line)
        bench_scale.plot(result.scale, image, result.line)
        written.append(image)
        body = (f"Run {result.finished}: `{result.command}`, Airflow {result.versions.get('airflow', '?')}.\n\n"
                + bench_scale.render(result.scale, image.relative_to(path.parent).as_posix()))
        text = _replace(text, *_markers(result.line, "scale"), body)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return written
