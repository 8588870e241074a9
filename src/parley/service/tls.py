"""TLS 1.3 with mutual authentication for the peer listener, pinned per peer.

Terminals talk to each other over HTTPS, TLS 1.3 only, and both sides show a
certificate. No public CA and no system trust store take part: each terminal's
TLS certificate is a self-signed X.509 v3 certificate for its identity's own
Ed25519 key, the same key its identity card names. A peer that has pinned the
card (after the duty officers read its fingerprint to each other) can check
that a certificate belongs to that card: the certificate's public key must be
``card.ed25519_public`` and its self-signature must verify
(``check_certificate``). Each side then trusts exactly the pinned certificates
of its peers and nothing else, so the handshake succeeds only between
terminals that have pinned each other's cards.

The certificate is built deterministically from the identity (names, serial,
validity and extensions all come from the card, and Ed25519 signatures are
deterministic), so every restart of a terminal presents the same bytes and
the peers never need to re-pin it while the card stays the same.

The certificate is an end-entity certificate: ``BasicConstraints(ca=False)``
and a key usage of ``digitalSignature`` only. That matters when one context
trusts several peers: a pinned peer cannot use its own pinned certificate as
an issuer to mint a certificate naming another party, because OpenSSL refuses
a non-CA certificate without ``keyCertSign`` as an issuer. Two more layers
back this up: the contexts verify with ``VERIFY_X509_STRICT``, and
``party_of_certificate`` believes the name in a peer certificate only if the
certificate is self-signed.

Session resumption is off (no tickets), so every connection is a full
handshake that checks the peer certificate against the current pins.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parley.core.identity import Identity, IdentityCard
from parley.errors import InvalidCard, UsageError

__all__ = [
    "SAN_SUFFIX",
    "add_peer_certificate",
    "certificate_der",
    "certificate_ders",
    "certificate_for",
    "check_certificate",
    "client_context",
    "party_of_certificate",
    "server_context",
]

SAN_SUFFIX = ".parley.invalid"
"""The DNS name in a certificate is ``<party lower-cased>.parley.invalid`` (RFC 6761)."""

_MAX_ORGANIZATION_LEN = 64  # ub-organization-name in RFC 5280
_MAX_CERTIFICATE_SIZE = 64 * 1024


def _serial_number(public_raw: bytes) -> int:
    """A positive serial below 2**159 derived from the public key."""
    value = int.from_bytes(hashlib.sha256(public_raw).digest()[:20], "big") >> 1
    return value or 1


def _subject(identity: Identity) -> x509.Name:
    card = identity.card
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, card.party)]
    if 1 <= len(card.name) <= _MAX_ORGANIZATION_LEN:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, card.name))
    if card.version > 1:
        # After a rotation a peer trusts two certificates of one party at once; OpenSSL
        # finds a trust anchor by its subject name, so each card's must differ.
        attributes.append(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"parley card v{card.version}")
        )
    return x509.Name(attributes)


def certificate_for(identity: Identity) -> bytes:
    """The PEM of the self-signed TLS certificate of ``identity``.

    Deterministic: the same identity always gives the same bytes.
    """
    card = identity.card
    public_key = identity.ed25519_private.public_key()
    if public_key.public_bytes_raw() != card.ed25519_public:
        raise UsageError(f"the Ed25519 key of {card.party} is not the one its card names")
    name = _subject(identity)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(_serial_number(card.ed25519_public))
        .not_valid_before(card.valid_from)
        .not_valid_after(card.valid_until)
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
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(card.party.lower() + SAN_SUFFIX)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    certificate = builder.sign(identity.ed25519_private, algorithm=None)
    return certificate.public_bytes(serialization.Encoding.PEM)


def _load(data: bytes, whose: str) -> x509.Certificate:
    """Parse one certificate, PEM or DER; ``InvalidCard`` if it is neither."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UsageError(f"a certificate is bytes, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > _MAX_CERTIFICATE_SIZE:
        raise InvalidCard(
            f"the TLS certificate of {whose} is {len(raw)} bytes, "
            f"more than the {_MAX_CERTIFICATE_SIZE} allowed"
        )
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise InvalidCard(
            f"the TLS certificate of {whose} is not a valid X.509 certificate in PEM or DER: {exc}"
        ) from None


def _common_name(certificate: x509.Certificate, whose: str) -> str:
    try:
        values = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise InvalidCard(
            f"the subject of the TLS certificate of {whose} is malformed: {exc}"
        ) from None
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise InvalidCard(
            f"the TLS certificate of {whose} must name exactly one party as its common name; "
            f"it has {len(values)}"
        )
    return values[0].value


def _check_self_signed(certificate: x509.Certificate, whose: str) -> ed25519.Ed25519PublicKey:
    try:
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCard(f"the TLS certificate of {whose} holds no usable key: {exc}") from None
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise InvalidCard(
            f"the TLS certificate of {whose} holds a {type(public_key).__name__}, "
            "not an Ed25519 key"
        )
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, _CryptoInvalidSignature) as exc:
        detail = str(exc) or "the signature does not verify"
        raise InvalidCard(
            f"the TLS certificate of {whose} is not validly self-signed: {detail}"
        ) from None
    return public_key


def check_certificate(pem: bytes, card: IdentityCard) -> bytes:
    """Check that a TLS certificate (PEM or DER) belongs to ``card``; return it as PEM.

    The rules: its key is Ed25519 and equals ``card.ed25519_public``, its
    self-signature verifies, and its subject common name is ``card.party``.
    Any other certificate raises ``InvalidCard``.
    """
    party = card.party
    certificate = _load(pem, party)
    public_key = _check_self_signed(certificate, party)
    if public_key.public_bytes_raw() != card.ed25519_public:
        raise InvalidCard(
            f"the TLS certificate offered for {party} is for another Ed25519 key "
            "than the one its pinned card names"
        )
    common_name = _common_name(certificate, party)
    if common_name != party:
        raise InvalidCard(
            f"the TLS certificate offered for {party} names {common_name[:70]!r} "
            "as its common name, not the party of the card"
        )
    return certificate.public_bytes(serialization.Encoding.PEM)


def certificate_der(pem: bytes) -> bytes:
    """The DER form of a certificate given as PEM (DER is returned re-encoded)."""
    return _load(pem, "a peer").public_bytes(serialization.Encoding.DER)


def party_of_certificate(der: bytes) -> str:
    """The party (subject common name) of a peer certificate, as the listener sees it.

    ``der`` is ``ssl_object.getpeercert(binary_form=True)`` after a handshake
    with a context from ``server_context``: the certificate is then one of the
    pinned ones, so its name can be trusted. The self-signature is checked
    once more so a certificate that reached us any other way is refused.
    """
    if not der:
        raise InvalidCard("the peer presented no TLS certificate")
    certificate = _load(der, "the peer")
    _check_self_signed(certificate, "the peer")
    return _common_name(certificate, "the peer")


def _tls13_only(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= getattr(ssl, "OP_NO_COMPRESSION", 0)
    ctx.options |= getattr(ssl, "OP_NO_TICKET", 0)
    # RFC 5280 strictness as in Python 3.13's default context; our own
    # certificates pass it, and odd encodings from elsewhere are refused.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT


def _load_own_certificate(ctx: ssl.SSLContext, identity: Identity) -> None:
    """Present ``identity``'s certificate; no private key stays on disk.

    ``load_cert_chain`` only reads files, so the certificate and the key
    (PKCS#8, encrypted with a random one-time password) are written to a
    private temporary directory, loaded, and removed at once.
    """
    password = secrets.token_bytes(32)
    key_pem = identity.ed25519_private.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix="parley-tls-") as directory:
        cert_path = os.path.join(directory, "cert.pem")
        key_path = os.path.join(directory, "key.pem")
        for path, content in ((cert_path, certificate_for(identity)), (key_path, key_pem)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
        try:
            ctx.load_cert_chain(cert_path, key_path, password=password)
        except ssl.SSLError as exc:
            raise UsageError(
                f"cannot load the TLS certificate of {identity.party}: {exc}"
            ) from None


def certificate_ders(pem: bytes) -> list[bytes]:
    """Each certificate of a peer, DER: after a rotation a peer has one per card."""
    end = b"-----END CERTIFICATE-----"
    if end not in pem:
        return [certificate_der(pem)]
    return [certificate_der(block + end) for block in pem.split(end) if block.strip()]


def add_peer_certificate(ctx: ssl.SSLContext, pem: bytes) -> None:
    """Trust one more pinned peer's certificates (PEM, one or several; or DER) on a live
    context."""
    try:
        for der in certificate_ders(pem):
            ctx.load_verify_locations(cadata=der)
    except ssl.SSLError as exc:
        raise InvalidCard(f"OpenSSL refused a peer TLS certificate: {exc}") from None


def server_context(identity: Identity, peer_certificates: Iterable[bytes]) -> ssl.SSLContext:
    """A TLS 1.3 server context that requires a client certificate from a pinned peer.

    Only the given peer certificates are trusted (no default or system CAs).
    With no peers yet the context still works and refuses every client;
    ``add_peer_certificate`` pins more peers later.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _tls13_only(ctx)
    # OP_NO_TICKET alone still lets an OpenSSL 3 server resume TLS 1.3
    # sessions statefully; no tickets at all means every connection does a
    # full handshake with a fresh certificate check.
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_own_certificate(ctx, identity)
    # An empty ``cadata`` is refused ("Empty certificate data"), so peers are
    # loaded one by one and none at all leaves a context that refuses everyone.
    for pem in peer_certificates:
        add_peer_certificate(ctx, pem)
    return ctx


def client_context(identity: Identity, peer_certificate: bytes) -> ssl.SSLContext:
    """A TLS 1.3 client context that presents our certificate and trusts exactly one peer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _tls13_only(ctx)
    # Hostnames do not matter: the peer's exact certificate is pinned as the
    # only trust anchor, so no other server can complete the handshake.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    add_peer_certificate(ctx, peer_certificate)
    _load_own_certificate(ctx, identity)
    return ctx
