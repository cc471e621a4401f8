"""The one door the tasks use: ``Stack(c, settings)``.

Settings are loaded once per command (by the task, with its flags) and handed in; a step that changes
them (a generated secret, a flag kept in .env) replaces ``self.settings``, so no step loads them again.
Each setup step returns what it changed and says it; what runs is read once per command; the rule for
keeping or switching the executor and line lives in ``_choose``; airflow.cfg is written at most once per
command. One operation at a time per state dir: every method that changes the stack holds its lock.
"""

from __future__ import annotations

from .base import StackBase
from .running import Running
from .setup import SetupSteps

__all__ = ["Stack", "StackBase"]


class Stack(SetupSteps, Running):
    """The facade: ``Stack(c, settings)``; the tasks call its methods (setup steps in setup.py, the rest in
    running.py, what they share in base.py)."""
