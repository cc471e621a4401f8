"""The benchmark's report: the figures table, ratios, targets met or not, and a section rewritten in
place in docs/benchmarks.md while the rest of the file is kept."""

from __future__ import annotations

import ast

import pytest

from tests.support import bench, bench_report, bench_scale
from tests.support.bench import Sample


def result(line: str = "3.3") -> bench_report.Result:
    r = bench_report.Result(line=line, repeats=2, command="nox -s bench", machine={"cores": "2"},
                            versions={"airflow": "3.3.2"})
    r.samples["standalone"] = [Sample(healthy=16.0, sleep8=9.0, airflow_pss=1160.0, components={"scheduler": 300.0}),
                               Sample(healthy=18.0, sleep8=11.0, airflow_pss=1180.0)]
    r.samples["local"] = [Sample(healthy=8.0, sleep8=7.0, airflow_pss=700.0, postgres_pss=40.0, redis_pss=5.0,
                                 setup_rerun=0.8, components={"scheduler": 220.0}),
                          Sample(healthy=9.0, sleep8=8.0, airflow_pss=720.0, postgres_pss=42.0, redis_pss=5.0,
                                 setup_rerun=0.9),
                          Sample(error="invoke run.local failed")]
    return r


def test_the_table_gives_median_min_max_and_the_ratio_to_the_baseline():
    table = bench_report.render_table(result())
    healthy = next(row for row in table.splitlines() if row.startswith("| start command"))
    # standalone median 17 (16-18), ours 8.5 (8.0-9.0), 0.50x; the failed sample is left out
    assert "17.0 (16.0–18.0)" in healthy and "8.5 (8.0–9.0)" in healthy and "0.50×" in healthy
    whole = next(row for row in table.splitlines() if "whole stack" in row)
    assert "756 (745–767)" in whole  # Airflow + PostgreSQL + Redis, against standalone's Airflow alone


def test_targets_say_which_were_met():
    text = bench_report.render_targets(result())
    assert "| Local start → healthy ≤ 0.60× standalone | 0.50× | yes |" in text
    assert "| 8×sleep(5), Local ≤ 7.0 s | 7.5 s | **no** |" in text
    assert "| new DAG file → triggerable ≤ 15 s | — | — |" in text  # not measured: neither met nor missed
    r = result("2.11")
    assert "0.12× the 2.11 SequentialExecutor baseline | 0.75× | **no** |" in bench_report.render_targets(r)


def test_a_run_rewrites_its_own_section_and_keeps_the_rest(tmp_path):
    path = tmp_path / "benchmarks.md"
    bench_report.write(path, result("3.3"))
    bench_report.write(path, result("2.11"))
    path.write_text(path.read_text() + "\n## Tuning log\nkept by hand\n")
    newer = result("3.3")
    newer.samples["local"][0].healthy = 4.0
    bench_report.write(path, newer)
    text = path.read_text()
    assert text.count("## Airflow 3.3") == 1 and text.count("## Airflow 2.11") == 1
    assert "kept by hand" in text and "6.5 (4.0–9.0)" in text
    assert "Failed measurements" in text and "local #3: invoke run.local failed" in text


def test_component_names_from_standalone_children():
    assert bench.subcommand(["/v/bin/python", "/v/bin/airflow", "scheduler"]) == "scheduler"
    assert bench.subcommand(["airflow", "api_server", "--", "host:0.0.0.0"]) == "api-server"
    # setproctitle's title: one string, then empty arguments (what standalone's API server shows)
    assert bench.subcommand(["airflow api_server -- host:0.0.0.0 port:8080", "", ""]) == "api-server"
    assert bench.subcommand(["/usr/bin/python3", "-c", "from multiprocessing.spawn import spawn_main"]) == ""


def test_counts_are_whole_and_tiny_ratios_keep_their_digits():
    assert bench_report.number(40.0) == "40"
    assert bench_report.number(7.5) == "7.5"
    assert bench_report.number(12.0, "s") == "12.0"
    assert bench_report.ratio(1.3 / 268) == "0.005×"
    assert bench_report.ratio(0.61) == "0.61×"


def test_integration_sessions_are_dealt_longest_first_to_the_least_loaded_lane():
    from tests.support import lanes

    sessions = [("integration(local, 3.3)", 2), ("integration(celery, 3.3)", 1),
                ("integration(local, 2.11)", 2), ("integration(celery, 2.11)", 1)]
    assert lanes.deal(sessions, 2) == [["integration(local, 3.3)", "integration(celery, 3.3)"],
                                       ["integration(local, 2.11)", "integration(celery, 2.11)"]]
    assert lanes.deal(sessions, 1) == [[name for name, weight in sorted(sessions, key=lambda s: -s[1])]]
    assert len(lanes.deal(sessions[:1], 2)) == 1  # no empty lane


def test_the_lanes_deal_every_integration_and_release_session_nox_lists():
    from tests.support import lanes

    dealt = dict(lanes.integration_sessions())
    assert dealt["integration(local-machine)"] > dealt["integration(celery)"] > dealt["releases(3.1)"]
    assert dealt["integration(local-stack)"] > dealt["integration(celery)"]
    assert sorted(name for name in dealt if name.startswith("releases(")) == [
        "releases(2.10)", "releases(2.11)", "releases(3.0)", "releases(3.1)", "releases(3.2)"]


def test_a_lane_runs_every_session_dealt_to_it():
    """nox keeps only the last of several -s options: a lane must name all its sessions after one -s.
    Asked through nox itself: the sessions it would run for the lane's command line."""
    import subprocess

    from tests.support import lanes

    sessions = ["integration(local-machine)", "integration(celery)", "releases(3.1)"]
    argv = lanes.lane_command(sessions)
    listed = subprocess.run([*argv, "--list"], cwd=lanes.ROOT, capture_output=True, text=True, check=True).stdout
    selected = [line[2:].split(" -> ")[0].split(" [")[0] for line in listed.splitlines() if line.startswith("* ")]
    assert selected == sessions, listed


def scale_result() -> bench_report.Result:
    r = result()
    r.scale["standalone"] = bench_scale.ScaleSample(
        wide={100: 20.0, 200: 40.0, 400: 100.0},
        files=[bench_scale.FilesStep(25, 25, 10.0, 5.0, 12.0), bench_scale.FilesStep(50, 25, 11.0, 5.5, 25.0)])
    r.scale["celery-2w"] = bench_scale.ScaleSample(wide={100: 50.0}, error="invoke run.worker failed")
    return r


def test_the_scale_tables_give_throughput_and_parse_cost_per_file():
    text = bench_scale.render(scale_result().scale, "img/scale-3.3.png")
    assert "| 400 | 4.0 tasks/s (100 s) | — |" in text  # 400 tasks in 100 s; the failed scenario has none
    assert "| 100 | 5.0 tasks/s (20 s) | 2.0 tasks/s (50 s) |" in text
    # 5.5 CPU seconds for 25 new files: 220 ms each; 25% of a core idle with 50 files
    assert "| 50 | 11 s, 220 ms CPU/file; idle 25% | — |" in text
    assert "celery-2w: invoke run.worker failed" in text and "![" in text and "(img/scale-3.3.png)" in text


def test_a_scale_run_writes_its_own_section_and_plot_and_keeps_the_figures(tmp_path):
    path = tmp_path / "benchmarks.md"
    bench_report.write(path, result("3.3"))
    only_scale = scale_result()
    only_scale.samples.clear()  # a run of --measures scale: the figures section stays as it was
    written = bench_report.write(path, only_scale)
    image = tmp_path / "img" / "scale-3.3.png"
    assert written == [path, image]
    assert image.read_bytes().startswith(b"\x89PNG") and image.stat().st_size > 10_000
    text = path.read_text()
    assert "8.5 (8.0–9.0)" in text and text.count("### Scale") == 1 and "(img/scale-3.3.png)" in text
    bench_report.write(path, scale_result())
    assert path.read_text().count("### Scale") == 1


def test_the_bench_dags_are_valid_python_with_the_tasks_they_promise():
    source = bench_scale.wide_dag_source(400)
    assert any(isinstance(n, ast.Constant) and n.value == "bench_wide_400" for n in ast.walk(ast.parse(source)))
    assert "range(400)" in source and "max_active_tasks=400" in source
    ast.parse(bench_scale.small_dag_source("bench_many_local_1_0"))


def test_bench_options_are_checked():
    args = bench.parse_args(["--measures", "scale", "--scale-scenarios", "local,celery-2w"])
    assert args.measures == ["scale"] and args.scale_scenarios == ["local", "celery-2w"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--measures", "speed"])


def test_the_lanes_report_how_busy_the_cpus_were():
    from collections import namedtuple

    from tests.support import lanes

    times = namedtuple("times", "user system idle iowait")
    # 30 s busy of 40 s of CPU time, 5 s of it waiting for the disk (not busy)
    assert lanes.busy_share(times(100, 20, 500, 10), times(125, 25, 505, 15)) == pytest.approx(0.75)
    assert lanes.busy_share(times(1, 1, 1, 0), times(1, 1, 1, 0)) == 0.0  # no time passed
    assert lanes.busy_seconds(times(100, 20, 500, 10), times(125, 25, 505, 15)) == pytest.approx(30)


@pytest.mark.parametrize(("cmdline", "expected"), [
    ("airflow api_server -- host:127.0.0.1 port:20704", "Airflow API server / webserver"),
    ("[ready] gunicorn: worker [airflow-webserver]", "Airflow API server / webserver"),
    ("/tmp/pytest-of-root/pytest-5/stack state0/venv-airflow-3.3.2/bin/python /tmp/pytest-of-root/pytest-5/"
     "stack state0/venv-airflow-3.3.2/bin/airflow scheduler --skip-serve-logs", "Airflow scheduler"),
    ("/tmp/pytest-of-root/pytest-5/s/venv/bin/python /tmp/pytest-of-root/pytest-5/s/venv/bin/airflow db migrate",
     "airflow db migrate"),
    ("venv/bin/python -c import os, sys; from airflow.__main__ import main; sys.exit(main()) users create --role "
     "Admin", "airflow users create / reset-password"),
    ("venv/bin/python venv/bin/airflow dags test project_probe", "other airflow CLI commands"),
    ("/repo/.nox/integration-local-3-3/bin/python -m invoke stop -c scheduler", "the stack's invoke tasks"),
    ("[celeryd: celery@host:ForkPoolWorker-1]", "Celery workers and their tasks"),
    ("airflow worker -- LocalExecutor: <idle>", "Airflow task processes"),
    ("postgres: 15/main: ast_test_1 ast_test_1 127.0.0.1(5) idle", "PostgreSQL"),
    ("/repo/.nox/integration-local-3-3/bin/uv pip install --python /tmp/x/venv", "installs (uv, apt, dpkg)"),
    # the sessions name executors and the tests' Airflow runs in pytest's folders: neither misleads
    ("/repo/.nox/integration-local-3-3/bin/python /repo/.nox/integration-local-3-3/bin/pytest tests/integration "
     "-m integration and not celery --line 3.3", "pytest, nox (the tests themselves)"),
    ("/repo/.venv/bin/python -m nox -s integration(celery, 2.11) integration(local, 3.3)",
     "pytest, nox (the tests themselves)"),
    ("airflow scheduler - DagFileProcessor /tmp/pytest-of-root/pytest-5/p/dags/x.py", "Airflow DAG processor"),
    ("/tmp/pytest-of-root/pytest-5/s/venv/bin/python /tmp/pytest-of-root/pytest-5/s/venv/bin/airflow tasks list x",
     "other airflow CLI commands"),
    ("git clone -q /repo /tmp/pytest-of-root/pytest-5/clone", "other processes"),
    ("python -m tests.support.lanes", "scripts/test's lanes and this sampler"),
    ("/usr/bin/something-else", "other processes"),
])
def test_the_cpu_ledger_names_what_a_process_does(cmdline, expected):
    from tests.support import cpu_ledger

    assert cpu_ledger.kind(cmdline) == expected


def test_the_cpu_ledger_sums_what_each_kind_used_since_it_began():
    from tests.support import cpu_ledger

    ledger = cpu_ledger.Ledger()
    before, after = 1000.0, 2000.0
    ledger.add(10, before, "postgres: 15/main: checkpointer", 50.0, existing=True)  # only what it uses from now
    ledger.add(10, before, "postgres: 15/main: checkpointer", 52.5)
    ledger.add(20, after, "/venv/bin/python /src/airflow_stack/launcher.py run/launch-1.json", 0.4)
    ledger.add(20, after, "airflow api_server -- host:127.0.0.1 port:1", 7.0)  # forked, then renamed: its last name
    ledger.add(30, after, "", 1.0)  # a process whose command line could not be read yet keeps its kind
    ledger.add(30, after, "", 1.5)
    ledger.add(20, after + 5, "airflow api_server -- host:127.0.0.1 port:1", 3.0)  # a new process, the same pid
    assert ledger.by_kind() == {"PostgreSQL": 2.5, "Airflow API server / webserver": 10.0, "other processes": 1.5}

    lines = cpu_ledger.report(ledger.by_kind(), busy_seconds=20.0, cpus=2, top=2)
    assert lines[0] == "20 CPU seconds busy on 2 CPUs: at full use a floor of 0.2 min; by kind of process:"
    assert lines[1:] == ["     10 s  50%  Airflow API server / webserver", "      2 s  12%  PostgreSQL",
                         "      2 s   8%  1 more kinds", f"      6 s  30%  {cpu_ledger.UNSEEN}"]

    # a pid reused between two passes, seen with the old start time (psutil's cache): its CPU went back
    ledger.add(30, after, "redis-server 127.0.0.1:7000", 0.25)
    ledger.add(30, after, "redis-server 127.0.0.1:7000", 0.5)
    assert ledger.by_kind() == {"PostgreSQL": 2.5, "Airflow API server / webserver": 10.0, "other processes": 1.5,
                                "Redis, memcached": 0.5}


def test_the_cpu_sampler_sees_this_process_burn_cpu():
    import time

    from tests.support import cpu_ledger

    sampler = cpu_ledger.Sampler(interval=0.05).start()
    began = time.process_time()
    while time.process_time() - began < 0.3:
        pass
    assert sampler.stop()["pytest, nox (the tests themselves)"] >= 0.25


def test_the_cpu_ledger_counts_only_new_cpu_of_what_ran_before_its_first_sample():
    from collections import namedtuple
    from types import SimpleNamespace

    from tests.support import cpu_ledger

    times = namedtuple("times", "user system")

    def proc(pid, cmdline, cpu, created=1.0):
        return SimpleNamespace(pid=pid, info={"cmdline": cmdline.split(), "create_time": created,
                                              "cpu_times": times(cpu, 0.0)})

    ledger = cpu_ledger.Ledger()
    ledger.sample([proc(1, "redis-server 127.0.0.1:6380", 40.0)])  # the first pass: it ran before
    ledger.sample([proc(1, "redis-server 127.0.0.1:6380", 41.0), proc(2, "redis-server 127.0.0.1:7000", 3.0, 9.0),
                   SimpleNamespace(pid=3, info={"cmdline": None, "create_time": None, "cpu_times": None})])  # gone
    assert ledger.by_kind() == {"Redis, memcached": 4.0}
