"""Load benchmark: the real server, one uvicorn worker, under N concurrent simulated Twilio calls.

Run (see bench/README.md for the method and what each number means):

    python bench/load_bench.py --quick                      # smoke run: 10 and 25 calls, 10 s
    python bench/load_bench.py --calls 25,50,100,200,400 --seconds 30 --modes pcm24k,pcmu \\
        --json load.json --markdown load.md
    python bench/load_bench.py --sequential-calls 1000      # leak check only
    python bench/load_bench.py --profile --profile-calls 100  # py-spy profile of the server

For every mode and level it starts three kinds of process: the server (`bench/load_server.py`,
the production app with the fake Realtime connector, pinned to `--server-cpu`), the fake
Realtime server (`bench/load_fake.py`) and the callers (`bench/load_callers.py`, the Twilio
caller simulator at real-time pace), the last two pinned to `--load-cpus`. After two warm-up
calls it places N calls (starts spread over a short ramp), each T seconds of scripted
conversation, samples the server's CPU and RSS from /proc, and joins the CLOCK_MONOTONIC
timestamps the callers and the fake recorded into the bridge's added latency each way, the
barge-in reaction and the playback pacing at the caller. One table per N, modes side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import load_common as lc
import load_compare
import load_peer
import orjson

HERE = Path(__file__).resolve().parent
PY = sys.executable
MS = 1e6  # ns per ms
REPLY_START_MS = 300
"""A late frame this close to the start of its burst came before a stall could be covered: the
lead fills at the rate the deltas arrive, so a stall longer than what is queued then runs dry."""

TARGETS = {
    "calls_on_one_core": 200,
    "cpu_ms_per_call_s": 5.0,
    "loop_lag_p99_ms": 20.0,
    "latency_p99_ms": 3.0,
    "latency_at_calls": 100,
    "barge_in_p99_ms": 5.0,
    "rss_per_call_mb": 2.0,
}


def progress(text: str, *, final: bool = False) -> None:
    """A progress line on stderr: rewritten in place on a terminal, one line per 5 s otherwise."""
    if sys.stderr.isatty():
        end = "\n" if final else ""
        print("\r\033[K" + text, end=end, file=sys.stderr, flush=True)
    else:
        now = time.monotonic()
        if final or now - getattr(progress, "_last", 0.0) >= 5.0:
            progress._last = now  # type: ignore[attr-defined]
            print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    stderr_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    last_status: dict[str, Any] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                err = self.stderr_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited before it was ready:\n{err}")
            with contextlib.suppress(orjson.JSONDecodeError):
                data = orjson.loads(line)
                if isinstance(data, dict) and data.get("ready"):
                    self.ready = data
                    return data

    def follow(self) -> None:
        """Keep the latest JSON status line the process prints."""

        async def run() -> None:
            assert self.proc.stdout is not None
            while line := await self.proc.stdout.readline():
                with contextlib.suppress(orjson.JSONDecodeError):
                    data = orjson.loads(line)
                    if isinstance(data, dict):
                        self.last_status = data

        self.reader = asyncio.create_task(run())

    async def interrupt(self, timeout: float = 20.0) -> int | None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()
        return self.proc.returncode


def child_env(callbot_src: str | None = None) -> dict[str, str]:
    """The environment of a benchmark process; `callbot_src` puts another checkout's `callbot`
    first on its path (`--server-src`: compare the server of another commit)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if callbot_src:
        src = str(Path(callbot_src).resolve())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


async def spawn(name: str, args: list[str], workdir: Path, callbot_src: str | None = None) -> Proc:
    err = workdir / f"{name}.stderr.log"
    proc = await asyncio.create_subprocess_exec(
        PY,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=err.open("wb"),
        stdin=asyncio.subprocess.DEVNULL,
        env=child_env(callbot_src),
    )
    return Proc(name, proc, err)


@dataclass
class PeerRun:
    """A peer server (`--peer`) as this run serves it: its spec, interpreter and copied source."""

    spec: load_peer.PeerSpec
    python: str
    src: Path


async def spawn_peer(peer: PeerRun, workdir: Path, fake_port: int, server_cpu: str) -> tuple[Proc, int]:
    """Start the peer on a free loopback port, pinned to the server CPU; (process, port) once it answers."""
    port = load_peer.free_port()
    argv = load_peer.build_command(
        peer.spec, python=peer.python, port=port, fake_port=fake_port, src=peer.src
    )
    env = load_peer.build_env(peer.spec, child_env(), port=port, fake_port=fake_port, src=peer.src)
    env.pop("PYTHONUNBUFFERED", None)  # the peer's prints buffer as they would in a deployment
    cpus = lc.parse_cpus(server_cpu)
    err = workdir / "server.stderr.log"
    out = workdir / "server.stdout.log"
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=out.open("wb"),
        stderr=err.open("wb"),
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=str(peer.src),
        preexec_fn=lambda: lc.pin(cpus),
    )
    handle = Proc("server", proc, err)
    try:
        await load_peer.wait_listening(proc, port, peer.spec.ready_path)
    except (RuntimeError, TimeoutError) as exc:
        await handle.interrupt(5.0)
        tail = err.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"peer {peer.spec.name} did not start ({exc}):\n{tail}") from exc
    handle.ready = {"peer": peer.spec.name, "argv": argv, "pid": proc.pid, "port": port}
    return handle, port


@dataclass
class Rig:
    """A fake Realtime server and a callbot server for one mode (and one level), or with
    `peer` set, the fake and that peer server instead of callbot (`mode` is then its name)."""

    mode: str
    workdir: Path
    opts: argparse.Namespace
    fake: Proc | None = None
    server: Proc | None = None
    base_url: str = ""
    server_ready: dict[str, Any] | None = None
    http: httpx.AsyncClient | None = None
    peer: PeerRun | None = None
    src: str | None = None
    """The checkout whose `callbot` the server runs (`--base-src`); None: `--server-src` or this one."""

    async def start(self) -> None:
        o = self.opts
        self.fake = await spawn(
            "fake",
            [
                str(HERE / "load_fake.py"),
                "--out",
                str(self.workdir / "fake.json"),
                "--cpu",
                o.load_cpus,
                "--realtime-factor",
                str(o.realtime_factor),
                "--delta-ms",
                str(o.delta_ms),
                "--impl",
                o.fake_impl,
            ],
            self.workdir,
        )
        fake_port = (await self.fake.read_ready())["port"]
        if self.peer is not None:
            self.server, port = await spawn_peer(self.peer, self.workdir, fake_port, o.server_cpu)
            self.server_ready = self.server.ready
            self.base_url = f"http://127.0.0.1:{port}"
            return
        server_args = [
            str(HERE / "load_server.py"),
            "--fake-url",
            f"http://127.0.0.1:{fake_port}/v1",
            "--mode",
            self.mode.partition("/")[0],
            "--cpu",
            o.server_cpu,
            "--log-level",
            o.server_log_level,
        ]
        if o.no_gc_freeze:
            server_args.append("--no-gc-freeze")
        if self.mode.endswith("/public"):
            server_args.append("--public-paths")  # the fallbacks of the fast paths (adapters/fastpaths.py)
        if o.server_lag_interval_ms is not None:
            server_args += ["--lag-interval-ms", str(o.server_lag_interval_ms)]
        if o.prebuffer_ms is not None:
            server_args += ["--prebuffer-ms", str(o.prebuffer_ms)]
        if getattr(o, "peer", None) is not None and not o.callbot_greeting:
            server_args.append("--no-greeting")  # side by side: the same script as the peer's
        if o.profiler == "cprofile" and getattr(self, "cprofile", None):
            server_args += ["--cprofile", str(self.cprofile)]  # type: ignore[attr-defined]
        self.server = await spawn("server", server_args, self.workdir, self.src or o.server_src)
        ready = self.server_ready = await self.server.read_ready()
        self.base_url = f"http://127.0.0.1:{ready['port']}"
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=60.0, trust_env=False)

    async def stats(self, **params: Any) -> dict[str, Any]:
        if self.peer is not None:  # a peer has no bench endpoints: what /proc tells
            assert self.server is not None
            return {
                "active_calls": 0,
                "observer": {"end_reasons": {}},
                "pacer_max_lag_ms": None,
                "gc": {},
                "lag": {"t_ns": [], "lag_us": []},
                "rss_bytes": lc.proc_rss_bytes(self.server.pid),
            }
        assert self.http is not None
        response = await self.http.get("/bench/stats", params=params)
        return orjson.loads(response.content)

    async def collect(self, types: bool = False) -> dict[str, Any]:
        """callbot: gc.collect() in the server, then its RSS and live objects; a peer: its RSS."""
        if self.peer is not None:
            assert self.server is not None
            return {"rss_bytes": lc.proc_rss_bytes(self.server.pid), "objects": None, "tasks": None}
        assert self.http is not None
        response = await self.http.post("/bench/gc", params={"types": "1"} if types else {})
        return orjson.loads(response.content)

    async def wait_idle(self, timeout: float = 60.0) -> bool:
        if self.peer is not None:  # it cannot say: its callers have hung up, give it a moment
            await asyncio.sleep(0.5)
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.stats())["active_calls"] == 0:
                return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self) -> dict[str, Any]:
        if self.http is not None:
            await self.http.aclose()
        if self.peer is not None:
            # The fake first: the peer keeps its Realtime sockets open after the caller hung up, and
            # closing them ends its handlers, so it can shut down without waiting for them.
            if self.fake is not None:
                await self.fake.interrupt()
            if self.server is not None:
                await self.server.interrupt(5.0)
        else:
            if self.server is not None:
                await self.server.interrupt()
            if self.fake is not None:
                await self.fake.interrupt()
        path = self.workdir / "fake.json"
        return orjson.loads(path.read_bytes()) if path.exists() else {}


def call_sid(level: int, index: int) -> str:
    return f"CA{level:08x}{index:024x}"


async def run_callers(
    rig: Rig, calls: list[dict[str, Any]], seconds: float, procs: int, tag: str, *, show: Any = None
) -> list[dict[str, Any]]:
    """Run `calls` in `procs` caller processes; returns every process's output."""
    o = rig.opts
    chunks = [calls[i::procs] for i in range(procs)]
    started: list[tuple[Proc, Path]] = []
    for i, chunk in enumerate(chunks):
        if not chunk:
            continue
        spec = rig.workdir / f"{tag}-spec{i}.json"
        out = rig.workdir / f"{tag}-callers{i}.json"
        body = {
            "base_url": rig.base_url,
            "seconds": seconds,
            "record": o.caller_record,
            "impl": o.caller_impl,
            "calls": chunk,
            **caller_target_spec(o, rig.peer.spec if rig.peer is not None else None),
        }
        spec.write_bytes(orjson.dumps(body))
        proc = await spawn(
            f"{tag}-callers{i}",
            [str(HERE / "load_callers.py"), "--spec", str(spec), "--out", str(out), "--cpu", o.load_cpus],
            rig.workdir,
        )
        proc.follow()
        started.append((proc, out))
    waiter = asyncio.gather(*(p.proc.wait() for p, _ in started))
    while not waiter.done():
        if show is not None:
            await show([p for p, _ in started])
        await asyncio.wait({waiter}, timeout=0.5)
    outputs = []
    for proc, out in started:
        if proc.reader is not None:
            proc.reader.cancel()
        if not out.exists():
            err = proc.stderr_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"caller process {proc.name} failed:\n{err}")
        data = orjson.loads(out.read_bytes())
        data["pid"] = proc.pid
        outputs.append(data)
    return outputs


def caller_target_spec(opts: argparse.Namespace, peer: load_peer.PeerSpec | None) -> dict[str, Any]:
    """What the callers need to know about the server they call, and the network jitter.

    callbot: its signed webhook (`/twilio/voice`); a peer: its webhook. In side-by-side mode every
    call opens with `--opening-ms` of silence on both servers (the same script for a server that
    does not speak first; callbot then runs without its greeting unless `--callbot-greeting`)."""
    spec: dict[str, Any] = {"webhook_path": peer.webhook_path if peer is not None else "/twilio/voice"}
    side_by_side = getattr(opts, "peer", None) is not None
    if side_by_side or (peer is not None and not peer.greets):
        spec["opening_ms"] = int(opts.opening_ms)
    jitter = getattr(opts, "jitter", None)
    if jitter:
        spec["jitter"] = jitter
    return spec


def plan_calls(
    level_id: int, n: int, first_ns: int, ramp_s: float, barge_fraction: float
) -> list[dict[str, Any]]:
    step_ns = int(ramp_s * 1e9 / max(1, n - 1)) if n > 1 else 0
    every = round(1 / barge_fraction) if barge_fraction > 0 else 0
    return [
        {
            "sid": call_sid(level_id, i),
            "start_ns": first_ns + i * step_ns,
            "seed": level_id * 100_000 + i,
            "barge": bool(every) and i % every == every - 1,
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------- analysis


def inbound_latencies(send_ns: list[int], append_ns: list[int], batch: int = 1) -> tuple[list[float], bool]:
    """Twilio frame sent -> append arrived at the fake, in ms, for one call.

    The bridge drops the caller's frames until the Realtime session is configured, then turns
    every `batch` frames (CALLBOT_INBOUND_BATCH_FRAMES) into one append, in order, until the
    caller's `stop`, which sends what is left. An append leaves when its batch's last frame has
    arrived, so append j is paired with frame k0 + j * batch, that last frame: the latency is the
    bridge's own, as with one frame per append (the earlier frames' wait for their batch is the
    chosen batching, not overhead). k0 comes from the counts (frames sent - batch * appends,
    plus the batch's last frame) and is cross-checked by timing: with latencies under 20 ms each
    append's nearest earlier frame gives it too (with a batch, the partial last append leaves
    the count up to batch - 1 frames off, so there the timing's value is used).
    Returns (latencies, offsets_agree).
    """
    if not append_ns or not send_ns:
        return [], True
    k0 = len(send_ns) - batch * len(append_ns) + batch - 1
    votes: collections.Counter[int] = collections.Counter()
    for j in range(0, len(append_ns), max(1, len(append_ns) // 200)):
        votes[bisect.bisect_right(send_ns, append_ns[j]) - 1 - j * batch] += 1
    vote = votes.most_common(1)[0][0]
    if batch > 1:
        agree = vote - batch < k0 <= vote
        k0 = vote
    else:
        if k0 < 0:
            k0 = vote
        agree = vote == k0
    lat = [
        (append_ns[j] - send_ns[k0 + j * batch]) / MS
        for j in range(len(append_ns))
        if 0 <= k0 + j * batch < len(send_ns)
    ]
    return lat, agree


def first_after(times: list[int], t: int, limit_ns: int) -> int | None:
    i = bisect.bisect_left(times, t)
    if i < len(times) and times[i] - t <= limit_ns:
        return times[i]
    return None


def analyse_level(
    n: int,
    mode: str,
    seconds: float,
    callers: list[dict[str, Any]],
    fake: dict[str, Any],
    samples: list[dict[str, Any]],
    server: dict[str, Any],
    log_path: Path,
    server_cpu: str = "0",
    load_cpus: str = "1",
    *,
    peer_logs: list[Path] | None = None,
) -> dict[str, Any]:
    calls = [c for out in callers for c in out["calls"]]
    all_sessions = fake.get("sessions", [])
    sessions = {s["call"]: s for s in all_sessions if s.get("call")}
    anonymous = [s for s in all_sessions if not s.get("call")]
    if anonymous:  # a peer's: no call sid in its Realtime URL
        sessions.update(join_by_open_order(calls, anonymous))
    inbound: list[float] = []
    batch = int(server.get("final", {}).get("inbound_batch_frames", 1))  # 1: a peer, or an older callbot
    outbound: list[float] = []
    barge: list[float] = []
    offsets_disagree = 0
    outbound_missing = 0
    speech_started = 0
    send_late: list[float] = []
    for call in calls:
        s = sessions.get(call["sid"])
        send_late.extend(v / 1000 for v in call.get("send_late_us", []))
        if s is None:
            continue
        lat, agree = inbound_latencies(call.get("send_ns", []), s["append_ns"], batch)
        inbound.extend(lat)
        offsets_disagree += not agree
        media = call.get("media_in_ns", [])
        for d in s["first_delta_ns"]:
            m = first_after(media, d, int(2e9))
            if m is None:
                if d < call["end_ns"] - 1e9:  # a reply that began just before hang-up may not arrive
                    outbound_missing += 1
            else:
                outbound.append((m - d) / MS)
        starts = s["speech_started_ns"]
        speech_started += len(starts)
        for c in call.get("clear_ns", []):
            i = bisect.bisect_right(starts, c) - 1
            if i >= 0 and c - starts[i] < 1e9:
                barge.append((c - starts[i]) / MS)

    first_start = min(c["start_ns"] for c in calls)
    last_start = max(c["start_ns"] for c in calls)
    first_end = min(c["end_ns"] for c in calls)
    last_end = max(c["end_ns"] for c in calls)
    steady0, steady1 = last_start + int(2e9), first_end - int(0.5e9)
    if steady1 <= steady0:  # very short runs: use the middle half of the call period
        steady0 = first_start + (last_end - first_start) // 4
        steady1 = last_end - (last_end - first_start) // 4

    def at(t_ns: int) -> dict[str, Any]:
        return min(samples, key=lambda s: abs(s["t_ns"] - t_ns))

    a, b = at(steady0), at(steady1)
    wall = (b["t_ns"] - a["t_ns"]) / 1e9
    cpu_pct = 100 * (b["server_cpu_s"] - a["server_cpu_s"]) / wall if wall > 0 else None
    load_pct = 100 * (b["load_cpu_s"] - a["load_cpu_s"]) / wall if wall > 0 else None
    fake_pct = 100 * (b.get("fake_cpu_s", 0) - a.get("fake_cpu_s", 0)) / wall if wall > 0 else None

    def busy(sample: dict[str, Any], cpus: set[int]) -> float:
        return sum(sample["busy"].get(f"cpu{c}", 0.0) for c in cpus) if cpus else sample["busy"]["cpu"]

    foreign_server = foreign_load = None
    irq_steal = {}
    if wall > 0:
        for c in sorted(lc.parse_cpus(server_cpu) | lc.parse_cpus(load_cpus)):
            for kind in ("irq", "steal"):
                key = f"cpu{c}:{kind}"
                irq_steal[key] = 100 * (b["busy"].get(key, 0.0) - a["busy"].get(key, 0.0)) / wall
        scpus, lcpus = lc.parse_cpus(server_cpu), lc.parse_cpus(load_cpus)
        foreign_server = (
            100 * ((busy(b, scpus) - busy(a, scpus)) - (b["server_cpu_s"] - a["server_cpu_s"])) / wall
        )
        foreign_load = 100 * ((busy(b, lcpus) - busy(a, lcpus)) - (b["load_cpu_s"] - a["load_cpu_s"])) / wall
        if scpus == lcpus:
            foreign_server = foreign_load = foreign_server - (b["load_cpu_s"] - a["load_cpu_s"]) * 100 / wall
    total_cpu_s = samples[-1]["server_cpu_s"] - samples[0]["server_cpu_s"]
    call_seconds = sum(c.get("duration_s", 0.0) for c in calls)
    steady_rss = [s["server_rss"] for s in samples if steady0 <= s["t_ns"] <= steady1]
    peak_rss = max(steady_rss or [s["server_rss"] for s in samples])
    base_rss = server["baseline"]["rss_bytes"]

    lag_all = lc.window(server["lag"], first_start, last_end)
    fake_lag = lc.window(fake.get("lag", {"t_ns": [], "lag_us": []}), first_start, last_end)
    caller_lag = [v for out in callers for v in lc.window(out["lag"], first_start, last_end)]

    outcomes = collections.Counter(c.get("outcome") for c in calls)
    errors: dict[str, Any] = {
        "calls_not_completed": sum(v for k, v in outcomes.items() if k != "completed"),
        "caller_violations": sum(c.get("violation_count", 0) for c in calls),
        "closed_by_server": sum(1 for c in calls if c.get("closed_by") == "server"),
        "script_timeouts": sum(c.get("script_timeouts", 0) for c in calls),
        "fake_violations": fake.get("violation_count", 0),
        "calls_without_realtime_session": sum(1 for c in calls if c["sid"] not in sessions),
        "outbound_first_frame_missing": outbound_missing,
    }
    messages = message_counts(calls, [sessions[c["sid"]] for c in calls if c["sid"] in sessions])
    errors["realtime_error_events"] = messages["realtime_errors"]
    if peer_logs is not None:
        log_counts, log_top = peer_log_problems(peer_logs)
    else:
        log_counts, log_top = server_log_problems(log_path)
    errors["server_log_warnings"] = log_counts.get("WARNING", 0)
    errors["server_log_errors"] = log_counts.get("ERROR", 0) + log_counts.get("CRITICAL", 0)
    end_reasons = server["final"]["observer"]["end_reasons"]
    errors["server_unexpected_end_reasons"] = sum(v for k, v in end_reasons.items() if k != "caller hung up")
    error_total = sum(v for v in errors.values() if isinstance(v, int))
    examples = [e for c in calls for e in ([c["error"]] if c.get("error") else []) + c.get("violations", [])][
        :5
    ]

    late = sum(c.get("late_frames", 0) for c in calls)
    late_at = sorted(ms for c in calls for ms in c.get("late_at_ms", []))
    played = sum(c.get("frames_played", 0) for c in calls)
    return {
        "mode": mode,
        "calls": n,
        "seconds": seconds,
        "server_cpu": server_cpu,
        "call_seconds": round(call_seconds, 1),
        "server_cpu_pct": cpu_pct,
        "server_cpu_s_total": total_cpu_s,
        "cpu_ms_per_call_s": 1000 * total_cpu_s / call_seconds if call_seconds else None,
        "load_cpu_pct": load_pct,
        "fake_cpu_pct": fake_pct,
        "foreign_cpu_pct_server_cpus": foreign_server,
        "foreign_cpu_pct_load_cpus": foreign_load,
        "irq_steal_pct": irq_steal,
        "rss_baseline_mb": base_rss / 2**20,
        "rss_peak_mb": peak_rss / 2**20,
        "rss_per_call_kb": (peak_rss - base_rss) / n / 1024,
        "rss_after_mb": server["after"]["rss_bytes"] / 2**20,
        "rss_after_minus_baseline_mb": (server["after"]["rss_bytes"] - base_rss) / 2**20,
        "objects_after_minus_baseline": (
            server["after"]["objects"] - server["baseline"]["objects"]
            if server["after"].get("objects") is not None and server["baseline"].get("objects") is not None
            else None
        ),
        "inbound_ms": lc.dist(inbound),
        "inbound_offset_disagreements": offsets_disagree,
        "outbound_first_frame_ms": lc.dist(outbound),
        "barge_in_clear_ms": lc.dist(barge),
        "speech_started_events": speech_started,
        "clears": sum(c.get("clears", 0) for c in calls),
        "late_frames": late,
        "late_at_ms": late_at,
        "late_frames_in_reply_start": sum(1 for ms in late_at if ms < REPLY_START_MS),
        "playback_prebuffer_ms": server["final"].get("playback_prebuffer_ms", 0),
        "frames_played": played,
        "frame_lateness_max_ms": max((c.get("frame_lateness_max_ms", 0) for c in calls), default=0),
        "frames_sent_by_callers": sum(c.get("frames_sent", 0) for c in calls),
        "server_loop_lag_ms": scale(lc.dist(lag_all), 1e-3),
        "pacer_max_lag_ms": server["final"]["pacer_max_lag_ms"],
        "server_gc": server["final"].get("gc", {}),
        "caller_loop_lag_ms": scale(lc.dist(caller_lag), 1e-3),
        "caller_send_late_ms": lc.dist(send_late),
        "fake_loop_lag_ms": scale(lc.dist(fake_lag), 1e-3),
        "caller_processes": len(callers),
        "messages": messages,
        "jitter_stalls": sum(c.get("stalls", 0) for c in calls),
        "jitter_stalled_ms": sum(c.get("stalled_ms", 0) for c in calls),
        "errors": errors,
        "error_total": error_total,
        "error_examples": examples,
        "server_log_top": log_top,
        "outcomes": dict(outcomes),
        "end_reasons": end_reasons,
        "steady_window_s": round((steady1 - steady0) / 1e9, 1),
    }


def join_by_open_order(
    calls: list[dict[str, Any]], sessions: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Pair a peer's Realtime sessions with the calls they served, by the order they opened.

    A peer opens its Realtime socket as soon as it accepts the caller's stream and its URL does
    not carry the call, so the i-th session to open (at or after the level's first call start;
    earlier ones are the warm-up's) is taken to belong to the i-th call to open its stream
    (`t0_ns`). Calls start ~20 ms apart, so a swap needs the server to reorder two handshakes;
    a swapped pair shows up as `inbound_offset_disagreements` (the append timing then disagrees
    with the frame count). Calls without a stream and surplus sessions stay unpaired."""
    if not calls:
        return {}
    first = min(c["start_ns"] for c in calls)
    opened = sorted((s for s in sessions if s.get("opened_ns", 0) >= first), key=lambda s: s["opened_ns"])
    streams = sorted((c for c in calls if c.get("t0_ns")), key=lambda c: c["t0_ns"])
    return {c["sid"]: s for c, s in zip(streams, opened, strict=False)}


def message_counts(calls: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Messages each way over a level: media, marks and clears between callers and the server
    (as the callers counted them), and the server's events to and from the fake Realtime."""
    client: collections.Counter[str] = collections.Counter()
    server: collections.Counter[str] = collections.Counter()
    examples: list[str] = []
    for s in sessions:
        client.update(s.get("client_events", {}))
        server.update(s.get("server_events", {}))
        if len(examples) < 5:
            examples.extend(s.get("errors", [])[: 5 - len(examples)])
    return {
        "media_to_callers": sum(c.get("media_messages_received", c.get("frames_received", 0)) for c in calls),
        "marks_to_callers": sum(c.get("marks_received", 0) for c in calls),
        "clears_to_callers": sum(c.get("clears", 0) for c in calls),
        "media_from_callers": sum(c.get("frames_sent", 0) for c in calls),
        "marks_from_callers": sum(c.get("marks_echoed", 0) for c in calls),
        "appends_to_realtime": sum(s.get("appends", len(s.get("append_ns", []))) for s in sessions),
        "other_to_realtime": sum(client.values()),
        "deltas_from_realtime": server.get("response.output_audio.delta", 0),
        "events_from_realtime": sum(server.values()),
        "realtime_errors": server.get("error", 0),
        "realtime_error_examples": examples,
        "client_events": dict(client),
        "server_events": dict(server),
        "sessions_joined": len(sessions),
    }


def peer_log_problems(paths: list[Path]) -> tuple[collections.Counter[str], list[tuple[str, int]]]:
    """Problems in a peer's plain-text output (its prints on stdout, uvicorn's log on stderr):
    tracebacks, ERROR lines, and the lines that print an error or an exception."""
    counts: collections.Counter[str] = collections.Counter()
    messages: collections.Counter[str] = collections.Counter()
    pattern = re.compile(r"Traceback|\bERROR\b|\bError\b|Exception|'type': 'error'")
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if pattern.search(line):
                counts["ERROR"] += 1
                messages[re.sub(r"\d+", "N", line.strip())[:140]] += 1
            elif "WARNING" in line:
                counts["WARNING"] += 1
                messages[re.sub(r"\d+", "N", line.strip())[:140]] += 1
    return counts, messages.most_common(5)


def scale(d: dict[str, Any], factor: float) -> dict[str, Any]:
    return {k: (v * factor if isinstance(v, float) and k != "n" else v) for k, v in d.items()}


def server_log_problems(path: Path) -> tuple[collections.Counter[str], list[tuple[str, int]]]:
    counts: collections.Counter[str] = collections.Counter()
    messages: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return counts, []
    for line in path.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                counts["ERROR"] += 1  # a traceback or print outside the JSON logger
                messages[line.decode(errors="replace")[:100]] += 1
            continue
        level = entry.get("level", "")
        if level in ("WARNING", "ERROR", "CRITICAL"):
            counts[level] += 1
            messages[re.sub(r"\d+", "N", f"{level} {entry.get('logger')}: {entry.get('msg')}")[:140]] += 1
    return counts, messages.most_common(5)


# --------------------------------------------------------------------------- one level


async def sampler(rig: Rig, load_pids: list[int], samples: list[dict[str, Any]], stop: asyncio.Event) -> None:
    assert rig.server is not None
    pid = rig.server.pid
    while True:
        load = lc.proc_cpu_s(os.getpid())
        fake_cpu = 0.0
        for p in load_pids:
            with contextlib.suppress(OSError):
                cpu = lc.proc_cpu_s(p)
                load += cpu
                if p == load_pids[0]:
                    fake_cpu = cpu
        samples.append(
            {
                "t_ns": time.monotonic_ns(),
                "server_cpu_s": lc.proc_cpu_s(pid),
                "server_rss": lc.proc_rss_bytes(pid),
                "load_cpu_s": load,
                "fake_cpu_s": fake_cpu,
                "busy": lc.cpu_busy_s(),
            }
        )
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def wait_quiet(opts: argparse.Namespace, label: str) -> float:
    """Wait (up to --wait-quiet-s) until other processes use < --quiet-pct of the machine; returns their %."""
    deadline = time.monotonic() + opts.wait_quiet_s
    me = os.getpid()
    while True:
        b0, c0, t0 = lc.cpu_busy_s()["cpu"], lc.proc_cpu_s(me), time.monotonic()
        await asyncio.sleep(1.0)
        b1, c1, t1 = lc.cpu_busy_s()["cpu"], lc.proc_cpu_s(me), time.monotonic()
        foreign = 100 * ((b1 - b0) - (c1 - c0)) / (t1 - t0)
        if foreign < opts.quiet_pct or time.monotonic() >= deadline:
            if foreign >= opts.quiet_pct:
                progress(
                    f"[{label}] other processes still use {foreign:.0f}% CPU; measuring anyway", final=True
                )
            return foreign
        progress(f"[{label}] waiting for the machine to be quiet: other processes use {foreign:.0f}% CPU")


async def run_level(
    opts: argparse.Namespace,
    mode: str,
    n: int,
    level_id: int,
    root: Path,
    *,
    peer: PeerRun | None = None,
    tag: str = "",
    src: str | None = None,
) -> dict[str, Any]:
    """One level: N calls against callbot in `mode` (from checkout `src` if given), or with
    `peer` against that peer server."""
    await wait_quiet(opts, f"{mode} N={n}")
    workdir = root / f"{mode.replace(' ', '-').replace('/', '-')}-{n}{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    rig = Rig(mode, workdir, opts, peer=peer, src=src)
    if opts.profiler == "cprofile" and getattr(opts, "_profile_level", False):
        rig.cprofile = workdir / "server.prof"  # type: ignore[attr-defined]
    try:
        await rig.start()
        assert rig.server is not None and rig.fake is not None
        progress(f"[{mode} N={n}] warm-up: 2 calls")
        warm = plan_calls(level_id + 9000, 2, time.monotonic_ns() + int(1.0e9), 0.2, 0.5)
        await run_callers(rig, warm, 3.0, 1, "warmup")
        await rig.wait_idle()
        baseline = await rig.collect()
        await rig.stats(reset_pacer=1)
        idle_cpu = None
        if getattr(opts, "peer", None) is not None:  # side by side: each server's fixed cost
            idle_cpu = await idle_cpu_ms_per_s(rig.server.pid, 2.0)

        ramp = opts.ramp_s if opts.ramp_s is not None else max(1.0 if opts.quick else 2.0, n / 50)
        procs = opts.caller_procs or max(1, math.ceil(n / opts.calls_per_caller_proc))
        calls = plan_calls(level_id, n, time.monotonic_ns() + int(2.0e9), ramp, opts.barge_fraction)
        samples: list[dict[str, Any]] = []
        stop = asyncio.Event()
        load_pids = [rig.fake.pid]
        sampling = asyncio.create_task(sampler(rig, load_pids, samples, stop))
        t_begin = time.monotonic()
        total_s = ramp + opts.seconds + 2.0
        profiler_task = None
        if opts.profiler == "py-spy" and getattr(opts, "_profile_level", False):
            profiler_task = asyncio.create_task(py_spy(rig, workdir, ramp + 2.0 + 1.0, opts.seconds - 2.0))

        async def show(procs_now: list[Proc]) -> None:
            for p in procs_now:
                if p.pid not in load_pids:
                    load_pids.append(p.pid)
            st = [p.last_status for p in procs_now]
            active = sum(s.get("active", 0) for s in st)
            done = sum(s.get("done", 0) for s in st)
            errs = sum(s.get("errors", 0) for s in st)
            lag = max((s.get("lag_p99_ms") or 0 for s in st), default=0)
            cpu = ""
            if len(samples) >= 3:
                s0, s1 = samples[-3], samples[-1]
                dt = (s1["t_ns"] - s0["t_ns"]) / 1e9
                cpu = (
                    f"server cpu {100 * (s1['server_cpu_s'] - s0['server_cpu_s']) / dt:4.0f}% "
                    f"rss {s1['server_rss'] / 2**20:6.1f} MB  load cpu "
                    f"{100 * (s1['load_cpu_s'] - s0['load_cpu_s']) / dt:4.0f}%  "
                )
            elapsed = time.monotonic() - t_begin
            progress(
                f"[{mode} N={n}] {elapsed:5.1f}/{total_s:.0f}s  calls active {active:3d} done {done:3d} "
                f"errors {errs}  {cpu}caller lag p99 {lag:.1f} ms"
            )

        callers = await run_callers(rig, calls, opts.seconds, procs, "level", show=show)
        await rig.wait_idle()
        stop.set()
        await sampling
        final = await rig.stats(lag=1)
        (workdir / "server_stats.json").write_bytes(orjson.dumps(final))  # lag samples, GC pauses
        after = await rig.collect()
        profile = await profiler_task if profiler_task is not None else None
        fake = await rig.stop()
        rig.server = rig.fake = None
        server = {"baseline": baseline, "final": final, "after": after, "lag": final["lag"]}
        result = analyse_level(
            n,
            mode,
            opts.seconds,
            callers,
            fake,
            samples,
            server,
            workdir / "server.stderr.log",
            opts.server_cpu,
            opts.load_cpus,
            peer_logs=[workdir / "server.stdout.log", workdir / "server.stderr.log"] if peer else None,
        )
        result["server_process"] = rig.server_ready  # its websocket protocol and callbot package
        if idle_cpu is not None:
            result["idle_cpu_ms_per_s"] = idle_cpu
        if profile is not None:
            result["profile"] = profile
        if opts.profiler == "cprofile" and getattr(rig, "cprofile", None):
            result["profile"] = cprofile_top(rig.cprofile, opts.profile_top)  # type: ignore[attr-defined]
        progress(f"[{mode} N={n}] done: {one_line(result)}", final=True)
        return result
    finally:
        with contextlib.suppress(Exception):
            await rig.stop()


async def idle_cpu_ms_per_s(pid: int, seconds: float) -> float:
    """The server's CPU per wall second with no call (its timers and housekeeping), in ms."""
    c0, t0 = lc.proc_sched_ns(pid), time.monotonic_ns()
    await asyncio.sleep(seconds)
    c1, t1 = lc.proc_sched_ns(pid), time.monotonic_ns()
    return 1000 * (c1 - c0) / (t1 - t0)


def one_line(r: dict[str, Any]) -> str:
    return (
        f"cpu {fmt(r['server_cpu_pct'], 0)}% ({fmt(r['cpu_ms_per_call_s'], 2)} ms/call-s), "
        f"in p99 {fmt(r['inbound_ms']['p99'], 2)} ms, "
        f"out p99 {fmt(r['outbound_first_frame_ms']['p99'], 2)} ms, late {r['late_frames']}, "
        f"lag p99 {fmt(r['server_loop_lag_ms']['p99'], 1)} ms, errors {r['error_total']}"
    )


# --------------------------------------------------------------------------- profiling


async def py_spy(rig: Rig, workdir: Path, delay_s: float, duration_s: float) -> dict[str, Any]:
    """Sample the server with py-spy (non-blocking, from the load CPUs) for the steady window."""
    assert rig.server is not None
    exe = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    await asyncio.sleep(delay_s)
    raw = workdir / "profile.txt"
    speedscope = workdir / "profile.speedscope.json"
    cpus = lc.parse_cpus(rig.opts.load_cpus)
    results: dict[str, Any] = {"raw": str(raw), "speedscope": str(speedscope), "duration_s": duration_s}

    def preexec() -> None:
        lc.pin(cpus)

    common = ["--pid", str(rig.server.pid), "--rate", str(rig.opts.profile_rate), "--nonblocking"]
    dur = str(max(1, int(duration_s)))
    proc = await asyncio.create_subprocess_exec(
        exe,
        "record",
        *common,
        "--duration",
        dur,
        "--format",
        "raw",
        *([] if rig.opts.profile_lines else ["--function"]),
        "-o",
        str(raw),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0 or not raw.exists():
        results["error"] = err.decode(errors="replace")[-500:]
        return results
    results.update(collapsed_top(raw, rig.opts.profile_top))
    return results


def collapsed_top(path: Path, top: int) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's collapsed ("raw") output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl[f] += count

    def rows(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": c, "pct": 100 * c / total if total else 0.0}
            for f, c in counter.most_common(top)
        ]

    return {"total_samples": total, "top_self": rows(self_counts), "top_inclusive": rows(incl)}


def cprofile_top(path: Path, top: int) -> dict[str, Any]:
    import pstats

    if not path.exists():
        return {"error": "no cProfile output"}
    stats = pstats.Stats(str(path))
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    rows = [
        {
            "function": f"{name} ({Path(file).name}:{line})",
            "self_s": tt,
            "pct": 100 * tt / total if total else 0.0,
            "calls": nc,
            "cum_s": ct,
        }
        for (file, line, name), (cc, nc, tt, ct, _callers) in entries[:top]
    ]
    return {"total_s": total, "top_self": rows, "file": str(path)}


# --------------------------------------------------------------------------- leak check


async def leak_check(opts: argparse.Namespace, root: Path, mode: str) -> dict[str, Any]:
    """M calls in batches of `--leak-concurrency`, RSS and live objects after every 100 calls."""
    await wait_quiet(opts, f"leak {mode}")
    workdir = root / f"leak-{mode}"
    workdir.mkdir(parents=True, exist_ok=True)
    rig = Rig(mode, workdir, opts)
    total, conc, secs = opts.sequential_calls, opts.leak_concurrency, opts.leak_seconds
    batch = opts.leak_batch
    checkpoints: list[dict[str, Any]] = []
    failures = 0
    t0 = time.monotonic()
    try:
        await rig.start()
        assert rig.server is not None
        first = await rig.collect(types=True)
        checkpoints.append(
            {
                "calls": 0,
                "rss_mb": first["rss_bytes"] / 2**20,
                "objects": first["objects"],
                "tasks": first["tasks"],
            }
        )
        types_first: dict[str, int] = {}
        types_last: dict[str, int] = {}
        done = 0
        while done < total:
            count = min(batch, total - done)
            start = time.monotonic_ns() + int(1.5e9)
            calls = []
            for i in range(count):
                wave, slot = divmod(i, conc)
                calls.append(
                    {
                        "sid": call_sid(777, done + i),
                        "start_ns": start + wave * int((secs + 1.0) * 1e9) + slot * int(0.04e9),
                        "seed": done + i,
                        "barge": False,
                    }
                )

            async def show(_procs: list[Proc], done: int = done) -> None:
                rss = lc.proc_rss_bytes(rig.server.pid) / 2**20  # type: ignore[union-attr]
                progress(
                    f"[leak {mode}] {done}/{total} calls done, {time.monotonic() - t0:5.0f}s, "
                    f"server rss {rss:6.1f} MB"
                )

            outputs = await run_callers(rig, calls, secs, 1, f"leak{done}", show=show)
            failures += sum(1 for out in outputs for c in out["calls"] if c.get("outcome") != "completed")
            await rig.wait_idle()
            done += count
            snap = await rig.collect(types=done in (batch, total))
            if done == batch:
                types_first = snap.get("types", {})
            checkpoints.append(
                {
                    "calls": done,
                    "rss_mb": snap["rss_bytes"] / 2**20,
                    "objects": snap["objects"],
                    "tasks": snap["tasks"],
                }
            )
            if done == total:
                types_last = snap.get("types", {})
        final = await rig.stats()
    finally:
        await rig.stop()
    growth = {
        name: types_last.get(name, 0) - types_first.get(name, 0)
        for name in set(types_first) | set(types_last)
    }
    top_growth = sorted(((k, v) for k, v in growth.items() if v), key=lambda kv: -abs(kv[1]))[:10]
    warm = checkpoints[1] if len(checkpoints) > 1 else checkpoints[0]
    last = checkpoints[-1]
    per_call_kb = (last["rss_mb"] - warm["rss_mb"]) * 1024 / max(1, last["calls"] - warm["calls"])
    result = {
        "mode": mode,
        "calls": total,
        "concurrency": conc,
        "call_seconds": secs,
        "failures": failures,
        "checkpoints": checkpoints,
        "rss_growth_after_warmup_mb": last["rss_mb"] - warm["rss_mb"],
        "rss_growth_per_call_kb": per_call_kb,
        "objects_growth_after_warmup": last["objects"] - warm["objects"],
        "type_growth_top": top_growth,
        "server_end_reasons": final["observer"]["end_reasons"],
        "calls_total_at_server": final["calls_total"],
        "wall_s": time.monotonic() - t0,
    }
    progress(
        f"[leak {mode}] done: rss growth after warm-up {result['rss_growth_after_warmup_mb']:+.1f} MB "
        f"({per_call_kb:+.2f} KB/call), objects {result['objects_growth_after_warmup']:+d}",
        final=True,
    )
    return result


# --------------------------------------------------------------------------- reporting


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def d3(d: dict[str, Any], digits: int = 2) -> str:
    return f"{fmt(d['p50'], digits)} / {fmt(d['p99'], digits)} / {fmt(d['max'], digits)}"


ROWS: list[tuple[str, Any]] = [
    ("server CPU % of one core (steady window)", lambda r: fmt(r["server_cpu_pct"], 1)),
    ("server CPU ms per call-second", lambda r: fmt(r["cpu_ms_per_call_s"], 2)),
    ("RSS baseline → peak (MB)", lambda r: f"{fmt(r['rss_baseline_mb'], 1)} → {fmt(r['rss_peak_mb'], 1)}"),
    ("RSS per call (KB)", lambda r: fmt(r["rss_per_call_kb"], 0)),
    ("RSS after calls, after gc − baseline (MB)", lambda r: fmt(r["rss_after_minus_baseline_mb"], 1)),
    ("inbound: Twilio frame → append at Realtime, p50/p99/max ms", lambda r: d3(r["inbound_ms"])),
    (
        "outbound: first delta → first Twilio frame, p50/p99/max ms",
        lambda r: d3(r["outbound_first_frame_ms"]),
    ),
    ("  (samples in / out)", lambda r: f"{r['inbound_ms']['n']} / {r['outbound_first_frame_ms']['n']}"),
    (
        "late or missing 20 ms frames at caller / frames played",
        lambda r: f"{r['late_frames']} / {r['frames_played']}",
    ),
    ("max frame lateness at caller (ms)", lambda r: fmt(r["frame_lateness_max_ms"])),
    (
        "barge-in: speech_started → clear, p50/p99/max ms (n)",
        lambda r: f"{d3(r['barge_in_clear_ms'])} ({r['barge_in_clear_ms']['n']})",
    ),
    ("server event-loop lag p50/p99/max ms", lambda r: d3(r["server_loop_lag_ms"], 1)),
    ("pacer max tick lag (ms)", lambda r: fmt(r["pacer_max_lag_ms"], 1)),
    (
        "server GC: full (gen2) collections, max pause ms; gen1 max ms",
        lambda r: gc_cell(r.get("server_gc", {})),
    ),
    ("errors (total)", lambda r: str(r["error_total"])),
    (
        "load side: CPU % of fake + callers (fake alone)",
        lambda r: f"{fmt(r['load_cpu_pct'], 0)} ({fmt(r.get('fake_cpu_pct'), 0)})",
    ),
    (
        "other processes' CPU % on server CPU / load CPU (quiet: within ±10)",
        lambda r: f"{fmt(r['foreign_cpu_pct_server_cpus'], 0)} / {fmt(r['foreign_cpu_pct_load_cpus'], 0)}",
    ),
    ("irq+softirq % / hypervisor steal % on server CPU", lambda r: irq_cell(r)),
    (
        "load side: caller loop lag p99/max ms",
        lambda r: f"{fmt(r['caller_loop_lag_ms']['p99'], 1)} / {fmt(r['caller_loop_lag_ms']['max'], 1)}",
    ),
    (
        "load side: caller frame send lateness p99/max ms",
        lambda r: f"{fmt(r['caller_send_late_ms']['p99'], 1)} / {fmt(r['caller_send_late_ms']['max'], 1)}",
    ),
    (
        "load side: fake Realtime loop lag p99/max ms",
        lambda r: f"{fmt(r['fake_loop_lag_ms']['p99'], 1)} / {fmt(r['fake_loop_lag_ms']['max'], 1)}",
    ),
]


def irq_cell(r: dict[str, Any]) -> str:
    d = r.get("irq_steal_pct") or {}
    cpu = next(iter(sorted(lc.parse_cpus(r.get("server_cpu", "0")))), 0)
    return f"{fmt(d.get(f'cpu{cpu}:irq'), 0)} / {fmt(d.get(f'cpu{cpu}:steal'), 0)}"


def gc_cell(g: dict[str, Any]) -> str:
    if not g:
        return "—"
    g2, g1 = g.get("gen2", {}), g.get("gen1", {})
    return f"{g2.get('count', 0)}, {fmt(g2.get('max_ms'), 1)}; {fmt(g1.get('max_ms'), 1)}"


def level_table(n: int, results: list[dict[str, Any]]) -> str:
    modes = [r["mode"] for r in results]
    seconds = results[0]["seconds"]
    lines = [
        f"### {n} concurrent calls, {seconds:g} s each",
        "",
        "| metric | " + " | ".join(modes) + " |",
        "|---|" + "---:|" * len(modes),
    ]
    for label, get in ROWS:
        lines.append(f"| {label} | " + " | ".join(get(r) for r in results) + " |")
    notes = []
    for r in results:
        errs = {k: v for k, v in r["errors"].items() if v}
        if errs:
            notes.append(f"* {r['mode']} errors: " + ", ".join(f"{k} {v}" for k, v in errs.items()))
            for msg, count in r["server_log_top"][:3]:
                notes.append(f"  * server log ×{count}: `{msg}`")
            for ex in r["error_examples"][:3]:
                notes.append(f"  * caller: `{str(ex)[:140]}`")
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def carries(r: dict[str, Any]) -> bool:
    """The level ran without late frames or errors, and with the loop lag p99 under the target."""
    lag_ok = (r["server_loop_lag_ms"]["p99"] or 0) < TARGETS["loop_lag_p99_ms"]
    return r["late_frames"] == 0 and r["error_total"] == 0 and lag_ok


def fits_one_core(r: dict[str, Any]) -> bool:
    """The issue's one-core criteria at one level: CPU per call-second, no late frames, loop lag."""
    t = TARGETS
    return (r["cpu_ms_per_call_s"] or 99) <= t["cpu_ms_per_call_s"] and carries(r)


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    out = []
    by = {(r["mode"], r["calls"]): r for r in results}
    t = TARGETS
    pcm = sorted((r for r in results if r["mode"] == "pcm24k"), key=lambda r: r["calls"])
    for r in pcm:
        if r["calls"] >= t["calls_on_one_core"]:
            ok = fits_one_core(r)
            out.append(
                f"* {r['calls']} calls pcm24k on one core: {'PASS' if ok else 'FAIL'} — "
                f"{fmt(r['cpu_ms_per_call_s'])} CPU-ms/call-s (≤ {t['cpu_ms_per_call_s']}), "
                f"{r['late_frames']} late frames (0), "
                f"loop lag p99 {fmt(r['server_loop_lag_ms']['p99'], 1)} ms "
                f"(< {t['loop_lag_p99_ms']:g})"
            )
    if not any(r["calls"] >= t["calls_on_one_core"] for r in pcm):
        out.append(f"* {t['calls_on_one_core']} calls pcm24k on one core: not measured in this run")
    for mode in sorted({r["mode"] for r in results}):
        at = by.get((mode, t["latency_at_calls"]))
        if at is None:
            continue
        i, o = at["inbound_ms"]["p99"], at["outbound_first_frame_ms"]["p99"]
        ok = i is not None and o is not None and i < t["latency_p99_ms"] and o < t["latency_p99_ms"]
        out.append(
            f"* added latency p99 at {t['latency_at_calls']} calls, {mode}: {'PASS' if ok else 'FAIL'} — "
            f"in {fmt(i)} ms, out {fmt(o)} ms (< {t['latency_p99_ms']:g} each way, loopback hops included)"
        )
    for mode in sorted({r["mode"] for r in results}):
        levels = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["calls"])
        carried = [r for r in levels if carries(r)]
        best = max(carried, key=lambda r: r["calls"], default=None)
        dropped = [
            f"{r['calls']} ({r['late_frames']} late, {r['error_total']} errors, "
            f"lag p99 {fmt(r['server_loop_lag_ms']['p99'], 1)} ms)"
            for r in levels
            if not carries(r)
        ]
        out.append(
            f"* one core carries, {mode}: "
            + (
                f"{best['calls']} calls with no late frames, no errors and loop lag p99 "
                f"< {t['loop_lag_p99_ms']:g} ms "
                f"({fmt(best['cpu_ms_per_call_s'])} CPU-ms/call-s, {fmt(best['server_cpu_pct'], 0)} % CPU)"
                if best
                else "no level without late frames"
            )
            + (f"; not at {', '.join(dropped)}" if dropped else "")
        )
        barge = [
            (r["calls"], r["barge_in_clear_ms"]["p99"])
            for r in levels
            if r["barge_in_clear_ms"]["p99"] is not None
        ]
        slow = [f"{n} ({p:.2f} ms)" for n, p in barge if p > t["barge_in_p99_ms"]]
        worst_ok = max((p for n, p in barge if p <= t["barge_in_p99_ms"]), default=None)
        out.append(
            f"* barge-in clear p99 ≤ {t['barge_in_p99_ms']:g} ms, {mode}: "
            f"{'PASS' if barge and not slow else 'FAIL'}"
            + (
                f" — within it at {len(barge) - len(slow)} of {len(barge)} levels"
                f" (highest of those {worst_ok:.2f} ms)"
                if worst_ok is not None
                else " — no level within it"
            )
            + (f"; over at {', '.join(slow)}" if slow else "")
        )
    worst_rss = max((r["rss_per_call_kb"] for r in results), default=0) / 1024
    out.append(
        f"* RSS per call < {t['rss_per_call_mb']:g} MB: "
        f"{'PASS' if worst_rss < t['rss_per_call_mb'] else 'FAIL'} — worst {worst_rss * 1024:.0f} KB"
    )
    return out


def summary_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | calls | CPU % | CPU ms/call-s | RSS/call KB | in p99 ms | out p99 ms | barge p99 ms | "
        "late frames | loop lag p99 ms | errors | load CPU % | caller lag p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["mode"], r["calls"])):
        lines.append(
            f"| {r['mode']} | {r['calls']} | {fmt(r['server_cpu_pct'], 1)} | {fmt(r['cpu_ms_per_call_s'])} | "
            f"{fmt(r['rss_per_call_kb'], 0)} | {fmt(r['inbound_ms']['p99'])} | "
            f"{fmt(r['outbound_first_frame_ms']['p99'])} | {fmt(r['barge_in_clear_ms']['p99'])} | "
            f"{r['late_frames']} | {fmt(r['server_loop_lag_ms']['p99'], 1)} | {r['error_total']} | "
            f"{fmt(r['load_cpu_pct'], 0)} | {fmt(r['caller_loop_lag_ms']['p99'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def leak_table(leak: dict[str, Any]) -> str:
    warm_calls = leak["checkpoints"][1]["calls"] if len(leak["checkpoints"]) > 1 else 0
    lines = [
        f"### Leak check: {leak['calls']} calls, {leak['concurrency']} at a time, "
        f"{leak['call_seconds']:g} s each "
        f"({leak['mode']}, {leak['wall_s']:.0f} s)",
        "",
        "| calls done | RSS after gc (MB) | live objects | asyncio tasks |",
        "|---:|---:|---:|---:|",
    ]
    for c in leak["checkpoints"]:
        lines.append(f"| {c['calls']} | {c['rss_mb']:.1f} | {c['objects']} | {c['tasks']} |")
    lines += [
        "",
        f"* RSS growth from call {warm_calls} to call {leak['calls']}: "
        f"{leak['rss_growth_after_warmup_mb']:+.2f} MB ({leak['rss_growth_per_call_kb']:+.2f} KB per call); "
        f"live objects {leak['objects_growth_after_warmup']:+d}",
        f"* failed calls: {leak['failures']}; server end reasons: {leak['server_end_reasons']}",
    ]
    if leak["type_growth_top"]:
        lines.append(
            "* live-object growth by type (after 100 → after all): "
            + ", ".join(f"{k} {v:+d}" for k, v in leak["type_growth_top"])
        )
    return "\n".join(lines) + "\n"


def profile_table(profile: dict[str, Any], top: int) -> str:
    if "error" in profile:
        return f"Profile failed: {profile['error']}\n"
    rows = profile.get("top_self", [])[:top]
    total = profile.get("total_samples") or profile.get("total_s")
    lines = [
        f"Top {len(rows)} functions by self time ({total} samples, idle excluded):",
        "",
        "| # | function | self % |",
        "|---:|---|---:|",
    ]
    for i, row in enumerate(rows, 1):
        lines.append(f"| {i} | `{row['function']}` | {row['pct']:.1f} |")
    incl = profile.get("top_inclusive", [])[:top]
    if incl:
        lines += [
            "",
            "Inclusive (function and everything it calls):",
            "",
            "| function | incl % |",
            "|---|---:|",
        ]
        lines += [f"| `{row['function']}` | {row['pct']:.1f} |" for row in incl]
    return "\n".join(lines) + "\n"


def code_version(root: Path = HERE.parent) -> str:
    """The commit of the checkout at `root` (+ '-dirty' when its callbot/ has uncommitted changes)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "callbot"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("-dirty" if dirty else "")


def machine_line() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


# --------------------------------------------------------------------------- main


async def main_async(opts: argparse.Namespace) -> int:
    root = Path(opts.workdir or tempfile.mkdtemp(prefix="callbot-load-"))
    root.mkdir(parents=True, exist_ok=True)
    lc.pin(lc.parse_cpus(opts.load_cpus))
    code = code_version()
    if opts.server_src:
        code = f"{code_version(Path(opts.server_src))} (server from {opts.server_src}; load side {code})"
    if opts.base_src:
        code = f"{code} against base {code_version(Path(opts.base_src))} from {opts.base_src}"
    report: dict[str, Any] = {
        "machine": machine_line(),
        "code": code,
        "options": {k: v for k, v in vars(opts).items() if not k.startswith("_")},
        "levels": [],
        "targets": TARGETS,
        "workdir": str(root),
    }
    md: list[str] = [
        "## callbot load benchmark",
        "",
        f"{machine_line()}; callbot {code}; server pinned to CPU {opts.server_cpu}, "
        f"fake Realtime ({opts.fake_impl}) + callers ({opts.caller_impl}) on CPU "
        f"{opts.load_cpus}. Fake replies: {opts.delta_ms} ms deltas at {opts.realtime_factor:g}x real time. "
        f"1 call in {round(1 / opts.barge_fraction) if opts.barge_fraction else '∞'} barges in."
        + (" EXPERIMENT: the server skips callbot serve's gc.freeze()." if opts.no_gc_freeze else ""),
        "",
    ]
    levels: list[dict[str, Any]] = report["levels"]
    stopped_modes: set[str] = set()
    if opts.peer is not None:
        md[0] = "## callbot side by side with a peer server"
        await side_by_side(opts, root, report, md)
    elif opts.base_src:
        md[0] = "## callbot side by side with the server of another checkout"
        await against_base(opts, root, report, md)
    elif not opts.leak_only and not opts.profile:
        level_id = 0
        for n in opts.calls:
            row: list[dict[str, Any]] = []
            for mode in opts.modes:
                if mode in stopped_modes:
                    continue
                level_id += 1
                result = await run_level(opts, mode, n, level_id, root)
                row.append(result)
                levels.append(result)
                if opts.stop_on_failure and (
                    result["error_total"] > max(5, n // 20) or result["late_frames"] > 50 * n
                ):
                    stopped_modes.add(mode)
                    progress(
                        f"[{mode}] errors or late frames exploded at N={n}: no higher levels", final=True
                    )
            if row:
                table = level_table(n, row)
                print("\n" + table, flush=True)
                md.append(table)
        if levels:
            summary = summary_table(levels)
            checks = "\n".join(verdicts(levels)) + "\n"
            print("\n" + summary + "\nTargets:\n" + checks, flush=True)
            md += ["### Summary", "", summary, "### Targets", "", checks]
    if opts.profile:
        opts._profile_level = True
        result = await run_level(opts, "pcm24k", opts.profile_calls, 500, root)
        opts._profile_level = False
        levels.append(result)
        table = level_table(opts.profile_calls, [result])
        prof = profile_table(result.get("profile", {"error": "no profile"}), opts.profile_top)
        print("\n" + table + "\n" + prof, flush=True)
        md += [
            f"### Profile ({opts.profiler}) of the server, pcm24k, {opts.profile_calls} calls",
            "",
            table,
            prof,
        ]
    if opts.sequential_calls:
        leak = await leak_check(opts, root, opts.leak_mode)
        report["leak"] = leak
        table = leak_table(leak)
        print("\n" + table, flush=True)
        md.append(table)
    text = "\n".join(md)
    if opts.json:
        Path(opts.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if opts.markdown:
        Path(opts.markdown).write_text(text)
    print(f"\nraw data and process logs: {root}", file=sys.stderr)
    if not opts.keep_workdir and not opts.workdir:
        for sub in root.iterdir():  # keep logs and profiles, drop the big timestamp files
            if sub.is_dir():
                for f in sub.glob("*callers*.json"):
                    f.unlink()
                for f in sub.glob("fake.json"):
                    f.unlink()
    return 0


async def side_by_side(opts: argparse.Namespace, root: Path, report: dict[str, Any], md: list[str]) -> None:
    """`--peer`: at each level, `--repeat` times, callbot in each mode and the peer, under the same
    load side, alternating their order; a table per level with the callbot/peer ratios."""
    try:
        spec = load_peer.peer_spec(
            opts.peer,
            peer_dir=opts.peer_dir,
            command=opts.peer_cmd,
            webhook_path=opts.peer_webhook,
            env=dict(opts.peer_env),
        )
        python = opts.peer_python or str(load_peer.ensure_venv(spec, Path(opts.peer_venv_cache)))
        peer = PeerRun(spec, python, load_peer.copy_source(spec, root))
    except (OSError, ValueError) as exc:  # a missing source or an unknown peer: say so, no traceback
        raise SystemExit(f"--peer {opts.peer}: {exc}") from None
    jitter = opts.jitter
    md += [
        f"Peer: {spec.name} from {spec.src} (source {load_peer.source_digest(spec.src)}), "
        f"`{' '.join(spec.command.split())}`, Python {peer_python_version(python)}. "
        f"Both servers pinned to CPU {opts.server_cpu}; the same load side on CPU {opts.load_cpus}. "
        f"Every call opens with {opts.opening_ms} ms of silence "
        + ("(callbot greets meanwhile). " if opts.callbot_greeting else "(neither server speaks first). ")
        + (
            f"Network jitter: every caller stops reading for {jitter['min_ms']}-{jitter['max_ms']} ms "
            f"about every {jitter['every_s']:g} s. "
            if jitter
            else "No network jitter. "
        )
        + f"Each level {opts.repeat}x, order alternating. Compare these figures only with each other: "
        "another machine changes them all.",
        "",
    ]
    print("\n".join(md), flush=True)
    targets: list[tuple[str, str]] = [("callbot", m) for m in opts.modes] + [("peer", spec.name)]
    results: list[dict[str, Any]] = report["levels"]
    level_id = 0
    for n in opts.calls:
        for rep in range(opts.repeat):
            for kind, name in load_compare.run_order(targets, rep):
                level_id += 1
                result = await run_level(
                    opts,
                    name,
                    n,
                    level_id,
                    root,
                    peer=peer if kind == "peer" else None,
                    tag=f"-r{rep + 1}",
                )
                result["target"] = load_compare.callbot_target(name) if kind == "callbot" else name
                result["rep"] = rep
                results.append(result)
        grouped = load_compare.group(results)
        table = load_compare.level_table(n, opts.seconds, opts.repeat, spec.name, opts.modes, grouped)
        notes = [
            f"* {r['target']} (run {r['rep'] + 1}) errors: "
            + ", ".join(f"{k} {v}" for k, v in r["errors"].items() if v)
            + "".join(f"; `{msg[:100]}` ×{count}" for msg, count in r["server_log_top"][:2])
            for r in results
            if r["calls"] == n and r["error_total"]
        ]
        table += ("\n" + "\n".join(notes) + "\n") if notes else ""
        print("\n" + table, flush=True)
        md.append(table)
    grouped = load_compare.group(results)
    summary = load_compare.summary_table(opts.calls, spec.name, opts.modes, grouped)
    print("\n" + summary, flush=True)
    md += ["### Summary (means over the repetitions; ratio = callbot / peer)", "", summary]
    report["side_by_side"] = {
        "peer": {
            "name": spec.name,
            "src": str(spec.src),
            "source_digest": load_peer.source_digest(spec.src),
            "command": spec.command,
            "webhook_path": spec.webhook_path,
            "python": python,
        },
        "repeat": opts.repeat,
        "modes": opts.modes,
        "comparison": load_compare.compare_json(opts.calls, spec.name, opts.modes, grouped),
    }


BASE_ROWS: list[tuple[str, str, int]] = [
    ("cpu_ms_per_call_s", "server CPU ms per call-second", 2),
    ("server_cpu_pct", "server CPU % (steady window)", 1),
    ("rss_per_call_kb", "RSS per call KB", 0),
    ("late_frames", "late frames", 0),
    ("inbound_p99_ms", "inbound p99 ms", 2),
    ("outbound_p99_ms", "outbound p99 ms", 2),
    ("barge_p99_ms", "barge-in p99 ms", 2),
    ("foreign_cpu_pct", "other processes' CPU % on the server CPU", 0),
]


def base_table(n: int, mode: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    """One level and mode: every run of the base and of this checkout (in run order), the means,
    and this/base of the means."""
    base = [load_compare.flatten(r) for r in runs["base"]]
    this = [load_compare.flatten(r) for r in runs["this"]]

    def cell(values: list[float | None], digits: int) -> str:
        got = [v for v in values if v is not None]
        if not got:
            return "-"
        each = ", ".join(f"{v:.{digits}f}" for v in got)
        return f"{sum(got) / len(got):.{digits}f} ({each})" if len(got) > 1 else each

    lines = [
        f"### {n} calls, {mode}: base against this checkout (mean, then each run)",
        "",
        "| metric | base | this | this / base |",
        "|---|---:|---:|---:|",
    ]
    for key, label, digits in BASE_ROWS:
        b, t = [f[key] for f in base], [f[key] for f in this]
        bm, tm = load_compare.aggregate(b)["mean"], load_compare.aggregate(t)["mean"]
        this_over_base = load_compare.ratio(tm, bm) if key != "foreign_cpu_pct" else None
        ratio = f"{this_over_base:.3f}" if this_over_base is not None else "-"
        lines.append(f"| {label} | {cell(b, digits)} | {cell(t, digits)} | {ratio} |")
    return "\n".join(lines) + "\n"


async def against_base(opts: argparse.Namespace, root: Path, report: dict[str, Any], md: list[str]) -> None:
    """`--base-src`: at each level and mode, `--repeat` times, the server of the base checkout
    and this checkout's, under the same load side, alternating which goes first."""
    md += [
        f"Base: the server from {opts.base_src} ({code_version(Path(opts.base_src))}); this: "
        f"{code_version()}. Each level {opts.repeat}x per side, order alternating, fresh processes.",
        "",
    ]
    print("\n".join(md), flush=True)
    results: list[dict[str, Any]] = report["levels"]
    level_id = 0
    for n in opts.calls:
        for mode in opts.modes:
            runs: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
            sides = [("base", opts.base_src), ("this", None)]
            for rep in range(opts.repeat):
                for side, src in load_compare.run_order(sides, rep):
                    level_id += 1
                    result = await run_level(
                        opts, mode, n, level_id, root, tag=f"-{side}-r{rep + 1}", src=src
                    )
                    result["target"], result["rep"] = side, rep
                    runs[side].append(result)
                    results.append(result)
            table = base_table(n, mode, runs)
            print("\n" + table, flush=True)
            md.append(table)


def peer_python_version(python: str) -> str:
    import subprocess

    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--calls", default="25,50,100,200,400", help="concurrent call levels (comma-separated)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each call")
    p.add_argument(
        "--modes",
        default="pcm24k,pcmu",
        help="audio modes, side by side; MODE/public serves with the public paths only "
        "(CALLBOT_FAST_PATHS=false), e.g. pcm24k,pcm24k/public",
    )
    p.add_argument("--json", default=None, help="write all results as JSON here")
    p.add_argument("--markdown", default=None, help="write the tables as Markdown here")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 and 25 calls, 10 s (< 2 min)")
    p.add_argument("--sequential-calls", type=int, default=0, help="leak check: this many calls (e.g. 1000)")
    p.add_argument("--leak-concurrency", type=int, default=25)
    p.add_argument("--leak-seconds", type=float, default=8.0)
    p.add_argument(
        "--leak-batch", type=int, default=100, help="leak check: RSS checkpoint every this many calls"
    )
    p.add_argument("--leak-mode", default="pcm24k", choices=["pcm24k", "pcmu"])
    p.add_argument("--leak-only", action="store_true", help="with --sequential-calls: skip the levels")
    p.add_argument("--profile", action="store_true", help="profile the server at --profile-calls (pcm24k)")
    p.add_argument("--profile-calls", type=int, default=100)
    p.add_argument("--profiler", choices=["py-spy", "cprofile"], default="py-spy")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument(
        "--profile-lines", action="store_true", help="py-spy: keep line numbers (per-line self time)"
    )
    p.add_argument("--server-cpu", default="0", help="CPU(s) for the server process")
    p.add_argument(
        "--server-src",
        default=None,
        help="run the server from this checkout's callbot (e.g. a git worktree of an older commit); "
        "the fake and the callers stay on this one",
    )
    p.add_argument(
        "--base-src",
        default=None,
        help="side by side with this checkout's server (e.g. a worktree of the merge base): each level "
        "--repeat times against both, alternating; a table per level with this/base",
    )
    p.add_argument("--load-cpus", default="1", help="CPU(s) for the fake Realtime server and the callers")
    p.add_argument("--caller-procs", type=int, default=0, help="caller processes (default: 1 per 100 calls)")
    p.add_argument(
        "--calls-per-caller-proc",
        type=int,
        default=None,
        help="calls per caller process (default 300 for the lean callers, 100 for the simulator)",
    )
    p.add_argument(
        "--ramp-s", type=float, default=None, help="spread call starts over this long (default N/50 s, ≥ 2)"
    )
    p.add_argument("--barge-fraction", type=float, default=1 / 3, help="share of calls that barge in")
    p.add_argument("--realtime-factor", type=float, default=4.0, help="fake reply pacing (x real time)")
    p.add_argument("--delta-ms", type=int, default=100, help="audio per fake delta")
    p.add_argument(
        "--caller-impl",
        choices=["lean", "simulator"],
        default="lean",
        help="callers: bench/lean_caller.py (default) or the caller simulator (TwilioCaller)",
    )
    p.add_argument(
        "--fake-impl",
        choices=["lean", "websockets"],
        default="lean",
        help="fake Realtime transport: bench/lean_ws.py (default) or the websockets server",
    )
    p.add_argument(
        "--caller-record",
        action="store_true",
        help="let the callers keep their recordings (implies --caller-impl simulator)",
    )
    p.add_argument("--server-log-level", default="INFO")
    p.add_argument(
        "--server-lag-interval-ms",
        type=float,
        default=None,
        help="the server's loop-lag probe period (default 10 ms; 100 ms with --peer: the probe's "
        "wake-ups are CPU the peer does not spend, ~13 ms per second at 10 ms on an idle VM)",
    )
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="experiment: the server skips the gc.freeze() that callbot serve does after start-up",
    )
    p.add_argument(
        "--wait-quiet-s",
        type=float,
        default=None,
        help="before each level, wait up to this long for other processes to go quiet "
        "(default 120 s, 10 s with --quick)",
    )
    p.add_argument(
        "--quiet-pct", type=float, default=15.0, help="'quiet' = other processes below this CPU %%"
    )
    p.add_argument("--no-stop-on-failure", dest="stop_on_failure", action="store_false")
    side = p.add_argument_group("side by side with a peer server (bench/load_peer.py)")
    side.add_argument(
        "--peer",
        default=None,
        metavar="NAME",
        help=f"run each level against callbot (--modes) and this peer (known: {', '.join(load_peer.PEERS)})",
    )
    side.add_argument(
        "--peer-dir",
        default=None,
        help="the peer's source, copied before it runs (default ../shared/peers/NAME beside the checkout)",
    )
    side.add_argument(
        "--peer-cmd",
        default=None,
        help="command serving the peer, with {python} {port} {fake_port} {src} (default: the known peer's)",
    )
    side.add_argument(
        "--peer-webhook", default=None, help="the peer's voice webhook path (default /incoming-call)"
    )
    side.add_argument(
        "--peer-env",
        action="append",
        default=[],
        type=env_pair,
        metavar="KEY=VALUE",
        help="extra env for the peer",
    )
    side.add_argument(
        "--peer-python", default=None, help="use this interpreter instead of building the peer venv"
    )
    side.add_argument(
        "--peer-venv-cache", default=str(load_peer.VENV_CACHE), help="where the peer venvs are built and kept"
    )
    side.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="side by side (--peer, --base-src): runs of each level and side",
    )
    side.add_argument(
        "--opening-ms",
        type=int,
        default=1000,
        help="side by side: every call opens with this much silence (instead of waiting for a greeting)",
    )
    side.add_argument(
        "--callbot-greeting",
        action="store_true",
        help="side by side: callbot speaks first as in production (the peer does not; use --opening-ms 4000)",
    )
    jit = p.add_argument_group("network jitter (lean callers)")
    jit.add_argument(
        "--jitter-ms",
        default=None,
        metavar="MIN-MAX",
        help="each caller stops reading its socket for MIN-MAX ms at random moments, then drains",
    )
    jit.add_argument(
        "--jitter-every", type=float, default=5.0, metavar="S", help="mean seconds between a caller's stalls"
    )
    jit.add_argument("--no-jitter", dest="jitter_ms", action="store_const", const=None)
    jit.add_argument(
        "--prebuffer-ms",
        type=int,
        default=None,
        metavar="MS",
        help="callbot holds a reply's first audio until this much is there (CALLBOT_PLAYBACK_PREBUFFER_MS)",
    )
    p.add_argument("--workdir", default=None, help="keep raw data and logs here")
    p.add_argument("--keep-workdir", action="store_true", help="keep the raw timestamp files too")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.calls, opts.seconds = "10,25", 10.0
    if opts.wait_quiet_s is None:
        opts.wait_quiet_s = 10.0 if opts.quick else 120.0
    if opts.caller_record:
        opts.caller_impl = "simulator"
    if opts.calls_per_caller_proc is None:
        opts.calls_per_caller_proc = 300 if opts.caller_impl == "lean" else 100
    opts.calls = [int(x) for x in str(opts.calls).split(",") if x.strip()]
    opts.jitter = None
    if opts.jitter_ms:
        try:
            low, high = lc.parse_ms_range(opts.jitter_ms)
        except ValueError as exc:
            p.error(f"--jitter-ms: {exc}")
        if opts.jitter_every <= 0:
            p.error("--jitter-every must be positive")
        if opts.caller_impl != "lean":
            p.error("--jitter-ms needs the lean callers (--caller-impl lean)")
        opts.jitter = {"every_s": opts.jitter_every, "min_ms": low, "max_ms": high}
    if opts.repeat < 1:
        p.error("--repeat must be at least 1")
    if opts.base_src and (opts.peer is not None or opts.server_src):
        p.error("--base-src runs this checkout against another: not with --peer or --server-src")
    if opts.server_lag_interval_ms is None and opts.peer is not None:
        opts.server_lag_interval_ms = 100.0
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    given = argv if argv is not None else sys.argv[1:]
    levels_asked = any(a.startswith(("--calls", "--quick")) for a in given)
    opts.leak_only = opts.leak_only or (opts.sequential_calls > 0 and not levels_asked)
    opts._profile_level = False
    return opts


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    return lc.run_loop(main_async(opts), use_uvloop=False)


if __name__ == "__main__":
    raise SystemExit(main())
