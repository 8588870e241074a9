"""A fault-injecting TCP proxy for tests: a bad network between two terminals.

``FaultProxy`` listens on a loopback port and forwards every connection to a
fixed target. It works at the TCP level and carries TLS bytes opaquely, so the
two terminals keep their end-to-end TLS and see nothing but a plain TCP
endpoint. The proxy runs its own asyncio event loop in a daemon thread, so
synchronous test code drives it with ordinary method calls::

    with FaultProxy(("127.0.0.1", server_port)) as proxy:
        client = make_client(proxy.url())      # https://127.0.0.1:PORT
        proxy.delay(0.3)
        ...
        proxy.restore()

Every fault method may be called from any thread except the proxy's own; it
returns once the fault is in force. Faults combine (delay and blackhole, say)
until ``restore`` clears them all:

* ``delay(seconds)``: every chunk read from either side is held ``seconds``
  after its arrival before it is forwarded; order is kept, and reading goes on
  meanwhile, so a burst is not delayed once per chunk. A new value applies at
  once, also to the chunks already held. ``delay(0)`` ends the fault.
* ``drop(probability)``: each new connection is closed (FIN) right after
  accept with that probability, without contacting the target. Decisions come
  from ``random.Random(seed)``, drawn only when ``0 < probability < 1``, so a
  run is repeatable. ``drop(0)`` ends the fault.
* ``reset()``: every current connection is aborted with a TCP RST on both sides
  (``SO_LINGER`` of zero, then abort), and every new connection is reset right
  after accept, until ``restore``. The target is not contacted meanwhile.
* ``blackhole()``: current and new connections stay open, but no byte passes
  in either direction: reads go on and what they return is discarded (a
  connection's end of stream waits until the blackhole is lifted). Bytes
  discarded are gone for good, so a stream that lost some, such as a TLS
  session, is broken for good as well; after ``restore`` new connections
  work.
* ``cut()``: the listening socket is closed, so new connections are refused by
  the kernel (``ConnectionRefusedError``), and every current connection is
  closed at once (pending bytes are thrown away).
* ``restore()``: back to plain forwarding. After ``cut`` it listens again on
  the same address and port (``SO_REUSEADDR``); in every case it clears every
  fault: no delay, no drop, no reset, no blackhole.

A target that cannot be reached closes the client's connection (FIN) instead of
leaving it hanging. ``stats`` returns a ``FaultProxyStats`` snapshot of the
counters. Nothing raised on the loop thread reaches the tests: it is logged on
this module's logger. ``close`` cancels everything and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

__all__ = ["FaultProxy", "FaultProxyStats"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_CHUNK = 65536
_QUEUE_CHUNKS = 64
"""Chunks held per direction before reading pauses (backpressure)."""
_CALL_TIMEOUT = 10.0
_JOIN_TIMEOUT = 5.0

_Closing = Literal["close", "abort", "reset"]
"""How to end a connection: FIN after flushing, FIN now, or RST now."""
_Item = tuple[float, bytes | None]
"""A chunk and the loop time it arrived; ``None`` stands for end of stream."""


@dataclass(frozen=True, slots=True)
class FaultProxyStats:
    """Counters of a ``FaultProxy`` at one moment.

    ``accepted`` counts every connection accepted from a client;
    ``refused_or_dropped`` those of them that were never forwarded (dropped,
    reset on accept, or the target could not be reached); ``bytes_up`` and
    ``bytes_down`` the bytes forwarded to the target and to the client;
    ``open_connections`` the connections being forwarded now.
    """

    accepted: int = 0
    refused_or_dropped: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    open_connections: int = 0


@dataclass(eq=False, slots=True)
class _Connection:
    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    closing: _Closing | None = None


def _end(writer: asyncio.StreamWriter, how: _Closing) -> None:
    transport = writer.transport
    if how == "close":
        transport.close()
        return
    if how == "reset":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exception = context.get("exception")
    logger.error(
        "faultproxy: %s",
        context.get("message", "error in the event loop"),
        exc_info=exception if isinstance(exception, BaseException) else None,
    )


class FaultProxy:
    """A TCP proxy on loopback with faults switched on and off from tests."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        seed: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._target = target
        self._listen_on = listen
        self._connect_timeout = connect_timeout
        # Not for security: a repeatable sequence of drop decisions.
        self._rng = random.Random(seed)  # noqa: S311

        self._life = threading.Lock()  # start and close
        self._lock = threading.Lock()  # the counters; never held while waiting
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None
        self._closed = False
        self._accepted = 0
        self._refused_or_dropped = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._open = 0

        # Touched only on the loop thread.
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._delay = 0.0
        self._drop = 0.0
        self._resetting = False
        self._blackholed = False
        self._cut = False
        self._changed: asyncio.Event | None = None

    # ------------------------------------------------------------------
    # Life cycle

    def start(self) -> tuple[str, int]:
        """Start listening and forwarding; return the bound (host, port).

        Calling it again returns the same address.
        """
        with self._life:
            if self._closed:
                raise RuntimeError("FaultProxy is closed")
            if self._address is not None:
                return self._address
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(_log_loop_error)
            thread = threading.Thread(target=self._run, args=(loop,), name="faultproxy")
            thread.daemon = True
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                address = self._submit(loop, self._listen(self._listen_on))
            except BaseException:
                self._closed = True
                self._stop(loop, thread)
                raise
            self._address = address
            thread.name = f"faultproxy-{address[1]}"
            return address

    def close(self) -> None:
        """Stop listening, close every connection and stop the loop thread."""
        with self._life:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._check_thread(thread)
        try:
            self._submit(loop, self._shutdown(), timeout=_JOIN_TIMEOUT)
        except Exception:
            logger.exception("faultproxy: shutdown failed")
        self._stop(loop, thread)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the proxy listens on; the port stays the same after ``cut``."""
        if self._address is None:
            raise RuntimeError("FaultProxy is not started")
        return self._address

    def url(self, scheme: str = "https") -> str:
        """The proxy's base URL, such as ``https://127.0.0.1:PORT``."""
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"

    @property
    def stats(self) -> FaultProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            return FaultProxyStats(
                accepted=self._accepted,
                refused_or_dropped=self._refused_or_dropped,
                bytes_up=self._bytes_up,
                bytes_down=self._bytes_down,
                open_connections=self._open,
            )

    # ------------------------------------------------------------------
    # Faults

    def delay(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it, both ways (0: no delay)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"delay must be a finite number of seconds >= 0, not {seconds!r}")

        def apply() -> None:
            self._delay = float(seconds)

        self._apply(apply)

    def drop(self, probability: float) -> None:
        """Close each new connection right after accept with this probability (0: none)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be between 0 and 1, not {probability!r}")

        def apply() -> None:
            self._drop = float(probability)

        self._apply(apply)

    def reset(self) -> None:
        """Reset (RST) every current connection and every new one until ``restore``."""

        def apply() -> None:
            self._resetting = True
            self._end_all("reset")

        self._apply(apply)

    def blackhole(self) -> None:
        """Keep connections open but pass no byte either way until ``restore``."""

        def apply() -> None:
            self._blackholed = True

        self._apply(apply)

    def cut(self) -> None:
        """Stop listening (connections are refused) and close every current connection."""

        def apply() -> None:
            self._cut = True
            if self._server is not None:
                self._server.close()
                self._server = None
            self._end_all("abort")

        self._apply(apply)

    def restore(self) -> None:
        """Clear every fault; after ``cut``, listen again on the same port."""

        async def apply() -> None:
            if self._cut:
                await self._listen(self.address)
            self._cut = False
            self._delay = 0.0
            self._drop = 0.0
            self._resetting = False
            self._blackholed = False
            self._notify()

        self._call(apply)

    # ------------------------------------------------------------------
    # Calling into the loop thread

    def _apply(self, change: Callable[[], None]) -> None:
        async def apply() -> None:
            change()
            self._notify()

        self._call(apply)

    def _call(self, function: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        with self._life:
            if self._closed:
                raise RuntimeError("FaultProxy is closed")
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._address is None:
                raise RuntimeError("FaultProxy is not started")
        self._check_thread(thread)
        return self._submit(loop, function())

    @staticmethod
    def _submit(
        loop: asyncio.AbstractEventLoop,
        coroutine: Coroutine[Any, Any, _T],
        timeout: float = _CALL_TIMEOUT,
    ) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    @staticmethod
    def _check_thread(thread: threading.Thread) -> None:
        if threading.current_thread() is thread:
            raise RuntimeError("FaultProxy cannot be driven from its own loop thread")

    @staticmethod
    def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_JOIN_TIMEOUT)
        if thread.is_alive():
            logger.error("faultproxy: loop thread %s did not stop", thread.name)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        except Exception:
            logger.exception("faultproxy: event loop failed")
        finally:
            try:
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                if leftover:
                    loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                logger.exception("faultproxy: cleaning up the event loop failed")
            finally:
                loop.close()

    # ------------------------------------------------------------------
    # On the loop thread

    async def _listen(self, address: tuple[str, int]) -> tuple[str, int]:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP: asyncio then disables Nagle on accepted connections.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_server(self._on_accept, sock=sock)
        except BaseException:
            sock.close()
            raise
        bound: tuple[str, int] = sock.getsockname()[:2]
        return bound

    async def _shutdown(self) -> None:
        self._cut = True
        if self._server is not None:
            self._server.close()
            self._server = None
        self._end_all("abort")
        this = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not this]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _notify(self) -> None:
        """Wake every pump waiting on a fault to change."""
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    def _change(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _count(self, *, accepted: int = 0, refused: int = 0, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self._accepted += accepted
            self._refused_or_dropped += refused
            self._bytes_up += up
            self._bytes_down += down

    def _end_all(self, how: _Closing) -> None:
        for connection in list(self._connections):
            self._finish(connection, how)

    def _finish(self, connection: _Connection, how: _Closing) -> None:
        """End both sides of ``connection`` and stop its pumps; later calls do nothing."""
        if connection.closing is not None:
            return
        connection.closing = how
        if connection in self._connections:
            self._connections.discard(connection)
            with self._lock:
                self._open -= 1
        for writer in (connection.client, connection.target):
            if writer is not None:
                _end(writer, how)
        this = asyncio.current_task()
        for pump in connection.pumps:
            if pump is not this:
                pump.cancel()

    def _refuse(self, writer: asyncio.StreamWriter, how: _Closing) -> None:
        self._count(refused=1)
        _end(writer, how)

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count(accepted=1)
        try:
            if self._cut:  # accepted just before the listener closed
                self._refuse(writer, "abort")
                return
            if self._resetting:
                self._refuse(writer, "reset")
                return
            if self._drop >= 1.0 or (self._drop > 0.0 and self._rng.random() < self._drop):
                self._refuse(writer, "close")
                return
            connection = _Connection(writer)
            self._connections.add(connection)
            with self._lock:
                self._open += 1
            try:
                await self._forward(connection, reader)
            finally:
                self._finish(connection, "close")
        except asyncio.CancelledError:
            # Only close() cancels this task. Ending it quietly keeps asyncio's own
            # done-callback (Python 3.11) from reporting the cancellation as an error.
            writer.transport.abort()
        except Exception:
            logger.exception("faultproxy: connection handler failed")
            writer.transport.abort()

    async def _forward(self, connection: _Connection, client: asyncio.StreamReader) -> None:
        try:
            target, target_writer = await asyncio.wait_for(
                asyncio.open_connection(*self._target), self._connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            logger.info("faultproxy: cannot reach target %s:%s: %r", *self._target, exc)
            self._count(refused=1)
            return
        if connection.closing is not None:  # reset, cut or closed while connecting
            _end(target_writer, connection.closing)
            return
        connection.target = target_writer
        up: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
        down: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
        connection.pumps = [
            asyncio.create_task(self._read(connection, client, up)),
            asyncio.create_task(self._send(connection, up, target_writer, upstream=True)),
            asyncio.create_task(self._read(connection, target, down)),
            asyncio.create_task(self._send(connection, down, connection.client, upstream=False)),
        ]
        await asyncio.gather(*connection.pumps, return_exceptions=True)

    async def _read(
        self, connection: _Connection, reader: asyncio.StreamReader, queue: asyncio.Queue[_Item]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    await queue.put((loop.time(), None))
                    return
                if not self._blackholed:
                    await queue.put((loop.time(), data))
        except OSError as exc:  # the peer reset: pass it on
            logger.debug("faultproxy: read failed: %r", exc)
            self._finish(connection, "reset")
        except Exception:
            logger.exception("faultproxy: reader failed")
            self._finish(connection, "abort")

    async def _send(
        self,
        connection: _Connection,
        queue: asyncio.Queue[_Item],
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        try:
            while True:
                arrived, data = await queue.get()
                await self._hold(arrived)
                if data is None:
                    while self._blackholed:
                        await self._change().wait()
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if self._blackholed:
                    continue
                # Counted first, so a peer that has the bytes sees them in ``stats``.
                if upstream:
                    self._count(up=len(data))
                else:
                    self._count(down=len(data))
                writer.write(data)
                await writer.drain()
        except OSError as exc:
            logger.debug("faultproxy: write failed: %r", exc)
            self._finish(connection, "reset")
        except Exception:
            logger.exception("faultproxy: sender failed")
            self._finish(connection, "abort")

    async def _hold(self, arrived: float) -> None:
        """Wait until ``arrived`` plus the current delay, following changes to the delay."""
        loop = asyncio.get_running_loop()
        while (remaining := arrived + self._delay - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change().wait(), remaining)
