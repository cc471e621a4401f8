"""Run by the Python of the stack's Airflow venv, never imported by the tooling: the few things only
Airflow's own code can answer (parse the project's DAGs, read and write connections, variables and
pools through its models, so passwords are encrypted with the stack's Fernet key exactly as Airflow
does). Standard library and Airflow only; both lines.

    python airflow_helper.py check-dags DAGS_FOLDER RESULT
    python airflow_helper.py apply-objects RESULT  < objects.json
    python airflow_helper.py export-objects RESULT
    python airflow_helper.py dags-test DAG_ID [airflow dags test's options]

RESULT is a JSON file written 0600 (an export holds passwords): Airflow may log to stdout, so stdout
is never parsed. dags-test is `airflow dags test` itself, its output on the terminal.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from typing import Any

FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def write_result(path: str, data: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)


def _dagbag_class() -> Any:
    try:  # 3.1 and later
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # 2.x
        from airflow.models.dagbag import DagBag
    return DagBag


def error_location(path: str, error: str) -> tuple[int | None, str]:
    """The line of ``path`` an import error points at (the deepest frame in that file) and its message
    (the last line of the traceback)."""
    line = None
    for match in FRAME.finditer(error):
        if os.path.realpath(match["file"]) == os.path.realpath(path):
            line = int(match["line"])
    if line is None:  # a SyntaxError raised by the import names only "line N"
        found = re.search(r"line (\d+)", error)
        line = int(found.group(1)) if found else None
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    return line, (lines[-1] if lines else "import failed")


def check_dags(folder: str) -> dict[str, Any]:
    dagbag = _dagbag_class()
    try:  # 2.x would add its example DAGs unless told; 3.x reads [core] load_examples only
        bag = dagbag(dag_folder=folder, include_examples=False)
    except TypeError:
        bag = dagbag(dag_folder=folder)
    errors = []
    for path, error in sorted(bag.import_errors.items()):
        path = os.path.join(folder, path)  # 3.x keys are relative to the folder; join keeps absolute ones
        line, message = error_location(path, str(error))
        errors.append({"file": path, "line": line, "message": message})
    return {"dags": sorted(bag.dag_ids), "errors": errors}


def _session() -> Any:
    from airflow.utils.session import create_session

    return create_session()


def _models() -> tuple[Any, Any, Any]:
    from airflow.models import Connection, Pool, Variable

    return Connection, Variable, Pool


def _same_extra(have: str | None, want: str | None) -> bool:
    if (have or "") == (want or ""):
        return True
    try:
        return json.loads(have or "null") == json.loads(want or "null")
    except ValueError:
        return False


CONN_FIELDS = ("conn_type", "host", "schema", "login", "password", "port")


def apply_objects(objects: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[str]]]:
    """Create what is missing, update what differs, leave the rest: names per outcome, never values."""
    connection_model, variable_model, pool_model = _models()
    report: dict[str, dict[str, list[str]]] = {
        kind: {"created": [], "updated": [], "unchanged": []} for kind in ("connections", "variables", "pools")}
    with _session() as session:
        for want in objects.get("connections", []):
            conn = session.query(connection_model).filter(connection_model.conn_id == want["conn_id"]).one_or_none()
            if conn is None:
                session.add(connection_model(conn_id=want["conn_id"], extra=want.get("extra"),
                                             **{f: want.get(f) for f in CONN_FIELDS}))
                outcome = "created"
            else:
                differs = [f for f in CONN_FIELDS if getattr(conn, f) != want.get(f)]
                if not _same_extra(conn.extra, want.get("extra")):
                    differs.append("extra")
                for name in differs:
                    setattr(conn, name, want.get(name))
                outcome = "updated" if differs else "unchanged"
            report["connections"][outcome].append(want["conn_id"])
        for want in objects.get("variables", []):
            var = session.query(variable_model).filter(variable_model.key == want["key"]).one_or_none()
            if var is None:
                session.add(variable_model(key=want["key"], val=want["value"]))
                outcome = "created"
            elif var.val != want["value"]:
                var.val = want["value"]
                outcome = "updated"
            else:
                outcome = "unchanged"
            report["variables"][outcome].append(want["key"])
        for want in objects.get("pools", []):
            pool = session.query(pool_model).filter(pool_model.pool == want["name"]).one_or_none()
            if pool is None:
                session.add(pool_model(pool=want["name"], slots=want["slots"], description=want["description"],
                                       include_deferred=False))
                outcome = "created"
            elif (pool.slots, pool.description or "") != (want["slots"], want["description"]):
                pool.slots, pool.description = want["slots"], want["description"]
                outcome = "updated"
            else:
                outcome = "unchanged"
            report["pools"][outcome].append(want["name"])
    return report


def export_objects() -> dict[str, list[dict[str, Any]]]:
    """Every connection, variable and pool, in airflow_settings.yaml's field names."""
    connection_model, variable_model, pool_model = _models()
    out: dict[str, list[dict[str, Any]]] = {"connections": [], "variables": [], "pools": []}
    with _session() as session:
        for conn in session.query(connection_model).order_by(connection_model.conn_id):
            extra: Any = conn.extra
            try:  # a JSON extra is exported as a mapping, as astro writes it
                extra = json.loads(extra) if extra else extra
            except ValueError:
                extra = conn.extra
            out["connections"].append({
                "conn_id": conn.conn_id, "conn_type": conn.conn_type, "conn_host": conn.host,
                "conn_schema": conn.schema, "conn_login": conn.login, "conn_password": conn.password,
                "conn_port": conn.port, "conn_extra": extra})
        for var in session.query(variable_model).order_by(variable_model.key):
            out["variables"].append({"variable_name": var.key, "variable_value": var.val})
        for pool in session.query(pool_model).order_by(pool_model.pool):
            out["pools"].append({"pool_name": pool.pool, "pool_slot": pool.slots,
                                 "pool_description": pool.description or ""})
    return out


def dags_test(args: list[str]) -> int:
    """`airflow dags test ARGS`, with the in-process execution API built once for the whole run, as 3.3 does
    (its ``in_process_api_server`` is cached): 3.0 and 3.1 build it again for every task, 1.5 s each here
    (measured: 31 s for a 13-task DAG on 3.1.8, of which 18 s rebuilding it). 2.x runs tasks otherwise."""
    try:
        from airflow.sdk.execution_time import supervisor
    except ImportError:
        supervisor = None
    build = getattr(supervisor, "in_process_api_server", None)
    if build is not None and not hasattr(build, "cache_info"):
        supervisor.in_process_api_server = functools.lru_cache(maxsize=1)(build)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", "dags", "test", *args]
    return airflow_main() or 0


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "dags-test":
        return dags_test(args)
    if command == "check-dags":
        folder, result = args
        write_result(result, check_dags(folder))
    elif command == "apply-objects":
        (result,) = args
        write_result(result, apply_objects(json.load(sys.stdin)))
    elif command == "export-objects":
        (result,) = args
        write_result(result, export_objects())
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
