"""``parley``: set up, run and operate a terminal from the command line.

Every command takes ``--data DIR`` (or ``PARLEY_DATA``; default
``./parley-data``). Commands that need the private keys ask for the
passphrase, or read it from ``--passphrase-file`` or ``PARLEY_PASSPHRASE``.

``send``, ``inbox``, ``show``, ``ack``, ``links``, ``alarms``, ``peer`` and
``channel`` talk to the running terminal (``parley serve``) through its
operator API when it runs, and work on the database directly when it does
not (messages sent then wait in the outbox until the terminal is served).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from parley.config import DataDir
from parley.errors import ParleyError, UsageError
from parley.service.terminal import CardBundle, Records, Terminal

__all__ = ["app", "main"]

app = typer.Typer(
    name="parley",
    help=(
        "Parley terminal: signed, end-to-end encrypted, receipted and witnessed messages "
        "between parties that do not trust each other.\n\n"
        "send, inbox, show, ack, links, alarms, peer and channel talk to the running "
        "terminal (parley serve) when it runs, and work on its database directly when it "
        "does not; messages sent then wait in the outbox until the terminal is served."
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

# Tables stay readable when the output goes to a file or a pipe.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


class State:
    data: DataDir = DataDir(Path("parley-data"))
    passphrase_file: Path | None = None
    operator: str = "operator"


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
            help="The operator name recorded with what you send (default: your login name).",
        ),
    ] = None,
) -> None:
    state.data = DataDir(data)
    state.passphrase_file = passphrase_file
    state.operator = operator or _login_name()
    from parley.logs import configure_logging

    # Commands log to DIR/parley.log only; stdout carries their results.
    configure_logging(state.data.log_file if state.data.path.is_dir() else None, stderr=False)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def passphrase(*, confirm: bool = False) -> str:
    if state.passphrase_file is not None:
        try:
            return state.passphrase_file.read_text("utf-8").rstrip("\r\n")
        except OSError as exc:
            fail(f"cannot read the passphrase file: {exc}")
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


# A backend: the running terminal's API, or the database directly ------------


class ApiBackend:
    def __init__(self, url: str, token: str, operator: str) -> None:
        self.client = httpx.Client(
            base_url=url,
            headers={"authorization": f"Bearer {token}", "x-parley-operator": operator},
            timeout=60,
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self.client.request(method, "/api/v1" + path, json=body)
        except httpx.HTTPError as exc:
            fail(f"the running terminal did not answer: {exc}")
        if response.status_code >= 400:
            try:
                detail = response.json()
                detail = detail.get("detail", detail)
                message = detail.get("message") if isinstance(detail, dict) else None
            except ValueError:
                message = None
            fail(message or f"HTTP {response.status_code}: {response.text[:300]}")
        return response.json()


@contextmanager
def backend(*, needs_keys: bool) -> Iterator[tuple[ApiBackend | None, Records | None]]:
    """The running terminal's API if it runs; else the records (and keys if needed)."""
    from parley.service.lock import ServeLock
    from parley.store.db import engine_for, schema_is_current

    data = state.data
    data.require()
    lock = ServeLock(data)
    if not lock.acquire():
        info_file = data.path / "serve.json"
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            fail("the terminal is starting or stopping; try again in a moment")
        yield ApiBackend(info["console_url"], data.read_token(), state.operator), None
        return
    try:
        if needs_keys:
            terminal = Terminal.open(data.path, passphrase())
            try:
                yield None, terminal
            finally:
                terminal.engine.dispose()
        else:
            config = data.load_config()
            engine = engine_for(config.database)
            if not schema_is_current(engine):
                fail("the database schema is not current; run `parley serve` once to migrate")
            try:
                yield None, Records(engine, config.party)
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
        str, typer.Option(help="HOST:PORT of the operator API (keep it on localhost).")
    ] = "127.0.0.1:7080",
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
    from parley.service.setup import init_terminal

    config = init_terminal(
        state.data.path,
        party=party,
        name=name,
        passphrase=passphrase(confirm=True),
        peer_listen=peer_listen,
        console_listen=console_listen,
        database=database,
        link_test_interval=link_test_interval,
        scrypt_n=scrypt_n,
    )
    bundle = CardBundle.from_json(state.data.card_file.read_bytes())
    err.print(f"Created terminal {config.party} in {state.data.path}")
    err.print(f"Card (give it to your peers): {state.data.card_file}")
    err.print(f"Fingerprint (read it to them aloud): {bundle.card.fingerprint}", soft_wrap=True)


def _own_bundle() -> CardBundle:
    state.data.require()
    try:
        return CardBundle.from_json(state.data.card_file.read_bytes())
    except OSError as exc:
        fail(f"cannot read {state.data.card_file}: {exc}")


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
            fail(f"--link must be NAME=URL, not {item!r}")
        links.append((name, url))
    try:
        raw = card_file.read_bytes()
    except OSError as exc:
        fail(f"cannot read the card file: {exc}")
    bundle = CardBundle.from_json(raw)
    pinned = bundle.card.pinned(fingerprint)
    with backend(needs_keys=True) as (api, local):
        if api is not None:
            api.call(
                "POST",
                "/peers",
                {"card": json.loads(raw), "fingerprint": fingerprint, "links": links},
            )
        else:
            assert isinstance(local, Terminal)
            local.add_peer(bundle, fingerprint, links)
    err.print(f"Pinned {pinned.party} ({pinned.name}) with {len(links)} link(s).")


@peer_app.command("list")
def peer_list(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List pinned peers with their fingerprints and links."""
    with backend(needs_keys=False) as (api, local):
        peers = api.call("GET", "/peers") if api else local.peers()  # type: ignore[union-attr]

    def render(items: list[dict[str, Any]]) -> None:
        table = Table("Party", "Name", "Fingerprint", "Links")
        for p in items:
            links = ", ".join(f"{li['name']}={li['url']}" for li in p["links"])
            table.add_row(p["party"], p["name"], p["fingerprint"], links)
        out.print(table)

    emit(peers, json_, render)


@app.command()
def serve() -> None:
    """Run the terminal until stopped (SIGINT/SIGTERM finish in-flight work and exit 0)."""
    from parley.service.server import run

    run(state.data.path, passphrase())


# Operating ------------------------------------------------------------------


@app.command()
def send(
    to: Annotated[str, typer.Option(help="Recipient party ids, comma-separated.")],
    precedence: Annotated[
        str, typer.Option(help="FLASH, IMMEDIATE, PRIORITY or ROUTINE.", case_sensitive=False)
    ],
    text: Annotated[str | None, typer.Option(help="Free text.")] = None,
    form: Annotated[str | None, typer.Option(help="Form name (with --file).")] = None,
    file: Annotated[Path | None, typer.Option(help="The form's data (JSON).")] = None,
    channel: Annotated[
        str | None, typer.Option(help="Channel name (default: the bilateral channel).")
    ] = None,
    exercise: Annotated[bool, typer.Option(help="Mark the message as an exercise.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print {'id': …} as JSON.")] = False,
) -> None:
    """Queue a message (durable before this returns) and print its id."""
    recipients = [p.strip() for p in to.split(",") if p.strip()]
    data = None
    if form is not None:
        if file is None:
            fail("--form needs --file DATA.json")
        try:
            data = json.loads(file.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"cannot read the form data {file}: {exc}")
    request = {
        "to": recipients,
        "channel": channel,
        "precedence": precedence.upper(),
        "exercise": exercise,
        "text": text,
        "form": form,
        "data": data,
    }
    from parley.service.console_api import build_body

    kind, body = build_body(text, form, data)
    with backend(needs_keys=True) as (api, local):
        if api is not None:
            result = api.call("POST", "/messages", request)
        else:
            assert isinstance(local, Terminal)
            result = local.send(
                recipients,
                kind=kind,
                body=body,
                operator=state.operator,
                channel=channel,
                precedence=precedence.upper(),
                exercise=exercise,
            )
    if json_:
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
    all_: Annotated[bool, typer.Option("--all", help="Include acks and link tests.")] = False,
) -> None:
    """Messages received, most urgent first."""
    with backend(needs_keys=False) as (api, local):
        items = (
            api.call("GET", f"/inbox?all={str(all_).lower()}")
            if api
            else local.messages("in", all_kinds=all_)  # type: ignore[union-attr]
        )

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("Id", "Prec.", "From", "Channel", "Received", "Ack", "Content")
        for r in rows:
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
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One message, its receipts and its acknowledgement status."""
    with backend(needs_keys=False) as (api, local):
        item = api.call("GET", f"/messages/{envelope_id}") if api else local.show(envelope_id)  # type: ignore[union-attr]

    def render(r: dict[str, Any]) -> None:
        out.print(
            f"[bold]{r['precedence']}[/] {r['kind']} {r['id']}"
            + (" [yellow]EXERCISE[/]" if r["exercise"] else "")
        )
        out.print(
            f"From {r['sender']} ({r['operator']}) to {', '.join(r['recipients'])} "
            f"on {r['channel']} #{r['seq']}, sent {r['created_at']}"
        )
        out.print(f"Log entry {r['log_index']}, stored {r['stored_at']}")
        out.print()
        out.print(
            _summary(r["body"])
            if "text" in r["body"]
            else json.dumps(r["body"], indent=2, ensure_ascii=False)
        )
        out.print()
        if r["direction"] == "in":
            if r["acknowledged_by"]:
                out.print(f"Acknowledged by {r['acknowledged_by']} at {r['acknowledged_at']}")
            elif r["ack_due"]:
                out.print(f"[yellow]Not acknowledged[/]; due {r['ack_due']}")
        else:
            for party in r["recipients"]:
                receipt = r["receipts"].get(party)
                ack = r["acks"].get(party)
                delivery = r["delivery"].get(party, {})
                line = f"{party}: " + (
                    f"receipt {receipt}"
                    if receipt
                    else f"[yellow]{delivery.get('state')}[/]"
                    f" ({delivery.get('attempts', 0)} attempts)"
                )
                if ack:
                    line += f", acknowledged by {ack['operator']} at {ack['at']}"
                out.print(line)

    emit(item, json_, render)


@app.command()
def ack(envelope_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Acknowledge a received message (a signed message naming you, the operator)."""
    with backend(needs_keys=True) as (api, local):
        if api is not None:
            result = api.call("POST", f"/messages/{envelope_id}/ack")
        else:
            assert isinstance(local, Terminal)
            result = local.acknowledge(envelope_id, operator=state.operator)
    sys.stdout.write(result["id"] + "\n")


@app.command()
def links(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Each link's state (up, degraded, down), round-trip time and last success."""
    with backend(needs_keys=False) as (api, local):
        items = api.call("GET", "/links") if api else local.links()  # type: ignore[union-attr]

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
def alarms(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Alarms raised by this terminal, newest first."""
    with backend(needs_keys=False) as (api, local):
        items = api.call("GET", "/alarms") if api else local.alarms()  # type: ignore[union-attr]

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("At", "Severity", "Kind", "Subject", "Message", "Cleared")
        for r in rows:
            table.add_row(
                r["at"][:19],
                r["severity"],
                r["kind"],
                r["subject"],
                r["message"],
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
    with backend(needs_keys=True) as (api, local):
        if api is not None:
            result = api.call("POST", "/channels", {"name": name, "members": member_list})
        else:
            assert isinstance(local, Terminal)
            result = local.create_channel(name, member_list, operator=state.operator)
    err.print(f"Proposed channel {name} to {', '.join(result['members'])}")


@channel_app.command("agree")
def channel_agree(name: str) -> None:
    """Agree to a channel another member proposed."""
    with backend(needs_keys=True) as (api, local):
        if api is not None:
            api.call("POST", f"/channels/{name}/agree")
        else:
            assert isinstance(local, Terminal)
            local.agree_channel(name, operator=state.operator)
    err.print(f"Agreed to channel {name}")


@channel_app.command("list")
def channel_list(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Channels with their members and agreement state."""
    with backend(needs_keys=False) as (api, local):
        items = api.call("GET", "/channels") if api else local.channels()  # type: ignore[union-attr]

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("Channel", "Members", "Kind", "State", "Agreed")
        for r in rows:
            table.add_row(
                r["name"], ", ".join(r["members"]), r["kind"], r["state"], ", ".join(r["agreed"])
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
    """Create an operator account; the password comes from a prompt or PARLEY_USER_PASSWORD."""
    from parley.service.users import add_user
    from parley.store.db import engine_for

    password = os.environ.get("PARLEY_USER_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            fail("no password: set PARLEY_USER_PASSWORD or run in a terminal")
        password = str(
            typer.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
        )
    config = state.data.load_config()
    engine = engine_for(config.database)
    try:
        from parley.service.terminal import utc_now

        add_user(engine, name, role, password, now=utc_now())
    finally:
        engine.dispose()
    err.print(f"Created operator {name} ({role}).")


@user_app.command("list")
def user_list(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Operator accounts and their roles."""
    from parley.service.users import list_users
    from parley.store.db import engine_for

    engine = engine_for(state.data.load_config().database)
    try:
        users = list_users(engine)
    finally:
        engine.dispose()

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table("Name", "Role", "Locked")
        for r in rows:
            table.add_row(str(r["name"]), str(r["role"]), "yes" if r["locked"] else "")
        out.print(table)

    emit(users, json_, render)


@app.command()
def verify(json_: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Audit this terminal's records: signatures, log against checkpoints, receipts, cosignatures.

    Needs no passphrase. Exits 1 if anything fails, naming it.
    """
    from rich.progress import Progress

    from parley.service.audit import audit
    from parley.store.db import engine_for

    config = state.data.load_config()
    own = _own_bundle().card
    engine = engine_for(config.database)
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


def main() -> None:
    try:
        app()
    except ParleyError as exc:
        err.print(f"[bold red]error:[/] {exc.diagnostics()}", highlight=False)
        sys.exit(2 if isinstance(exc, UsageError) else 1)


if __name__ == "__main__":
    main()
