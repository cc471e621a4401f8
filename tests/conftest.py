"""Options every test session shares: which Airflow line and executor the integration stack runs.

``pytest --line 2.11 --executor celery`` (nox passes them); without them, STACK_TEST_AIRFLOW_LINE /
STACK_TEST_EXECUTOR, else the default line and the LocalExecutor. ``--platform darwin``: the unit tests run
with macOS's paths forced (the `darwin` session).
"""

from __future__ import annotations

import os

from airflow_stack.apache_airflow import profiles
from airflow_stack.settings import EXECUTORS

LINE_VAR = "STACK_TEST_AIRFLOW_LINE"
EXECUTOR_VAR = "STACK_TEST_EXECUTOR"


def pytest_addoption(parser):
    group = parser.getgroup("airflow-stack")
    group.addoption("--line", choices=profiles.NAMES, default=None,
                    help=f"Airflow line the integration stack runs (default: ${LINE_VAR} or {profiles.DEFAULT})")
    group.addoption("--executor", choices=EXECUTORS, default=None,
                    help=f"executor the integration stack runs (default: ${EXECUTOR_VAR} or local)")
    group.addoption("--platform", choices=("native", "darwin"), default="native",
                    help="darwin: the unit tests run as on macOS (sys.platform, Homebrew, no /proc; "
                         "tests/support/darwin.py), the `darwin` nox session")


def pytest_configure(config):
    # test modules read these when collected (after this hook), as do the tasks they start
    for option, var in (("--line", LINE_VAR), ("--executor", EXECUTOR_VAR)):
        if config.getoption(option):
            os.environ[var] = config.getoption(option)


def pytest_ignore_collect(collection_path, config):
    # what only the forcing can check is not collected without it (a skip in every plain unit run says nothing)
    if collection_path.name == "test_darwin.py" and config.getoption("--platform") != "darwin":
        return True
    return None


def pytest_report_header(config):
    return (f"airflow-stack: line {os.environ.get(LINE_VAR, profiles.DEFAULT)}, "
            f"executor {os.environ.get(EXECUTOR_VAR, 'local')}")
