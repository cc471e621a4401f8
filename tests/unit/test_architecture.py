"""The layout keeps its promises: docs/architecture.md lists every module, the top level stays small,
no module grows past 400 lines or takes a standard library module's name, and /proc is read in one
Linux-only module."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "airflow_stack"
MODULES = sorted(path.relative_to(SRC) for path in SRC.rglob("*.py") if "__pycache__" not in path.parts)


def documented() -> set[Path]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- modules -->", 1)[1].split("<!-- /modules -->", 1)[0]
    found = set()
    for line in block.splitlines():
        folder = re.match(r"- `([\w/]+/)`:", line)
        for name in re.findall(r"`([\w.]+\.py)`", line):
            found.add(Path(folder.group(1) if folder else "") / name)
    return found


def test_the_architecture_page_lists_every_module_and_no_other():
    assert documented() == set(MODULES)


def test_at_most_eight_modules_are_loose_at_the_top():
    loose = [path for path in MODULES if len(path.parts) == 1]
    assert len(loose) <= 8, loose


def test_no_module_is_over_400_lines():
    long = {str(path): n for path in MODULES if (n := len((SRC / path).read_text().splitlines())) > 400}
    assert long == {}


def test_no_module_is_named_like_the_standard_library():
    shadowing = [str(path) for path in MODULES if path.stem in sys.stdlib_module_names]
    assert shadowing == []


def test_proc_is_read_in_one_linux_only_module():
    """macOS has no /proc: process groups, sessions and process lists go through psutil and os.killpg."""
    readers = [str(path) for path in MODULES if re.search(r"[\"'(]/proc\b|Path\(\"/proc\"\)", (SRC / path).read_text())]
    assert readers == ["runtime/measure.py"]
