"""Test PKI: a throwaway certificate authority that issues mutual-TLS leaf certificates.

Everything here is for tests and demos only. Keys are RSA 2048 because a Diego BBS restricts
TLS 1.2 to ECDHE-RSA-AES-GCM cipher suites; signatures use SHA-256. Certificates are valid from
one day in the past (tolerating clock skew) to two years ahead, and are written as PEM files.

    ca = make_ca(tmp_path, "test-ca")
    server = ca.issue("bbs", tmp_path, dns_names=["bbs.service.cf.internal"], ip_addresses=["127.0.0.1"])
    client = ca.issue("copilot", tmp_path, server=False)

Diego-style chains: `make_ca(d, "instanceIdentityCA", issuer=make_ca(d, "appRootCA"))` makes an intermediate
CA; `CA.from_pem(...)` adopts certificates another tool generated (e.g. `bosh int --vars-store`).

Many certificates fast: generating an RSA key costs tens of milliseconds (often more on a busy machine),
signing a certificate about one millisecond. Pass `key=shared_key()` to `issue`/`issue_pem` to give
every leaf the same key pair: thousands of certificates (one per app instance of a benchmark) then take
seconds, not minutes. That is a test shortcut: each certificate still names its own subject and is signed
by the CA, which is what the peer checks; only proof of possession is shared.
"""

from __future__ import annotations

import datetime
import ipaddress
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "CertPair", "make_ca", "new_key", "shared_key"]

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
    """A certificate authority stored as PEM files (self-signed root or intermediate); it signs leaf certificates.

    The certificate and key are read once and kept, so issuing many certificates does not re-parse them."""

    cert_path: Path
    key_path: Path
    _loaded: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_pem(cls, out_dir: Path, name: str, cert_pem: str | bytes, key_pem: str | bytes) -> CA:
        """Adopt an existing CA given as PEM text (e.g. a `bosh int --vars-store` entry's `certificate` and
        `private_key`), written to `out_dir/<name>.crt` and `.key`."""
        out_dir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = out_dir / f"{name}.crt", out_dir / f"{name}.key"
        cert_path.write_bytes(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        key_path.write_bytes(key_pem.encode() if isinstance(key_pem, str) else key_pem)
        key_path.chmod(0o600)
        ca = cls(cert_path, key_path)
        ca._materials()  # fail here, not at the first issue, if the files are not a CA cert and RSA key
        return ca

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def _materials(self) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        if self._loaded is None:
            ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(ca_key, rsa.RSAPrivateKey):
                raise TypeError(f"CA key {self.key_path} is not an RSA key")
            self._loaded = (ca_cert, ca_key)
        return self._loaded

    def issue(
        self,
        name: str,
        out_dir: Path,
        *,
        dns_names: list[str] | None = None,
        ip_addresses: list[str] | None = None,
        client: bool = True,
        server: bool = True,
        key: rsa.RSAPrivateKey | None = None,
        organizational_units: Sequence[str] = (),
        valid_for: datetime.timedelta | None = None,
    ) -> CertPair:
        """Issue a leaf certificate for `name`, written to `out_dir/<name>.crt` and `.key`.

        `name` becomes the subject common name. `dns_names` and `ip_addresses` become the
        SubjectAlternativeName (a server certificate with neither gets `name` as its DNS SAN so
        that hostname verification has something to match). `client` and `server` select the
        clientAuth and serverAuth extended key usages; at least one must be set. `key` reuses a key
        pair (see `shared_key`) instead of generating one; `organizational_units` are subject OUs;
        `valid_for` replaces the default two years (then valid from now, as Diego issues them).
        """
        cert, leaf_key = self._build(
            name, dns_names, ip_addresses, client, server, key, organizational_units, valid_for, default_san=True
        )
        return _write(out_dir, name, cert, leaf_key)

    def issue_pem(
        self,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        client: bool = True,
        server: bool = True,
        key: rsa.RSAPrivateKey | None = None,
        organizational_units: Sequence[str] = (),
        valid_for: datetime.timedelta | None = None,
    ) -> tuple[bytes, bytes]:
        """Issue a leaf certificate in memory: (certificate PEM, PKCS#1 private key PEM). An empty
        `common_name` gives an empty subject; SANs are exactly `dns_names` + `ip_addresses`."""
        cert, leaf_key = self._build(
            common_name, dns_names, ip_addresses, client, server, key, organizational_units, valid_for, default_san=False
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(leaf_key)

    def _build(
        self,
        name: str,
        dns_names: Sequence[str] | None,
        ip_addresses: Sequence[str] | None,
        client: bool,
        server: bool,
        key: rsa.RSAPrivateKey | None,
        organizational_units: Sequence[str],
        valid_for: datetime.timedelta | None,
        *,
        default_san: bool,
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        if not (client or server):
            raise ValueError("a certificate needs at least one of client or server usage")
        ca_cert, ca_key = self._materials()
        key = key or new_key()
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names or []]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses or []]
        if not sans and server and default_san:
            sans.append(x509.DNSName(name))

        attributes = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in organizational_units]
        if name:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, name))
        builder = (
            _base_builder(x509.Name(attributes), key, valid_for)
            .issuer_name(ca_cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage("digital_signature", "key_encipherment"),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key



_KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)


def _key_usage(*granted: str) -> x509.KeyUsage:
    """A KeyUsage extension granting exactly the named usages."""
    unknown = set(granted) - set(_KEY_USAGES)
    if unknown:
        raise ValueError(f"unknown key usages: {sorted(unknown)}")
    return x509.KeyUsage(**{usage: usage in granted for usage in _KEY_USAGES})

def make_ca(out_dir: Path, common_name: str, *, issuer: CA | None = None, path_length: int | None = None) -> CA:
    """Create a CA, written to `out_dir/<common_name>.crt` and `.key`: self-signed, or an intermediate
    signed by `issuer` (as cf-deployment's `diego_instance_identity_ca` under `application_ca`)."""
    key = new_key()
    subject = _name(common_name)
    builder = (
        _base_builder(subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            _key_usage("digital_signature", "key_cert_sign", "crl_sign"),
            critical=True,
        )
    )
    if issuer is None:
        cert = builder.issuer_name(subject).sign(key, hashes.SHA256())
    else:
        issuer_cert, issuer_key = issuer._materials()
        cert = (
            builder.issuer_name(issuer_cert.subject)
            .add_extension(_authority_key_id(issuer_cert, issuer_key), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
    pair = _write(out_dir, common_name, cert, key)
    return CA(cert_path=pair.cert_path, key_path=pair.key_path)


def new_key() -> rsa.RSAPrivateKey:
    """A fresh RSA 2048 key (slow: see the module docstring)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_SIZE)


_shared_key: rsa.RSAPrivateKey | None = None
_shared_key_lock = threading.Lock()


def shared_key() -> rsa.RSAPrivateKey:
    """One RSA 2048 key per process, generated on first use, for issuing many leaves quickly."""
    global _shared_key
    with _shared_key_lock:
        if _shared_key is None:
            _shared_key = new_key()
        return _shared_key


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _base_builder(
    subject: x509.Name, key: rsa.RSAPrivateKey, valid_for: datetime.timedelta | None = None
) -> x509.CertificateBuilder:
    """Subject, public key, serial, validity window and subject key identifier."""
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = (now - _NOT_BEFORE, now + _NOT_AFTER) if valid_for is None else (now, now + valid_for)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _write(out_dir: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> CertPair:
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path = out_dir / f"{name}.crt"
    key_path = out_dir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    return CertPair(cert_path=cert_path, key_path=key_path)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """PKCS#1 ("BEGIN RSA PRIVATE KEY"), as Diego's executor writes instance keys."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _authority_key_id(issuer_cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey) -> x509.AuthorityKeyIdentifier:
    """The issuer's own subject key identifier when it has one (CAs made by other tools, such as bosh,
    compute it differently from a hash of the public key), else one derived from its public key."""
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
