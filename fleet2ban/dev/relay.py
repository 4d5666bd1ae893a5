"""A TCP relay in its own process: ``python -m fleet2ban.dev.relay --fd N --target HOST:PORT``.

:class:`fleet2ban.dev.netns.PortForward` binds a listening socket inside a host's namespace and hands it
to this process (an inherited file descriptor); this process runs in the root namespace, so every
connection it accepts there is relayed to ``HOST:PORT`` of the root namespace (the local Kafka).

Why a process of its own: relayed in threads of the process that runs a benchmark, every Kafka round
trip of every simulated host waited for that process's GIL, behind its probes and readers (tens of
milliseconds per hop under load), which no production host pays. An event loop here relays with its
own interpreter; its transports disable Nagle's algorithm, as Kafka's own clients do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from functools import partial


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then half-close the other side (the peer may still answer)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _relay(
    target: tuple[str, int], client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.transport.abort()
        return
    try:
        await asyncio.gather(_pump(client_r, up_w), _pump(up_r, client_w))
    finally:
        for w in (client_w, up_w):
            with contextlib.suppress(Exception):
                w.close()


async def serve(fd: int, target: tuple[str, int]) -> None:
    """Relay every connection accepted on the listening socket ``fd`` to ``target``, until killed."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    server = await asyncio.start_server(partial(_relay, target), sock=sock)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fd", type=int, required=True, help="an inherited listening socket")
    ap.add_argument("--target", required=True, help="HOST:PORT to relay to")
    args = ap.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    try:
        import uvloop

        uvloop.run(serve(args.fd, (host, int(port))))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(args.fd, (host, int(port))))
    except KeyboardInterrupt:  # pragma: no cover
        pass


if __name__ == "__main__":
    main()
