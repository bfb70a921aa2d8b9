"""`vmmgr certs init`: a small CA with a server and a client certificate, for a lab.

Keys are ECDSA P-256, written with mode 0600; certificates are PEM. The server certificate
names localhost, 127.0.0.1 and ::1 plus every --name given (DNS names or IP addresses).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DAYS = 825
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmmgr lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def make_ca(common_name: str = "vmmgr lab CA", days: int = DEFAULT_DAYS) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(ca: Issued, common_name: str, *, server: bool, names: Sequence[str] = (),
          days: int = DEFAULT_DAYS) -> Issued:
    """A leaf certificate signed by ``ca``: server (TLS server auth, ``names`` as SANs) or
    client (TLS client auth; the common name is who the daemon logs and audits)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.key.public_key()), critical=False)
    )
    alt = list(dict.fromkeys([*names, *(LOCAL_NAMES if server else ())]))
    if alt:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_alt_name(n) for n in alt]), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to replace it)")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def write_pair(directory: Path, stem: str, issued: Issued, *, force: bool = False) -> None:
    """``stem``.pem (0644) and ``stem``-key.pem (0600) in ``directory``."""
    _write(directory / f"{stem}-key.pem", issued.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600, force)
    _write(directory / f"{stem}.pem", issued.cert.public_bytes(serialization.Encoding.PEM),
           0o644, force)


def load_ca(directory: Path) -> Issued:
    key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca-key.pem'} is not an EC key made by vmmgr certs")
    return Issued(key, x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()))


def init_lab(directory: Path, *, server_names: Sequence[str] = (),
             client_name: str = "vmmgr-admin", days: int = DEFAULT_DAYS,
             force: bool = False) -> list[Path]:
    """CA, server and client certificates in ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    if not force:
        for stem in ("ca", "server", "client"):
            for suffix in (".pem", "-key.pem"):
                if (directory / f"{stem}{suffix}").exists():
                    raise FileExistsError(
                        f"{directory / (stem + suffix)} exists (use --force to replace it)")
    ca = make_ca(days=days)
    server_cn = server_names[0] if server_names else "localhost"
    write_pair(directory, "ca", ca, force=force)
    write_pair(directory, "server", issue(ca, server_cn, server=True, names=server_names,
                                          days=days), force=force)
    write_pair(directory, "client", issue(ca, client_name, server=False, days=days),
               force=force)
    return [directory / f"{stem}{suffix}" for stem in ("ca", "server", "client")
            for suffix in (".pem", "-key.pem")]


def issue_client(directory: Path, name: str, *, days: int = DEFAULT_DAYS,
                 force: bool = False) -> list[Path]:
    """Another client certificate from the CA in ``directory``: ``name``.pem / -key.pem."""
    write_pair(directory, name, issue(load_ca(directory), name, server=False, days=days),
               force=force)
    return [directory / f"{name}.pem", directory / f"{name}-key.pem"]
