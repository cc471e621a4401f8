"""Backups: pg_dump custom format, restore refused while Airflow runs, and clean's confirmation."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from .test_bad_input import assert_one_line_error, env_digest

pytestmark = [pytest.mark.integration, pytest.mark.once_per_line]


def variable(stack, key: str) -> str:
    return stack.inv("airflow", "--args", f"variables get {key}").stdout.strip().splitlines()[-1]


def test_backup_and_restore_round_trip(stack, airflow_up):
    stack.inv("airflow", "--args", "variables set stack_test_kept before")
    out = stack.inv("db.backup").stdout
    path = Path(re.search(r"written to (\S+) \(", out).group(1))
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    stack.inv("airflow", "--args", "variables set stack_test_kept after")
    assert_one_line_error(stack.inv("db.restore", str(path), "--yes", check=False), "stop it first")
    stack.inv("stop")
    assert_one_line_error(stack.inv("db.restore", str(path), check=False), "--yes")
    assert "restored" in stack.inv("db.restore", str(path), "--yes").stdout
    stack.inv("up")
    assert variable(stack, "stack_test_kept") == "before"


def test_restore_refuses_what_is_not_a_backup(stack, airflow_up, tmp_path):
    junk = tmp_path / "junk.dump"
    junk.write_text("SELECT 1;\n")
    assert_one_line_error(stack.inv("db.restore", str(junk), "--yes", check=False), "not a pg_dump")
    assert_one_line_error(stack.inv("db.restore", str(tmp_path / "none.dump"), "--yes", check=False),
                          "no backup at")


def test_clean_refuses_while_running_and_without_yes_when_nobody_can_confirm(stack, airflow_up, tmp_path):
    before = env_digest(stack)
    assert_one_line_error(stack.inv("clean", "--yes", check=False), "stop it first")
    (tmp_path / "logs").mkdir()
    assert_one_line_error(stack.inv("clean", check=False, env={"STACK_STATE_DIR": str(tmp_path)}), "--yes")
    assert (tmp_path / "logs").exists()
    assert env_digest(stack) == before and stack.settings().airflow_home.exists()
