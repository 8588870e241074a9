"""``parley``: set up, run and operate a terminal from the command line.

Every command takes ``--data DIR`` (or ``PARLEY_DATA``; default
``./parley-data``). Commands that need the private keys ask for the
passphrase, or read it from ``--passphrase-file`` or ``PARLEY_PASSPHRASE``.

``send``, ``inbox``, ``show``, ``ack``, ``links``, ``alarms``, ``peer``,
``channel``, ``held``, ``translation``, ``exchange`` and ``user`` talk to the
running terminal (``parley serve``) through its operator API when it runs,
and work on the database directly when it does not (messages sent then wait
in the outbox until the terminal is served). Either way they act for one
operator, checked by the terminal's one policy and recorded in its action
log: an operator account (``--user NAME`` or ``PARLEY_USER``, the password
from ``PARLEY_PASSWORD`` or a prompt), or the local administrator
(``--local-admin``: whoever can read the data directory's console token,
equal to root).
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from parley.client import Failure, HttpClient, LocalClient, OperatorClient, api_error, fail
from parley.config import DataDir
from parley.errors import (
    ParleyError,
    UnreadableFile,
    diagnostic_line,
    error_body,
)
from parley.service.policy import LOCAL_ADMIN, Actor
from parley.service.reads import Records
from parley.service.terminal import CardBundle, Terminal

__all__ = ["Failure", "api_error", "app", "main"]

app = typer.Typer(
    name="parley",
    help=(
        "Parley terminal: signed, end-to-end encrypted, receipted and witnessed messages "
        "between parties that do not trust each other.\n\n"
        "send, inbox, show, ack, links, alarms, peer, channel, held, translation, exchange "
        "and user talk to the running terminal (parley serve) when it runs, and work on its "
        "database directly when it does not; messages sent then wait in the outbox until the "
        "terminal is served.\n\n"
        "They act for an operator account (--user NAME, password from PARLEY_PASSWORD or a "
        "prompt) within its role, or for the local administrator (--local-admin: the console "
        "token in the data directory, equal to root)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
peer_app = typer.Typer(help="Pin peers (after reading fingerprints aloud) and list them.")
channel_app = typer.Typer(help="Named multi-party channels, agreed by every member.")
app.add_typer(peer_app, name="peer")
app.add_typer(channel_app, name="channel")
user_app = typer.Typer(help="Operator accounts (Argon2id passwords, roles, lockout).")
app.add_typer(user_app, name="user")
form_app = typer.Typer(help="The formatted notifications this terminal knows (en, ru, uk).")
app.add_typer(form_app, name="form")
keys_app = typer.Typer(help="This terminal's card and keys, and when each pinned card ends.")
app.add_typer(keys_app, name="keys")
metrics_app = typer.Typer(
    help="Prometheus metrics at /metrics on the console listener, and their scrape token."
)
app.add_typer(metrics_app, name="metrics")
exchange_app = typer.Typer(
    help=(
        "Prisoner and remains exchanges: each side's list, amendments, the manifest every "
        "member signs, per-person status and the closing reconciliation."
    )
)
app.add_typer(exchange_app, name="exchange")
translation_app = typer.Typer(
    help=(
        "Certified translations of free-text messages: made and signed for one operator, "
        "countersigned by a second (two-person check). Never the sender's words."
    )
)
app.add_typer(translation_app, name="translation")
held_app = typer.Typer(
    help=(
        "FLASH messages written by duty officers, held until a supervisor releases "
        "(sends) or rejects them."
    )
)
app.add_typer(held_app, name="held")
console_app = typer.Typer(
    help="The console listener's HTTPS certificate, to trust in the workstations' browsers."
)
app.add_typer(console_app, name="console")

LANG_HELP = "The language to read in: en, ru or uk (default: PARLEY_LANG, else en)."
Lang = Annotated[str, typer.Option("--lang", envvar="PARLEY_LANG", help=LANG_HELP)]

# Tables stay readable when the output goes to a file or a pipe.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


class State:
    data: DataDir = DataDir(Path("parley-data"))
    passphrase_file: Path | None = None
    operator: str = "operator"
    user: str | None = None
    local_admin: bool = False


state = State()


@app.callback()
def _global(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            envvar="PARLEY_DATA",
            help="The terminal's data directory.",
            show_default=True,
        ),
    ] = Path("parley-data"),
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file",
            help="Read the key passphrase from this file (else PARLEY_PASSPHRASE, else a prompt).",
        ),
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option(
            "--operator",
            envvar="PARLEY_OPERATOR",
            help=(
                "With --local-admin: the name recorded with what you do (default: your login name)."
            ),
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            envvar="PARLEY_USER",
            help=(
                "Act as this operator account, within its role; the password comes from "
                "PARLEY_PASSWORD or a prompt."
            ),
        ),
    ] = None,
    local_admin: Annotated[
        bool,
        typer.Option(
            "--local-admin",
            envvar="PARLEY_LOCAL_ADMIN",
            help=(
                "Act as the local administrator (the console token in the data directory): "
                "every action is allowed, as for root. For setting up and emergencies."
            ),
        ),
    ] = False,
) -> None:
    state.data = DataDir(data)
    state.passphrase_file = passphrase_file
    state.operator = operator or _login_name()
    state.user = user or None
    state.local_admin = local_admin
    from parley.logs import configure_logging

    # Commands log to DIR/parley.log only; stdout carries their results.
    configure_logging(state.data.log_file if state.data.path.is_dir() else None, stderr=False)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def usage(message: str) -> NoReturn:
    """Stop: the operator's command is wrong (exit 2)."""
    fail(message, 2)


def unreadable(what: str, path: Path, exc: Exception, *, parse: str | None = None) -> NoReturn:
    """Stop: a file the operator named cannot be read (or parsed as ``parse``)."""
    reason = f"could not be parsed as {parse}" if parse else "could not be read"
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    raise UnreadableFile(f"{what} {path} {reason}: {detail}") from None


def report(body: dict[str, Any], *, as_json: bool) -> NoReturn:
    """Print an error (one line, or ``body`` as JSON on stdout for ``--json``) and exit.

    The same for a mistake found here and one the running terminal's API
    reports: exit 2 for a mistake in the command, 1 for anything else.
    """
    if as_json:
        sys.stdout.write(json.dumps(body, ensure_ascii=False) + "\n")
    else:
        err.print(f"[bold red]error:[/] {escape(diagnostic_line(body))}", highlight=False)
    sys.exit(2 if body.get("usage") else 1)


PRECEDENCES = ("FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE")


def _precedence(value: str) -> str:
    """``--precedence``, checked here so that both paths refuse it alike."""
    if value.upper() not in PRECEDENCES:
        usage(f"--precedence must be FLASH, IMMEDIATE, PRIORITY or ROUTINE, not {value!r}")
    return value.upper()


def passphrase(*, confirm: bool = False) -> str:
    if state.passphrase_file is not None:
        try:
            return state.passphrase_file.read_text("utf-8").rstrip("\r\n")
        except OSError as exc:
            unreadable("the passphrase file", state.passphrase_file, exc)
    env = os.environ.get("PARLEY_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        fail("no passphrase: use --passphrase-file, PARLEY_PASSPHRASE, or run in a terminal")
    return str(typer.prompt("Key passphrase", hide_input=True, confirmation_prompt=confirm))


def emit(value: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        out.print_json(json.dumps(value, ensure_ascii=False))
    else:
        render(value)


# The operator client: the running terminal's API, or the database directly ---


NO_OPERATOR = (
    "say who acts: --user NAME (an operator account; password from PARLEY_PASSWORD or a "
    "prompt), or --local-admin (the console token, equal to root)"
)


def _password() -> str:
    password = os.environ.get("PARLEY_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        fail(f"no password for {state.user}: set PARLEY_PASSWORD or run in a terminal")
    return str(typer.prompt(f"Password for {state.user}", hide_input=True))


def _http_client(url: str, certificate: str | None = None) -> HttpClient:
    """The running terminal's operator API, as the operator account or the local administrator."""
    if state.user is not None:
        credentials = base64.b64encode(f"{state.user}:{_password()}".encode()).decode()
        return HttpClient(url, {"authorization": f"Basic {credentials}"}, certificate=certificate)
    if state.local_admin:
        return HttpClient(
            url,
            {
                "authorization": f"Bearer {state.data.read_token()}",
                "x-parley-operator": state.operator,
            },
            certificate=certificate,
        )
    fail(NO_OPERATOR, 2)


def _local_actor(engine: Any) -> Actor:
    """Who acts on the database directly: an authenticated account, or the local administrator."""
    from parley.service.terminal import utc_now
    from parley.service.users import AuthenticationFailed, authenticate

    if state.user is not None:
        try:
            account = authenticate(engine, state.user, _password(), now=utc_now())
        except AuthenticationFailed:
            fail("wrong name or password, or the account is locked")
        return Actor(account.name, account.role, "cli")
    if state.local_admin:
        return Actor(state.operator, LOCAL_ADMIN, "cli")
    fail(NO_OPERATOR, 2)


@contextmanager
def operator_client(*, needs_keys: bool) -> Iterator[OperatorClient]:
    """The running terminal's API if it runs; else its records (and keys if needed).

    Either way for the operator named by ``--user`` or ``--local-admin``.
    """
    from parley.service.local import open_engine, schema_is_current
    from parley.service.lock import ServeLock

    data = state.data
    data.require()
    if state.user is None and not state.local_admin:
        fail(NO_OPERATOR, 2)
    lock = ServeLock(data)
    if not lock.acquire():
        info_file = data.path / "serve.json"
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            fail("the terminal is starting or stopping; try again in a moment")
        http = _http_client(info["console_url"], info.get("console_certificate_pem"))
        try:
            yield http
        finally:
            http.close()
        return
    try:
        if needs_keys:
            terminal = Terminal.open(data.path, passphrase())
            try:
                yield LocalClient(data, terminal, _local_actor(terminal.engine))
            finally:
                terminal.engine.dispose()
        else:
            config = data.load_config()
            engine = open_engine(config.database)
            if not schema_is_current(engine):
                fail("the database schema is not current; run `parley serve` once to migrate")
            try:
                actor = _local_actor(engine)
                records = Records(engine, config.party, own_card=_own_bundle().card)
                yield LocalClient(data, records, actor)
            finally:
                engine.dispose()
    finally:
        lock.release()


# Setting up -----------------------------------------------------------------


@app.command()
def init(
    party: Annotated[str, typer.Option(help="Party id, e.g. US-EUCOM (capitals, digits, . _ -).")],
    name: Annotated[str, typer.Option(help='Display name, e.g. "US European Command".')],
    peer_listen: Annotated[
        str, typer.Option(help="HOST:PORT of the peer listener (mutual TLS).")
    ] = "0.0.0.0:7443",
    console_listen: Annotated[
        str,
        typer.Option(
            help="HOST:PORT of the operator API and console: a loopback address, or any "
            "address with --console-tls."
        ),
    ] = "127.0.0.1:7080",
    console_tls: Annotated[
        bool,
        typer.Option(
            "--console-tls",
            help="Serve the console over HTTPS (needed off loopback), with a certificate the "
            "terminal makes (`parley console cert` prints its fingerprint) unless "
            "--console-tls-cert gives yours.",
        ),
    ] = False,
    console_name: Annotated[
        list[str] | None,
        typer.Option(
            "--console-name",
            help="A name or address workstations use to reach the console (repeat for "
            "more): in its certificate, and the only Host names it answers besides its "
            "listen address. Needed with a wildcard --console-listen.",
        ),
    ] = None,
    console_tls_cert: Annotated[
        Path | None,
        typer.Option(help="Your certificate for the console (PEM, chain after it), instead."),
    ] = None,
    console_tls_key: Annotated[
        Path | None, typer.Option(help="The private key of --console-tls-cert (PEM).")
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(help="postgresql://… URL; default: SQLite file parley.db in DIR."),
    ] = None,
    link_test_interval: Annotated[
        float, typer.Option(help="Seconds between link tests (3600 = hourly).")
    ] = 3600.0,
    scrypt_n: Annotated[int, typer.Option(hidden=True)] = 2**17,
) -> None:
    """Create keys, database, configuration and console token in DIR."""
    from parley.service.setup import REVOCATION_CERTIFICATE, init_terminal

    config = init_terminal(
        state.data.path,
        party=party,
        name=name,
        passphrase=passphrase(confirm=True),
        peer_listen=peer_listen,
        console_listen=console_listen,
        console_tls=console_tls,
        console_names=console_name or [],
        console_tls_cert=str(console_tls_cert or ""),
        console_tls_key=str(console_tls_key or ""),
        database=database,
        link_test_interval=link_test_interval,
        scrypt_n=scrypt_n,
    )
    bundle = CardBundle.from_json(state.data.card_file.read_bytes())
    err.print(f"Created terminal {config.party} in {state.data.path}")
    err.print(f"Card (give it to your peers): {state.data.card_file}")
    err.print(f"Fingerprint (read it to them aloud): {bundle.card.fingerprint}", soft_wrap=True)
    err.print(
        f"Revocation certificate: {state.data.path / REVOCATION_CERTIFICATE}: print it, put "
        "the paper in the safe and delete the file. It revokes this card if its keys are "
        "ever compromised (`parley keys revoke --certificate`); whoever holds it can revoke.",
        soft_wrap=True,
    )
    if config.console_tls:
        _print_console_certificate(_console_status(), to=err)


def _own_bundle() -> CardBundle:
    state.data.require()
    return _read_card(state.data.card_file, "this terminal's card file")[0]


def _read_card(path: Path, what: str) -> tuple[CardBundle, bytes]:
    """A card file the operator named, and its bytes; never blamed on the other party."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        unreadable(what, path, exc)
    try:
        return CardBundle.from_json(raw), raw
    except ParleyError as exc:
        unreadable(what, path, exc, parse="a Parley card")


@app.command()
def card() -> None:
    """Print this terminal's card (identity card and TLS certificate, JSON) to stdout."""
    sys.stdout.write(_own_bundle().to_json().decode() + "\n")


@app.command()
def fingerprint() -> None:
    """Print this terminal's fingerprint (12 groups of 5 digits) to stdout."""
    sys.stdout.write(_own_bundle().card.fingerprint + "\n")


@peer_app.command("add")
def peer_add(
    card_file: Annotated[Path, typer.Option("--card", help="The peer's card file.")],
    fingerprint: Annotated[
        str, typer.Option(help="The fingerprint the peer read aloud (spaces optional).")
    ],
    link: Annotated[
        list[str] | None,
        typer.Option(help="NAME=https://HOST:PORT, one per link to the peer (repeatable)."),
    ] = None,
) -> None:
    """Pin a peer: refuse it unless its card matches the fingerprint read aloud."""
    links = []
    for item in link or []:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            usage(f"--link must be NAME=URL, not {item!r}")
        links.append((name, url))
    bundle, raw = _read_card(card_file, "the card file")
    pinned = bundle.card.pinned(fingerprint)
    with operator_client(needs_keys=True) as client:
        client.add_peer(bundle, raw, fingerprint, links)
    err.print(f"Pinned {pinned.party} ({pinned.name}) with {len(links)} link(s).")


@peer_app.command("revocation")
def peer_revocation(
    file: Annotated[Path, typer.Argument(help="The revocation.json a peer handed over.")],
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Take in a peer's revocation (an administrator): refused unless signed by a later card
    of its chain or by the offline revocation keys its card names. From then on nothing
    the revoked card signed after the stated time is accepted; if it was the card in use,
    the peer's next card must be pinned again by its fingerprint read aloud (`peer add`)."""
    try:
        raw = file.read_bytes().strip()
        json.loads(raw)  # a file that is not JSON is refused here, as unreadable
    except (OSError, ValueError) as exc:
        unreadable("the revocation file", file, exc)
    with operator_client(needs_keys=True) as client:
        result = client.import_revocation(raw)

    def render(body: dict[str, Any]) -> None:
        err.print(
            f"{body['party']}'s card version {body['version']} is revoked from "
            f"{body['compromised_at']}: {body['reason']}"
        )
        if body["card_in_use_revoked"]:
            err.print(
                f"It was the card in use: pin {body['party']}'s next card with `parley peer add` "
                "after reading its fingerprint aloud."
            )

    emit(result, json_, render)


@peer_app.command("list")
def peer_list(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List pinned peers with their card versions, fingerprints and links."""
    with operator_client(needs_keys=False) as client:
        peers = client.peers()

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("Party", "Name", "Card version", "Fingerprint", "Links")
        for p in items:
            links = ", ".join(f"{li['name']}={li['url']}" for li in p["links"])
            table.add_row(p["party"], p["name"], str(p["card_version"]), p["fingerprint"], links)
        out.print(table)

    emit(peers, json_, render)


@keys_app.command("status")
def keys_status(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """This terminal's card (version, validity) and the cards it replaced (rotated out or
    revoked), its encryption keys and their state, and every pinned peer's card version,
    end and announced encryption key. Medium-term
    encryption keys are current (peers encrypt to it), grace (replaced; still opens what
    was sent to it until the date shown) or destroyed (its private half overwritten on
    the date shown: what was sent to it opens nowhere). The card's own key is current
    until a medium-term key exists, then the fallback for peers that have had no
    announcement. `parley serve` makes a new key every keys.encryption_key_rotation
    (7d) and destroys a replaced one after keys.encryption_key_grace (14d); it raises a
    card_expiry alarm 90 and 30 days (warning) and 7 days (critical) before a card ends,
    and when it has."""
    with operator_client(needs_keys=False) as client:
        shown = client.keys_status()
    shown["console_certificate"] = _console_status()

    def render(body: dict[str, Any]) -> None:
        card = body["card"]
        out.print(
            f"{card['party']} ({card['name']})  card version {card['card_version']}  "
            f"{card['state']}: {card['valid_from']} to {card['valid_until']} "
            f"({card['days_left']} days left)"
        )
        out.print(f"fingerprint: {card['fingerprint']}", soft_wrap=True)
        keys = Table("Encryption key", "Id", "State", "From", "Until", "Destroyed / due")
        for key in body["encryption_keys"]:
            medium = key["kind"] == "medium-term"
            keys.add_row(
                f"{key['algorithm']} #{key['serial']}" if medium else f"{key['algorithm']} (card)",
                key["key_id"][:16] if medium else f"card v{key['card_version']}",
                key["state"],
                key["valid_from"],
                key["valid_until"] or "",
                key["destroyed_at"] or key["destroy_after"] or "",
            )
        out.print(keys)
        chain = Table("Own card", "State", "Signs until", "Fingerprint")
        for item in body["card"].get("chain", []):
            chain.add_row(
                str(item["card_version"]),
                item["state"] + (f" ({item['revoked']})" if item["revoked"] else ""),
                item["signs_until"] or "",
                item["fingerprint"],
            )
        out.print(chain)
        peers = Table("Peer", "Card version", "State", "Valid until", "Days left", "Encrypt to")
        for peer in body["peers"]:
            held = peer.get("encryption_key")
            peers.add_row(
                peer["party"],
                str(peer["card_version"]),
                peer["state"],
                peer["valid_until"],
                str(peer["days_left"]),
                f"#{held['serial']} {held['key_id'][:16]}" if held else "card key",
            )
        out.print(peers)
        console = body["console_certificate"]
        if "fingerprint" in console:
            out.print(
                f"console certificate ({'own' if console['own'] else 'console.tls_cert'}) "
                f"{console['state']}: until {console['valid_until']} ({console['days_left']} "
                f"days left); SHA-256 {console['fingerprint']}",
                soft_wrap=True,
                **PLAIN,
            )
        elif console["tls"] or console["state"] == "unreadable":
            out.print(
                f"console certificate: {console['state']}. {console.get('problem', '')}", **PLAIN
            )

    emit(shown, json_, render)


@keys_app.command("rotate")
def keys_rotate(
    validity_days: Annotated[
        int | None,
        typer.Option(
            help="Days the new card is valid (default 730, at most max_card_validity_days)."
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Replace this terminal's signature keys without downtime (an administrator).

    Makes card version n+1, signed by the keys in use and by the new ones, writes it to
    the transcript and sends it to every peer, who accept it by themselves because it
    chains to the card they pinned. Messages keep flowing; the old keys still verify
    what they signed and never sign again. The new fingerprint may be read aloud to the
    peers as a confirmation. A running `parley serve` keeps its TLS certificate until
    its next start. After the card in use was revoked, the new card does not chain: the
    peers pin it again by its fingerprint read aloud (`parley peer add`)."""
    with operator_client(needs_keys=True) as client:
        result = client.rotate_keys(validity_days=validity_days)

    def render(body: dict[str, Any]) -> None:
        err.print(
            f"{body['party']}: card version {body['previous_version']} replaced by version "
            f"{body['version']} (valid until {body['valid_until']}); announced to "
            f"{', '.join(body['announced_to']) or 'no peer'}."
        )
        if body.get("pin_again"):
            err.print(
                "The card in use was revoked, so no peer accepts the new card by itself: hand "
                "them the card file (parley card) and read this fingerprint to each of them "
                "aloud before they run `parley peer add`."
            )
        out.print(
            f"New fingerprint (may be read aloud to confirm): {body['fingerprint']}", soft_wrap=True
        )

    emit(result, json_, render)


@keys_app.command("revoke")
def keys_revoke(
    reason: Annotated[str, typer.Option(help="Why, as the peers will read it.")],
    version: Annotated[
        int | None,
        typer.Option(
            help="The card version to revoke (an earlier one; default: the card in use, "
            "which needs --certificate)."
        ),
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option(help="The revocation certificate from the safe (printed at `parley init`)."),
    ] = None,
    compromised_at: Annotated[
        str | None,
        typer.Option(
            help="When the keys were compromised (UTC, 2026-12-05T10:00:00Z); "
            "signatures dated later are refused. Default: now."
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Revoke one of this terminal's cards after a compromise (an administrator).

    An earlier card is revoked by the keys in use (--version N), and the revocation is
    sent to every peer. The card in use is revoked with the revocation certificate kept
    in the safe (--certificate FILE): then hand the file revocation.json to each peer
    (`parley peer revocation`), run `parley keys rotate` for new keys (their card does not
    chain, as no revoked key can vouch for it) and have the peers pin it with `parley peer
    add` and its fingerprint read aloud. Peers refuse anything the revoked card signs after
    --compromised-at and raise a key_revoked alarm."""
    text = None
    if certificate is not None:
        try:
            text = certificate.read_text().strip()
        except OSError as exc:
            unreadable("the revocation certificate", certificate, exc)
    when = None
    if compromised_at is not None:
        try:
            when = datetime.fromisoformat(compromised_at.replace("Z", "+00:00"))
        except ValueError:
            usage(
                "--compromised-at must be a UTC time like 2026-12-05T10:00:00Z, "
                f"not {compromised_at!r}"
            )
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    with operator_client(needs_keys=True) as client:
        result = client.revoke_keys(
            reason=reason, version=version, certificate=text, compromised_at=when
        )

    def render(body: dict[str, Any]) -> None:
        err.print(
            f"Revoked card version {body['version']} of {body['party']} from "
            f"{body['compromised_at']}: {body['reason']}"
        )
        sent = ", ".join(body["sent_to"])
        err.print(
            f"Sent to {sent}." if sent else "Hand this file to every peer (parley peer revocation):"
        )
        out.print(body["file"])

    emit(result, json_, render)


def _console_status() -> dict[str, Any]:
    from parley.service.console_tls import status
    from parley.service.terminal import utc_now

    return status(state.data, state.data.load_config(), utc_now())


#: Text printed as it is: no markup, no emoji (":AB:" in a fingerprint is not 🆎).
PLAIN: dict[str, Any] = {"markup": False, "emoji": False, "highlight": False}


def _print_console_certificate(shown: dict[str, Any], *, to: Console) -> None:
    if "fingerprint" not in shown:
        to.print(f"Console certificate: {shown['state']}. {shown.get('problem', '')}", **PLAIN)
        return
    whose = "the terminal's own" if shown["own"] else "yours (console.tls_cert)"
    to.print(f"Console certificate ({whose}): {shown['file']}", soft_wrap=True, **PLAIN)
    to.print(f"SHA-256 fingerprint: {shown['fingerprint']}", soft_wrap=True, **PLAIN)
    to.print(f"SPKI SHA-256 (base64): {shown['spki_sha256']}", soft_wrap=True, **PLAIN)
    to.print(
        f"Names: {', '.join(shown['names']) or 'none'}; valid {shown['valid_from']} to "
        f"{shown['valid_until']} ({shown['days_left']} days left, {shown['state']})",
        soft_wrap=True,
        **PLAIN,
    )
    if not shown["tls"]:
        to.print("console.tls is off: the console listener does not present it.", **PLAIN)


@console_app.command("cert")
def console_cert(
    renew: Annotated[
        bool,
        typer.Option(
            "--renew",
            help="Make a new key and certificate now (the terminal's own only); a running "
            "parley serve presents it from its next start.",
        ),
    ] = False,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The console's HTTPS certificate: the PEM file, its SHA-256 fingerprint to compare in
    the workstation's browser before trusting it, its SPKI hash, names and validity.

    With console.tls on, the terminal makes its own (ECDSA P-256, self-signed, 397 days,
    DIR/console-tls.pem; key DIR/console-tls.key, 0600) if there is none yet; parley serve
    replaces it at start 30 days before it ends or when console.names gains a name.
    console.tls_cert and console.tls_key use yours instead."""
    from parley.service.console_tls import console_certificate, make_own_certificate
    from parley.service.terminal import utc_now

    state.data.require()
    config = state.data.load_config()
    if renew:
        if config.console_tls_cert:
            usage("--renew makes the terminal's own certificate; console.tls_cert names yours")
        made = make_own_certificate(state.data, config, utc_now())
        err.print(
            f"New console certificate {made.cert_file}: the workstations trust it again; "
            "a running parley serve presents it once restarted."
        )
    elif (
        config.console_tls
        and not config.console_tls_cert
        and console_certificate(state.data, config) is None
    ):
        make_own_certificate(state.data, config, utc_now())
    shown = _console_status()
    if shown["state"] == "unreadable":
        fail(str(shown["problem"]))
    if shown["state"] == "not made yet":
        fail(
            "the console has no certificate yet: console.tls is off "
            "(turn it on in parley.toml, or make one now with --renew)"
        )
    emit(shown, json_, lambda body: _print_console_certificate(body, to=out))


@metrics_app.command("token")
def metrics_token(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Write the token to this file (mode 0600, for Prometheus's credentials_file) "
            "instead of printing it.",
        ),
    ] = None,
) -> None:
    """Make a new scrape token for /metrics (the previous one stops working at once).

    The token reads the metrics and nothing else; the terminal keeps only its
    SHA-256 (DIR/metrics.token.sha256). Prometheus sends it as a bearer token.
    """
    from parley.config import write_private
    from parley.service.metrics import new_scrape_token, scrape_token_file

    state.data.require()
    token = new_scrape_token(state.data)
    if output is None:
        out.print(token, soft_wrap=True)
    else:
        write_private(output, token.encode() + b"\n")
        err.print(f"Scrape token written to {output}")
    err.print(f"Its hash is kept in {scrape_token_file(state.data)}; a running terminal uses it.")


@app.command()
def serve(
    standby: Annotated[
        bool,
        typer.Option(
            help="PostgreSQL only: wait as a standby while another process serves this party "
            "from the same database (on this machine or another), and take over within "
            "seconds when it stops or dies. Without it, serve refuses to start while "
            "another process serves the party."
        ),
    ] = False,
) -> None:
    """Run the terminal until stopped (SIGINT/SIGTERM finish in-flight work and exit 0).

    On SQLite one process serves a data directory (DIR/serve.lock). On
    PostgreSQL one process serves a party, by an advisory lock on the
    database; a process that loses that lock's connection stops at once
    with exit status 3. See "Standby" in the README.
    """
    from parley.server import run

    run(state.data.path, passphrase(), standby=standby)


# Operating ------------------------------------------------------------------


@app.command()
def send(
    to: Annotated[str, typer.Option(help="Recipient party ids, comma-separated.")],
    precedence: Annotated[
        str, typer.Option(help="FLASH, IMMEDIATE, PRIORITY or ROUTINE.", case_sensitive=False)
    ],
    text: Annotated[str | None, typer.Option(help="Free text.")] = None,
    form: Annotated[
        str | None, typer.Option(help="Form name (with --file); see `parley form list`.")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="The form's data (JSON).")] = None,
    form_version: Annotated[
        int | None, typer.Option(help="The form's version (default: the latest).")
    ] = None,
    channel: Annotated[
        str | None, typer.Option(help="Channel name (default: the bilateral channel).")
    ] = None,
    exercise: Annotated[bool, typer.Option(help="Mark the message as an exercise.")] = False,
    lang: Annotated[
        str,
        typer.Option(
            "--lang",
            envvar="PARLEY_LANG",
            help="The language the text is written in (a BCP 47 tag: en, ru, uk…).",
        ),
    ] = "en",
    json_: Annotated[
        bool, typer.Option("--json", help="Print {'id': …} (or {'held': N}) as JSON.")
    ] = False,
) -> None:
    """Queue a message (durable before this returns) and print its id.

    A duty officer's FLASH is held for a supervisor (``parley held release``)
    and prints the held message's number instead.

    A form is checked here against its definition before it is sent, and
    again by each receiver; a notice that needs advance notice (such as a
    missile launch notification) is refused when it is given too late and not
    marked as a late notice.
    """
    recipients = [p.strip() for p in to.split(",") if p.strip()]
    data = None
    if form is not None:
        if file is None:
            usage("--form needs --file DATA.json")
        data = _read_json(file, "the form data")
    result = _submit(
        {
            "to": recipients,
            "channel": channel,
            "precedence": precedence,
            "exercise": exercise,
            "text": text,
            "form": form,
            "form_version": form_version,
            "data": data,
            "lang": lang,
        }
    )
    _print_sent(result, json_)


def _submit(request: dict[str, Any]) -> dict[str, Any]:
    """Send one message (a ``POST /messages`` request) through the API or the database.

    A duty officer's FLASH is held for a supervisor: the result is ``{"held": N}``.
    """
    from parley.service.operations import build_body

    request = {**request, "precedence": _precedence(request["precedence"])}
    build_body(
        request.get("text"), request.get("form"), request.get("data"), request.get("form_version")
    )
    with operator_client(needs_keys=True) as client:
        return client.send(request)


def _print_sent(result: dict[str, Any], as_json: bool = False) -> None:
    if "held" in result:
        if as_json:
            out.print_json(json.dumps({"held": result["held"]}))
        else:
            err.print(
                f"FLASH held for a supervisor's release (held message {result['held']}).",
                highlight=False,
            )
        return
    if as_json:
        out.print_json(json.dumps({"id": result["id"]}))
    else:
        sys.stdout.write(result["id"] + "\n")


def _summary(body: dict[str, Any]) -> str:
    if "text" in body:
        return str(body["text"])
    if "form" in body:
        return f"[form {body['form'].get('name')}]"
    if "service" in body:
        return f"[service {', '.join(body['service'])}]"
    return json.dumps(body)[:80]


@app.command()
def inbox(
    json_: Annotated[bool, typer.Option("--json")] = False,
    all_: Annotated[
        bool,
        typer.Option("--all", help="Include acks, link tests and encryption key announcements."),
    ] = False,
) -> None:
    """Messages received: those awaiting an acknowledgement first, then by precedence."""
    with operator_client(needs_keys=False) as client:
        items = client.inbox(all_kinds=all_)

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("Id", "Prec.", "From", "Channel", "Received", "Ack", "Content")
        for r in rows:
            if r.get("verified") is False:
                table.add_row(
                    r["id"],
                    "",
                    "",
                    "",
                    (r["stored_at"] or "")[:19],
                    "",
                    f"[bold red]DOES NOT VERIFY[/]: {escape(r['problem'])}",
                )
                continue
            ack = r.get("acknowledged_by") or ("due " + (r["ack_due"] or "")[11:16])
            table.add_row(
                r["id"],
                r["precedence"] + (" EX" if r["exercise"] else ""),
                r["sender"],
                r["channel"],
                r["stored_at"][:19],
                ack if r["kind"] in ("text", "form") else "",
                escape(_summary(r["body"])[:60]),
            )
        out.print(table)

    emit(items, json_, render)


@app.command()
def show(
    envelope_id: Annotated[str, typer.Argument(metavar="ID")],
    lang: Lang = "en",
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One message, its receipts and its acknowledgement status.

    A form is rendered in the reader's language (--lang); free text is shown
    as written, with a machine translation beside it when an engine has the
    pair (Apertium for Russian-Ukrainian, Argos for others; marked as such,
    never the sender's words, never signed) and any certified translations.
    """
    lang = _check_lang(lang)
    with operator_client(needs_keys=False) as client:
        item = _with_machine_translation(client.show(envelope_id), lang, client)

    def render(r: dict[str, Any]) -> None:
        if r.get("verified") is False:
            out.print(
                f"Message {r['id']}, log entry {r['log_index']}: "
                f"[bold red]DOES NOT VERIFY[/]: {escape(r['problem'])}",
                highlight=False,
            )
            out.print(
                "Its stored index no longer matches the signed record, so nothing it claims is "
                "shown. Run `parley verify` for the full audit."
            )
            return
        out.print(
            f"[bold]{r['precedence']}[/] {r['kind']} {r['id']}"
            + (" [yellow]EXERCISE[/]" if r["exercise"] else "")
        )
        out.print(
            f"From {r['sender']} ({escape(r['operator'])}) to {', '.join(r['recipients'])} "
            f"on {r['channel']} #{r['seq']}, sent {r['created_at']}"
        )
        out.print(f"Log entry {r['log_index']}, stored {r['stored_at']}")
        out.print()
        for line in message_view(r, lang):
            out.print(line, highlight=False)
        out.print()
        if r["direction"] == "in":
            if r.get("rejection"):
                pass  # shown above with the content
            elif r["acknowledged_by"]:
                out.print(f"Acknowledged by {r['acknowledged_by']} at {r['acknowledged_at']}")
            elif r["ack_due"]:
                out.print(f"[yellow]Not acknowledged[/]; due {r['ack_due']}")
        else:
            for party in r["recipients"]:
                receipt = r["receipts"].get(party)
                ack = r["acks"].get(party)
                refused = r.get("rejections", {}).get(party)
                delivery = r["delivery"].get(party, {})
                line = f"{party}: " + (
                    f"receipt {receipt}"
                    if receipt
                    else f"[yellow]{delivery.get('state')}[/]"
                    f" ({delivery.get('attempts', 0)} attempts)"
                )
                if refused:
                    line += (
                        f", [bold red]REFUSED[/] by {party} ({refused['code']}): "
                        f"{escape(refused['reason'])}"
                    )
                if ack:
                    line += f", acknowledged by {ack['operator']} at {ack['at']}"
                out.print(line)

    emit(item, json_, render)
    if item.get("verified") is False:
        raise typer.Exit(1)


def _check_lang(lang: str) -> str:
    from parley.core.forms import LANGS

    if lang not in LANGS:
        usage(f"--lang must be one of {', '.join(LANGS)}, not {lang!r}")
    return lang


def message_view(r: dict[str, Any], lang: str) -> list[str]:
    """The content of a message for a reader of ``lang`` (rich markup)."""
    from parley.forms import default_registry
    from parley.forms.render import render_form, render_text

    body = r["body"]
    rejection = r.get("rejection")
    lines: list[str] = []
    if rejection:
        lines.append(
            f"[bold red]REFUSED[/] by this terminal ({rejection['code']}), answered with a "
            f"negative receipt: {escape(rejection['reason'])}"
        )
        lines.append("As received (not a valid form):")
        lines.append(escape(json.dumps(body, indent=2, ensure_ascii=False)))
        return lines
    if r["kind"] == "form":
        form = body["form"]
        registry = default_registry()
        if registry.get(form["name"], form["version"]) is None:
            lines.append(f"[yellow]Form {escape(form['name'])} v{form['version']} is not known[/]")
            lines.append(escape(json.dumps(form, indent=2, ensure_ascii=False)))
            return lines
        rendered = render_form(registry, form["name"], form["version"], form["data"], lang)
        lines.append(f"[bold]{escape(rendered.title)}[/] ({form['name']} v{form['version']})")
        lines.append(escape(render_text(rendered)))
        return lines
    if r["kind"] == "text":
        lines.append(f"[dim]Original ({escape(r['lang'])}):[/]")
        lines.append(escape(body["text"]))
        lines.extend(_translations_view(r, lang))
        return lines
    lines.append(escape(json.dumps(body, indent=2, ensure_ascii=False)))
    return lines


def _translations_view(r: dict[str, Any], lang: str) -> list[str]:
    """Certified translations into ``lang`` and the machine translation (marked)."""
    lines: list[str] = []
    certified = [t for t in r.get("translations", []) if t["target_lang"] == lang]
    for t in certified:
        checks = ", ".join(c["operator"] for c in t["countersignatures"]) or "none yet"
        lines.append(
            f"[dim]Certified translation ({lang}) by {escape(t['operator'])}, "
            f"countersigned by {escape(checks)}:[/]"
        )
        lines.append(escape(t["text"]))
    machine = r.get("machine_translation")
    if machine:
        lines.append(f"[dim]{escape(machine['label'])}; not the sender's words:[/]")
        lines.append(escape(machine["text"]))
    elif r.get("untranslated") and not certified:
        lines.append(
            f"[yellow]Untranslated[/] (written in {escape(r['lang'])}): {escape(r['untranslated'])}"
        )
    return lines


def _with_machine_translation(
    item: dict[str, Any], lang: str, client: OperatorClient
) -> dict[str, Any]:
    """A free-text message with its machine translation into ``lang`` (labelled), if any.

    Made by the running terminal when it runs (its ``[translation]`` setting),
    else here from the same configuration; never signed, never stored.
    """
    if item.get("kind") != "text" or item.get("verified") is False:
        return item
    answer = client.machine_translation(item, lang)
    return {
        **item,
        "machine_translation": answer["machine_translation"],
        "untranslated": answer["untranslated"],
    }


@app.command()
def ack(envelope_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Acknowledge a received message (a signed message naming you, the operator)."""
    with operator_client(needs_keys=True) as client:
        result = client.acknowledge(envelope_id)
    sys.stdout.write(result["id"] + "\n")


@app.command()
def links(
    json_: Annotated[bool, typer.Option("--json")] = False,
    test: Annotated[
        bool,
        typer.Option(
            "--test", help="Test every link now (the running terminal; a supervisor or admin)."
        ),
    ] = False,
) -> None:
    """Each link's state (up, degraded, down), round-trip time and last success."""
    if test:
        with operator_client(needs_keys=False) as client:
            queued = client.test_links()
        err.print(f"Testing {queued['queued']} link(s); see `parley links`.")
        return
    with operator_client(needs_keys=False) as client:
        items = client.links()

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table(
            "Peer", "Link", "URL", "State", "RTT ms", "Last success", "Last test", "Error"
        )
        colour = {"up": "green", "degraded": "yellow", "down": "red"}
        for r in rows:
            table.add_row(
                r["peer"],
                r["name"],
                r["url"],
                f"[{colour.get(r['state'], 'white')}]{r['state']}[/]",
                f"{r['rtt_ms']:.1f}" if r["rtt_ms"] is not None else "",
                (r["last_success"] or "")[:19],
                (r["last_test"] or "")[:19],
                (r["last_error"] or "")[:40],
            )
        out.print(table)

    emit(items, json_, render)


@app.command()
def status(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The terminal's state: log size, pending deliveries, cosignatures, and whether it is
    frozen (its log is behind what its peers saw: it signs nothing until recovered)."""
    with operator_client(needs_keys=True) as client:
        shown = client.status()

    def render(body: dict[str, Any]) -> None:
        out.print(f"{body['party']} ({body['name']})  log {body['log_size']} entries")
        out.print(f"pending deliveries: {body['pending']}")
        cosigned = body.get("cosigned_by") or {}
        for peer in body.get("peers", []):
            out.print(f"  {peer}: cosigned our log up to {cosigned.get(peer, 'nothing yet')}")
        if body.get("frozen"):
            out.print(f"[bold red]FROZEN:[/] {body['frozen']}")

    emit(shown, json_, render)


@app.command()
def recover(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Rebuild the missing tail of this terminal's log from what its peers hold.

    Asks every peer for the checkpoints of our log it saw, the leaf hashes it
    witnessed and the envelopes and receipts it holds; puts every entry back in
    its original place, checked as on arrival. The running terminal does it (an
    administrator); it also does it by itself when it finds its log rolled back.
    What cannot be recovered is listed by index; exits 1 unless the log is complete.
    """
    with operator_client(needs_keys=False) as client:
        result = client.recover()

    def render(body: dict[str, Any]) -> None:
        out.print(
            f"log: {body['before']} entries before, {body['after']} after "
            f"(peers saw up to {body['target']}); {body['recovered']} recovered in place, "
            f"{body['appended_past_target']} appended after it"
        )
        for peer, state in sorted(body.get("peers", {}).items()):
            out.print(f"  {peer}: {state}")
        for hole in body.get("missing", []):
            out.print(f"  missing entry {hole['index']}: {hole['reason']}")
        out.print(
            "complete: the terminal signs again"
            if body["complete"]
            else "[bold red]incomplete:[/] the terminal stays frozen; run again when the peers "
            "that hold the missing entries answer"
        )

    emit(result, json_, render)
    if not result["complete"]:
        raise typer.Exit(1)


@app.command()
def alarms(
    json_: Annotated[bool, typer.Option("--json")] = False,
    clear: Annotated[
        int | None,
        typer.Option("--clear", metavar="ID", help="Clear this alarm (a supervisor)."),
    ] = None,
) -> None:
    """Alarms raised by this terminal, newest first; or clear one (--clear ID).

    One incident is one alarm: Seen counts how often it was seen while open,
    from At (first) to Last.
    """
    if clear is not None:
        with operator_client(needs_keys=True) as client:
            client.clear_alarm(clear)
        err.print(f"Cleared alarm {clear}.")
        return
    with operator_client(needs_keys=False) as client:
        items = client.alarms()

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("At", "Severity", "Kind", "Subject", "Message", "Seen", "Last", "Cleared")
        for r in rows:
            table.add_row(
                r["at"][:19],
                r["severity"],
                r["kind"],
                r["subject"],
                r["message"],
                str(r.get("count", 1)),
                (r.get("last_at") or r["at"])[:19],
                (r["cleared_at"] or "")[:19],
            )
        out.print(table)

    emit(items, json_, render)


@channel_app.command("create")
def channel_create(
    name: str,
    members: Annotated[str, typer.Option(help="Member party ids, comma-separated.")],
) -> None:
    """Propose a named channel; it can carry messages once every member agreed."""
    member_list = [p.strip() for p in members.split(",") if p.strip()]
    with operator_client(needs_keys=True) as client:
        result = client.create_channel(name, member_list)
    err.print(f"Proposed channel {name} to {', '.join(result['members'])}")


@channel_app.command("agree")
def channel_agree(name: str) -> None:
    """Agree to a channel another member proposed."""
    with operator_client(needs_keys=True) as client:
        client.agree_channel(name)
    err.print(f"Agreed to channel {name}")


@channel_app.command("list")
def channel_list(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Channels with their members and agreement state."""
    with operator_client(needs_keys=False) as client:
        items = client.channels()

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("Channel", "Members", "Kind", "State", "Agreed")
        for r in rows:
            table.add_row(
                r["name"], ", ".join(r["members"]), r["kind"], r["state"], ", ".join(r["agreed"])
            )
        out.print(table)

    emit(items, json_, render)


@form_app.command("list")
def form_list(
    lang: Lang = "en",
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every form this terminal knows: name, version and title."""
    from parley.forms import default_registry

    lang = _check_lang(lang)
    items = [
        {"name": d.name, "version": d.version, "title": d.title[lang], "digest": d.digest}
        for d in default_registry()
    ]

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("Form", "Version", "Title")
        for r in rows:
            table.add_row(r["name"], str(r["version"]), r["title"])
        out.print(table)

    emit(items, json_, render)


@form_app.command("show")
def form_show(
    name: str,
    version: Annotated[int | None, typer.Option(help="Default: the latest.")] = None,
    lang: Lang = "en",
    json_: Annotated[
        bool, typer.Option("--json", help="The whole definition: schema, labels, rules.")
    ] = False,
) -> None:
    """A form's fields with their labels and help, in the chosen language."""
    from parley.forms import default_registry
    from parley.forms.describe import describe_form

    lang = _check_lang(lang)
    registry = default_registry()
    definition = registry.latest(name) if version is None else registry.get(name, version)
    if definition is None:
        usage(f"no form {name}" + ("" if version is None else f" version {version}"))
    if json_:
        out.print_json(
            json.dumps(
                {
                    "name": definition.name,
                    "version": definition.version,
                    "digest": definition.digest,
                    "title": definition.title,
                    "help": definition.help,
                    "rules": list(definition.rules),
                    "schema": definition.schema,
                },
                ensure_ascii=False,
            )
        )
        return
    out.print(
        f"[bold]{escape(definition.title[lang])}[/] ({definition.name} v{definition.version})"
    )
    out.print(escape(definition.help[lang]))
    out.print()
    table = Table("Field", "Label", "Type", "Help")
    for field in describe_form(registry, definition.name, definition.version, lang):
        table.add_row(
            "  " * field.depth + field.path.rsplit("/", 1)[-1] + ("" if field.required else "?"),
            escape(field.label),
            escape(
                field.type + (": " + ", ".join(f"{v} ({label})" for v, label in field.values))
                if field.values
                else field.type
            ),
            escape(field.help),
        )
    out.print(table)
    out.print("[dim]? marks an optional field.[/]")


# Certified translations -----------------------------------------------------


@translation_app.command("add")
def translation_add(
    envelope_id: Annotated[str, typer.Argument(metavar="ID")],
    lang: Annotated[str, typer.Option("--lang", help="The language translated into.")],
    file: Annotated[Path | None, typer.Option(help="The translation (UTF-8 text).")] = None,
    text: Annotated[str | None, typer.Option(help="The translation, inline.")] = None,
) -> None:
    """Attach your certified translation of a message; prints its digest."""
    if (file is None) == (text is None):
        usage("give the translation with --file or --text")
    if file is not None:
        try:
            text = file.read_text("utf-8")
        except (OSError, ValueError) as exc:
            unreadable("the translation", file, exc)
    assert text is not None
    with operator_client(needs_keys=True) as client:
        result = client.certify_translation(envelope_id, lang=lang, text=text)
    sys.stdout.write(result["digest"] + "\n")


@translation_app.command("countersign")
def translation_countersign(
    digest: Annotated[str, typer.Argument(metavar="DIGEST")],
) -> None:
    """Countersign another operator's certified translation, after checking it."""
    with operator_client(needs_keys=True) as client:
        client.countersign_translation(digest)
    sys.stdout.write(f"countersigned {digest}\n")


# Exchanges ------------------------------------------------------------------

KINDS_OF_EXCHANGE = {"prisoners": "PRISONER_EXCHANGE_LIST", "remains": "REMAINS_REPATRIATION"}


def _exchange_view(exchange_id: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
    with operator_client(needs_keys=False) as client:
        view = client.exchange(exchange_id)
    if view is None and not missing_ok:
        usage(f"no exchange {exchange_id} on this terminal")
    return view


def _channel_members(channel: str) -> list[str]:
    with operator_client(needs_keys=False) as client:
        channels = client.channels()
    for c in channels:
        if c["name"] == channel:
            if c["state"] != "active":
                usage(f"channel {channel} is not agreed by every member yet")
            return list(c["members"])
    usage(f"no channel {channel}; create it with `parley channel create`")


def _read_json(file: Path, what: str) -> Any:
    try:
        text = file.read_text("utf-8")
    except (OSError, ValueError) as exc:
        unreadable(what, file, exc)
    try:
        return json.loads(text)
    except ValueError as exc:
        unreadable(what, file, exc, parse="JSON")


def _persons(file: Path) -> list[Any]:
    persons = _read_json(file, "the list of persons")
    if isinstance(persons, dict):
        persons = persons.get("persons")
    if not isinstance(persons, list):
        raise UnreadableFile(
            f"the list of persons {file} must hold a JSON list of persons "
            "(or an object with 'persons')"
        )
    return persons


def _me() -> str:
    return state.data.load_config().party


def _send_to_channel(
    channel: str, members: list[str], form: str, data: dict[str, Any], precedence: str
) -> str:
    me = _me()
    result = _submit(
        {
            "to": sorted(set(members) - {me}),
            "channel": channel,
            "precedence": precedence,
            "form": form,
            "data": data,
        }
    )
    if "held" in result:
        return f"held {result['held']} (a FLASH waiting for a supervisor's release)"
    return str(result["id"])


Precedence = Annotated[
    str, typer.Option(help="FLASH, IMMEDIATE, PRIORITY or ROUTINE.", case_sensitive=False)
]


@exchange_app.command("propose")
def exchange_propose(
    exchange_id: Annotated[str, typer.Argument(metavar="EXCHANGE_ID")],
    channel: Annotated[str, typer.Option(help="The channel of the two sides and the mediator.")],
    file: Annotated[Path, typer.Option(help="The persons (JSON list) this side will hand over.")],
    kind: Annotated[str, typer.Option(help="prisoners or remains.")] = "prisoners",
    note: Annotated[str | None, typer.Option(help="A note for the other parties.")] = None,
    precedence: Precedence = "PRIORITY",
) -> None:
    """Propose this side's list: the persons it holds and will hand over."""
    if kind not in KINDS_OF_EXCHANGE:
        usage(f"--kind must be prisoners or remains, not {kind!r}")
    view = _exchange_view(exchange_id, missing_ok=True)
    if view is not None and _me() in view["lists"]:
        usage(f"this side already proposed a list for {exchange_id}; use `parley exchange amend`")
    if view is not None and view["kind"] not in (None, kind):
        usage(f"{exchange_id} is an exchange of {view['kind']}, not {kind}")
    data: dict[str, Any] = {
        "exchange_id": exchange_id,
        "revision": 1,
        "persons": _persons(file),
    }
    if note:
        data["note"] = note
    members = _channel_members(channel)
    sys.stdout.write(
        _send_to_channel(channel, members, KINDS_OF_EXCHANGE[kind], data, precedence) + "\n"
    )


@exchange_app.command("amend")
def exchange_amend(
    exchange_id: Annotated[str, typer.Argument(metavar="EXCHANGE_ID")],
    file: Annotated[Path, typer.Option(help="The full new list of persons (JSON).")],
    note: Annotated[str | None, typer.Option(help="What changed, for the other parties.")] = None,
    precedence: Precedence = "PRIORITY",
) -> None:
    """Replace this side's list with a new revision (every agreement must then be renewed)."""
    view = _exchange_view(exchange_id)
    assert view is not None
    if _me() not in view["lists"]:
        usage(f"this side has no list in {exchange_id} yet; use `parley exchange propose`")
    data: dict[str, Any] = {
        "exchange_id": exchange_id,
        "revision": view["next_revision"],
        "persons": _persons(file),
    }
    if note:
        data["note"] = note
    form = KINDS_OF_EXCHANGE[view["kind"]]
    sys.stdout.write(
        _send_to_channel(view["channel"], view["members"], form, data, precedence) + "\n"
    )


@exchange_app.command("agree")
def exchange_agree(
    exchange_id: Annotated[str, typer.Argument(metavar="EXCHANGE_ID")],
    manifest: Annotated[
        str | None,
        typer.Option(help="The manifest hash you checked (refused if it is no longer current)."),
    ] = None,
    precedence: Precedence = "PRIORITY",
) -> None:
    """Sign the current manifest (every list as it stands) for this side."""
    view = _exchange_view(exchange_id)
    assert view is not None
    if view["agreement"] is None:
        usage(f"{exchange_id} has no list yet: nothing to agree")
    if manifest is not None and manifest != view["manifest"]:
        usage(
            f"the manifest of {exchange_id} is now {view['manifest']}, not {manifest}: "
            "a list was amended; review it and agree again"
        )
    sys.stdout.write(
        _send_to_channel(
            view["channel"], view["members"], "EXCHANGE_AGREEMENT", view["agreement"], precedence
        )
        + "\n"
    )


@exchange_app.command("status")
def exchange_status(
    exchange_id: Annotated[str, typer.Argument(metavar="EXCHANGE_ID")],
    party: Annotated[str | None, typer.Option(help="Whose list the person is on.")] = None,
    ref: Annotated[str | None, typer.Option(help="The person's ref in that list.")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="handed_over, received, not_present or declined_to_return."),
    ] = None,
    note: Annotated[str | None, typer.Option(help="A note on this person.")] = None,
    file: Annotated[
        Path | None, typer.Option(help="Many updates: a JSON list of {party, ref, status, note?}.")
    ] = None,
    precedence: Precedence = "IMMEDIATE",
) -> None:
    """Report what happened to persons during the exchange (against the agreed manifest)."""
    from parley.core.exchange import STATUSES

    view = _exchange_view(exchange_id)
    assert view is not None
    if not view["agreed"]:
        usage(f"the manifest of {exchange_id} is not agreed by every member yet")
    if file is not None:
        updates = _read_json(file, "the status updates")
        if not isinstance(updates, list):
            raise UnreadableFile(f"the status updates {file} must hold a JSON list of updates")
    elif party and ref and status:
        updates = [{"party": party, "ref": ref, "status": status}]
        if note:
            updates[0]["note"] = note
    else:
        usage("give --party, --ref and --status, or --file")
    me = _me()
    for update in updates:
        if not isinstance(update, dict):
            usage("each update is an object {party, ref, status, note?}")
        listed = view["lists"].get(update.get("party"), {"persons": []})["persons"]
        if update.get("ref") not in {p.get("ref") for p in listed}:
            usage(f"{update.get('party')}'s list has no person {update.get('ref')}")
        if update.get("status") not in STATUSES:
            usage(f"status must be one of {', '.join(STATUSES)}, not {update.get('status')!r}")
        if update["party"] == me and update["status"] == "received":
            usage("this side cannot report a person on its own list as received")
    data = {"exchange_id": exchange_id, "manifest": view["manifest"], "updates": updates}
    sys.stdout.write(
        _send_to_channel(view["channel"], view["members"], "EXCHANGE_STATUS", data, precedence)
        + "\n"
    )


@exchange_app.command("report")
def exchange_report(
    exchange_id: Annotated[str, typer.Argument(metavar="EXCHANGE_ID")],
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The lists, the manifest and who signed it, counts per side and every discrepancy."""
    view = _exchange_view(exchange_id)
    assert view is not None

    def render(v: dict[str, Any]) -> None:
        out.print(
            f"[bold]Exchange {v['exchange_id']}[/] ({v['kind']}) on {v['channel']}; "
            f"mediator {v['mediator'] or 'none'}"
        )
        for party, lst in v["lists"].items():
            out.print(f"  {party}: revision {lst['revision']}, {len(lst['persons'])} persons")
        out.print(f"Manifest {v['manifest']}")
        for member in v["members"]:
            signed = v["agreements"].get(member)
            mark = (
                "[green]signed[/]"
                if signed == v["manifest"]
                else "[yellow]signed an earlier manifest[/]"
                if signed
                else "[yellow]not signed[/]"
            )
            out.print(f"  {member}: {mark}")
        out.print("[green]AGREED[/]" if v["agreed"] else "[yellow]NOT AGREED[/]")
        table = Table(
            "Side", "Listed", "Handed over", "Received", "Not present", "Declined", "Unresolved"
        )
        for party, c in v["per_side"].items():
            table.add_row(
                party,
                *(
                    str(c[k])
                    for k in (
                        "listed",
                        "handed_over",
                        "received",
                        "not_present",
                        "declined_to_return",
                        "unresolved",
                    )
                ),
            )
        out.print(table)
        if v["discrepancies"]:
            out.print(f"[bold yellow]{len(v['discrepancies'])} discrepancies[/]")
            for d in v["discrepancies"]:
                out.print(f"  {d['party']} {d['ref']} ({d['code']}): {escape(d['what'])}")
        if v["problems"]:
            out.print(f"[bold red]{len(v['problems'])} messages not applied[/]")
            for p in v["problems"]:
                out.print(f"  {p['sender']} {p['envelope_id']} ({p['code']}): {escape(p['what'])}")

    emit(view, json_, render)


@exchange_app.command("list")
def exchange_list(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every exchange this terminal holds."""
    with operator_client(needs_keys=False) as client:
        items = client.exchanges()

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("Exchange", "Kind", "Channel", "Listed", "Agreed", "Discrepancies")
        for r in rows:
            table.add_row(
                r["exchange_id"],
                str(r["kind"]),
                r["channel"],
                ", ".join(f"{p} {n}" for p, n in r["listed"].items()),
                "yes" if r["agreed"] else "no",
                str(r["discrepancies"]),
            )
        out.print(table)

    emit(items, json_, render)


@user_app.command("add")
def user_add(
    name: str,
    role: Annotated[
        str, typer.Option(help="duty_officer, supervisor, auditor or admin.")
    ] = "duty_officer",
) -> None:
    """Create an operator account (an administrator's action); the new account's password
    comes from a prompt or PARLEY_USER_PASSWORD."""
    password = os.environ.get("PARLEY_USER_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            fail("no password: set PARLEY_USER_PASSWORD or run in a terminal")
        password = str(
            typer.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
        )
    with operator_client(needs_keys=True) as client:
        client.add_user(name, role, password)
    err.print(f"Created operator {name} ({role}).")


@user_app.command("list")
def user_list(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Operator accounts and their roles (an administrator's view)."""
    with operator_client(needs_keys=False) as client:
        users = client.users()

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("Name", "Role", "Locked until")
        for r in rows:
            table.add_row(str(r["name"]), str(r["role"]), str(r["locked_until"] or ""))
        out.print(table)

    emit(users, json_, render)


@user_app.command("unlock")
def user_unlock(name: str) -> None:
    """Lift an account's lockout after repeated failed logins (an administrator's action)."""
    with operator_client(needs_keys=True) as client:
        client.unlock_user(name)
    err.print(f"Unlocked operator {name}.")


# Held FLASH -----------------------------------------------------------------


@held_app.command("list")
def held_list(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """FLASH messages written by duty officers, waiting for a supervisor, oldest first."""
    with operator_client(needs_keys=True) as client:
        rows = client.held()

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("Held", "Written by", "At", "To", "Channel", "Kind")
        for r in items:
            table.add_row(
                str(r["id"]),
                r["operator"],
                (r["created_at"] or "")[:19],
                ", ".join(r["to"]),
                r["channel"] or "",
                r["kind"] or "",
            )
        out.print(table)

    emit(rows, json_, render)


@held_app.command("release")
def held_release(held_id: Annotated[int, typer.Argument(metavar="HELD")]) -> None:
    """Send a held FLASH (a supervisor); prints the message's id."""
    with operator_client(needs_keys=True) as client:
        result = client.release_held(held_id)
    sys.stdout.write(result["id"] + "\n")


@held_app.command("reject")
def held_reject(held_id: Annotated[int, typer.Argument(metavar="HELD")]) -> None:
    """Withdraw a held FLASH unsent (a supervisor, or the officer who wrote it)."""
    with operator_client(needs_keys=True) as client:
        client.reject_held(held_id)
    err.print(f"Withdrew held message {held_id}.")


@app.command()
def export(
    out_file: Annotated[
        Path, typer.Option("--out", help="Write the evidence bundle (JSON) to this file.")
    ],
) -> None:
    """Export the evidence bundle (a supervisor or an auditor), as the console's export."""
    with operator_client(needs_keys=True) as client:
        try:
            client.export_evidence(out_file)
        except OSError as exc:
            fail(f"cannot write {out_file}: {exc}")
    err.print(f"Wrote the evidence bundle to {out_file}.")


@app.command()
def backup(
    out_file: Annotated[
        Path, typer.Option("--out", help="Write the encrypted backup to this file.")
    ],
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Back up this terminal (an administrator): database, key file and configuration.

    A consistent copy while the terminal serves (SQLite's online backup API, or
    pg_dump of its PostgreSQL database), encrypted with ChaCha20-Poly1305 under
    a key derived from the key passphrase. Restore it with `parley restore`.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from parley.service.backup import backup_terminal
    from parley.service.local import open_engine

    data = state.data
    data.require()
    if state.user is None and not state.local_admin:
        fail(NO_OPERATOR, 2)
    engine = open_engine(data.load_config().database)
    try:
        actor = _local_actor(engine)
    finally:
        engine.dispose()
    secret = passphrase()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=err, transient=True, disable=json_) as progress:
        task = progress.add_task("Backing up", total=None)

        def tick(step: str, done: int, total: int) -> None:
            progress.update(task, description=step.capitalize(), completed=done, total=total)

        info = backup_terminal(data.path, out_file, secret, actor=actor, progress=tick)
    summary = {
        "file": str(info.path),
        "party": info.party,
        "backend": info.backend,
        "log_size": info.log_size,
        "bytes": info.size_bytes,
        "seconds": round(info.seconds, 3),
        "created_at": info.created_at.isoformat(),
    }
    emit(
        summary,
        json_,
        lambda s: err.print(
            f"Backed up {s['party']} ({s['log_size']} log entries, {s['backend']}) to "
            f"{s['file']}: {s['bytes']:,} bytes in {s['seconds']} s."
        ),
    )


@app.command()
def restore(
    backup_file: Annotated[Path, typer.Argument(help="The backup file (parley backup --out).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="The data directory to restore into (default: the global --data)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace the terminal in a non-empty directory (or a database's tables).",
        ),
    ] = False,
    database: Annotated[
        str | None,
        typer.Option(help="postgresql://… URL to restore into (default: the backed-up one)."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Restore a backup into a data directory; the terminal then recovers from its peers.

    Asks for the key passphrase the backup was made under. Refuses a directory
    that is not empty, or a PostgreSQL database that holds tables, unless
    --force. The restored terminal starts frozen: `parley serve` checks with
    its peers before it signs anything, and `parley recover` rebuilds what the
    backup lacks.
    """
    from parley.service.backup import restore_terminal

    target = data if data is not None else state.data.path
    info = restore_terminal(
        backup_file,
        target,
        passphrase(),
        force=force,
        database=database,
        operator=state.operator,
    )
    summary = {
        "data": str(info.path),
        "party": info.party,
        "backend": info.backend,
        "log_size": info.log_size,
        "backup_created_at": info.created_at.isoformat(),
        "recovery_required": True,
    }
    emit(
        summary,
        json_,
        lambda s: err.print(
            f"Restored {s['party']} ({s['log_size']} log entries, backup of "
            f"{s['backup_created_at']}) into {s['data']}. It signs nothing until its peers "
            "confirm its log: start it with `parley serve`; `parley recover` rebuilds what is "
            "missing."
        ),
    )


@app.command()
def verify(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Audit this terminal's records: signatures, log against checkpoints, receipts, cosignatures.

    Every column of the message index is compared with the envelope it indexes
    (and the stored content with the signed content digest), every receipt,
    acknowledgement and cosignature row with what was signed; a row pointing
    past the end of the log or at another entry fails. Needs no passphrase.
    Exits 1 if anything fails, naming the row and the column.
    """
    from rich.progress import Progress

    from parley.service.audit import audit
    from parley.service.local import open_engine

    config = state.data.load_config()
    own = _own_bundle().card
    engine = open_engine(config.database)
    try:
        with Progress(console=err, transient=True, disable=json_) as progress:
            task = progress.add_task("Verifying the transcript", total=None)

            def tick(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = audit(engine, own, progress=tick)
    finally:
        engine.dispose()
    summary = report.summary()
    if json_:
        out.print_json(json.dumps(summary))
    else:
        out.print(
            f"{report.entries} log entries ({report.envelopes} envelopes, {report.receipts} "
            f"receipts), {report.checkpoints} checkpoints, {report.cosignatures} cosignatures, "
            f"{report.messages} indexed messages checked."
        )
        for failure in report.failures:
            out.print(f"[red]FAILED[/] {failure}", highlight=False)
        out.print("[green]All records verify.[/]" if report.ok else "[red]Verification failed.[/]")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def doctor(
    json_: Annotated[
        bool,
        typer.Option(
            "--json", help="Print {ok, clean, counts, checks: [{name, status, detail, fix}]}."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds each link (and the database) may take to answer.")
    ] = 5.0,
) -> None:
    """Check this terminal and say what to do about each problem, in one line each.

    Configuration; the permissions of the data directory, key file, console
    token and passphrase file; the keys (with the passphrase from
    --passphrase-file, PARLEY_PASSPHRASE or a prompt in a terminal; without
    it they are not checked); the card's and TLS certificate's validity; the
    database, its migrations and the stored log against the last signed
    checkpoint; the clock; each link (a TLS handshake with the peer's pinned
    certificate) and the peers' cards; with console.tls, the console's
    certificate and key. Reads only: works while `parley serve` runs. Exits 1
    if any check fails (warnings do not).
    """
    from parley.service.doctor import run_doctor

    secret = None
    if state.passphrase_file is None:
        secret = os.environ.get("PARLEY_PASSPHRASE") or None
        if secret is None and sys.stdin.isatty() and not json_:
            secret = (
                typer.prompt(
                    "Key passphrase (Enter: do not check the keys)",
                    hide_input=True,
                    default="",
                    show_default=False,
                )
                or None
            )
    report = run_doctor(
        state.data, passphrase=secret, passphrase_file=state.passphrase_file, timeout=timeout
    )
    if json_:
        out.print_json(json.dumps(report.summary(), ensure_ascii=False))
    else:
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        width = max(len(c.name) for c in report.checks)
        for check in report.checks:
            out.print(
                f"[{colour[check.status]}]{check.status:4}[/] {escape(check.name):{width}}  "
                f"{escape(check.detail)}",
                highlight=False,
                soft_wrap=True,
            )
            if check.fix is not None:
                out.print(
                    f"     {'':{width}}  [bold]→[/] {escape(check.fix)}",
                    highlight=False,
                    soft_wrap=True,
                )
        warnings, failures = report.count("warn"), report.count("fail")
        out.print(
            f"{report.count('ok')} ok, {warnings} warning{'' if warnings == 1 else 's'}, "
            f"{failures} failure{'' if failures == 1 else 's'}.",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def bench(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="A short run: 200 latency messages, 10 s of throughput, a backlog of 2,000, "
            "a transcript of 100,000 entries.",
        ),
    ] = False,
    json_file: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Write the results here.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="FILE.png",
            help="The latency plot (default: bench-latency.png beside the JSON).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Keep the terminals and the generated transcript here (default: a temporary "
            "directory, removed afterwards).",
        ),
    ] = None,
) -> None:
    """Two real terminals on this machine, each figure beside a floor measured in the same run.

    FLASH latency, throughput, backlog drain, `parley verify` and the RSS of `parley serve`.

    Needs no data directory. Progress goes to stderr, the table to stdout.
    """
    from parley.bench.run import main as run_bench

    code = run_bench(quick=quick, json_path=json_file, plot_path=plot, out_dir=out)
    if code:
        raise typer.Exit(code)


@app.command()
def demo(
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per terminal.")] = False,
    directory: Annotated[
        Path | None, typer.Option(help="Keep the terminals here instead of a temporary directory.")
    ] = None,
) -> None:
    """Four terminals on loopback (US-EUCOM, RU-GS, UA-GS, AE-MEDIATOR); Ctrl-C stops them."""
    from parley.demo import run_demo

    run_demo(as_json=json_, directory=directory)


def _wants_json(args: list[str]) -> bool:
    """Whether the command asked for JSON output (``bench --json FILE`` names a file)."""
    return "--json" in args and "bench" not in args


def main() -> None:
    try:
        app()
    except ParleyError as exc:
        report(error_body(exc), as_json=_wants_json(sys.argv[1:]))
    except Failure as exc:
        report(exc.body, as_json=_wants_json(sys.argv[1:]))


if __name__ == "__main__":
    main()
