"""``scripts/airflow ARGS``: the stack's own Airflow CLI, with the environment every process shares."""

from __future__ import annotations

import os
import sys

from . import settings
from .apache_airflow import config, install
from .errors import StackError
from .runtime import registry


def main(argv: list[str]) -> int:
    try:
        conf = settings.load()
        binary = install.airflow_bin(conf)
        if not binary.exists():
            raise StackError("Airflow is not installed; run: invoke setup.airflow")
        env = config.environment(conf, registry.executor(conf))
    except StackError as err:
        print(f"airflow-stack: {err}", file=sys.stderr)
        return err.code
    os.execve(binary, [str(binary), *argv], config.process_environment(conf, env))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
