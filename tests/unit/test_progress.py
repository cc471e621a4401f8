"""Progress of long steps: timestamped heartbeat lines when not on a terminal, nothing when off."""

from __future__ import annotations

import re
import time

from airflow_stack import progress


def test_a_long_step_prints_a_timestamped_line_with_what_it_does_now(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_chosen", "plain")
    monkeypatch.setattr(progress, "HEARTBEAT", 0.3)
    with progress.step("installing apache-airflow[postgres]==3.3.2") as step:
        step.write("Resolved 264 packages in 1.21s\nPrepared 12 packages in 0.8s\n")
        time.sleep(1.0)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 2, lines  # one every HEARTBEAT seconds while it runs
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] installing apache-airflow\[postgres\]==3\.3\.2: \d+ s - "
                        r"Prepared 12 packages in 0\.8s", lines[0]), lines


def test_a_quick_step_prints_nothing(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_chosen", "plain")
    with progress.step("apt-get install redis-server"):
        pass
    assert capsys.readouterr() == ("", "")


def test_off_prints_nothing_however_long(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_chosen", "off")
    monkeypatch.setattr(progress, "HEARTBEAT", 0.1)
    with progress.step("airflow db migrate"):
        time.sleep(0.5)
    assert capsys.readouterr() == ("", "")


def test_the_detail_can_come_from_a_log_being_written(tmp_path, monkeypatch, capsys):
    log = tmp_path / "setup-airflow.log"
    log.write_text("INFO  [alembic] Context impl PostgresqlImpl.\nRunning upgrade 1a2b -> 3c4d, add dag bundles\n\n")
    monkeypatch.setattr(progress, "_chosen", "plain")
    monkeypatch.setattr(progress, "HEARTBEAT", 0.2)
    with progress.step("airflow db migrate", progress.last_line(log)):
        time.sleep(0.7)
    assert re.search(r"airflow db migrate: \d+ s - Running upgrade 1a2b -> 3c4d, add dag bundles$",
                     capsys.readouterr().out.splitlines()[0])


def test_a_log_lines_time_and_level_are_left_out_of_the_detail():
    step = progress.Step("airflow db migrate")
    step.note("2026-12-01T01:46:13.827787Z [info     ] Database migration done! [airflow.cli.commands.db_command]")
    assert step.now == "Database migration done! [airflow.cli.commands.db_command]"
    step.note("[2026-12-01T01:10:32.357+0000] {db.py:1674} INFO - Creating tables")
    assert step.now == "Creating tables"
    step.write("Resolved 178 packages in 759ms\n")
    assert step.now == "Resolved 178 packages in 759ms"
