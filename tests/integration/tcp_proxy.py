"""A TCP forwarder the fault tests put between the stack and moto, to take "AWS" down and bring it back.

    python tests/integration/tcp_proxy.py LISTEN_PORT TARGET_PORT

SIGUSR1: down -- stop listening (new connections are refused) and cut every
open connection, as an unreachable endpoint does.  SIGUSR2: up again.

Why not stop moto itself: moto keeps everything in memory, so killing it loses
every table, queue and object (no real outage does that), and SIGSTOP only
makes calls hang until their timeouts, which tests slowness, not an outage.
"""

from __future__ import annotations

import asyncio
import signal
import sys


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float = 0.0) -> None:
    """Copy one direction of a connection until it ends, each chunk held ``delay_s`` first (a far network:
    ``bench/create.py``)."""
    try:
        while data := await reader.read(65536):
            if delay_s:
                await asyncio.sleep(delay_s)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(listen_port: int, target_port: int) -> None:
    connections: set[asyncio.StreamWriter] = set()
    server: asyncio.Server | None = None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.transport.abort()
            return
        connections.update((writer, up_writer))
        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            connections.difference_update((writer, up_writer))

    async def up() -> None:
        nonlocal server
        if server is None:
            server = await asyncio.start_server(handle, "127.0.0.1", listen_port, reuse_address=True)
            print("up", flush=True)

    def down() -> None:
        nonlocal server
        if server is not None:
            server.close()
            server = None
        for writer in list(connections):
            writer.transport.abort()
        connections.clear()
        print("down", flush=True)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, down)
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(up()))
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    await up()
    await stop


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
