"""Test PKI: a throwaway certificate authority that issues mutual-TLS leaf certificates.

Everything here is for tests and demos only. Keys are RSA 2048 because a Diego BBS restricts
TLS 1.2 to ECDHE-RSA-AES-GCM cipher suites; signatures use SHA-256. Certificates are valid from
one day in the past (tolerating clock skew) to two years ahead, and are written as PEM files.

    ca = make_ca(tmp_path, "test-ca")
    server = ca.issue("bbs", tmp_path, dns_names=["bbs.service.cf.internal"], ip_addresses=["127.0.0.1"])
    client = ca.issue("copilot", tmp_path, server=False)
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "CertPair", "make_ca"]

_KEY_SIZE = 2048
_NOT_BEFORE = datetime.timedelta(days=1)
_NOT_AFTER = datetime.timedelta(days=730)


@dataclass
class CertPair:
    """A PEM certificate and its unencrypted PEM private key on disk."""

    cert_path: Path
    key_path: Path


@dataclass
class CA:
    """A self-signed certificate authority stored as PEM files; it signs leaf certificates."""

    cert_path: Path
    key_path: Path

    def issue(
        self,
        name: str,
        out_dir: Path,
        *,
        dns_names: list[str] | None = None,
        ip_addresses: list[str] | None = None,
        client: bool = True,
        server: bool = True,
    ) -> CertPair:
        """Issue a leaf certificate for `name`, written to `out_dir/<name>.crt` and `.key`.

        `name` becomes the subject common name. `dns_names` and `ip_addresses` become the
        SubjectAlternativeName (a server certificate with neither gets `name` as its DNS SAN so
        that hostname verification has something to match). `client` and `server` select the
        clientAuth and serverAuth extended key usages; at least one must be set.
        """
        if not (client or server):
            raise ValueError("a certificate needs at least one of client or server usage")
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(ca_key, rsa.RSAPrivateKey):
            raise TypeError(f"CA key {self.key_path} is not an RSA key")

        key = _new_key()
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names or []]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses or []]
        if not sans and server:
            sans.append(x509.DNSName(name))

        builder = (
            _base_builder(_name(name), key)
            .issuer_name(ca_cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return _write(out_dir, name, cert, key)


def make_ca(out_dir: Path, common_name: str) -> CA:
    """Create a self-signed CA, written to `out_dir/<common_name>.crt` and `.key`."""
    key = _new_key()
    subject = _name(common_name)
    cert = (
        _base_builder(subject, key)
        .issuer_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    pair = _write(out_dir, common_name, cert, key)
    return CA(cert_path=pair.cert_path, key_path=pair.key_path)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_SIZE)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _base_builder(subject: x509.Name, key: rsa.RSAPrivateKey) -> x509.CertificateBuilder:
    """Subject, public key, serial, validity window and subject key identifier."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _NOT_BEFORE)
        .not_valid_after(now + _NOT_AFTER)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _write(out_dir: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> CertPair:
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path = out_dir / f"{name}.crt"
    key_path = out_dir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return CertPair(cert_path=cert_path, key_path=key_path)
