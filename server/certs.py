"""`aidmp certs init DIR`: a small certificate authority for a lab or pilot federation.

It writes ca.crt (the CA certificate, given to every node), ca.key (kept by whoever
runs the CA, never sent), server.pem and server.key (the SuperLink's certificate and
key). The server certificate names every host the nodes will dial as a
subjectAltName: gRPC's TLS checks the name, not the common name. For production,
use your organisation's CA instead: give the SuperLink a certificate it issued (with
the same subjectAltNames) and the nodes its CA certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aidmp.atomic import atomic_write_bytes
from aidmp.errors import AidmpError

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aidmp federation"),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_certs(out: Path, hosts: list[str] | None = None, days: int = 365) -> list[Path]:
    """Make the CA and the server certificate for `hosts`; refuses to overwrite."""
    hosts = list(hosts or DEFAULT_HOSTS)
    out.mkdir(parents=True, exist_ok=True)
    existing = [n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY) if (out / n).exists()]
    if existing:
        raise AidmpError(
            f"{out} already holds {', '.join(existing)}; every node trusts that CA. Choose "
            "another folder, or remove them deliberately"
        )
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("aidmp federation CA"))
        .issuer_name(_name("aidmp federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),  # fmt: skip
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    written = []
    for name, data, private in (
        (CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM), False),
        (CA_KEY, _pem_key(ca_key), True),
        (SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM), False),
        (SERVER_KEY, _pem_key(server_key), True),
    ):
        atomic_write_bytes(out / name, data)
        os.chmod(out / name, 0o600 if private else 0o644)
        written.append(out / name)
    return written


def server_hosts(cert_file: Path) -> list[str]:
    """The subjectAltNames a server certificate answers to."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]
