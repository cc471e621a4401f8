"""Reading a systemd unit file back as systemd would (tests only): its WorkingDirectory, Environment and
ExecStart, unquoted and with the % specifiers and $$ of command lines undone. Written apart from the
code that writes units (ops/service_units.py), so that a quoting mistake there shows here."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceSection:
    workdir: Path
    environment: dict[str, str]
    exec_start: list[str]
    options: dict[str, list[str]]  # every key of [Service] -> its raw values, in order


def read(path: Path) -> ServiceSection:
    section, options = "", {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
    environment = {}
    for value in options.get("Environment", []):
        for word in shlex.split(value):
            key, _, val = word.replace("%%", "%").partition("=")
            environment[key] = val
    [exec_start] = options["ExecStart"]
    argv = [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(exec_start)]
    [workdir] = options["WorkingDirectory"]
    return ServiceSection(Path(workdir.replace("%%", "%")), environment, argv, options)
