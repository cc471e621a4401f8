"""Who may connect to PostgreSQL from where (opt-in): listen addresses and pg_hba lines for Airflow's role
from other machines (scram, ``hostssl`` with STACK_TLS), and the server's TLS certificate from the
stack's CA."""

from __future__ import annotations

import ipaddress

from invoke import Context
from psycopg import sql

from .. import netutil
from ..errors import StackError
from ..settings import Settings
from . import postgres, tls
from .host import Platform
from .postgres import Admin


# ---- letting workers on other machines in (opt-in) -------------------------------------------
def hba_marker(settings: Settings) -> str:
    return f"# airflow-stack {settings.pg_database} {settings.pg_user}"


def _merge_addresses(current: str, wanted: str) -> str:
    have = [a.strip() for a in current.split(",") if a.strip()]
    if "*" in have:
        return current
    add = [a.strip() for a in wanted.split(",") if a.strip()]
    if "*" in add:
        return "*"
    return ",".join(have + [a for a in add if a not in have])


def _read_hba(admin: Admin) -> tuple[str, str]:
    """(path, text) of the server's pg_hba.conf, read through the server itself."""
    hba = admin.value(sql.SQL("SHOW hba_file"))
    return hba, admin.value(sql.SQL("SELECT pg_read_file({})").format(hba))


def _hba_line(settings: Settings, network: str, kind: str = "") -> str:
    # with STACK_TLS only TLS connections match (hostssl): a plain-text client from there finds no entry
    kind = kind or ("hostssl" if settings.tls else "host")
    return f"{kind} {settings.pg_database} {settings.pg_user} {network} scram-sha-256 {hba_marker(settings)}"


def allow_remote(c: Context, platform: Platform, admin: Admin, settings: Settings, listen: str | None,
                 allow_from: str | None) -> list[str]:
    """Let PostgreSQL listen on more addresses and admit the Airflow role from a network (scram)."""
    changes: list[str] = []
    if allow_from:
        try:
            network = ipaddress.ip_network(allow_from, strict=False)
        except ValueError:
            raise StackError(f"--allow-from {allow_from!r} is not a network; give e.g. 10.0.0.0/24 or "
                             f"192.168.1.7/32") from None
        hba, text = _read_hba(admin)
        line = _hba_line(settings, str(network))
        if line not in text.splitlines():
            platform.append_line(c, hba, line)
            admin.execute([sql.SQL("SELECT pg_reload_conf()")])
            changes.append(f"admitted {settings.pg_user} to {settings.pg_database} from {network} (pg_hba, scram)")
            changes.append(tls.reachability(settings, f"database {settings.pg_database} (role {settings.pg_user}, "
                                                  f"port {settings.pg_port})", str(network)))
    if listen:
        current = admin.value(sql.SQL("SHOW listen_addresses"))
        merged = _merge_addresses(current, listen)
        if merged != current:
            admin.execute([sql.SQL("ALTER SYSTEM SET listen_addresses = {}").format(merged)])
            platform.pg_restart(c, settings.pg_port, settings.pg_version)  # only a restart applies it
            if not netutil.wait_until(lambda: postgres.is_ready(c, platform, settings), postgres.READY_TIMEOUT):
                raise StackError(f"PostgreSQL did not come back within {postgres.READY_TIMEOUT:.0f} s after the "
                                 f"restart for listen_addresses; see its log")
            changes.append(f"PostgreSQL now listens on {merged} (restarted once to apply it)")
    return changes


# ---- how the stack's own role authenticates ----------------------------------------------------------
LOOPBACK_NETWORKS = ("127.0.0.1/32", "::1/128")


def ensure_auth(c: Context, platform: Platform, admin: Admin, settings: Settings) -> list[str]:
    """Before the role's first login: TLS with the stack's certificate (STACK_TLS), and scram on loopback where
    the server's initdb trusts every local user there (Homebrew)."""
    done = ensure_tls(c, platform, admin, settings) if settings.pg_tls_ours else []
    return done + (ensure_loopback_scram(c, platform, admin, settings) if platform.trusts_loopback else [])


def ensure_loopback_scram(c: Context, platform: Platform, admin: Admin, settings: Settings) -> list[str]:
    """The role authenticates with scram-sha-256 on 127.0.0.1 and ::1: Homebrew's initdb writes ``host all all
    127.0.0.1/32 trust`` (and ::1), and pg_hba.conf is first-match, so the stack's lines go above every rule
    (plain ``host``: TLS or not, a loopback client of the role must give the password). Idempotent."""
    hba, text = _read_hba(admin)
    lines = text.splitlines()
    ours = [_hba_line(settings, network, "host") for network in LOOPBACK_NETWORKS]
    rest = [line for line in lines if line not in ours]
    first_rule = next((i for i, line in enumerate(rest) if line.strip() and not line.lstrip().startswith("#")),
                      len(rest))
    wanted = rest[:first_rule] + ours + rest[first_rule:]
    if wanted == lines:
        return []
    platform.write_file(c, hba, "\n".join(wanted) + "\n")
    admin.execute([sql.SQL("SELECT pg_reload_conf()")])
    return [f"{settings.pg_user} must give its password (scram-sha-256) on 127.0.0.1 and ::1: pg_hba lines above "
            f"the server's trust rules"]


# ---- TLS (STACK_TLS) ----------------------------------------------------------------------------
# the server certificate and key the stack installs in the data directory (the server's own files)
TLS_CERT_NAME = "airflow-stack-server.crt"
TLS_KEY_NAME = "airflow-stack-server.key"
# Debian's default cluster serves TLS with the machine's self-signed snakeoil certificate: nobody can verify
# it, so replacing it with ours takes nothing from anyone
REPLACEABLE_CERTS = ("/etc/ssl/certs/ssl-cert-snakeoil.pem",)


def ensure_tls(c: Context, platform: Platform, admin: Admin, settings: Settings) -> list[str]:
    """Serve TLS with the stack's server certificate, and admit remote clients over TLS only."""
    done = tls.ensure(settings, admin.value(sql.SQL("SHOW listen_addresses")))
    data_dir = admin.value(sql.SQL("SHOW data_directory"))
    cert_path, key_path = f"{data_dir}/{TLS_CERT_NAME}", f"{data_dir}/{TLS_KEY_NAME}"
    current = admin.value(sql.SQL("SHOW ssl_cert_file"))
    current_abs = current if current.startswith("/") else f"{data_dir}/{current}"
    served = admin.value(sql.SQL("SELECT pg_read_file({}, 0, 65536, true)").format(current_abs)) \
        if admin.value(sql.SQL("SHOW ssl")) == "on" else ""
    files = tls.Files.of(settings)
    wanted = files.cert.read_text()
    foreign = served and current_abs not in REPLACEABLE_CERTS and not tls.signed_by(served.encode(), files.ca)
    if foreign:  # another stack's (or the admin's) certificate: taking it over would break their verified clients
        raise StackError(f"PostgreSQL on port {settings.pg_port} already serves TLS with {current_abs}, which "
                         f"the stack's CA did not sign; set STACK_PG_SSLROOTCERT to the CA that signed it")
    if served != wanted or current_abs != cert_path:
        platform.write_private_file(c, cert_path, wanted)
        platform.write_private_file(c, key_path, files.key.read_text())
        admin.execute([sql.SQL("ALTER SYSTEM SET ssl_cert_file = {}").format(cert_path),
                       sql.SQL("ALTER SYSTEM SET ssl_key_file = {}").format(key_path),
                       sql.SQL("ALTER SYSTEM SET ssl = on"), sql.SQL("SELECT pg_reload_conf()")])
        done.append(f"PostgreSQL serves TLS with the stack's certificate ({cert_path})")
    # pg_hba lines from an opt-in made before STACK_TLS: TLS only from now on
    hba, text = _read_hba(admin)
    lines = text.splitlines()
    secured = [("hostssl " + line.removeprefix("host ")) if line.endswith(hba_marker(settings))
               and line.startswith("host ") and line.split()[3] not in LOOPBACK_NETWORKS else line for line in lines]
    if secured != lines:
        platform.write_file(c, hba, "\n".join(secured) + "\n")
        admin.execute([sql.SQL("SELECT pg_reload_conf()")])
        done.append(f"admits {settings.pg_user} from other machines over TLS only (pg_hba hostssl)")
    return done


def forget_remote(c: Context, platform: Platform, admin: Admin, settings: Settings) -> bool:
    """Remove the pg_hba lines allow_remote added for this role and database."""
    hba, text = _read_hba(admin)
    kept = [line for line in text.splitlines() if not line.endswith(hba_marker(settings))]
    if len(kept) == len(text.splitlines()):
        return False
    platform.write_file(c, hba, "\n".join(kept) + "\n")
    admin.execute([sql.SQL("SELECT pg_reload_conf()")])
    return True
