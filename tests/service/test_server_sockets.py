"""Listening sockets: answers are not held back by Nagle's algorithm."""

from __future__ import annotations

import asyncio
import socket

from parley.server import _bind


def test_accepted_connections_have_nagle_turned_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets made as IPPROTO_TCP; ``_bind`` makes them so.

    Without it, every HTTP answer (head and body written apart) waited about
    40 ms for the client's delayed ACK.
    """
    seen: list[int] = []

    async def main() -> None:
        listener = _bind("127.0.0.1:0", "test listener")
        port = listener.getsockname()[1]

        async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_accept, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen, "the server never saw the connection"
    assert seen[0] != 0
