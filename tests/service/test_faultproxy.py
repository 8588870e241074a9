"""FaultProxy over real loopback sockets, in front of a small threaded echo server.

Every socket has a timeout, so a fault that misbehaves fails a test instead of
hanging it.
"""

from __future__ import annotations

import logging
import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest

from parley.testing import faultproxy
from parley.testing.faultproxy import FaultProxy, FaultProxyStats

TIMEOUT = 5.0
"""Seconds any socket operation may take before the test fails."""
QUIET = 0.5
"""Seconds of silence taken as "no byte passes" (blackhole)."""


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.connections = 0
        self.lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = cast(EchoServer, self.server)
        with server.lock:
            server.connections += 1
        sock = cast(socket.socket, self.request)
        sock.settimeout(TIMEOUT)
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing goes wrong on the proxy's loop thread, through teardown (close) too."""
    caplog.set_level(logging.INFO, logger=faultproxy.__name__)
    yield
    errors = [
        record.getMessage()
        for phase in ("setup", "call", "teardown")
        for record in caplog.get_records(phase)
        if record.name == faultproxy.__name__ and record.levelno >= logging.WARNING
    ]
    assert errors == []


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.address) as proxy:
        yield proxy


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return recv_exactly(sock, len(data))


def wait_for(condition: str, check: Callable[[], bool]) -> None:
    """Poll ``check`` until it returns true; fail after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.01)


def assert_closed_without_data(sock: socket.socket) -> None:
    """The proxy closed ``sock``: end of stream or reset, and no byte came."""
    try:
        data = sock.recv(1024)
    except ConnectionResetError:
        return
    assert data == b""


def forwarded(address: tuple[str, int]) -> bool:
    """Whether a new connection through the proxy is forwarded (True) or dropped."""
    with connect(address) as sock:
        try:
            sock.sendall(b"ping")
            data = sock.recv(4)
        except (ConnectionResetError, BrokenPipeError):
            return False
        if data == b"":
            return False
        return data + recv_exactly(sock, 4 - len(data)) == b"ping"


# --------------------------------------------------------------------------
# Plain forwarding


def test_forwards_both_ways_and_counts_bytes(proxy: FaultProxy, echo: EchoServer) -> None:
    host, port = proxy.address
    assert host == "127.0.0.1"
    assert port != echo.address[1]
    assert proxy.url() == f"https://127.0.0.1:{port}"
    assert proxy.url("http") == f"http://127.0.0.1:{port}"

    payload = bytes(range(256)) * 1000  # larger than one read
    with connect(proxy.address) as sock:
        assert round_trip(sock, b"hello") == b"hello"
        assert round_trip(sock, payload) == payload
        stats = proxy.stats
        assert stats.open_connections == 1
    assert stats.accepted == 1
    assert stats.refused_or_dropped == 0
    assert stats.bytes_up == 5 + len(payload)
    assert stats.bytes_down == 5 + len(payload)
    assert echo.connections == 1
    wait_for("the connection to be closed", lambda: proxy.stats.open_connections == 0)


def test_start_is_idempotent_and_stats_is_a_frozen_snapshot(echo: EchoServer) -> None:
    with FaultProxy(echo.address) as proxy:
        assert proxy.start() == proxy.address
        before = proxy.stats
        with connect(proxy.address) as sock:
            assert round_trip(sock, b"x") == b"x"
        assert before == FaultProxyStats()
        with pytest.raises(AttributeError):
            before.accepted = 3  # type: ignore[misc]


def test_faults_need_a_started_proxy(echo: EchoServer) -> None:
    proxy = FaultProxy(echo.address)
    with pytest.raises(RuntimeError, match="not started"):
        proxy.delay(0.1)
    with pytest.raises(RuntimeError, match="not started"):
        _ = proxy.address


def test_faults_refuse_nonsense(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="delay"):
        proxy.delay(-1)
    with pytest.raises(ValueError, match="delay"):
        proxy.delay(float("nan"))
    with pytest.raises(ValueError, match="probability"):
        proxy.drop(1.5)


# --------------------------------------------------------------------------
# delay


def test_delay_holds_each_direction(proxy: FaultProxy) -> None:
    with connect(proxy.address) as sock:
        assert round_trip(sock, b"warm") == b"warm"  # target connection is up
        proxy.delay(0.3)
        started = time.monotonic()
        assert round_trip(sock, b"slow") == b"slow"
        elapsed = time.monotonic() - started
    # Held 0.3 s on the way up and again on the way down.
    assert elapsed >= 0.6


def test_delay_keeps_order_and_ends_at_once(proxy: FaultProxy) -> None:
    proxy.delay(0.2)
    with connect(proxy.address) as sock:
        parts = [f"part {i};".encode() for i in range(20)]
        for part in parts:
            sock.sendall(part)
            time.sleep(0.005)
        expected = b"".join(parts)
        assert recv_exactly(sock, len(expected)) == expected

        proxy.delay(30)
        sock.sendall(b"held")
        time.sleep(0.1)
        proxy.delay(0)  # also frees what is held already
        assert recv_exactly(sock, 4) == b"held"


# --------------------------------------------------------------------------
# drop


def test_drop_all_closes_new_connections_without_contacting_target(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy.address) as kept:
        assert round_trip(kept, b"before") == b"before"
        proxy.drop(1.0)
        for _ in range(3):
            with connect(proxy.address) as sock:
                assert_closed_without_data(sock)
        # Connections made before the fault are not touched.
        assert round_trip(kept, b"after") == b"after"
    assert echo.connections == 1
    stats = proxy.stats
    assert stats.accepted == 4
    assert stats.refused_or_dropped == 3

    proxy.drop(0)
    with connect(proxy.address) as sock:
        assert round_trip(sock, b"again") == b"again"


def test_drop_is_seeded_and_repeatable(echo: EchoServer) -> None:
    outcomes = []
    for _ in range(2):
        with FaultProxy(echo.address, seed=7) as proxy:
            proxy.drop(0.5)
            outcomes.append([forwarded(proxy.address) for _ in range(24)])
            assert proxy.stats.refused_or_dropped == outcomes[-1].count(False)
    rng = random.Random(7)
    expected = [rng.random() >= 0.5 for _ in range(24)]
    assert outcomes == [expected, expected]
    assert True in expected
    assert False in expected


# --------------------------------------------------------------------------
# reset


def test_reset_sends_rst_to_open_and_new_connections(proxy: FaultProxy, echo: EchoServer) -> None:
    with connect(proxy.address) as sock:
        assert round_trip(sock, b"before") == b"before"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    wait_for("the reset connection to be gone", lambda: proxy.stats.open_connections == 0)

    # The RST may beat connect() back to the client, or come after it.
    with pytest.raises(ConnectionResetError), connect(proxy.address) as sock:
        sock.recv(1024)
    assert echo.connections == 1  # the new one never reached the target
    assert proxy.stats.refused_or_dropped == 1

    proxy.restore()
    with connect(proxy.address) as sock:
        assert round_trip(sock, b"after") == b"after"


# --------------------------------------------------------------------------
# blackhole


def test_blackhole_keeps_connections_open_but_silent(proxy: FaultProxy) -> None:
    with connect(proxy.address) as old:
        assert round_trip(old, b"before") == b"before"
        up, down = proxy.stats.bytes_up, proxy.stats.bytes_down
        proxy.blackhole()

        old.settimeout(QUIET)
        old.sendall(b"into the void")
        with pytest.raises(TimeoutError):
            old.recv(1024)

        with connect(proxy.address) as new:
            new.settimeout(QUIET)
            new.sendall(b"also lost")
            with pytest.raises(TimeoutError):
                new.recv(1024)
            # Still open: the proxy neither closed nor reset them.
            old.sendall(b"more")
            new.sendall(b"more")
            stats = proxy.stats
            assert stats.open_connections == 2
            assert (stats.bytes_up, stats.bytes_down) == (up, down)

    proxy.restore()
    with connect(proxy.address) as sock:
        assert round_trip(sock, b"after") == b"after"


# --------------------------------------------------------------------------
# cut


def test_cut_refuses_and_restore_listens_on_the_same_port(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    address = proxy.address
    with connect(address) as sock:
        assert round_trip(sock, b"before") == b"before"
        proxy.cut()
        assert_closed_without_data(sock)
    with pytest.raises(ConnectionRefusedError):
        connect(address)
    assert proxy.stats.open_connections == 0

    proxy.restore()
    assert proxy.address == address
    with connect(address) as sock:
        assert round_trip(sock, b"after") == b"after"
    assert echo.connections == 2


def test_restore_after_cut_clears_every_fault(proxy: FaultProxy) -> None:
    proxy.delay(10)
    proxy.drop(1.0)
    proxy.blackhole()
    proxy.reset()
    proxy.cut()
    proxy.restore()
    with connect(proxy.address) as sock:
        started = time.monotonic()
        assert round_trip(sock, b"plain") == b"plain"
    assert time.monotonic() - started < 10


# --------------------------------------------------------------------------
# Robustness and life cycle


def test_target_down_closes_the_client_connection() -> None:
    # A bound socket that does not listen: connecting to it is refused.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        with FaultProxy(reserved.getsockname(), connect_timeout=TIMEOUT) as proxy:
            with connect(proxy.address) as sock:
                sock.settimeout(TIMEOUT / 2)  # well before the proxy would give up
                assert_closed_without_data(sock)
            stats = proxy.stats
            assert stats.accepted == 1
            assert stats.refused_or_dropped == 1
            wait_for("no open connection", lambda: proxy.stats.open_connections == 0)


def test_close_stops_the_thread_and_the_listener(echo: EchoServer) -> None:
    before = set(threading.enumerate())
    proxy = FaultProxy(echo.address)
    address = proxy.start()
    threads = set(threading.enumerate()) - before
    assert len(threads) == 1

    sock = connect(address)
    with sock:
        assert round_trip(sock, b"hi") == b"hi"
        proxy.delay(30)
        sock.sendall(b"held")
        started = time.monotonic()
        proxy.close()
        assert time.monotonic() - started < TIMEOUT
        assert_closed_without_data(sock)

    assert not any(thread.is_alive() for thread in threads)
    with pytest.raises(ConnectionRefusedError):
        connect(address)
    proxy.close()  # a second close does nothing
    with pytest.raises(RuntimeError, match="closed"):
        proxy.restore()
    with pytest.raises(RuntimeError, match="closed"):
        proxy.start()


def test_start_on_a_busy_port_raises_and_leaves_no_thread(echo: EchoServer) -> None:
    before = set(threading.enumerate())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proxy = FaultProxy(echo.address, listen=busy.getsockname())
        with pytest.raises(OSError, match="in use"):
            proxy.start()
    assert not [thread for thread in set(threading.enumerate()) - before if thread.is_alive()]
