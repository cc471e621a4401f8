"""The stacks on this machine, and what a checkout gets: its own role and database, its own ports.

Every stack that sets up (``invoke setup.postgres``, so every ``invoke up``) is kept in the user's
machine-wide folder (``stacks/CHECKOUT_ID.json`` in statedir.UserStateDir): its checkout, .env, state dir,
URL, database and ports. ``invoke stacks`` lists them; a checkout whose .env is gone (a deleted clone) is
left out, and its entry is removed at the next registration.

What a checkout gets is decided here, once (``claim``: before anything of the stack starts, under a
machine-wide lock so that two clones set up at once choose apart), and kept in its .env:
- names: the defaults, unless another living checkout has them (it marked that database on the server, or
  it is registered with it): then a role and database of its own, named after the checkout (``derived_name``);
- ports: each default, unless another stack claims it (a living registered stack's port; every default port
  when another checkout has the default names: they are its ports) or anything listens there: then the next
  one up that is free on the interfaces its component binds (``choose_ports``).
What the user set (environment or .env) is never changed; a stack that runs, or that was registered before,
keeps its ports.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import locks, netutil, statedir
from .. import settings as settings_mod
from ..components import REDIS, listen_hosts
from ..errors import StackError
from ..services import pg_database
from ..services.postgres import Admin
from ..settings import PROJECT_DIR, Settings
from . import registry, supervisor

NAMES = ("pg_database", "pg_user")
# every port a stack listens on, with what it is for (PostgreSQL's is the server's, shared)
PORTS = {"api_port": "API", "scheduler_health_port": "scheduler health", "worker_log_port": "task log server",
         "trigger_log_port": "trigger log server", "redis_port": "Redis", "flower_port": "Flower"}
MAX_IDENTIFIER = 63  # PostgreSQL keeps the first NAMEDATALEN-1 bytes of a name: two longer names could clash
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*\Z")


@dataclass(frozen=True)
class Entry:
    """One stack on this machine, as it was when it last set up."""

    checkout_id: str
    checkout: str  # the airflow-stack checkout its tasks run from
    env_file: str
    state_dir: str
    url: str
    line: str
    pg_host: str
    pg_port: int
    pg_database: str
    pg_user: str
    ports: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings) -> Entry:
        return cls(settings.checkout_id, str(PROJECT_DIR), str(settings.env_file), str(settings.state_dir),
                   settings.api_url, settings.airflow_line, settings.pg_host, settings.pg_port, settings.pg_database,
                   settings.pg_user, {name: getattr(settings, name) for name in PORTS})

    @property
    def alive(self) -> bool:
        """Its checkout still exists: its .env is there and names it."""
        return statedir.checkout_lives(Path(self.env_file), self.checkout_id)

    def running(self) -> list[str]:
        """Its Airflow components that run now (from the pid files and records in its state dir)."""
        try:
            return sorted(registry.running(Settings(state_dir=Path(self.state_dir), env_file=Path(self.env_file),
                                                    airflow_line=self.line)))
        except StackError:  # a line this release does not know
            return []


def entries(settings: Settings) -> list[Entry]:
    """Every registered stack (a file that is not one, half-written or from another version, is skipped)."""
    folder = settings.user_paths.stacks
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append(Entry(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return found


def register(settings: Settings) -> None:
    """Keep this stack's entry as it is now; remove those of checkouts that are gone."""
    paths = settings.user_paths
    try:
        paths.make_private()
        for entry in entries(settings):
            if entry.checkout_id != settings.checkout_id and not entry.alive:
                paths.stack_entry(entry.checkout_id).unlink(missing_ok=True)
        statedir.write_private(paths.stack_entry(settings.checkout_id),
                               json.dumps(asdict(Entry.of(settings)), indent=2))
    except OSError as exc:
        raise StackError(f"cannot keep the list of stacks in {paths.stacks} ({exc.strerror}); make it writable, or "
                         f"set STACK_USER_STATE_DIR to a folder of yours") from None


# ---- what a checkout gets ---------------------------------------------------------------------
def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def derived_name(base: str, folder: str, checkout_id: str) -> str:
    """A role and database name of the checkout's own: ``base`` (the default name), its folder's name and the
    start of its id, e.g. airflow_stack_2_3f9a1c for a clone in airflow-stack-2 (the folder's leading ``base``
    is not repeated). Lower-case ASCII letters, digits and _, starting with a letter or _, at most 63 bytes."""
    head = _slug(base) or "airflow"
    head = head if IDENTIFIER.match(head) else f"_{head}"  # a leading digit
    tail = _slug(checkout_id)[:6] or hashlib.sha256(checkout_id.encode()).hexdigest()[:6]
    middle = _slug(folder)
    if middle == head or middle.startswith(f"{head}_"):
        middle = middle[len(head):].lstrip("_")
    head = head[:MAX_IDENTIFIER - len(tail) - 1]
    middle = middle[:max(0, MAX_IDENTIFIER - len(head) - len(tail) - 2)].strip("_")
    return "_".join(part for part in (head, middle, tail) if part)


def choose_ports(defaults: dict[str, int], kept: dict[str, int], claimed: set[int],
                 free: Callable[[str, int], bool]) -> dict[str, int]:
    """A port for each setting of ``defaults`` that is not ``kept`` (set by the user): its default, else the
    next one up that is not ``claimed`` (by other stacks), kept, or chosen before it, and that is ``free``."""
    taken = set(claimed) | set(kept.values())
    chosen = {}
    for name, default in defaults.items():
        if name in kept:
            continue
        port = default
        while port in taken or not free(name, port):
            port += 1
            if port > 65535:
                raise StackError(f"no free port from {default} up for {settings_mod.specs()[name].env}; "
                                 f"set it to a free one in .env")
        taken.add(port)
        chosen[name] = port
    return chosen


def _defaults_owner(settings: Settings, admin: Admin | None, others: list[Entry], base: dict[str, Any]) -> str:
    """Where another living checkout that has the default role or database lives, or ""."""
    if admin is not None:
        where = pg_database.owned_elsewhere(admin, settings, base["pg_database"])
        if where:
            return where
    return next((other.checkout if other.env_file == str(Path(other.checkout) / ".env") else other.env_file
                 for other in others if (other.pg_host, other.pg_port) == (settings.pg_host, settings.pg_port)
                 and (other.pg_database == base["pg_database"] or other.pg_user == base["pg_user"])), "")


def _choose(settings: Settings, admin: Admin | None, others: list[Entry],
            free: Callable[[str, int], bool]) -> tuple[dict[str, Any], list[str]]:
    """What this checkout gets that it does not have yet, and a line saying each."""
    base = settings_mod.defaults(settings)
    given = settings_mod.given(settings, [*NAMES, *PORTS])
    owner = _defaults_owner(settings, admin, others, base)
    changes: dict[str, Any] = {}
    said = []
    if owner and admin is not None and not given & set(NAMES):  # without a superuser no role can be made
        name = derived_name(base["pg_database"], settings.env_file.parent.name, settings.checkout_id)
        changes |= {"pg_database": name, "pg_user": name}
        said.append(f"database {base['pg_database']} on {settings.pg_host}:{settings.pg_port} is another "
                    f"checkout's ({owner}): this one gets its own role and database, {name}")
    if not (registry.running(settings) or supervisor.running(settings, REDIS.name)):
        claimed = {port for other in others for port in other.ports.values()}
        claimed |= {base[name] for name in PORTS} if owner else set()
        chosen = choose_ports({name: base[name] for name in PORTS},
                              {name: getattr(settings, name) for name in PORTS if name in given}, claimed, free)
        moved = {name: port for name, port in chosen.items() if port != getattr(settings, name)}
        if moved:
            changes |= moved
            url = settings.replace(**moved).api_url
            said.append(f"ports {', '.join(str(getattr(settings, name)) for name in moved)} are another stack's or "
                        f"in use: this one takes {', '.join(f'{PORTS[name]} {port}' for name, port in moved.items())}"
                        f"; its UI: {url}/")
    if said:
        said[-1] += f" (kept in {settings.env_file.name})"
    return changes, said


def claim(settings: Settings, admin: Admin | None,
          free: Callable[[str, int], bool] | None = None) -> tuple[Settings, list[str]]:
    """This checkout's names and ports, decided once (at its first registration) and kept in .env; the stack
    registered. The settings with them, and a line for each choice made. ``free(setting, port)``: whether
    nothing holds that port where its component listens (default: asked of this machine)."""
    free = free or (lambda name, port: netutil.port_free(port, listen_hosts(settings, name)))
    with locks.machine_wide(settings, "checkouts", "choosing this checkout's names and ports"):
        known = entries(settings)
        said: list[str] = []
        if not any(entry.checkout_id == settings.checkout_id for entry in known):
            others = [entry for entry in known if entry.alive]
            changes, said = _choose(settings, admin, others, free)
            if changes:
                settings_mod.persist(settings, **changes)
                settings = settings.replace(**changes)
        register(settings)
    return settings, said


# ---- invoke stacks ---------------------------------------------------------------------------
def listing(settings: Settings) -> list[dict[str, Any]]:
    """The living stacks on this machine: checkout, .env, URL, database, which components run, whether it is
    the one of this checkout."""
    rows = []
    for entry in sorted(entries(settings), key=lambda entry: (entry.checkout, entry.env_file)):
        if entry.alive:
            rows.append({"checkout": entry.checkout, "env_file": entry.env_file, "url": entry.url,
                         "database": f"{entry.pg_database} on {entry.pg_host}:{entry.pg_port}",
                         "running": entry.running(), "this": entry.checkout_id == settings.checkout_id})
    return rows


def to_table(rows: list[dict[str, Any]]) -> str:
    lines = [("", "checkout", "URL", "database", "state")]
    for row in rows:
        where = row["checkout"]
        if row["env_file"] != str(Path(where) / ".env"):
            where += f" (.env: {row['env_file']})"
        state = f"running ({len(row['running'])} components)" if row["running"] else "stopped"
        lines.append(("*" if row["this"] else "", where, row["url"], row["database"], state))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join("  ".join([*(text.ljust(width) for text, width in zip(line, widths, strict=False)), line[4]])
                     .rstrip() for line in lines)
