"""The fast paths past libraries' public APIs: every internal they touch exists on the installed
versions, each probe passes, and a failed probe means the public path, logged, never a dead call.

A release of uvicorn, websockets or openai that renames or changes one of these internals fails
here (CI runs this against the lock and against the newest releases), naming the library."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from callbot.adapters import fastpaths, realtime_openai, uvicorn_server, ws_channel
from callbot.adapters.fastpaths import probe_fast_paths, versions
from callbot.web.app import server_options
from tests.e2e_helpers import make_settings


@pytest.fixture
def fresh_probes() -> Iterator[None]:
    """Probes run once per process; these tests run them again, then leave a clean cache."""
    fastpaths._probed.cache_clear()
    yield
    fastpaths._probed.cache_clear()


def _instances() -> dict[str, Any]:
    """One real instance of each class whose internals a fast path touches, built without I/O."""

    async def build() -> dict[str, Any]:
        config = Config(lambda: None, ws=ws_channel.ChannelWebSocketProtocol, log_config=None)
        config.load()
        protocol = ws_channel.ChannelWebSocketProtocol(
            config=config, server_state=ServerState(), app_state={}
        )
        protocol.scope = {}  # set by handle_connect on a real upgrade
        client = ClientConnection(ClientProtocol(parse_uri("ws://127.0.0.1/")))
        client.transport = object()  # set by connection_made
        return {
            "uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol": protocol,
            "uvicorn.config.Config": config,
            "websockets.server.ServerProtocol": ServerProtocol(),
            "openai.resources.realtime.realtime.AsyncRealtimeConnection": AsyncRealtimeConnection(client),
            "websockets.asyncio.client.ClientConnection": client,
            "uvicorn.Server": uvicorn.Server(config),
        }

    return asyncio.run(build())


TOUCHES = {**ws_channel.TOUCHES, **realtime_openai.TOUCHES, **uvicorn_server.TOUCHES}
PACKAGE = {name: name.split(".")[0] for name in TOUCHES}


@pytest.mark.parametrize(("owner", "names"), sorted(TOUCHES.items()), ids=sorted(TOUCHES))
def test_every_internal_a_fast_path_touches_exists_on_the_installed_version(
    owner: str, names: tuple[str, ...]
) -> None:
    instance = _instances()[owner]
    missing = [name for name in names if not hasattr(instance, name.split("(")[0])]
    assert missing == [], f"{versions(PACKAGE[owner])}: {owner} lacks {', '.join(missing)}"


def test_every_probe_passes_on_the_installed_versions(fresh_probes: None) -> None:
    paths = probe_fast_paths()
    failed = {path.name: f"{path.libraries}: {path.missing}" for path in paths.all() if not path.active}
    assert failed == {}
    assert probe_fast_paths().describe() == {
        "twilio_channel": {"active": True, "libraries": versions("uvicorn", "websockets")},
        "realtime_frames": {"active": True, "libraries": versions("openai", "websockets")},
        "sigterm_drain": {"active": True, "libraries": versions("uvicorn")},
    }


def test_the_probes_catch_a_changed_internal() -> None:
    """The failure that broke every call with websockets 16 (`Protocol.max_size` renamed) is
    what the channel's self-test runs into when an attribute it reads is gone."""
    original = ws_channel.ChannelWebSocketProtocol._split_frames

    def split_with_a_renamed_attribute(self: Any, buf: bytes) -> int:
        _ = self.conn.no_such_limit
        return original(self, buf)

    ws_channel.ChannelWebSocketProtocol._split_frames = split_with_a_renamed_attribute  # type: ignore[method-assign]
    try:
        outcome = ws_channel.probe()
    finally:
        ws_channel.ChannelWebSocketProtocol._split_frames = original  # type: ignore[method-assign]
    assert outcome == "AttributeError: 'ServerProtocol' object has no attribute 'no_such_limit'"


def test_a_failed_probe_means_the_public_path_and_one_warning(
    fresh_probes: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="callbot.fastpaths")
    monkeypatch.setattr(ws_channel, "probe", lambda: "uvicorn lacks frames")
    monkeypatch.setattr(realtime_openai, "probe", lambda: 1 / 0)  # a probe that crashes fails too
    paths = probe_fast_paths()
    probe_fast_paths()  # cached: no second warning
    assert [p.name for p in paths.all() if not p.active] == ["twilio_channel", "realtime_frames"]
    assert paths.twilio_channel.describe()["why"] == "uvicorn lacks frames"
    assert paths.realtime_frames.describe()["why"] == "ZeroDivisionError: division by zero"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0] == (
        f"fast path twilio_channel is off on {versions('uvicorn', 'websockets')} (uvicorn lacks frames); "
        "using uvicorn's own websocket protocol (plain ASGI messages) instead"
    )
    assert "ws" not in server_options(make_settings())  # uvicorn serves with its own protocol


def test_switching_fast_paths_off_forces_every_public_path(fresh_probes: None) -> None:
    paths = probe_fast_paths(enabled=False)
    assert [path.active for path in paths.all()] == [False, False, False]
    assert paths.sigterm_drain.describe()["why"] == "switched off (CALLBOT_FAST_PATHS=false)"
    assert "ws" not in server_options(make_settings(fast_paths=False))
    assert server_options(make_settings())["ws"] is ws_channel.ChannelWebSocketProtocol
    config = uvicorn.Config(lambda: None)
    assert type(uvicorn_server.build_server(config, asyncio.sleep, draining=False)) is uvicorn.Server
    assert isinstance(uvicorn_server.build_server(config, asyncio.sleep), uvicorn_server.DrainingServer)
