"""`nox -s bench`: `airflow standalone` against our Local and Celery stacks, in one run, on one machine.

    python -m tests.support.bench [--line L] [--repeats 3] [--scenarios standalone,local,celery]
                                  [--measures core,scale]

For each scenario and repeat it measures: start command to healthy; trigger to success of a DAG of
8 parallel sleep(5) tasks and of one of 40 no-op tasks; idle memory as PSS (Airflow's processes,
each component, PostgreSQL and Redis apart); a new DAG file to triggerable through the API; and,
for our stacks, `invoke setup` with nothing to do. Scenarios take turns within each repeat, so noise
on the machine spreads over all of them. Then, once, the scale curves (bench_scale.py): a wide DAG and
many DAG files, for standalone, Local, and Celery with one and with two workers. Everything runs in
a sandbox (own state dir, ports, role and database) and everything it started is stopped at the end,
also on Ctrl-C or a failure.
The report goes into docs/benchmarks.md (bench_report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import redis

from airflow_stack.apache_airflow import install, profiles
from airflow_stack.netutil import wait_until
from airflow_stack.runtime import lifecycle, measure, registry, supervisor
from airflow_stack.services import redis_server
from airflow_stack.settings import PROJECT_DIR

from . import api_client, bench_report, bench_scale
from .sandbox import Sandbox, clean_environ, free_ports

DAGS = PROJECT_DIR / "tests" / "integration" / "dags"
DAG_FILES = ("parallel_sleep.py", "noop_forty.py")
SCENARIOS = ("standalone", "local", "celery")
MEASURES = ("core", "scale")
DEFAULT_OUTPUT = PROJECT_DIR / "docs" / "benchmarks.md"
# Airflow's default dag-processor refresh (300 s) is what standalone users live with: measure that
# once per run, not once per repeat
BASELINE_NEW_DAG_TIMEOUT = 330.0


@dataclass
class Sample:
    """One scenario, one repeat. Times in seconds, memory in MiB (PSS)."""

    healthy: float | None = None
    sleep8: float | None = None
    noop40: float | None = None
    new_dag: float | None = None
    setup_rerun: float | None = None
    airflow_pss: float | None = None
    postgres_pss: float | None = None
    redis_pss: float | None = None
    components: dict[str, float] = field(default_factory=dict)
    processes: int | None = None
    error: str = ""

    @property
    def stack_pss(self) -> float | None:
        if self.airflow_pss is None:
            return None
        return self.airflow_pss + (self.postgres_pss or 0) + (self.redis_pss or 0)


class Progress:
    def __init__(self) -> None:
        self.began = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:7.1f} s] {message}", flush=True)


class BenchError(Exception):
    """A scenario could not be measured; the run goes on with the others."""


# what ends one measurement (kept as its sample's error) rather than the whole run: an API server that
# stops answering under load is a finding about that scenario, not a reason to lose the others
MEASURE_ERRORS = (BenchError, AssertionError, OSError, ValueError, KeyError, httpx.HTTPError)

# ---- what is measured ----------------------------------------------------------------------------
def wait(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(interval)
    raise BenchError(f"{what} not within {timeout:.0f} s")


def dag_wall_time(api: api_client.AirflowAPI, dag_id: str, timeout: float = 600) -> float:
    """Trigger to success, polled every 0.2 s."""
    began = time.monotonic()
    run_id = api.trigger(dag_id)
    state = api.wait_for_run(dag_id, run_id, timeout=timeout, interval=0.2)
    if state != "success":
        raise BenchError(f"{dag_id} ended {state}")
    return time.monotonic() - began


def new_dag_latency(api: api_client.AirflowAPI, dags_folder: Path, dag_id: str, timeout: float) -> float:
    """A new DAG file written to the folder -> a trigger of it accepted by the API."""
    source = (DAGS / "noop_forty.py").read_text()
    path = dags_folder / f"{dag_id}.py"
    began = time.monotonic()
    path.write_text(source.replace("def noop_forty", f"def {dag_id}").replace("noop_forty()", f"{dag_id}()"))
    try:
        api.wait_for_dag(dag_id, timeout=timeout)
    except AssertionError:
        raise BenchError(f"a new DAG file was not triggerable within {timeout:.0f} s") from None
    api.trigger(dag_id)
    return time.monotonic() - began


# ---- the stacks ----------------------------------------------------------------------------------
class Target:
    name = ""
    new_dag_timeout = 60.0

    def start(self) -> float:
        raise NotImplementedError

    def api(self) -> api_client.AirflowAPI:
        raise NotImplementedError

    def memory(self, sample: Sample) -> None:
        raise NotImplementedError

    def parser_cpu(self) -> float:
        """CPU seconds spent so far by the component that parses DAG files, its finished children included."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Standalone(Target):
    """`airflow standalone` of the same Airflow, on SQLite, as a user runs it today (examples off, as
    in our stack; ports moved out of the way; the REST API's basic auth on where the line has it)."""

    name = "standalone"
    new_dag_timeout = BASELINE_NEW_DAG_TIMEOUT

    def __init__(self, sandbox: Sandbox, dags_folder: Path, extra_env: dict[str, str] | None = None) -> None:
        settings = sandbox.settings()
        self.line = settings.airflow_line
        self.profile = profiles.of(settings)
        self.home = sandbox.state_dir / "standalone"
        self.home.mkdir(exist_ok=True)
        self.log = sandbox.state_dir / "logs" / "standalone.log"
        self.airflow = str(install.airflow_bin(settings))
        api, worker_log, trigger_log, health = free_ports(4)
        self.url = f"http://127.0.0.1:{api}"
        env = clean_environ() | {
            "AIRFLOW_HOME": str(self.home),
            # standalone starts its components as `airflow ...` found on PATH
            "PATH": f"{Path(self.airflow).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(health),
        }
        env |= self.profile.web_listen_env("127.0.0.1", api, self.url)
        # gunicorn (where the line's web server is one) opens a control socket in ~/.gunicorn otherwise
        env["GUNICORN_CMD_ARGS"] = f"--control-socket {shlex.quote(str(self.home / 'gunicorn.ctl'))}"
        self.env = env | (extra_env or {})
        self.proc: subprocess.Popen | None = None

    def prepare(self) -> None:
        """Its SQLite schema, once and untimed: our stack's start does not include `db migrate` either."""
        subprocess.run([self.airflow, "db", "migrate"], env=self.env, check=True, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=600)

    def start(self) -> float:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with self.log.open("a") as out:
            self.proc = subprocess.Popen([self.airflow, "standalone"], env=self.env, stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait(lambda: self._alive() and api_client.all_healthy(self.url, self.line), 300, "airflow standalone healthy")
        return time.monotonic() - began

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"airflow standalone exited; see {self.log}")
        return True

    def api(self) -> api_client.AirflowAPI:
        return api_client.AirflowAPI(self.url, self.line, "admin", self.profile.standalone_password(self.home))

    def memory(self, sample: Sample) -> None:
        assert self.proc is not None
        pids = measure.group(self.proc.pid)
        sample.airflow_pss = measure.pss_mib(pids)
        sample.processes = len(pids)
        sample.components["standalone"] = measure.pss_mib([self.proc.pid])
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children():  # one per component it started
                name = subcommand(child.cmdline()) or "other (unnamed)"
                sample.components[name] = sample.components.get(name, 0.0) + measure.pss_mib(measure.tree(child.pid))

    def parser_cpu(self) -> float:
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children():
                if subcommand(child.cmdline()) == self.profile.dag_parser:
                    return measure.cpu_seconds(measure.tree(child.pid), reaped=True)
        raise BenchError(f"no {self.profile.dag_parser} process under airflow standalone")

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGINT)  # Ctrl-C, as a user stops it: it stops its components
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        if not wait_until(lambda: not measure.group(pgid), 15):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc = None


def subcommand(argv: list[str]) -> str:
    """``scheduler`` from ``python .../bin/airflow scheduler`` or ``airflow scheduler -- ...``; also from a
    title set with setproctitle (the API server's "airflow api_server -- host:... port:..."), which
    /proc shows as one string followed by empty arguments."""
    tokens = " ".join(argv).split()
    for i, token in enumerate(tokens[:-1]):
        if token.endswith("airflow"):
            return tokens[i + 1].replace("_", "-")
    return ""


class OurStack(Target):
    """Our stack in the sandbox, started and stopped with the project's own tasks; ``extra_workers``
    more Celery workers (``invoke run.worker``), and ``env`` on top of the sandbox's settings."""

    def __init__(self, sandbox: Sandbox, executor: str, name: str = "", extra_workers: int = 0,
                 env: dict[str, str] | None = None) -> None:
        self.sandbox = sandbox
        self.name = name or executor
        self.executor = executor
        self.extra_workers = extra_workers
        self.env = env or {}

    def start(self) -> float:
        began = time.monotonic()
        commands = [(f"run.{self.executor}",)]
        commands += [("run.worker", "--name", f"w{n}") for n in range(2, 2 + self.extra_workers)]
        for command in commands:
            proc = self.sandbox.inv(*command, env=self.env)
            if proc.returncode != 0:
                raise BenchError(f"invoke {' '.join(command)} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        settings = self.sandbox.settings()
        # counted until the API itself answers that every component is healthy (as for standalone),
        # not only until our task returned
        verify = api_client.verify_for(settings)
        wait(lambda: api_client.all_healthy(settings.api_url, settings.airflow_line, verify=verify), 60,
             f"the API reporting all healthy after invoke run.{self.executor}")
        return time.monotonic() - began

    def api(self) -> api_client.AirflowAPI:
        settings = self.sandbox.settings()
        return api_client.AirflowAPI(settings.api_url, settings.airflow_line, settings.admin_user,
                                     settings.admin_password, verify=api_client.verify_for(settings))

    def memory(self, sample: Sample) -> None:
        settings = self.sandbox.settings()
        everything: list[int] = []
        running = registry.running(settings)
        for name, proc in running.items():
            pids = measure.group(proc.pid)
            sample.components[name] = measure.pss_mib(pids)
            everything += pids
        # the resident launcher that supervises them holds the preloaded modules: its share counts too
        supervisors = {proc.supervisor for proc in running.values() if proc.supervisor}
        for pid in sorted(supervisors):
            sample.components.setdefault("supervisor", 0.0)
            sample.components["supervisor"] += measure.pss_mib([pid])
            everything.append(pid)
        sample.airflow_pss = measure.pss_mib(everything)
        sample.processes = len(everything)
        redis_proc = supervisor.running(settings, redis_server.NAME)
        sample.redis_pss = measure.pss_mib(measure.group(redis_proc.pid)) if redis_proc else None
        postmaster = measure.listener(settings.pg_port)
        sample.postgres_pss = measure.pss_mib(measure.tree(postmaster)) if postmaster else None

    def parser_cpu(self) -> float:
        settings = self.sandbox.settings()
        proc = supervisor.running(settings, profiles.of(settings).dag_parser)
        if proc is None:
            raise BenchError(f"our {profiles.of(settings).dag_parser} is not running")
        return measure.cpu_seconds(measure.group(proc.pid), reaped=True)

    def stop(self) -> None:
        lifecycle.stop(self.sandbox.settings(), timeout=20)  # Airflow only: Redis stays for the next start


# ---- one run -------------------------------------------------------------------------------------
def measure_once(target: Target, dags_folder: Path, repeat: int, settle: float, with_new_dag: bool,
                 progress: Progress) -> Sample:
    sample = Sample()
    with measuring(target, sample, f"{target.name} #{repeat}", progress):
        sample.healthy = target.start()
        progress(f"{target.name} #{repeat}: healthy in {sample.healthy:.1f} s; idle {settle:.0f} s before memory")
        time.sleep(settle)
        target.memory(sample)
        progress(f"{target.name} #{repeat}: idle PSS {sample.airflow_pss:.0f} MiB over {sample.processes} processes")
        with contextlib.closing(target.api()) as api:
            for dag_id in ("parallel_sleep", "noop_forty"):
                api.wait_for_dag(dag_id, timeout=120)
                api.unpause(dag_id)
            sample.sleep8 = dag_wall_time(api, "parallel_sleep")
            progress(f"{target.name} #{repeat}: 8 x sleep(5) in {sample.sleep8:.1f} s")
            sample.noop40 = dag_wall_time(api, "noop_forty")
            progress(f"{target.name} #{repeat}: 40 no-op tasks in {sample.noop40:.1f} s")
            if with_new_dag:
                dag_id = f"bench_new_{target.name}_{repeat}_{int(time.time())}"
                sample.new_dag = new_dag_latency(api, dags_folder, dag_id, target.new_dag_timeout)
                progress(f"{target.name} #{repeat}: new DAG file triggerable after {sample.new_dag:.1f} s")
    return sample


@contextlib.contextmanager
def measuring(target: Target, sample: Sample | bench_scale.ScaleSample, label: str,
              progress: Progress) -> Iterator[None]:
    """One measurement of a target: what fails is kept as the sample's error, and the target stops."""
    try:
        yield
    except MEASURE_ERRORS as exc:
        sample.error = first_line(exc)
        progress(f"{label}: FAILED: {sample.error}")
    finally:
        target.stop()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def measure_scale(target: Target, dags_folder: Path, progress: Progress) -> bench_scale.ScaleSample:
    """The scale curves of one scenario (bench_scale.py): the wide DAGs, then DAG files in steps."""
    sample = bench_scale.ScaleSample()
    prefix = f"bench_many_{target.name.replace('-', '_')}_{int(time.time())}_"
    try:
        with measuring(target, sample, f"{target.name} scale", progress):
            target.start()
            with contextlib.closing(target.api()) as api:
                for width in bench_scale.WIDTHS:
                    dag_id = bench_scale.wide_dag_id(width)
                    api.wait_for_dag(dag_id, timeout=300)
                    api.unpause(dag_id)
                    sample.wide[width] = dag_wall_time(api, dag_id, timeout=1800)
                    progress(f"{target.name} scale: {width} no-op tasks in {sample.wide[width]:.1f} s "
                             f"({sample.tasks_per_second(width):.1f} tasks/s)")
                written = 0
                for total in bench_scale.FILE_COUNTS:
                    sample.files.append(add_dag_files(target, api, dags_folder, prefix, written, total))
                    written = total
                    step = sample.files[-1]
                    progress(f"{target.name} scale: {step.added} more DAG files listed in {step.listed:.1f} s, "
                             f"{step.parse_ms_per_file:.0f} ms parser CPU per file; "
                             f"idle with {total}: {step.idle_cpu_pct:.0f}%")
    finally:
        for path in dags_folder.glob(f"{prefix}*.py"):
            path.unlink()
    return sample


def add_dag_files(target: Target, api: api_client.AirflowAPI, dags_folder: Path, prefix: str, written: int,
                  total: int) -> bench_scale.FilesStep:
    """Grow the folder to ``total`` small DAG files: time until listed, parser CPU, then idle CPU."""
    cpu_before = target.parser_cpu()
    began = time.monotonic()
    for i in range(written, total):
        (dags_folder / f"{prefix}{i}.py").write_text(bench_scale.small_dag_source(f"{prefix}{i}"))
    wait(lambda: api.dag_count(prefix) >= total, 900, f"{total} new DAG files listed", interval=0.5)
    listed = time.monotonic() - began
    parse_cpu = target.parser_cpu() - cpu_before
    idle_before = target.parser_cpu()
    time.sleep(bench_scale.IDLE_WINDOW)
    idle_pct = 100 * (target.parser_cpu() - idle_before) / bench_scale.IDLE_WINDOW
    return bench_scale.FilesStep(total, total - written, listed, parse_cpu, idle_pct)


def scale_targets(sandbox: Sandbox, dags_folder: Path, scenarios: list[str]) -> list[Target]:
    settings = sandbox.settings()
    found: list[Target] = []
    for name in scenarios:
        if name == "standalone":  # our folder refresh, so new files are parsed when ours would be
            found.append(Standalone(sandbox, dags_folder, profiles.of(settings).dag_refresh_env()))
        elif name == "celery-2w":  # two workers' slots: the scheduler's parallelism must allow them
            env = {"AIRFLOW__CORE__PARALLELISM": str(2 * settings.worker_concurrency)}
            found.append(OurStack(sandbox, "celery", name, extra_workers=1, env=env))
        else:
            found.append(OurStack(sandbox, name))
    return found


def versions(sandbox: Sandbox) -> dict[str, str]:
    settings = sandbox.settings()
    found = {"airflow": install.installed_version(settings) or "?",
             "python": platform.python_version()}
    with contextlib.suppress(psycopg.Error), psycopg.connect(**settings.pg_conninfo()) as conn:
        found["postgresql"] = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    with contextlib.suppress(redis.RedisError):
        found["redis"] = redis_server.client(settings).info("server")["redis_version"]
    return found


def machine() -> dict[str, str]:
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    return {"cores": str(os.cpu_count()), "memory": f"{psutil.virtual_memory().total / (1 << 30):.0f} GiB",
            "os": os_name, "python": platform.python_version()}


def run(args: argparse.Namespace, progress: Progress) -> bench_report.Result:
    profiles.get(args.line).check_python()
    base = Path(args.state_dir) if args.state_dir else Path(tempfile.mkdtemp(prefix="airflow-stack-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    dags_folder = base / "project" / "dags"
    dags_folder.mkdir(parents=True, exist_ok=True)
    for name in DAG_FILES:
        shutil.copy(DAGS / name, dags_folder / name)
    # no scheduled backup: the one the backups component takes right after `invoke up` would run inside the
    # measurements (~1 s of CPU on the test database)
    sandbox = Sandbox.create(base, args.line, "local", dags_folder.parent, f"ast_bench_{os.getpid()}",
                             {"STACK_BACKUP_EVERY": "off"})
    result = bench_report.Result(line=args.line, repeats=args.repeats, command=args.command, machine=machine())
    current: list[Target] = []
    try:
        progress(f"setting up the sandbox in {base} (PostgreSQL, Redis, Airflow {args.line}; untimed)")
        proc = sandbox.inv("setup")
        if proc.returncode != 0:
            raise BenchError(f"invoke setup failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        result.versions = versions(sandbox)
        targets: list[Target] = []
        for name in args.scenarios if "core" in args.measures else ():
            if name == "standalone":
                baseline = Standalone(sandbox, dags_folder)
                progress("migrating standalone's SQLite database (untimed)")
                baseline.prepare()
                targets.append(baseline)
            else:
                targets.append(OurStack(sandbox, name))
        for repeat in range(1, args.repeats + 1):
            began = time.monotonic()
            rerun = sandbox.inv("setup")
            setup_rerun = time.monotonic() - began if rerun.returncode == 0 else None
            progress(f"#{repeat}: invoke setup with nothing to do: {setup_rerun or float('nan'):.1f} s")
            for target in targets:
                current[:] = [target]
                with_new_dag = repeat == 1 or target.new_dag_timeout < BASELINE_NEW_DAG_TIMEOUT
                sample = measure_once(target, dags_folder, repeat, args.settle, with_new_dag, progress)
                if isinstance(target, OurStack):
                    sample.setup_rerun = setup_rerun
                result.samples.setdefault(target.name, []).append(sample)
                current.clear()
        if "scale" in args.measures:
            if "standalone" in args.scale_scenarios and not any(isinstance(t, Standalone) for t in targets):
                progress("migrating standalone's SQLite database (untimed)")
                Standalone(sandbox, dags_folder).prepare()
            for width in bench_scale.WIDTHS:
                (dags_folder / f"{bench_scale.wide_dag_id(width)}.py").write_text(bench_scale.wide_dag_source(width))
            for target in scale_targets(sandbox, dags_folder, args.scale_scenarios):
                current[:] = [target]
                result.scale[target.name] = measure_scale(target, dags_folder, progress)
                current.clear()
    finally:
        for target in current:
            with contextlib.suppress(Exception):
                target.stop()
        progress("stopping the sandbox and dropping its role and database")
        survivors = sandbox.teardown()
        if survivors:
            progress(f"killed {len(survivors)} leftover processes: {survivors}")
        for width in bench_scale.WIDTHS:
            (dags_folder / f"{bench_scale.wide_dag_id(width)}.py").unlink(missing_ok=True)
        if not args.state_dir and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nox -s bench --", description=__doc__.splitlines()[0])
    parser.add_argument("--line", choices=profiles.NAMES, default=profiles.DEFAULT,
                        help=f"Airflow line (default {profiles.DEFAULT})")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per scenario (default 3)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from: standalone,local,celery (default: all)")
    parser.add_argument("--measures", default="core,scale",
                        help="comma-separated, from: core (the targets' figures, repeated), scale (the curves, once)")
    parser.add_argument("--scale-scenarios", default=",".join(bench_scale.SCENARIOS),
                        help=f"scenarios of the scale curves (default {','.join(bench_scale.SCENARIOS)})")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of idle before memory is read")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="report file (default docs/benchmarks.md)")
    parser.add_argument("--state-dir", help="sandbox folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary sandbox folder (logs)")
    args = parser.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.measures = [s for s in args.measures.split(",") if s]
    args.scale_scenarios = [s for s in args.scale_scenarios.split(",") if s]
    for option, given, known in (("--scenarios", args.scenarios, SCENARIOS), ("--measures", args.measures, MEASURES),
                                 ("--scale-scenarios", args.scale_scenarios, bench_scale.SCENARIOS)):
        unknown = set(given) - set(known)
        if unknown or not given:
            parser.error(f"{option}: unknown {', '.join(sorted(unknown)) or '(none given)'}; use {','.join(known)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.command = "nox -s bench -- " + shlex.join(argv) if argv else "nox -s bench"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    progress = Progress()

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        result = run(args, progress)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    path = Path(args.output)
    written = bench_report.write(path, result)
    if result.samples:
        print(bench_report.render_table(result))
    progress(f"wrote {', '.join(map(str, written))}")
    failed = [f"{name} #{i + 1}" for name, samples in result.samples.items() for i, s in enumerate(samples) if s.error]
    failed += [f"{name} scale" for name, s in result.scale.items() if s.error]
    if failed:
        print(f"bench: some measurements failed ({', '.join(failed)}); see the progress lines", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
