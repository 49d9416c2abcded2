"""The load benchmark's server process: the real callbot app under uvicorn, one worker, pinned.

    python bench/load_server.py --fake-url http://127.0.0.1:PORT/v1 --mode pcm24k --cpu 0

It builds `create_app(settings, connector=..., observer=...)` exactly like the tests do (the
OpenAI Realtime connector pointed at the fake Realtime server, an in-memory observer instead
of the ticket store, summaries off) and serves it the way `callbot serve` does (uvicorn, uvloop
and the websockets protocol when installed, `ws_max_size`, `proxy_headers`, JSON logs on
stderr at INFO). Bench-only additions, none on a call's hot path:

* the connector adds `?bench_call=<CallSid>` to the Realtime URL (read from the bridge's
  `call_sid_var` when the session opens), so the fake can tell which call a session belongs to;
* a lag monitor task (sleeps 10 ms, records how late it woke) started beside uvicorn;
* garbage-collection pause timing through `gc.callbacks` (`GcWatch`);
* `GET /bench/stats` (counters, pacer lag, GC pauses, RSS, CPU, lag samples) and `POST /bench/gc`
  (gc.collect, RSS, live objects, optional per-type counts) through create_app's `extra_setup`.

It prints one JSON line `{"ready": true, "port": ..., "pid": ...}` on stdout once listening
and exits cleanly on SIGINT/SIGTERM. `--cprofile FILE` profiles the whole process run;
Like `callbot serve`, it calls `gc.freeze()` once started (`--no-gc-freeze` to compare without).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import inspect
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load_common as lc
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from openai import AsyncOpenAI, OpenAIError
from pydantic import SecretStr

import callbot
from callbot.adapters.realtime_openai import OpenAIRealtimeConnector, OpenAIRealtimeLink
from callbot.bridge import call_sid_var
from callbot.core.record import CallRecord
from callbot.logs import setup_logging
from callbot.settings import Settings
from callbot.web.app import Services, create_app

try:
    from callbot.errors import UpstreamError
except ImportError:  # a callbot from before callbot/errors.py (load_bench --server-src of an older commit)
    from callbot.adapters.realtime_openai import UpstreamError  # type: ignore[attr-defined]

server_options: Callable[[Settings], dict[str, Any]] | None
try:
    from callbot.web.app import server_options
except ImportError:  # a callbot from before server_options (load_bench --server-src)
    server_options = None


class GcWatch:
    """Times every garbage collection (gc.callbacks): a full collection of the ~170k objects a
    loaded server holds stops the event loop for tens of milliseconds."""

    def __init__(self) -> None:
        self.pauses_us: list[list[int]] = [[], [], []]
        self._t0 = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter_ns()
        else:
            self.pauses_us[info["generation"]].append((time.perf_counter_ns() - self._t0) // 1000)

    def summary(self) -> dict[str, Any]:
        out = {}
        for gen, pauses in enumerate(self.pauses_us):
            ordered = sorted(pauses)
            out[f"gen{gen}"] = {
                "count": len(pauses),
                "total_ms": sum(pauses) / 1000,
                "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] / 1000 if ordered else None,
                "max_ms": ordered[-1] / 1000 if ordered else None,
            }
        return out

    def reset(self) -> None:
        self.pauses_us = [[], [], []]


class CountingObserver:
    """An in-memory observer that only counts (keeping records would look like a leak)."""

    def __init__(self) -> None:
        self.started = 0
        self.progress = 0
        self.ended = 0
        self.end_reasons: collections.Counter[str] = collections.Counter()

    async def call_started(self, record: CallRecord) -> None:
        self.started += 1

    async def call_progress(self, record: CallRecord) -> None:
        self.progress += 1

    async def call_ended(self, record: CallRecord) -> int | None:
        self.ended += 1
        self.end_reasons[record.end_reason] += 1
        return self.ended


def bench_routes(monitor: lc.LagMonitor, observer: CountingObserver, gcwatch: GcWatch) -> Any:
    def setup(app: FastAPI) -> None:
        @app.get("/bench/stats")
        async def stats(request: Request) -> Response:
            services: Services = request.app.state.services
            q = request.query_params
            body: dict[str, Any] = {
                "pid": os.getpid(),
                "now_ns": time.monotonic_ns(),
                "active_calls": len(services.active_calls),
                "calls_total": services.calls_total,
                "pacer_calls": _paced_calls(services.pacer),
                "pacer_max_lag_ms": services.pacer.max_lag_ms,
                "inbound_batch_frames": getattr(services.settings, "inbound_batch_frames", 1),
                "playback_prebuffer_ms": getattr(services.settings, "playback_prebuffer_ms", 0),
                "observer": {
                    "started": observer.started,
                    "progress": observer.progress,
                    "ended": observer.ended,
                    "end_reasons": dict(observer.end_reasons),
                },
                "rss_bytes": lc.proc_rss_bytes(os.getpid()),
                "cpu_s": lc.proc_cpu_s(os.getpid()),
                "gc_counts": gc.get_count(),
                "tasks": len(asyncio.all_tasks()),
            }
            if q.get("lag"):
                body["lag"] = monitor.export()
            body["gc"] = gcwatch.summary()
            if q.get("reset_pacer"):
                services.pacer.max_lag_ms = 0.0
                gcwatch.reset()
            return Response(orjson.dumps(body), media_type="application/json")

        @app.post("/bench/gc")
        async def collect(request: Request) -> JSONResponse:
            freed = gc.collect()
            objects = gc.get_objects()
            body: dict[str, Any] = {
                "freed": freed,
                "objects": len(objects),
                "rss_bytes": lc.proc_rss_bytes(os.getpid()),
                "tasks": len(asyncio.all_tasks()),
            }
            if request.query_params.get("types"):
                counts = collections.Counter(type(o).__qualname__ for o in objects)
                body["types"] = dict(counts.most_common(60))
            del objects
            return JSONResponse(body)

    return setup


def _paced_calls(pacer: Any) -> int:
    """The calls the pacer paces: `len(pacer)`, or its table for a callbot from before `Pacer.__len__`
    (`--server-src` of an older commit)."""
    return len(pacer) if hasattr(type(pacer), "__len__") else len(pacer._calls)


def _call_query() -> dict[str, str]:
    return {lc.CALL_QUERY: call_sid_var.get()}  # names the call for the fake's bookkeeping


class _LegacyBenchConnector(OpenAIRealtimeConnector):
    """For a callbot from before `OpenAIRealtimeConnector(extra_query=...)` (`--server-src` of an
    older commit): its `connect()` again, with the call in the query. Not used for this checkout."""

    async def connect(self) -> OpenAIRealtimeLink:
        manager = self._client.realtime.connect(
            model=self._model,
            extra_query=_call_query(),
            websocket_connection_options={"max_size": 16 * 1024 * 1024},
        )
        try:
            connection = await asyncio.wait_for(manager.enter(), timeout=self._open_timeout_s)
        except (OpenAIError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"could not open the Realtime session: {exc!r}") from exc
        except Exception as exc:
            raise UpstreamError(f"could not open the Realtime session: {exc!r}") from exc
        return OpenAIRealtimeLink(manager, connection)  # type: ignore[call-arg]


def bench_connector(client: AsyncOpenAI, settings: Settings) -> OpenAIRealtimeConnector:
    """The production connector with the call named in each session's URL."""
    if "extra_query" in inspect.signature(OpenAIRealtimeConnector).parameters:
        return OpenAIRealtimeConnector(
            client, settings.model, direct_send=settings.fast_paths, extra_query=_call_query
        )
    return _LegacyBenchConnector(client, settings.model)


def build_settings(args: argparse.Namespace) -> Settings:
    extra: dict[str, Any] = {"greeting": ""} if getattr(args, "no_greeting", False) else {}
    if getattr(args, "public_paths", False):
        extra["fast_paths"] = False  # only then: a callbot from before the setting (--server-src) lacks it
    if getattr(args, "prebuffer_ms", None) is not None:
        if "playback_prebuffer_ms" not in Settings.model_fields:
            raise SystemExit("--prebuffer-ms: this callbot has no CALLBOT_PLAYBACK_PREBUFFER_MS")
        extra["playback_prebuffer_ms"] = args.prebuffer_ms
    if "end_call_tool" in Settings.model_fields:
        # No Twilio REST here to hang up with: off, instead of the start-up warning that the
        # bench would count as an error of every level.
        extra["end_call_tool"] = False
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=lc.PUBLIC_URL,
        twilio_auth_token=SecretStr(lc.AUTH_TOKEN),
        openai_api_key=SecretStr("fake"),
        openai_base_url=args.fake_url,
        audio_mode=args.mode,
        summary_enabled=False,
        max_concurrent_calls=100_000,
        log_level=args.log_level,
        log_json=True,
        **extra,
    )


async def serve(args: argparse.Namespace) -> None:
    settings = build_settings(args)
    setup_logging(settings.log_level, json_lines=settings.log_json)
    monitor = lc.LagMonitor(args.lag_interval_ms / 1000)
    observer = CountingObserver()
    connector = bench_connector(AsyncOpenAI(api_key="fake", base_url=args.fake_url), settings)
    gcwatch = GcWatch()
    routes = bench_routes(monitor, observer, gcwatch)
    app = create_app(settings, connector=connector, observer=observer, extra_setup=routes)
    if server_options is not None:
        options = server_options(settings)
    else:  # as `callbot serve` configured uvicorn before server_options existed
        options = {"ws_max_size": settings.max_message_bytes, "proxy_headers": True, "log_config": None}
    config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="on", **options)
    server = uvicorn.Server(config)
    monitor.start()
    task = asyncio.create_task(server.serve(), name="uvicorn")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited before it started")
        await asyncio.sleep(0.01)
    port = next(s for srv in server.servers for s in srv.sockets).getsockname()[1]
    ws_impl = getattr(config, "ws_protocol_class", None)
    ready = {
        "ready": True,
        "port": port,
        "pid": os.getpid(),
        "loop": lc.loop_name(),
        "ws": getattr(ws_impl, "__name__", str(ws_impl)),
        "http": getattr(getattr(config, "http_protocol_class", None), "__name__", ""),
        "callbot": str(Path(callbot.__file__).parent),
    }
    if not args.no_gc_freeze:
        gc.freeze()  # as `callbot serve` does: start-up objects leave the collector's full passes
        ready["gc_frozen"] = gc.get_freeze_count()
    print(orjson.dumps(ready).decode(), flush=True)
    await task
    monitor.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fake-url", required=True, help="base URL of the fake Realtime server (.../v1)")
    parser.add_argument("--mode", choices=["pcm24k", "pcmu"], default="pcm24k")
    parser.add_argument("--cpu", default="0", help="CPU(s) to pin to, e.g. 0 or 0,1; '' = no pinning")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--lag-interval-ms", type=float, default=10.0)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--no-gc-freeze", action="store_true", help="skip callbot serve's gc.freeze()")
    parser.add_argument(
        "--no-greeting",
        action="store_true",
        help="the agent waits for the caller instead of speaking first (CALLBOT_GREETING empty)",
    )
    parser.add_argument(
        "--public-paths",
        action="store_true",
        help="serve with the public paths only (CALLBOT_FAST_PATHS=false), as when the probes fail",
    )
    parser.add_argument(
        "--prebuffer-ms",
        type=int,
        default=None,
        help="hold each reply's first audio until this much is generated (CALLBOT_PLAYBACK_PREBUFFER_MS)",
    )
    parser.add_argument("--cprofile", type=Path, default=None, help="write a cProfile of the run here")
    args = parser.parse_args(argv)
    lc.pin(lc.parse_cpus(args.cpu))
    profiler = None
    if args.cprofile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        lc.run_loop(serve(args), use_uvloop=not args.no_uvloop)
    except KeyboardInterrupt:
        pass
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(args.cprofile))


if __name__ == "__main__":
    main()
