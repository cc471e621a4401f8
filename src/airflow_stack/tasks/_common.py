"""What every task shares: settings (and the stack facade) from flags, one-line errors, numeric flags."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import psycopg
import redis
from invoke import Context

from .. import progress
from .. import settings as settings_mod
from ..errors import StackError
from ..progress import say
from ..settings import Settings
from ..stack import Stack


def load(**flags: Any) -> Settings:
    """The settings of this command, once: the task's flags over the environment over .env over defaults."""
    settings = settings_mod.load(overrides=flags)
    progress.configure(settings.progress)
    return settings


def stack(c: Context, **flags: Any) -> Stack:
    """The stack facade with this command's settings."""
    return Stack(c, load(**flags), say)


def timeout_help(what: str = "every component to be healthy", default: float = Stack.HEALTH_TIMEOUT) -> str:
    return f"seconds to wait for {what} (default {default:g})"


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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else exc.__class__.__name__
