"""``parley init``: a new terminal's keys, configuration, token and database (and its
console certificate, with ``console_tls``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from parley.config import (
    Config,
    DataDir,
    check_console_listen,
    check_console_name,
    parse_hostport,
    write_private,
)
from parley.core.encoding import check_party_id
from parley.core.identity import Identity
from parley.core.keychain import RevocationKeys
from parley.errors import SchemaViolation, UsageError
from parley.keyfile import DEFAULT_SCRYPT_N, save_identity
from parley.service import tls
from parley.service.console_tls import ensure_certificate, server_context
from parley.service.terminal import CardBundle, utc_now
from parley.store.db import engine_for, migrate, normalize_url, sqlite_url

__all__ = ["REVOCATION_CERTIFICATE", "init_terminal"]

#: Written by ``parley init`` beside the keys: print it, put it in the safe, delete it.
REVOCATION_CERTIFICATE = "revocation-certificate.txt"


def init_terminal(
    path: Path,
    *,
    party: str,
    name: str,
    passphrase: str,
    peer_listen: str = "0.0.0.0:7443",
    console_listen: str = "127.0.0.1:7080",
    console_tls: bool = False,
    console_names: Sequence[str] = (),
    console_tls_cert: str = "",
    console_tls_key: str = "",
    database: str | None = None,
    link_test_interval: float = 3600.0,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> Config:
    """Create the data directory of a new terminal; refuse to overwrite one.

    With ``console_tls`` and no certificate of the operator's
    (``console_tls_cert``, ``console_tls_key``), the console's own
    certificate is made now, so its fingerprint can be shown at once.
    """
    try:
        check_party_id(party, "party id")
    except SchemaViolation as exc:
        raise UsageError(f"{exc} (use capitals, digits, '.', '_' or '-', e.g. US-EUCOM)") from None
    if not name.strip():
        raise UsageError("the terminal needs a display name (--name)")
    if len(passphrase) < 8:
        raise UsageError("the key passphrase must be at least 8 characters")
    parse_hostport(peer_listen, "--peer-listen")
    names = [check_console_name(n, "--console-name") for n in console_names]
    check_console_listen(
        console_listen,
        tls=console_tls,
        names=names,
        what="--console-listen",
        tls_option="--console-tls",
        names_option="--console-name",
    )
    if bool(console_tls_cert) != bool(console_tls_key):
        raise UsageError("--console-tls-cert and --console-tls-key go together")
    if console_tls_cert and not console_tls:
        raise UsageError("--console-tls-cert needs --console-tls")
    if console_tls_cert:
        # Relative to where init runs; stored absolute.
        console_tls_cert = str(Path(console_tls_cert).expanduser().resolve())
        console_tls_key = str(Path(console_tls_key).expanduser().resolve())
        # Readable, the key its own and not open to every user: checked before anything
        # is made.
        given = Config(
            party=party,
            name=name,
            database="",
            console_listen=console_listen,
            console_tls=True,
            console_tls_cert=console_tls_cert,
            console_tls_key=console_tls_key,
        )
        server_context(ensure_certificate(DataDir(path), given, utc_now())[0])
    data = DataDir(path)
    if data.exists() or data.key_file.exists():
        raise UsageError(f"{path} already holds a terminal; refusing to overwrite its keys")
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    url = normalize_url(database) if database else sqlite_url(data.sqlite_file.resolve())
    engine = engine_for(url)
    migrate(engine)
    engine.dispose()
    # The offline revocation keys: their digest is in the card, the keys themselves
    # only in the certificate printed for the safe (REVOCATION_CERTIFICATE).
    offline = RevocationKeys.generate()
    identity = Identity.generate(party, name, now=utc_now(), revocation=offline.commitment)
    save_identity(identity, data.key_file, passphrase, scrypt_n=scrypt_n)
    certificate = data.path / REVOCATION_CERTIFICATE
    write_private(certificate, (offline.to_text(party) + "\n").encode())
    bundle = CardBundle(identity.card, tls.certificate_for(identity))
    data.card_file.write_bytes(bundle.to_json() + b"\n")
    config = Config(
        party=party,
        name=name,
        database=url,
        peer_listen=peer_listen,
        console_listen=console_listen,
        console_tls=console_tls,
        console_names=names,
        console_tls_cert=console_tls_cert,
        console_tls_key=console_tls_key,
        link_test_interval=link_test_interval,
    )
    data.new_token()
    data.save_config(config)
    if console_tls:
        ensure_certificate(data, config, utc_now())
    return config
