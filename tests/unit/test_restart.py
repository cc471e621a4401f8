"""`invoke restart`: what runs is stopped and started again with the same choices (executor, line, Flower,
extra workers with their queues); what does not run is refused in one line before anything stops."""

from __future__ import annotations

import pytest
from invoke import Context

from airflow_stack.apache_airflow import profiles
from airflow_stack.components import FLOWER, REDIS
from airflow_stack.errors import StackError
from airflow_stack.runtime import lifecycle, registry, supervisor
from airflow_stack.stack import Stack

W2_ARGV = ("/venv/bin/airflow", "celery", "worker", "--queues", "gpu,default", "--concurrency", "3",
           "--celery-hostname", "w2@%h")
REDIS_ARGV = ("/usr/bin/redis-server", "/state/redis/redis.conf")


@pytest.fixture
def celery_stack(settings, monkeypatch):
    """A Celery stack that runs (as the registry reads it): Redis, the 3.3 components, Flower, worker-w2.
    Stops, launches and health waits are recorded instead of done."""
    running = {name: supervisor.Running(100 + i, 1.0, argv) for i, (name, argv) in enumerate([
        ("redis", REDIS_ARGV), ("api-server", ()), ("scheduler", ()), ("dag-processor", ()), ("triggerer", ()),
        ("worker", ()), ("flower", ()), ("worker-w2", W2_ARGV)])}
    settings.paths.make_private()
    settings.paths.pid_file("worker-w2").write_text("107\n")  # the registry knows extra workers by their pid file
    registry.record(settings, "celery", "3.3.2")
    done: dict[str, list] = {"stopped": [], "services": [], "launched": [], "waited": [], "checked": []}
    monkeypatch.setattr(supervisor, "running", lambda s, name: running.get(name))
    monkeypatch.setattr(lifecycle.preflight, "check_start", lambda s: done["checked"].append("start"))
    monkeypatch.setattr(lifecycle.preflight, "check_ports", lambda s, comps, executor: done["checked"].append(
        (executor, [comp.name for comp in comps])))

    def stop(s, names, timeout=None):
        done["stopped"].extend(names)
        return [f"{name}: stopped" for name in names]

    monkeypatch.setattr(lifecycle, "stop", stop)
    monkeypatch.setattr(lifecycle.supervisor, "start_many", lambda c, s, launches, env: done["services"].extend(
        (launch.name, tuple(launch.argv)) for launch in launches))
    monkeypatch.setattr(lifecycle, "launch_airflow", lambda c, s, launches, env: done["launched"].append(
        ({launch.name: tuple(launch.argv) for launch in launches}, env)))
    monkeypatch.setattr(lifecycle, "wait_healthy", lambda s, wanted, timeout: done["waited"].extend(
        name for name, _ in wanted))
    monkeypatch.setattr(lifecycle, "wait_workers_reconnected", lambda s: ["Celery workers reconnected"])
    monkeypatch.setattr(lifecycle.install, "airflow_bin", lambda s: "/venv/bin/airflow")
    monkeypatch.setattr(lifecycle.install, "installed_version", lambda s: "3.3.2")
    monkeypatch.setattr(lifecycle.install, "installed_build", lambda s: "b1")
    return running, done


def test_restart_starts_again_what_ran_with_the_same_choices(settings, celery_stack):
    _, done = celery_stack
    said = lifecycle.restart(Context(), settings, "celery", {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})
    assert done["checked"][0] == "start"  # before anything stops
    assert set(done["stopped"]) == {"redis", "api-server", "scheduler", "dag-processor", "triggerer", "worker",
                                    "flower", "worker-w2"}
    assert done["services"] == [("redis", REDIS_ARGV)]  # our Redis with the argv it ran with
    shared, flower = done["launched"]
    # the line's components with their command for this executor; the extra worker with its queues and slots
    assert shared[0]["worker-w2"] == W2_ARGV
    assert shared[0]["worker"][1:3] == ("celery", "worker") and set(shared[0]) == {
        "api-server", "scheduler", "dag-processor", "triggerer", "worker", "worker-w2"}
    assert list(flower[0]) == ["flower"] and "AIRFLOW__CELERY__FLOWER_BASIC_AUTH" in flower[1]  # its own launcher
    assert "AIRFLOW__CELERY__FLOWER_BASIC_AUTH" not in shared[1]
    assert registry.recorded(settings) == {"executor": "celery", "line": "3.3", "release": "3.3.2"}
    assert done["checked"][1] == ("celery", ["api-server", "scheduler", "dag-processor", "triggerer", "worker",
                                             "flower"])
    assert set(done["waited"]) == set(done["stopped"])
    assert said[-1].startswith("started redis, api-server, scheduler, dag-processor, triggerer, worker, flower, "
                               "worker-w2 again; all healthy in")


def test_restart_of_one_component_touches_only_it(settings, celery_stack):
    _, done = celery_stack
    lifecycle.restart(Context(), settings, "celery", {}, ["scheduler"])
    assert done["stopped"] == ["scheduler"] and done["services"] == []
    assert [list(launched) for launched, _ in done["launched"]] == [["scheduler"]]


def test_restart_of_redis_waits_for_the_workers_that_kept_running(settings, celery_stack):
    _, done = celery_stack
    said = lifecycle.restart(Context(), settings, "celery", {}, [REDIS.name])
    assert done["stopped"] == ["redis"] and done["launched"] == [] and "Celery workers reconnected" in said


def test_a_component_that_does_not_run_is_one_line_and_nothing_stops(settings, celery_stack):
    running, done = celery_stack
    del running["flower"]
    with pytest.raises(StackError, match=r"^flower is not running; start it: invoke run\.celery --flower$"):
        lifecycle.restart(Context(), settings, "celery", {}, [FLOWER.name])
    with pytest.raises(StackError, match=r"^flower is not running; the local executor does not run it$"):
        lifecycle.restart(Context(), settings, "local", {}, [FLOWER.name])
    del running["scheduler"], running["worker-w2"]
    with pytest.raises(StackError, match=r"^scheduler is not running; start it: invoke up$"):
        lifecycle.restart(Context(), settings, "celery", {}, ["scheduler"])
    with pytest.raises(StackError, match=r"^worker-w2 is not running; start it: invoke run\.worker --name w2 "):
        lifecycle.restart(Context(), settings, "celery", {}, ["worker-w2"])
    with pytest.raises(StackError, match=r"no component 'nope' in this stack"):
        lifecycle.restart(Context(), settings, "celery", {}, ["nope"])
    running.clear()
    with pytest.raises(StackError, match=r"^nothing of this stack runs; start it: invoke up$"):
        lifecycle.restart(Context(), settings, "celery", {})
    assert done["stopped"] == [] and done["launched"] == []


def test_the_facade_restarts_with_the_executor_and_line_that_run(settings, celery_stack, monkeypatch):
    """The settings say local and 2.11; the running stack is Celery on 3.3.2: that is what comes back (a restart
    changes nothing; `invoke up` goes to what the settings say)."""
    seen = {}
    monkeypatch.setattr(lifecycle, "restart", lambda c, s, executor, env, names, timeout, stop_timeout: seen.update(
        executor=executor, release=profiles.release(s), env=env["AIRFLOW__CORE__EXECUTOR"], names=names) or ["done"])
    said = []
    Stack(Context(), settings.replace(executor="local", airflow_line="2.11"), lambda *lines: said.extend(lines)
          ).restart("worker-w2")
    assert seen == {"executor": "celery", "release": "3.3.2", "env": "CeleryExecutor", "names": ["worker-w2"]}
    assert said == ["restart: done"]
