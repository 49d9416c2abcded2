"""The complete offline OpenAI (`callbot fake-openai`): Realtime websocket and text API on one port."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from callbot.caller.wavio import read_wav
from callbot.core.summary import SummaryRequest, prompt_messages
from callbot.phone.script import split_utterances
from callbot.testing.fake_openai import FakeOpenAI
from callbot.testing.fake_openai_http import reply_content
from callbot.testing.fake_realtime import Script

ROOT = Path(__file__).resolve().parents[1]


async def test_one_base_url_serves_realtime_and_chat() -> None:
    async with FakeOpenAI(Script(greeting="Hi there.")) as fake:
        client = AsyncOpenAI(api_key="fake", base_url=fake.base_url)
        async with client.realtime.connect(model="gpt-realtime-1.5") as conn:
            event = await asyncio.wait_for(conn.recv(), 10)
            assert event.type == "session.created"
        completion = await client.chat.completions.create(
            model="gpt-5.4-mini", messages=[{"role": "user", "content": "[00:01] Caller: I am Ada Lovelace."}]
        )
        assert "Ada Lovelace" in (completion.choices[0].message.content or "")
        assert fake.control.requests[0]["model"] == "gpt-5.4-mini"
        assert fake.realtime.sessions[0].model == "gpt-realtime-1.5"
        assert fake.realtime.violations == []


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v1/responses", 404, "Invalid URL (POST /v1/responses)"),
        ("GET", "/", 404, "Invalid URL (GET /)"),
        ("GET", "/v1/chat/completions", 405, "Method not allowed (GET /v1/chat/completions)"),
        ("POST", "/v1/realtime", 426, "the Realtime API is a websocket"),
    ],
)
async def test_what_the_fake_does_not_serve_gets_a_json_error(
    method: str, path: str, status: int, message: str
) -> None:
    async with FakeOpenAI() as fake, httpx.AsyncClient() as http:
        response = await http.request(method, f"http://127.0.0.1:{fake.port}{path}", json={"x": 1})
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


async def test_the_sdk_reports_an_unserved_endpoint_as_not_found() -> None:
    async with FakeOpenAI() as fake:
        client = AsyncOpenAI(api_key="fake", base_url=fake.base_url, max_retries=0)
        with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(GET /v1/models\)"):
            await client.models.list()


async def test_a_websocket_to_another_path_is_refused_with_json() -> None:
    async with FakeOpenAI() as fake:
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
        writer.write(
            b"GET /v1/other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Authorization: Bearer x\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 404")
    assert b'"Invalid URL (GET /v1/other)' in answer


def test_the_in_call_summary_keeps_each_speaker() -> None:
    request = SummaryRequest(
        summary_id="summary_0001",
        folded_item_ids=("a", "b"),
        previous_summary=None,
        lines=(
            ("assistant", "Hello, you're through to Acme Broadband support."),
            ("user", "Hi, this is Maria Chen, customer number 4471-2290."),
        ),
        tokens_before=500,
        turns_folded=2,
    )
    messages = prompt_messages(request, language="English", style="bullet points")
    text = reply_content({"model": "m", "messages": messages})
    assert "- Assistant: Hello, you're through to Acme Broadband support." in text
    assert "- Caller: Hi, this is Maria Chen, customer number 4471-2290." in text
    assert "Caller: Assistant:" not in text


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


async def test_cli_writes_a_caller_recording_with_one_utterance_per_line(tmp_path: Path) -> None:
    wav = tmp_path / "caller.wav"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callbot", "fake-openai", "--caller-line", "One.", "--caller-line", "Two.",
        "--write-caller-wav", str(wav), env=_env(), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out
    audio, rate = read_wav(wav)
    assert rate == 8000
    assert len(split_utterances(audio)) == 2


async def test_cli_exits_2_when_the_port_is_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callbot", "fake-openai", "--port", str(port),
            env=_env(), stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()
