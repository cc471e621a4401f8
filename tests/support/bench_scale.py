"""The benchmark's scale section: how the cost grows with the work, per scenario.

Two curves:

- **a wide DAG**: one DAG of N independent no-op tasks (N in WIDTHS), trigger to success, as
  tasks per second;
- **many DAGs**: small DAG files written to the folder of a running, idle stack in steps up to
  FILE_COUNTS[-1]: the time until the API lists every one, the CPU the DAG parser spent on them (per
  file), and the parser's CPU afterwards while nothing else happens (Airflow parses every file again
  each ``min_file_process_interval``: that is what a user with many DAGs pays all day).

What is measured lives in bench.py (``measure_scale``); this module holds the DAG sources, the
figures and their table and plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from airflow_stack.apache_airflow.profiles import DAG_DIR_REFRESH_SECONDS

WIDTHS = (100, 200, 400)
FILE_COUNTS = (25, 50, 100)
IDLE_WINDOW = 30.0  # seconds: Airflow's min_file_process_interval, so every file is parsed once in it
SCENARIOS = ("standalone", "local", "celery", "celery-2w")

_IMPORTS = '''import datetime as dt

try:
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task
'''


def wide_dag_id(width: int) -> str:
    return f"bench_wide_{width}"


def wide_dag_source(width: int) -> str:
    """A DAG of ``width`` independent Python no-op tasks (not EmptyOperator, which never runs)."""
    dag_id = wide_dag_id(width)
    return f'''"""{width} independent no-op tasks: written by the benchmark (tests/support/bench_scale.py)."""
{_IMPORTS}

@dag(dag_id="{dag_id}", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False,
     max_active_tasks={width}, tags=["airflow-stack-bench"])
def wide():
    @task
    def noop(n: int) -> None:
        return None

    for i in range({width}):
        noop.override(task_id=f"noop_{{i}}")(i)


wide()
'''


def small_dag_source(dag_id: str) -> str:
    """A DAG file as most are: a handful of tasks in a chain."""
    return f'''"""A small DAG: written by the benchmark (tests/support/bench_scale.py)."""
{_IMPORTS}

@dag(dag_id="{dag_id}", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False,
     tags=["airflow-stack-bench"])
def small():
    @task
    def step(n: int) -> int:
        return n + 1

    step.override(task_id="c")(step.override(task_id="b")(step.override(task_id="a")(0)))


small()
'''


@dataclass
class FilesStep:
    """One step of the many-DAGs curve: ``added`` files written, ``total`` in the folder then."""

    total: int
    added: int
    listed: float  # seconds from writing them to the API listing all of them
    parse_cpu: float  # CPU seconds the DAG parser spent in that time
    idle_cpu_pct: float  # the parser's CPU afterwards, in % of one core, over IDLE_WINDOW

    @property
    def parse_ms_per_file(self) -> float:
        return 1000 * self.parse_cpu / self.added


@dataclass
class ScaleSample:
    wide: dict[int, float] = field(default_factory=dict)  # width -> seconds, trigger to success
    files: list[FilesStep] = field(default_factory=list)
    error: str = ""

    def tasks_per_second(self, width: int) -> float | None:
        seconds = self.wide.get(width)
        return width / seconds if seconds else None


LABELS = {"standalone": "`airflow standalone`", "local": "ours, Local", "celery": "ours, Celery (1 worker)",
          "celery-2w": "ours, Celery (2 workers)"}


def render(scale: dict[str, ScaleSample], image: str | None) -> str:
    """The two curves as tables (and the plot, when one was written)."""
    names = list(scale)
    head = "| " + " | ".join(LABELS.get(n, n) for n in names) + " |"
    rule = "|---|" + "---|" * len(names)
    wide = [f"| tasks in the DAG {head}", rule]
    for width in WIDTHS:
        cells = []
        for name in names:
            rate, seconds = scale[name].tasks_per_second(width), scale[name].wide.get(width)
            cells.append(f"{rate:.1f} tasks/s ({seconds:.0f} s)" if rate else "—")
        wide.append(f"| {width} | " + " | ".join(cells) + " |")
    files = [f"| DAG files {head}", rule]
    for total in FILE_COUNTS:
        cells = []
        for name in names:
            step = next((s for s in scale[name].files if s.total == total), None)
            cells.append(f"{step.listed:.0f} s, {step.parse_ms_per_file:.0f} ms CPU/file; idle {step.idle_cpu_pct:.0f}%"
                         if step else "—")
        files.append(f"| {total} | " + " | ".join(cells) + " |")
    failures = "".join(f"- {name}: {s.error}\n" for name, s in scale.items() if s.error)
    alt = "The scale curves: throughput against DAG width; parse cost against DAG files"
    plot = f"![{alt}]({image})\n\n" if image else ""
    return f"""### Scale

One repeat. A wide DAG (its own limit of active tasks lifted, so the executor's slots are what
bounds it), trigger → success, in tasks per second (and seconds):

{chr(10).join(wide)}

Many DAGs, written in steps to a running stack: seconds until the API lists every new file, the DAG
parser's CPU per new file in that time, and its CPU afterwards while idle (% of one core, over
{IDLE_WINDOW:.0f} s). Standalone runs here with our folder refresh ({DAG_DIR_REFRESH_SECONDS} s), so the figures
compare parsing, not the 5-minute wait for a new file that the table above shows.

{chr(10).join(files)}

{failures and "Failed (left out of the figures):" + chr(10) + chr(10) + failures + chr(10)}{plot}"""


def plot(scale: dict[str, ScaleSample], path: Path, line: str) -> None:
    """Throughput against width, parse CPU per file and idle parser CPU against the file count."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the bench writes a file
    import matplotlib.pyplot as plt

    fig, (rate, parse, idle) = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for name, sample in scale.items():
        widths = [w for w in WIDTHS if sample.tasks_per_second(w)]
        label = LABELS.get(name, name).replace("`", "")
        rate.plot(widths, [sample.tasks_per_second(w) for w in widths], marker="o", label=label)
        steps = sorted(sample.files, key=lambda s: s.total)
        parse.plot([s.total for s in steps], [s.parse_ms_per_file for s in steps], marker="o")
        idle.plot([s.total for s in steps], [s.idle_cpu_pct for s in steps], marker="o")
    rate.set(title="A wide DAG", xlabel="no-op tasks in one DAG", ylabel="tasks / s")
    parse.set(title="New DAG files", xlabel="DAG files in the folder", ylabel="parser CPU per new file (ms)")
    idle.set(title="Idle with N files", xlabel="DAG files in the folder", ylabel="parser CPU (% of a core)")
    for axis in (rate, parse, idle):
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=len(scale))
    fig.suptitle(f"Airflow {line}: cost as the work grows (nox -s bench)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
