"""The floor under any Media Streams server: the CPU of a server that only reads its calls' frames.

    python bench/read_floor.py                                  # 20, 40 and 100 calls, uvloop
    python bench/read_floor.py --calls 40 --loop asyncio        # the stock event loop (as the peer runs)
    python bench/read_floor.py --calls 40 --write-every 3       # plus one 5,200-byte write per 3 frames

Each call is one loopback TCP connection on which a client process sends a 300-byte message every
20 ms, staggered over the calls as independent phone calls are, the size of a Twilio media frame
with its websocket header. The server, pinned to `--server-cpu`, counts what arrives and does
nothing else (with `--write-every N` it also writes an append-sized message back every N frames,
as callbot appends three frames' audio to Realtime at once). Its CPU per call-second is what the
event loop and the kernel cost for reading 50 frames a second per call on this machine: the wake-
ups, the reads, the loop's dispatch. No server can cost less, so it is the part of the side-by-side
ratio (bench/README.md) that no change to callbot can move. CPU is the server's own utime+stime
over the measured window (`resource.getrusage`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

FRAME = b"\x81\xfe\x01\x28" + b"x" * 296  # a masked 296-byte text frame's header and body: 300 bytes
APPEND = b"y" * 5200  # an append of 60 ms of PCM16 24 kHz audio, base64 in JSON
WARM_S = 2.0


class _Sink(asyncio.Protocol):
    """One call's connection on the server: counts reads, writes an append every N of them."""

    reads = 0

    def __init__(self, write_every: int) -> None:
        self._every = write_every
        self._transport: Any = None  # asyncio's or uvloop's (which is no asyncio.Transport subclass)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        _Sink.reads += 1
        if self._every and _Sink.reads % self._every == 0 and self._transport is not None:
            self._transport.write(APPEND)


def _run(loop_name: str, main: Any) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def _server(args: argparse.Namespace, port_w: int, result_w: int) -> None:
    os.sched_setaffinity(0, {args.server_cpu})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Sink(args.write_every), "127.0.0.1", 0)
        os.write(port_w, f"{server.sockets[0].getsockname()[1]}\n".encode())
        await asyncio.sleep(WARM_S)
        r0, n0, t0 = resource.getrusage(resource.RUSAGE_SELF), _Sink.reads, time.monotonic()
        await asyncio.sleep(args.seconds)
        r1, n1, t1 = resource.getrusage(resource.RUSAGE_SELF), _Sink.reads, time.monotonic()
        cpu_s = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        wall = t1 - t0
        out = {
            "calls": args.calls_now,
            "loop": args.loop,
            "write_every": args.write_every,
            "cpu_ms_per_s": round(cpu_s * 1000 / wall, 2),
            "cpu_ms_per_call_second": round(cpu_s * 1000 / (args.calls_now * wall), 3),
            "reads_per_s": round((n1 - n0) / wall, 1),
            "us_per_read": round(cpu_s * 1e6 / max(1, n1 - n0), 2),
            "context_switches": r1.ru_nvcsw - r0.ru_nvcsw + r1.ru_nivcsw - r0.ru_nivcsw,
        }
        os.write(result_w, (json.dumps(out) + "\n").encode())
        await asyncio.sleep(1.0)  # the callers stop on their own clock, just after this one
        server.close()

    _run(args.loop, main())


async def _callers(args: argparse.Namespace, port: int) -> None:
    os.sched_setaffinity(0, {args.load_cpu})
    n = args.calls_now
    writers, drains = [], []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        drains.append(asyncio.ensure_future(_drain(reader)))
    start = time.monotonic()
    end = start + WARM_S + args.seconds + 0.5

    async def call(i: int, writer: asyncio.StreamWriter) -> None:
        due = start + i * 0.020 / n  # independent calls: their 20 ms clocks are out of phase
        while due < end and not writer.is_closing():
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                writer.write(FRAME)
            except (ConnectionError, RuntimeError):  # the server is done measuring and has gone
                return
            due += 0.020

    await asyncio.gather(*(call(i, w) for i, w in enumerate(writers)))
    for writer in writers:
        writer.close()
    await asyncio.gather(*drains, return_exceptions=True)


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def measure(args: argparse.Namespace) -> dict[str, Any]:
    port_r, port_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _server(args, port_w, result_w)
        finally:
            os._exit(0)
    port = int(os.read(port_r, 64).split()[0])
    _run("uvloop", _callers(args, port))  # the load side on the fast loop, whatever the server runs
    os.waitpid(pid, 0)
    return dict(json.loads(os.read(result_r, 4096).decode().splitlines()[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="20,40,100", help="comma-separated levels (default 20,40,100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per level")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--write-every", type=int, default=0, help="also write an append every N frames")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the levels here")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.calls.split(",") if c.strip()]
    rows = []
    print(
        f"read floor: {args.loop}, write every {args.write_every or 'never'}; {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}",
        flush=True,
    )
    for calls in levels:
        args.calls_now = calls
        print(f"[{calls} calls] measuring {args.seconds:.0f} s ...", flush=True)
        row = measure(args)
        rows.append(row)
        print(
            f"[{calls} calls] {row['cpu_ms_per_call_second']:.3f} CPU-ms per call-second "
            f"({row['cpu_ms_per_s']:.1f} ms/s, {row['reads_per_s']:.0f} reads/s, "
            f"{row['us_per_read']:.1f} µs per read, {row['context_switches']} context switches)",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
