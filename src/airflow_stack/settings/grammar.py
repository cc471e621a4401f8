"""The grammars of text settings that are more than a choice: what a value means, or why it is refused.

Each check is a ``Spec.parse``: it returns the value as it is used, or raises ValueError with what is
wrong and what to write instead (settings load turns that into one line naming the setting).
"""

from __future__ import annotations

import ipaddress
import re

# an interval setting: one or more NUMBER+UNIT (90s, 15m, 6h, 1d, 1h30m), or "off"
INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MIN_INTERVAL = 10.0  # seconds: a backup and its verification take a few seconds even on a small database


def parse_interval(text: str) -> float | None:
    """Seconds of an interval like ``90s``, ``6h``, ``1d`` or ``1h30m``; None for ``off``. ValueError says
    what is wrong and what to write instead."""
    value = text.strip().lower()
    if value == "off":
        return None
    if not re.fullmatch(r"(\d+(\.\d+)?[smhdw])+", value):
        raise ValueError("not an interval; write a number and a unit (s, m, h, d, w): 90s, 15m, 6h, 1d, or off")
    seconds = sum(float(number) * INTERVAL_UNITS[unit] for number, _, unit in
                  re.findall(r"(\d+(\.\d+)?)([smhdw])", value))
    if seconds < MIN_INTERVAL:
        raise ValueError(f"shorter than {MIN_INTERVAL:g} s; choose a longer interval, or off")
    return seconds


def interval(text: str) -> str:
    """An interval setting's check (Spec.parse): the text as used (lower case, trimmed), or ValueError."""
    parse_interval(text)
    return text.strip().lower()


def ip_networks(text: str) -> str:
    """A comma-separated list of IP addresses and networks, written the way uvicorn and ipaddress read them."""
    found = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            found.append(str(ipaddress.ip_network(part, strict=False) if "/" in part else ipaddress.ip_address(part)))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or network; name your proxies, "
                             f"e.g. STACK_TRUSTED_PROXIES=127.0.0.2,10.0.0.0/24") from None
    return ",".join(found)
