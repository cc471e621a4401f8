"""Progress of the steps that take a while (package installs, the Airflow install, `db migrate`,
waiting for health), so a first `scripts/up` never looks hung.

On a terminal: one live line on stderr with a spinner, the elapsed time and what the step is doing
now (the last line of its output: "Resolved 264 packages", "Unpacking redis-server ..."). Elsewhere
(CI, a log file): a plain, timestamped line on stdout every 5 s while a step runs longer than that,
with the same detail. ``STACK_PROGRESS=off`` (or ``invoke up --quiet``) prints neither; the tasks set the
mode once per command from the settings (``configure``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_chosen = "auto"  # STACK_PROGRESS (a setting): auto, plain or off; the tasks set it once per command
# the time and level a log line starts with (3.x structlog, 2.x logging): the detail is the message
LOG_PREFIX = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+Z? \[ ?\w+ ?\] |\[[^]]+\] \{[^}]+\} \w+ - )")
HEARTBEAT = 5.0  # seconds between plain lines
SPIN = "|/-\\"


def say(*lines: str) -> None:
    """What a command says: each line on stdout, at once (the facade's and the tasks' one way to speak)."""
    for line in lines:
        print(line, flush=True)


def configure(chosen: str) -> None:
    """How progress shows for the rest of this command: "auto", "plain" or "off"."""
    global _chosen
    _chosen = chosen


def mode() -> str:
    if _chosen in ("off", "plain"):
        return _chosen
    return "live" if sys.stderr.isatty() and os.environ.get("TERM") != "dumb" else "plain"


class Step:
    """One running step: ``note(text)`` updates what it is doing now; a ticker thread prints."""

    def __init__(self, what: str, detail: Callable[[], str] | None = None) -> None:
        self.what = what
        self.began = time.monotonic()
        self.now = ""
        self._detail = detail  # a source polled for the current detail (e.g. a log's last line)
        self._done = threading.Event()
        self._mode = mode()
        self._thread: threading.Thread | None = None

    def note(self, text: str) -> None:
        text = LOG_PREFIX.sub("", " ".join(text.split()))
        if text:
            self.now = text[:100]

    def write(self, chunk: str) -> int:
        """A stream for invoke's out_stream/err_stream: each line of output becomes the detail."""
        for line in chunk.splitlines():
            self.note(line)
        return len(chunk)

    def flush(self) -> None:
        pass

    def _current(self) -> str:
        if self._detail is not None:
            with contextlib.suppress(Exception):
                self.note(self._detail())
        return self.now

    def _tick(self) -> None:
        spin = 0
        next_plain = self.began + HEARTBEAT
        while not self._done.wait(0.25 if self._mode == "live" else min(0.5, HEARTBEAT / 3)):
            elapsed = time.monotonic() - self.began
            detail = self._current()
            if self._mode == "live":
                line = f"{SPIN[spin % len(SPIN)]} {self.what} ({elapsed:.0f} s){': ' + detail if detail else ''}"
                sys.stderr.write("\r\033[K" + line[:max(20, _columns() - 1)])
                sys.stderr.flush()
                spin += 1
            elif time.monotonic() >= next_plain:
                next_plain += HEARTBEAT
                print(f"[{time.strftime('%H:%M:%S')}] {self.what}: {elapsed:.0f} s"
                      f"{' - ' + detail if detail else ''}", flush=True)

    def __enter__(self) -> Step:
        if self._mode != "off":
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            if self._mode == "live":
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        return 100


@contextlib.contextmanager
def step(what: str, detail: Callable[[], str] | None = None) -> Iterator[Step]:
    with Step(what, detail) as running:
        yield running


def tail(path: Path, lines: int = 15, missing: str = "(no log yet)") -> str:
    """The last non-empty lines of a log, for error messages and progress details."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return missing
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def last_line(path: Path) -> Callable[[], str]:
    """A detail source: the last non-empty line of a log file being written (e.g. `db migrate`'s)."""
    return lambda: tail(path, 1, missing="")
