"""A simulated AMPS host for ``fleet2ban dev``: a TCP logon service that writes genuine ``07-0013`` lines.

The AMPS server itself is not available here. This service speaks just enough of a logon to accept or
refuse it and logs every disconnect in AMPS's own format to a ban log rolled over at about 1 MB onto the
same file name, like the seed's logging target (``07-0013`` and a periodic ``00-0015``).

Protocol (one line each way): the client sends ``logon NAME PASSWORD``; the server answers ``ok`` and
keeps the connection until the client closes it (reason ``connection closed``), or answers
``fail REASON`` and closes (reason ``auth`` for a wrong password, ``name in use`` when another live
connection holds NAME).

Run it as ``python -m fleet2ban.dev.amps_sim --log PATH [--port 9007]`` (inside a host's namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

PASSWORD = "secret"
LOG_ROLL_BYTES = 1_000_000
LIVENESS_INTERVAL_S = 5.0
AMPS_TZ = timezone(timedelta(hours=-8))  # AMPS writes local time with its offset; the seed's is -08:00


def amps_timestamp(ts: datetime) -> str:
    """AMPS's timestamp: ISO 8601, 7 fractional digits, a UTC offset (``2017-12-07T16:55:49.9395590-08:00``)."""
    local = ts.astimezone(AMPS_TZ)
    base = local.strftime("%Y-%m-%dT%H:%M:%S")
    offset = local.strftime("%z")
    return f"{base}.{local.microsecond:06d}0{offset[:3]}:{offset[3:]}"


def format_disconnect(ts: datetime, client: str, ip: str, port: int, reason: str, thread: int = 26) -> str:
    """One ``07-0013`` line as AMPS writes it (IPv6 hosts are written bare, port after the last colon)."""
    return f"{amps_timestamp(ts)} [{thread}] info: 07-0013 client[{client}]({ip}:{port}) disconnected: {reason}.\n"


def format_liveness(ts: datetime, thread: int = 1) -> str:
    return f"{amps_timestamp(ts)} [{thread}] info: 00-0015 AMPS is alive.\n"


class BanLog:
    """The ban log file, rolled over onto the same name (rename, then recreate) at about ``roll_bytes``."""

    def __init__(self, path: Path, roll_bytes: int = LOG_ROLL_BYTES) -> None:
        self.path = path
        self.roll_bytes = roll_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the service's life
        self.rolls = 0

    def write(self, line: str) -> None:
        self._f.write(line)
        self._f.flush()
        if self._f.tell() >= self.roll_bytes:
            self._roll()

    def _roll(self) -> None:
        self._f.close()
        self.rolls += 1
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        self._f.close()


class AmpsSim:
    """The logon service. ``serve()`` runs until cancelled."""

    def __init__(self, log: BanLog, host: str = "::", port: int = 9007, password: str = PASSWORD) -> None:
        self.log = log
        self.host = host
        self.port = port
        self.password = password
        self.names_in_use: set[str] = set()
        self.counts = {"accepted": 0, "refused": 0}

    def _disconnect(self, writer: asyncio.StreamWriter, client: str, reason: str) -> None:
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        ip, port = str(peer[0]), int(peer[1])
        self.log.write(format_disconnect(datetime.now(UTC), client, ip, port, reason))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = "unknown"
        reason = "connection closed"
        held = False
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10.0)
            except (TimeoutError, ConnectionError):
                reason = "heartbeat"
                return
            parts = line.decode("utf-8", "replace").rstrip("\r\n").split(" ", 2)
            if len(parts) != 3 or parts[0] != "logon":
                reason = "unknown command"
                return
            client, password = parts[1], parts[2]
            if password != self.password:
                reason = "auth"
            elif client in self.names_in_use:
                reason = "name in use"
            else:
                held = True
                self.names_in_use.add(client)
                self.counts["accepted"] += 1
                writer.write(b"ok\n")
                await writer.drain()
                with contextlib.suppress(ConnectionError):
                    while await reader.read(4096):
                        pass
                return
            self.counts["refused"] += 1
            writer.write(f"fail {reason}\n".encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            if held:
                self.names_in_use.discard(client)
            self._disconnect(writer, client, reason)
            writer.close()

    async def _liveness(self) -> None:
        while True:
            self.log.write(format_liveness(datetime.now(UTC)))
            await asyncio.sleep(LIVENESS_INTERVAL_S)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        if ":" in self.host:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        server = await asyncio.start_server(self._handle, sock=sock, backlog=1024)
        if ready is not None:
            ready.set()
        live = asyncio.create_task(self._liveness())
        try:
            async with server:
                await server.serve_forever()
        finally:
            live.cancel()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", type=Path, required=True, help="the ban log to write")
    ap.add_argument("--port", type=int, default=9007)
    ap.add_argument("--bind", default="::", help="address to listen on (default: all, IPv4 and IPv6)")
    ap.add_argument("--roll-bytes", type=int, default=LOG_ROLL_BYTES)
    args = ap.parse_args(argv)
    log = BanLog(args.log, args.roll_bytes)
    sim = AmpsSim(log, host=args.bind, port=args.port)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGINT):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        ready = asyncio.Event()
        serving = asyncio.create_task(sim.serve(ready))
        await ready.wait()
        print(f"amps-sim listening on port {args.port}, logging to {args.log}", flush=True)
        await serving

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(run())
    log.close()


if __name__ == "__main__":
    main()
