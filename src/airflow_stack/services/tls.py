"""The stack's own certificate authority, for workers on other machines (STACK_TLS).

One CA per stack (STATE/tls/ca.pem, its key beside it, 0600) signs one server certificate that our Redis,
PostgreSQL and the API server (webserver on 2.x) present; the API server presents it followed by the CA's
(server-chain.pem). It names every address and host name a client may use to reach this machine, so
clients verify it fully (Redis: hostname checked; libpq: sslmode=verify-full; HTTPS: the host of the URL).
A worker machine needs only ca.pem, which is not a secret. The server certificate is issued again (by the
same CA, so workers keep theirs; with the names it had, so that no server's copy loses one) when a name it
must cover is missing or its end is near; the CA itself is never replaced.

Made with ``cryptography`` (Airflow depends on it too), never by hand-written ASN.1 or a shelled-out openssl.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import StackError
from ..settings import Settings
from ..statedir import write_private

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity clients such as macOS accept for a server certificate
RENEW_BEFORE = dt.timedelta(days=30)
WILDCARDS = ("*", "0.0.0.0", "::", "::*")


@dataclass(frozen=True)
class Files:
    ca: Path
    ca_key: Path
    cert: Path
    key: Path
    chain: Path  # cert, then ca: what the API server presents (a client with only ca.pem verifies it)

    @classmethod
    def of(cls, settings: Settings) -> Files:
        paths = settings.paths
        return cls(paths.tls_ca, paths.tls_ca_key, paths.tls_server_cert, paths.tls_server_key, paths.tls_server_chain)


def server_names(settings: Settings, listen: str = "") -> list[str]:
    """What the server certificate must cover: loopback, this machine's names, the addresses Redis, PostgreSQL
    (``listen``: its listen_addresses) and the API server listen on, and STACK_TLS_NAMES."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()]
    names += [addr.removeprefix("-") for addr in settings.redis_bind.split()]
    names += [addr.strip() for addr in listen.split(",")]
    names += [name.strip() for name in settings.tls_names.split(",")]
    names += [host for host in (settings.redis_host, settings.api_host) if host not in WILDCARDS]
    seen: list[str] = []
    for name in names:
        if name and name not in WILDCARDS and name not in seen:
            seen.append(name)
    return seen


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _make_ca(files: Files, label: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"airflow-stack CA {label}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(files.ca_key, _key_pem(key))
    files.ca.write_text(cert.public_bytes(serialization.Encoding.PEM).decode())


def _make_server(files: Files, names: list[str]) -> None:
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName([_san(name) for name in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(files.key, _key_pem(key))
    files.cert.write_text(cert.public_bytes(serialization.Encoding.PEM).decode())


def names_in(cert_file: Path) -> list[str]:
    """The host names and addresses a certificate covers."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]


def covered(cert_file: Path, names: list[str]) -> list[str]:
    """The names of ``names`` the certificate in ``cert_file`` lacks."""
    have = set(names_in(cert_file))
    return [name for name in names if str(_normal(name)) not in have]


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def signed_by(cert_pem: bytes, ca_file: Path) -> bool:
    """Whether ``ca_file``'s CA signed the certificate (PEM) ``cert_pem``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_file.read_bytes()))
        return True
    except Exception:  # InvalidSignature, a certificate that is not PEM, an unreadable file
        return False


def ensure(settings: Settings, listen: str = "") -> list[str]:
    """The CA (made once) and a server certificate covering ``server_names``; what was made."""
    files = Files.of(settings)
    done = []
    files.ca.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not files.ca.exists() or not files.ca_key.exists():
        if files.ca.exists():
            raise StackError(f"{files.ca} is there but its key {files.ca_key} is not; a worker machine does not "
                             f"serve TLS: run this on the stack machine, or move {files.ca} away to make a new CA")
        _make_ca(files, settings.checkout_id or "")
        done.append(f"made the stack's CA: {files.ca} (copy it to each worker machine's state dir, tls/)")
    names = server_names(settings, listen)
    stale = not files.cert.exists() or not files.key.exists() or not signed_by(files.cert.read_bytes(), files.ca)
    if not stale:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        stale = bool(covered(files.cert, names)) or cert.not_valid_after_utc - _now() < RENEW_BEFORE
    if stale:
        if files.cert.exists() and signed_by(files.cert.read_bytes(), files.ca):  # keep what it covered
            wanted = {_normal(name) for name in names}
            names += [name for name in names_in(files.cert) if name not in wanted]
        _make_server(files, names)
        done.append(f"issued the server certificate for {', '.join(names)}")
    chain = files.cert.read_text() + files.ca.read_text()
    if not files.chain.exists() or files.chain.read_text() != chain:
        files.chain.write_text(chain)
    return done


def spki_pin(cert_file: Path) -> str:
    """base64 of the SHA-256 of a certificate's public key (SubjectPublicKeyInfo): the pin Chromium's
    --ignore-certificate-errors-spki-list takes, so that a test browser accepts that one key only."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return base64.b64encode(digest.finalize()).decode()


def reachability(settings: Settings, what: str, where: str) -> str:
    """What an opt-in made reachable from other machines, and how it travels."""
    if settings.tls:
        return (f"{what} is now reachable from {where}, over TLS only (clients verify the stack's CA; give "
                f"workers {settings.tls_ca_file} with .env)")
    return (f"{what} is now reachable from {where}, in plain text (passwords and data cross the network "
            f"readable): set STACK_TLS=true in .env and run invoke setup.redis && invoke setup.postgres")


def check_client(settings: Settings) -> None:
    """A client of our TLS services needs the CA: say where it goes when it is missing."""
    if settings.tls and not settings.tls_ca_file.exists():
        raise StackError(f"STACK_TLS is on but {settings.tls_ca_file} is missing; copy tls/ca.pem from the stack "
                         f"machine's state dir there")
