"""The Realtime adapter's fast send path puts exactly the same frames on the wire as the SDK's send_raw."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI

from callbot.adapters.realtime_openai import OpenAIRealtimeConnector, UpstreamError, _direct_send
from callbot.core import realtime as rt
from callbot.sim.fake_realtime import FakeRealtimeServer


@pytest.mark.parametrize("direct", [True, False])
async def test_direct_and_sdk_send_paths_deliver_the_same_events(direct: bool) -> None:
    events = [
        rt.session_update(rt.AgentConfig(audio_mode="pcmu")),
        rt.append("////"),
        rt.system_message("summary_0001", "Summary: caller Ana, order 88314."),
        rt.response_create("Say hello."),
    ]
    async with FakeRealtimeServer() as fake:
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="k", base_url=fake.base_url), "gpt-realtime-1.5"
        )
        connector._direct_send = direct
        link = await connector.connect()
        assert (link._send != link._conn.send_raw) == direct  # the fast path is really taken
        for event in events:
            await link.send(event)
        seen: list[str] = []
        while "response.done" not in seen:
            seen.append((await link.recv())["type"])
        await link.close()
        received = fake.sessions[0].received
        assert fake.violations == []
    assert received == events


def test_the_fast_path_falls_back_to_send_raw_when_the_sdk_changes() -> None:
    class NewSdkConnection:
        async def send_raw(self, data: str) -> None: ...

    conn = NewSdkConnection()
    assert _direct_send(conn) == conn.send_raw


async def test_a_refused_connection_is_an_upstream_error() -> None:
    async with FakeRealtimeServer() as fake:
        fake.refuse_connections = True
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="k", base_url=fake.base_url), "gpt-realtime-1.5"
        )
        with pytest.raises(UpstreamError, match="could not open the Realtime session"):
            await connector.connect()
