"""``parley serve``: both listeners and the delivery worker in one process.

* the peer listener: HTTPS, TLS 1.3 only, client certificates required and
  pinned (``parley.service.tls``); the connection's pinned peer is known to
  the handlers;
* the console listener, for the operator API and the console: plain HTTP
  on a loopback address, or HTTPS (TLS 1.3, ``console.tls``), which any
  other address requires, with the terminal's own certificate (made or
  renewed here, ``parley.service.console_tls``) or the operator's;
* the delivery worker (``parley.service.delivery``);
* automatic backups when ``backup.every`` is set (``parley.service.backup``),
  made in a worker thread.

SIGINT and SIGTERM stop accepting connections, let requests in flight
finish, stop the worker (a message not yet receipted simply stays in the
outbox) and exit 0. While it runs, ``DIR/serve.lock`` is held and
``DIR/serve.json`` names the addresses actually bound.

On PostgreSQL the process also holds the party's advisory lock
(``parley.service.lock.DatabaseLock``) and checks every second that its
session lives; a process that loses it stops serving at once (exit status 3),
since a standby may take over. ``parley serve --standby`` waits for that lock,
then loads the terminal from the database and serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from fastapi import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from parley.config import DataDir, check_console_listen, console_hosts, parse_hostport
from parley.console.api import create_console_app
from parley.errors import UsageError
from parley.keyfile import load_identity
from parley.logs import configure_logging
from parley.service import console_tls, loopguard, tls
from parley.service.backup import BackupSchedule, schedule_directory
from parley.service.delivery import KEEPALIVE, DeliveryWorker
from parley.service.lock import DatabaseLock, ServeLock, is_postgres
from parley.service.peer_api import create_peer_app
from parley.service.terminal import Terminal

__all__ = ["EXIT_LOCK_LOST", "ServeLock", "run", "serve"]

log = structlog.get_logger("parley.server")

#: Seconds between two checks that the database lock's session lives, and how
#: long one check may take before the lock counts as lost.
LOCK_CHECK_EVERY = 1.0
LOCK_CHECK_TIMEOUT = 2.0
#: The exit status of a ``parley serve`` that lost its database lock.
EXIT_LOCK_LOST = 3


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to ``parley serve``, and idles quietly."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        # uvicorn's own loop wakes every 0.1 s to see whether to stop (and
        # refreshes its Date header every tenth tick): every 0.5 s is enough,
        # and an idle terminal with two listeners wakes 4 times a second, not 20.
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 5) % 864000
            await asyncio.sleep(0.5)
            should_exit = await self.on_tick(counter)


def _bind(hostport: str, what: str) -> socket.socket:
    host, port = parse_hostport(hostport, what)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Named as TCP so that asyncio turns Nagle's algorithm off on every accepted
    # connection (it does so only for sockets whose protocol is IPPROTO_TCP):
    # otherwise each answer, written as head then body, waits ~40 ms for the
    # client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {hostport} for the {what}: {exc}") from None
    sock.listen(256)
    sock.setblocking(False)
    return sock


def _url(scheme: str, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # noqa: S104 - naming a wildcard bind, not binding
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _peer_protocol(terminal: Terminal, registry: dict[tuple[str, int], str]) -> type[H11Protocol]:
    """An HTTP protocol that records which pinned peer each TLS connection belongs to."""

    class PeerProtocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            peername = transport.get_extra_info("peername")
            if ssl_object is None or peername is None:
                return
            der = ssl_object.getpeercert(binary_form=True)
            for party, pem in terminal.peer_certificates.items():
                if der is not None and der in tls.certificate_ders(pem):
                    registry[(peername[0], peername[1])] = party
                    break

        def shutdown(self) -> None:
            # An idle pooled peer connection would never finish the TLS close
            # handshake: drop it at once instead of waiting out the grace period.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.abort()
                return
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            peername = self.transport.get_extra_info("peername") if self.transport else None
            if peername is not None:
                registry.pop((peername[0], peername[1]), None)
            super().connection_lost(exc)

    return PeerProtocol


def _run_alarm_command(command: list[str], alarm: dict[str, Any]) -> None:
    def run() -> None:
        try:
            subprocess.run(  # noqa: S603 - the operator's own configured command
                command, input=json.dumps(alarm).encode(), timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("alarm_command_failed", command=command, error=str(exc))

    threading.Thread(target=run, daemon=True).start()


async def _watch_lock(lock: DatabaseLock, lost: Callable[[], None]) -> None:
    """Check the lock's session every ``LOCK_CHECK_EVERY`` s; call ``lost`` once it is gone."""
    while True:
        await asyncio.sleep(LOCK_CHECK_EVERY)
        try:
            alive = await asyncio.wait_for(asyncio.to_thread(lock.check), LOCK_CHECK_TIMEOUT)
        except TimeoutError:
            alive = False
        if not alive:
            log.critical(
                "database_lock_lost",
                party=lock.party,
                message="the session holding this terminal's lock on the database ended; "
                "a standby may serve now: this process stops at once",
            )
            lost()
            return


def _exit_lock_lost() -> None:
    # Not a clean stop: nothing more may be written by this process, since
    # another one may already serve the party from the same database.
    os._exit(EXIT_LOCK_LOST)


async def serve(
    terminal: Terminal,
    *,
    stop: asyncio.Event | None = None,
    database_lock: DatabaseLock | None = None,
    on_lock_lost: Callable[[], None] | None = None,
    backup_passphrase: str | None = None,
) -> None:
    """Run the terminal until ``stop`` is set (or SIGINT/SIGTERM arrives).

    With ``database_lock``, its session is checked every second; once it is
    gone ``on_lock_lost`` is called (by default: stop, as for a signal).
    Automatic backups (``backup.every``) need ``backup_passphrase``: the key
    passphrase, which encrypts them.
    """
    data = terminal.data
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if terminal.config.alarm_command:
        command = terminal.config.alarm_command
        terminal.on_alarm = lambda alarm: _run_alarm_command(command, alarm)

    unwatch = None
    if os.environ.get("PARLEY_LOOP_GUARD"):
        # A debugging aid (the tests that start terminals set it): name every
        # database call that blocks the event loop.
        unwatch = loopguard.watch(lambda what: log.error("database_call_on_event_loop", call=what))

    registry: dict[tuple[str, int], str] = {}

    def tls_party_of(request: Request) -> str | None:
        if request.client is None:
            return None
        return registry.get((request.client.host, request.client.port))

    config = terminal.config
    console_host, _ = check_console_listen(
        config.console_listen,
        tls=config.console_tls,
        names=config.console_names,
        what=f"console.listen in {data.config_file}",
        tls_option=f"console.tls in {data.config_file}",
        names_option=f"console.names in {data.config_file}",
    )
    console_certificate = None
    if config.console_tls:
        console_certificate, made_because = console_tls.ensure_certificate(
            data, config, terminal.clock()
        )
        if made_because is not None:
            log.warning(
                "console_certificate_made",
                because=made_because,
                file=str(console_certificate.cert_file),
                fingerprint=console_certificate.fingerprint,
                valid_until=console_certificate.not_after.isoformat(),
                message="workstations trust this new certificate again: compare its "
                "fingerprint with `parley console cert`",
            )
    console_ssl = console_tls.server_context(console_certificate) if console_certificate else None
    ssl_context = tls.server_context(terminal.tls_identity, terminal.peer_certificates.values())
    peer_sock = _bind(config.peer_listen, "peer listener")
    console_sock = _bind(config.console_listen, "console listener")
    token = data.read_token() if data.token_file.exists() else data.new_token()

    peer_app = create_peer_app(terminal, tls_party_of, max_work=terminal.config.peer_max_concurrent)
    console_port = console_sock.getsockname()[1]
    console_app = create_console_app(
        terminal,
        token,
        hosts=console_hosts(console_host, console_port, config.console_names),
        tls=console_ssl is not None,
    )
    worker = DeliveryWorker(terminal)
    console_app.state.worker = worker

    def on_peer_added(party: str) -> None:
        tls.add_peer_certificate(ssl_context, terminal.peer_certificates[party])
        worker.notify()

    console_app.state.on_peer_added = on_peer_added

    def on_card_rotated(party: str) -> None:
        # Called from a worker thread: the pool is dropped on the event loop's next turn.
        tls.add_peer_certificate(ssl_context, terminal.peer_certificates[party])
        worker.forget_client(party)
        worker.notify()

    terminal.kernel.on_card_rotated = on_card_rotated

    peer_config = uvicorn.Config(
        peer_app,
        http=_peer_protocol(terminal, registry),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
        # Longer than the peers' own keep-alive: they close idle connections first.
        timeout_keep_alive=int(KEEPALIVE) + 30,
        h11_max_incomplete_event_size=64 * 1024,
    )
    peer_config.load()
    peer_config.ssl = ssl_context
    console_config = uvicorn.Config(
        console_app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    if console_ssl is not None:
        console_config.load()
        console_config.ssl = console_ssl
    peer_server = _QuietServer(peer_config)
    console_server = _QuietServer(console_config)
    servers = [
        asyncio.create_task(peer_server.serve(sockets=[peer_sock])),
        asyncio.create_task(console_server.serve(sockets=[console_sock])),
    ]
    await worker.start()
    backups_stop = asyncio.Event()
    backups: asyncio.Task[None] | None = None
    interval = terminal.config.backup_interval
    if interval is not None and backup_passphrase is not None:
        schedule = BackupSchedule(
            data.path,
            backup_passphrase,
            directory=schedule_directory(data, terminal.config),
            every=interval,
            keep=terminal.config.backup_keep,
            alarms=terminal,
        )
        backups = asyncio.create_task(schedule.run(backups_stop))
    while not (peer_server.started and console_server.started):
        if any(t.done() for t in servers):
            break
        await asyncio.sleep(0.02)
    info = {
        "pid": os.getpid(),
        "party": terminal.me,
        "peer_url": _url("https", peer_sock),
        "console_url": _url("https" if console_ssl else "http", console_sock),
    }
    if console_certificate is not None:
        # What the CLI trusts, exactly: the certificate this process presents, even once
        # `parley console cert --renew` has replaced the file.
        info["console_certificate_pem"] = console_certificate.pem
        info["console_fingerprint"] = console_certificate.fingerprint
    (data.path / "serve.json").write_text(json.dumps(info) + "\n")
    log.info("terminal_started", **info)
    watch = None
    if database_lock is not None:
        watch = asyncio.create_task(_watch_lock(database_lock, on_lock_lost or stop.set))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *servers], return_when=asyncio.FIRST_COMPLETED)
    if watch is not None:
        watch.cancel()
    log.info("terminal_stopping", party=terminal.me)
    peer_server.should_exit = True
    console_server.should_exit = True
    await asyncio.gather(*servers, return_exceptions=True)
    await worker.stop()
    backups_stop.set()
    if backups is not None:
        await backups  # a backup under way finishes first
    stopper.cancel()
    with contextlib.suppress(FileNotFoundError):
        (data.path / "serve.json").unlink()
    for sock in (peer_sock, console_sock):
        sock.close()
    if unwatch is not None:
        unwatch()
    log.info("terminal_stopped", party=terminal.me)


def run(path: Path, passphrase: str, *, standby: bool = False) -> None:
    """Open the terminal in ``path`` and serve until a signal stops it.

    SQLite: ``DIR/serve.lock`` makes this the only process serving the
    directory; a second one is refused. PostgreSQL: first the party's
    advisory lock on the database, refused if another process holds it, or,
    with ``standby``, waited for; then ``DIR/serve.lock`` (waited for: the
    directory may be shared with the process this one replaces). The terminal
    is loaded from the database only once both are held.
    """
    data = DataDir(path)
    data.require()
    config = data.load_config()
    postgres = is_postgres(config.database)
    if standby and not postgres:
        raise UsageError(
            "--standby needs a PostgreSQL database shared with the active terminal; "
            f"{config.party} keeps its records in SQLite"
        )
    database_lock = None
    configure_logging(data.log_file)
    if postgres:
        database_lock = DatabaseLock(config.database, config.party)
        if standby:
            load_identity(data.key_file, passphrase)  # a wrong passphrase fails now
            log.info("standby_waiting", party=config.party, lock=database_lock.name)
            began = time.monotonic()
            database_lock.wait()
            log.info(
                "standby_taking_over",
                party=config.party,
                waited_s=round(time.monotonic() - began, 3),
            )
        elif not database_lock.try_acquire():
            holder = database_lock.holder() or "another process"
            database_lock.release()
            raise UsageError(
                f"{config.party} is already running: served from its database by {holder}; "
                "`parley serve --standby` waits to take over from it"
            )
    lock = ServeLock(data)
    try:
        if database_lock is not None:
            lock.wait()
        elif not lock.acquire():
            raise UsageError(f"a terminal is already running on {path} (serve.lock is held)")
        terminal = Terminal.open(path, passphrase)
        asyncio.run(
            serve(
                terminal,
                database_lock=database_lock,
                on_lock_lost=_exit_lock_lost,
                backup_passphrase=passphrase,
            )
        )
    finally:
        lock.release()
        if database_lock is not None:
            database_lock.release()
