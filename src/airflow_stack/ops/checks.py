"""The vocabulary of doctor's checks: each passes, warns or fails, with a detail line (never a secret) and,
unless it passes, the one command that fixes it."""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("pass", "warn", "fail")


@dataclass
class Check:
    name: str
    ok: bool  # False only for a failure: a warning keeps it True (and doctor's exit code 0)
    detail: str
    fix: str = ""
    level: str = ""  # pass, warn or fail; derived from ok unless given

    def __post_init__(self) -> None:
        if not self.ok:
            self.level = "fail"
        elif self.level not in LEVELS[:2]:
            self.level = "pass"


def warning(name: str, detail: str, fix: str) -> Check:
    return Check(name, True, detail, fix, level="warn")
