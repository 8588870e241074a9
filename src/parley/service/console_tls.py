"""HTTPS on the console listener: the certificate the duty officer's browser trusts.

With ``console.tls`` on (required when the console listens off loopback) the
console listener speaks TLS 1.3 only, with one of two certificates:

* **the terminal's own** (the default): an ECDSA P-256 key and a self-signed
  certificate that the terminal makes in its data directory
  (``console-tls.pem``, and ``console-tls.key`` with mode 0600), naming the
  listen address and ``console.names``. The duty officer trusts it in the
  workstation's browser after comparing its SHA-256 fingerprint with what
  ``parley console cert`` prints on the terminal;
* **the operator's**: ``console.tls_cert`` and ``console.tls_key``, PEM files
  (a certificate from the ministry's own CA, say), used as they are.

Why neither the peer listener's certificate nor a CA derived from the
identity: browsers accept no Ed25519 certificate and no Ed25519 signature in
a chain, and the identity keys are Ed25519. A CA of the terminal's, once
trusted by a workstation, could vouch for any name at all; a self-signed
end-entity certificate (``CA:FALSE``, server authentication only) lets the
workstation trust exactly one key for exactly these names. And the key that
guards an operator's session is kept apart from the keys that sign the
record: it sits on disk unencrypted (``parley serve`` and ``parley console
cert`` read it without the passphrase, like the console token), and a thief
of it can impersonate the console to a workstation, never sign as the party.

Its life: 397 days (the longest a browser accepts from a public CA; nothing
enforces it for a certificate trusted by hand, but it keeps renewals
regular). ``parley serve`` makes a new key and certificate at start when the
certificate is missing, expires within ``RENEW_BEFORE``, or no longer names
every configured name; ``parley console cert --renew`` does it at once. A
new certificate has a new fingerprint: the workstations trust it again.
``parley keys status`` shows when it ends.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import ssl
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parley.config import Config, DataDir, is_loopback, is_wildcard, parse_hostport, write_private
from parley.errors import UnreadableFile, UsageError

__all__ = [
    "RENEW_BEFORE",
    "VALIDITY",
    "ConsoleCertificate",
    "certificate_names",
    "client_context",
    "console_certificate",
    "ensure_certificate",
    "make_own_certificate",
    "server_context",
    "status",
]

VALIDITY = timedelta(days=397)
"""How long a certificate the terminal makes for its console is valid."""

RENEW_BEFORE = timedelta(days=30)
"""``parley serve`` replaces its own console certificate this long before it ends."""

_BACKDATE = timedelta(hours=1)  # a workstation whose clock is a little behind still accepts it
_MAX_ORGANIZATION_LEN = 64


@dataclass(frozen=True, slots=True)
class ConsoleCertificate:
    """The certificate the console listener presents, and where it and its key are."""

    cert_file: Path
    key_file: Path
    #: True for the terminal's own certificate, False for the operator's.
    own: bool
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, as browsers show it: ``AB:CD:…`` (32 bytes)."""
        return hashlib.sha256(self.der).digest().hex(":").upper()

    @property
    def spki_sha256(self) -> str:
        """Base64 of the SHA-256 of its public key (SubjectPublicKeyInfo), as pins are written."""
        spki = self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def names(self) -> list[str]:
        """The DNS names and IP addresses the certificate is for."""
        try:
            san = self.certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            return []
        dns = [str(name) for name in san.get_values_for_type(x509.DNSName)]
        return dns + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()


def certificate_names(config: Config) -> list[str]:
    """The names the terminal's own console certificate must cover.

    The listen address (unless a wildcard), ``console.names``, and
    ``localhost``, ``127.0.0.1`` and ``::1`` for a loopback or wildcard
    listener, which this host reaches at those.
    """
    host, _ = parse_hostport(config.console_listen, "console.listen")
    names: list[str] = []
    if not is_wildcard(host):
        names.append(host.lower())
    names += config.console_names
    if is_loopback(host) or is_wildcard(host):
        names += ["localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(names))


def _files(data: DataDir, config: Config) -> tuple[Path, Path, bool]:
    if config.console_tls_cert:
        return (
            data.path / Path(config.console_tls_cert).expanduser(),
            data.path / Path(config.console_tls_key).expanduser(),
            False,
        )
    return data.console_cert_file, data.console_key_file, True


def _read_certificate(path: Path, what: str) -> x509.Certificate:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise UnreadableFile(f"{what} {path} could not be read: {exc.strerror or exc}") from None
    try:
        # The first certificate of the file is the console's; any after it are its chain.
        return x509.load_pem_x509_certificates(pem)[0]
    except ValueError as exc:
        raise UsageError(f"{what} {path} is not a PEM certificate: {exc}") from None


def _check_key_file(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UnreadableFile(f"{what} {path} could not be read: {exc.strerror or exc}") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise UsageError(
            f"{what} {path} may be read or written by any user of this host "
            f"(mode {stat.S_IMODE(mode):04o}): `chmod o-rw {path}`"
        )


def console_certificate(data: DataDir, config: Config) -> ConsoleCertificate | None:
    """The console certificate configured, as it is on disk; None if the terminal's own
    has not been made yet."""
    cert_file, key_file, own = _files(data, config)
    what = "the console certificate" if own else "console.tls_cert"
    if own and not cert_file.exists():
        return None
    return ConsoleCertificate(cert_file, key_file, own, _read_certificate(cert_file, what))


def make_own_certificate(data: DataDir, config: Config, now: datetime) -> ConsoleCertificate:
    """A new key and self-signed certificate for the console, written to the data directory.

    The key is written first (mode 0600), then the certificate: a key
    without its certificate is simply replaced next time.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, f"{config.party} console")]
    if 1 <= len(config.name) <= _MAX_ORGANIZATION_LEN:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, config.name))
    name = x509.Name(attributes)
    alternative: list[x509.GeneralName] = []
    for entry in certificate_names(config):
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alternative.append(x509.DNSName(entry))
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(
        data.console_key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(
        data.console_cert_file,
        certificate.public_bytes(serialization.Encoding.PEM),
        mode=0o644,
    )
    return ConsoleCertificate(data.console_cert_file, data.console_key_file, True, certificate)


def _renewal_reason(current: ConsoleCertificate, config: Config, now: datetime) -> str | None:
    if not current.key_file.exists():
        return "its key is missing"
    if current.not_after - now < RENEW_BEFORE:
        return f"it ends on {current.not_after:%Y-%m-%d}"
    missing = [n for n in certificate_names(config) if n not in current.names]
    if missing:
        return "it does not name " + ", ".join(missing)
    return None


def ensure_certificate(
    data: DataDir, config: Config, now: datetime
) -> tuple[ConsoleCertificate, str | None]:
    """The console certificate to serve, and why a new one was made (None if none was).

    The terminal's own is made when missing and replaced when it expires
    within ``RENEW_BEFORE``, lacks a configured name or lost its key. The
    operator's is checked (readable, key not open to every user) and used as
    it is, even past its end: the browser says so, and ``parley keys status``.
    """
    current = console_certificate(data, config)
    if current is None:
        return make_own_certificate(data, config, now), "there was none"
    if not current.own:
        _check_key_file(current.key_file, "console.tls_key")
        return current, None
    reason = _renewal_reason(current, config, now)
    if reason is not None:
        return make_own_certificate(data, config, now), reason
    _check_key_file(current.key_file, "the console key")
    return current, None


def server_context(certificate: ConsoleCertificate) -> ssl.SSLContext:
    """The console listener's TLS: 1.3 only, HTTP/1.1, no client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= getattr(ssl, "OP_NO_COMPRESSION", 0)
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(certificate.cert_file, certificate.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"cannot serve the console with {certificate.cert_file} and its key "
            f"{certificate.key_file}: {exc}"
        ) from None
    return ctx


def client_context(pem: bytes) -> ssl.SSLContext:
    """A client context that trusts exactly the console's certificate (the first in
    ``pem``), for the CLI and the tests on this host.

    The certificate itself is the trust anchor (an operator's one need not be
    self-signed, hence ``VERIFY_X509_PARTIAL_CHAIN``); no other CA is trusted,
    so the name the listener is reached at does not matter.
    """
    try:
        certificate = x509.load_pem_x509_certificates(pem)[0]
    except ValueError as exc:
        raise UsageError(f"the console certificate is not a PEM certificate: {exc}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=certificate.public_bytes(serialization.Encoding.DER))
    return ctx


def status(data: DataDir, config: Config, now: datetime) -> dict[str, Any]:
    """The console certificate for ``parley console cert`` and ``parley keys status``."""
    try:
        current = console_certificate(data, config)
    except (UsageError, UnreadableFile) as exc:
        return {"tls": config.console_tls, "state": "unreadable", "problem": str(exc)}
    if current is None:
        return {"tls": config.console_tls, "state": "not made yet", "own": True}
    left = current.not_after - now
    if left <= timedelta(0):
        state = "expired"
    elif current.own and left < RENEW_BEFORE:
        state = "renewal due"
    else:
        state = "valid"
    return {
        "tls": config.console_tls,
        "state": state,
        "own": current.own,
        "file": str(current.cert_file),
        "key_file": str(current.key_file),
        "subject": current.subject,
        "names": current.names,
        "fingerprint": current.fingerprint,
        "spki_sha256": current.spki_sha256,
        "valid_from": current.not_before.isoformat().replace("+00:00", "Z"),
        "valid_until": current.not_after.isoformat().replace("+00:00", "Z"),
        "days_left": left.days,
    }
