"""What every task shares: settings from flags, one-line errors, quiet progress lines."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from .. import oplock
from .. import settings as settings_mod
from ..errors import StackError
from ..settings import Settings


def load(**flags: Any) -> Settings:
    return settings_mod.load(overrides=flags)


def number(value: Any, flag: str, default: Any, kind: type = float, example: Any = None) -> Any:
    """A numeric flag, converted here: flags declared with a number default are cast by invoke's
    parser, which answers `--timeout soon` with a traceback; these are declared as text instead."""
    if value is None:
        return default
    shown = example if example is not None else default
    hint = f"give e.g. {flag} {f'{shown:g}' if isinstance(shown, float) else shown}"
    try:
        result = kind(value)
    except (TypeError, ValueError):
        raise StackError(f"{flag} {value!r} is not a number; {hint}") from None
    if result <= 0:
        raise StackError(f"{flag} {value!r} must be above 0; {hint}")
    return result


def say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the service errors a task can meet into one actionable line, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StackError:
            raise
        except psycopg.Error as exc:
            raise StackError(f"PostgreSQL: {_first_line(exc)}; check the server (invoke setup.postgres)") from None
        except redis.RedisError as exc:
            raise StackError(f"Redis: {_first_line(exc)}; check our Redis (invoke setup.redis)") from None
        except KeyboardInterrupt:
            raise StackError("interrupted", code=130) from None

    return wrapper


def exclusive(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the task holding the state dir's operation lock (oplock.py): one operation at a time."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with oplock.exclusive(load(), what):
                return func(*args, **kwargs)

        return wrapper

    return decorate


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else exc.__class__.__name__


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.start
