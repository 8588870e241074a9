"""Mutual TLS 1.3 between terminals, pinned per peer, over real loopback sockets."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parley.core.identity import Identity
from parley.errors import InvalidCard, UsageError
from parley.service.tls import (
    add_peer_certificate,
    certificate_der,
    certificate_for,
    check_certificate,
    client_context,
    party_of_certificate,
    server_context,
)

TIMEOUT = 5.0
PING = b"ping from the client"
PONG_PREFIX = b"pong to "


@dataclass
class Outcome:
    """What each side of one connection saw."""

    server_party: str | None = None
    server_version: str | None = None
    server_error: BaseException | None = None
    client_reply: bytes = b""
    client_version: str | None = None
    client_error: BaseException | None = None

    @property
    def succeeded(self) -> bool:
        return (
            self.server_error is None
            and self.client_error is None
            and self.server_party is not None
            and self.client_reply == PONG_PREFIX + self.server_party.encode()
        )


def _recv_up_to(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Outcome:
    """One connection on 127.0.0.1: the client pings, the server answers with its view."""
    outcome = Outcome()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    outcome.server_version = tls_conn.version()
                    peer = tls_conn.getpeercert(binary_form=True)
                    assert peer is not None
                    outcome.server_party = party_of_certificate(peer)
                    if _recv_up_to(tls_conn, len(PING)) == PING:
                        tls_conn.sendall(PONG_PREFIX + outcome.server_party.encode())
            except Exception as exc:
                outcome.server_error = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
                client_ctx.wrap_socket(raw) as tls_client,
            ):
                outcome.client_version = tls_client.version()
                tls_client.sendall(PING)
                outcome.client_reply = _recv_up_to(tls_client, 100)
        except Exception as exc:
            outcome.client_error = exc
        thread.join(TIMEOUT * 2)
        assert not thread.is_alive(), "the test server did not finish"
    return outcome


def _context_presenting(
    tmp_path: Path,
    certificate_pem: bytes,
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
    trusted_pem: bytes,
) -> ssl.SSLContext:
    """A TLS 1.3 client that presents an arbitrary certificate (for forgeries)."""
    cert_path = tmp_path / "forged-cert.pem"
    key_path = tmp_path / "forged-key.pem"
    cert_path.write_bytes(certificate_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=certificate_der(trusted_pem))
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def _build(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
    subject_cn: str,
    issuer: x509.Name | None,
    template: Identity,
) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(template.card.valid_from)
        .not_valid_after(template.card.valid_until)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        certificate = builder.sign(key, algorithm=None)
    else:
        certificate = builder.sign(key, hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM)


# --- the certificate -----------------------------------------------------------------------


def test_certificate_is_deterministic(us_eucom: Identity) -> None:
    assert certificate_for(us_eucom) == certificate_for(us_eucom)


def test_certificates_of_different_parties_differ(us_eucom: Identity, ru_gs: Identity) -> None:
    assert certificate_for(us_eucom) != certificate_for(ru_gs)


def test_certificate_contents(us_eucom: Identity) -> None:
    card = us_eucom.card
    cert = x509.load_pem_x509_certificate(certificate_for(us_eucom))
    assert cert.version is x509.Version.v3
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "US-EUCOM"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == card.name
    assert 0 < cert.serial_number < 2**159
    assert cert.not_valid_before_utc == card.valid_from
    assert cert.not_valid_after_utc == card.valid_until
    assert cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.ED25519
    public_key = cert.public_key()
    assert isinstance(public_key, ed25519.Ed25519PublicKey)
    assert public_key.public_bytes_raw() == card.ed25519_public

    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not usage.value.content_commitment
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(extended) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["us-eucom.parley.invalid"]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public_key)


def test_long_card_name_is_left_out_of_the_certificate(us_eucom: Identity) -> None:
    material = us_eucom.private_material()
    long_name = Identity.from_private_material(
        party="LONG-NAME",
        name="N" * 65,
        valid_from=us_eucom.card.valid_from,
        valid_until=us_eucom.card.valid_until,
        version=1,
        ed25519_seed=material["ed25519"],
        mldsa65_seed=material["mldsa65"],
        mlkem_seed=material["mlkem768"],
        x25519_raw=material["x25519"],
    )
    cert = x509.load_pem_x509_certificate(certificate_for(long_name))
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) == []
    assert check_certificate(certificate_for(long_name), long_name.card)


def test_certificate_for_refuses_a_key_that_is_not_the_cards(
    us_eucom: Identity, ru_gs: Identity
) -> None:
    mixed = dataclasses.replace(us_eucom, card=ru_gs.card)
    with pytest.raises(UsageError, match="RU-GS"):
        certificate_for(mixed)


def test_check_certificate_accepts_own_card(us_eucom: Identity) -> None:
    pem = certificate_for(us_eucom)
    assert check_certificate(pem, us_eucom.card) == pem


def test_check_certificate_accepts_der(us_eucom: Identity) -> None:
    pem = certificate_for(us_eucom)
    der = certificate_der(pem)
    assert der != pem
    assert x509.load_der_x509_certificate(der) == x509.load_pem_x509_certificate(pem)
    assert check_certificate(der, us_eucom.card) == pem


def test_check_certificate_rejects_another_partys_card(us_eucom: Identity, ru_gs: Identity) -> None:
    with pytest.raises(InvalidCard, match=r"RU-GS.*another Ed25519 key"):
        check_certificate(certificate_for(us_eucom), ru_gs.card)


def test_check_certificate_rejects_a_tampered_signature(us_eucom: Identity) -> None:
    der = bytearray(certificate_der(certificate_for(us_eucom)))
    der[-1] ^= 0x01  # the last byte belongs to the Ed25519 signature
    tampered = x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidCard, match=r"US-EUCOM.*not validly self-signed"):
        check_certificate(tampered, us_eucom.card)


def test_check_certificate_rejects_a_tampered_alternative_name(us_eucom: Identity) -> None:
    der = certificate_der(certificate_for(us_eucom))
    tampered = der.replace(b"us-eucom.parley.invalid", b"ru-eucom.parley.invalid")
    assert tampered != der
    with pytest.raises(InvalidCard, match=r"not validly self-signed: the signature does not"):
        check_certificate(tampered, us_eucom.card)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"\x30\x03\x02\x01\x01",
        b"-----BEGIN CERTIFICATE-----\n" + b"A" * (70 * 1024),
    ],
)
def test_check_certificate_rejects_garbage(us_eucom: Identity, garbage: bytes) -> None:
    with pytest.raises(InvalidCard, match="US-EUCOM"):
        check_certificate(garbage, us_eucom.card)


def test_check_certificate_rejects_a_wrong_common_name(us_eucom: Identity) -> None:
    pem = _build(us_eucom.ed25519_private, "RU-GS", None, us_eucom)
    with pytest.raises(InvalidCard, match=r"US-EUCOM.*'RU-GS' as its common name"):
        check_certificate(pem, us_eucom.card)


def test_check_certificate_rejects_a_non_ed25519_key(us_eucom: Identity) -> None:
    pem = _build(ec.generate_private_key(ec.SECP256R1()), "US-EUCOM", None, us_eucom)
    with pytest.raises(InvalidCard, match="not an Ed25519 key"):
        check_certificate(pem, us_eucom.card)


def test_check_certificate_rejects_a_certificate_issued_by_the_card_key(
    us_eucom: Identity,
) -> None:
    # Right key and name, but the issuer names someone else: not self-signed.
    other_issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SOMEONE-ELSE")])
    pem = _build(us_eucom.ed25519_private, "US-EUCOM", other_issuer, us_eucom)
    with pytest.raises(InvalidCard, match="not validly self-signed"):
        check_certificate(pem, us_eucom.card)


def test_check_certificate_is_typed_on_bytes(us_eucom: Identity) -> None:
    with pytest.raises(UsageError):
        check_certificate(certificate_for(us_eucom).decode(), us_eucom.card)  # type: ignore[arg-type]


def test_party_of_certificate(us_eucom: Identity) -> None:
    assert party_of_certificate(certificate_der(certificate_for(us_eucom))) == "US-EUCOM"


@pytest.mark.parametrize("der", [b"", b"junk"])
def test_party_of_certificate_rejects_nothing_and_junk(der: bytes) -> None:
    with pytest.raises(InvalidCard):
        party_of_certificate(der)


# --- the contexts --------------------------------------------------------------------------


def test_contexts_are_tls13_only_with_required_certificates(
    us_eucom: Identity, ru_gs: Identity
) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs)])
    client = client_context(ru_gs, certificate_for(us_eucom))
    for ctx in (server, client):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_TICKET
        # Only the pinned peers: no system or default CAs were loaded.
        assert ctx.cert_store_stats()["x509"] == 1
    assert server.num_tickets == 0
    assert client.check_hostname is False


def test_no_private_key_is_left_on_disk(
    us_eucom: Identity, ru_gs: Identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server_context(us_eucom, [certificate_for(ru_gs)])
    client_context(ru_gs, certificate_for(us_eucom))
    assert list(tmp_path.iterdir()) == []


def test_server_context_with_bad_peer_certificate(us_eucom: Identity) -> None:
    with pytest.raises(InvalidCard):
        server_context(us_eucom, [b"not a certificate"])


# --- handshakes over loopback --------------------------------------------------------------


def test_mutual_tls_between_pinned_peers(us_eucom: Identity, ru_gs: Identity) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs)])
    client = client_context(ru_gs, certificate_for(us_eucom))
    outcome = exchange(server, client)
    assert outcome.succeeded, outcome
    assert outcome.server_party == "RU-GS"
    assert outcome.client_reply == b"pong to RU-GS"
    assert outcome.server_version == "TLSv1.3"
    assert outcome.client_version == "TLSv1.3"


def test_server_knows_each_of_several_pinned_peers(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity
) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs), certificate_for(ua_gs)])
    for peer in (ru_gs, ua_gs):
        outcome = exchange(server, client_context(peer, certificate_for(us_eucom)))
        assert outcome.succeeded, outcome
        assert outcome.server_party == peer.party


def test_server_refuses_a_client_that_is_not_pinned(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity
) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs)])
    client = client_context(ua_gs, certificate_for(us_eucom))
    outcome = exchange(server, client)
    assert not outcome.succeeded
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError), outcome
    assert outcome.server_party is None
    # TLS 1.3: the client finishes its handshake before the server checks its
    # certificate, so it learns of the refusal on its first read.
    assert PONG_PREFIX not in outcome.client_reply


def test_client_refuses_a_server_that_is_not_the_pinned_one(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity
) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs)])
    client = client_context(ru_gs, certificate_for(ua_gs))  # pinned UA-GS, reached US-EUCOM
    outcome = exchange(server, client)
    assert not outcome.succeeded
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError), outcome
    assert outcome.client_version is None
    assert outcome.server_error is not None
    assert outcome.server_party is None


def test_server_refuses_tls_1_2(us_eucom: Identity, ru_gs: Identity) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs)])
    client = client_context(ru_gs, certificate_for(us_eucom))
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = exchange(server, client)
    assert not outcome.succeeded
    assert isinstance(outcome.server_error, ssl.SSLError), outcome
    assert isinstance(outcome.client_error, ssl.SSLError), outcome
    assert outcome.server_version is None
    assert outcome.client_version is None


def test_server_refuses_a_client_without_certificate(us_eucom: Identity, ru_gs: Identity) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs)])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.check_hostname = False
    client.load_verify_locations(cadata=certificate_der(certificate_for(us_eucom)))
    outcome = exchange(server, client)
    assert not outcome.succeeded
    assert isinstance(outcome.server_error, ssl.SSLError), outcome
    assert outcome.server_party is None
    assert PONG_PREFIX not in outcome.client_reply


def test_server_without_peers_refuses_everyone(us_eucom: Identity, ru_gs: Identity) -> None:
    server = server_context(us_eucom, [])
    outcome = exchange(server, client_context(ru_gs, certificate_for(us_eucom)))
    assert not outcome.succeeded
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError), outcome


def test_add_peer_certificate_on_a_live_context(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity
) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs)])
    client = client_context(ua_gs, certificate_for(us_eucom))
    refused = exchange(server, client)
    assert not refused.succeeded
    assert isinstance(refused.server_error, ssl.SSLCertVerificationError), refused

    add_peer_certificate(server, certificate_for(ua_gs))
    accepted = exchange(server, client)
    assert accepted.succeeded, accepted
    assert accepted.server_party == "UA-GS"
    # The peer pinned before is still accepted.
    earlier = exchange(server, client_context(ru_gs, certificate_for(us_eucom)))
    assert earlier.succeeded, earlier
    assert earlier.server_party == "RU-GS"


def test_a_pinned_peer_cannot_issue_a_certificate_for_another_party(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity, tmp_path: Path
) -> None:
    # RU-GS is pinned by the server, and uses its own key and the issuer name
    # of its pinned certificate to claim to be UA-GS (also pinned). The pinned
    # certificate is not a CA, so OpenSSL must not accept it as an issuer.
    server = server_context(us_eucom, [certificate_for(ru_gs), certificate_for(ua_gs)])
    ru_name = x509.load_pem_x509_certificate(certificate_for(ru_gs)).subject
    forged = _build(ru_gs.ed25519_private, "UA-GS", ru_name, ru_gs)
    client = _context_presenting(tmp_path, forged, ru_gs.ed25519_private, certificate_for(us_eucom))
    outcome = exchange(server, client)
    assert not outcome.succeeded
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError), outcome
    assert outcome.server_party is None


def test_a_pinned_peer_cannot_present_a_self_signed_certificate_for_another_party(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity, tmp_path: Path
) -> None:
    server = server_context(us_eucom, [certificate_for(ru_gs), certificate_for(ua_gs)])
    forged = _build(ru_gs.ed25519_private, "UA-GS", None, ru_gs)
    client = _context_presenting(tmp_path, forged, ru_gs.ed25519_private, certificate_for(us_eucom))
    outcome = exchange(server, client)
    assert not outcome.succeeded
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError), outcome


def test_party_of_certificate_refuses_a_certificate_that_is_not_self_signed(
    ru_gs: Identity,
) -> None:
    # Were OpenSSL ever to accept a chain through a pinned certificate, the
    # listener must still not believe the name in it.
    ru_name = x509.load_pem_x509_certificate(certificate_for(ru_gs)).subject
    forged = _build(ru_gs.ed25519_private, "UA-GS", ru_name, ru_gs)
    with pytest.raises(InvalidCard, match="not validly self-signed"):
        party_of_certificate(certificate_der(forged))
