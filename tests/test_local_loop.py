"""The README's local test loop, run the way a user runs it: three processes and a WAV file.

`callbot fake-openai`, `callbot serve` pointed at it with OPENAI_BASE_URL, and
`callbot phone --input caller.wav`; then `callbot tickets show --json` reads what was stored.
Nothing is imported from callbot here except to check the results: every step is a command.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CALLER_LINES = [
    "Hi, this is Maria Chen, customer number 4471-2290.",
    "My internet has been down since Monday.",
    "Tomorrow morning works for me.",
]
GREETING = "Hello, you're through to Acme Broadband support. How can I help?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def callbot(*args: str) -> list[str]:
    return [sys.executable, "-m", "callbot", *args]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    port = free_port()
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OPENAI_API_KEY": "fake",
        "TWILIO_AUTH_TOKEN": "local-test-token",
        "CALLBOT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CALLBOT_ADMIN_PASSWORD": "local",
        "CALLBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'callbot.db'}",
        "CALLBOT_SPOOL_DIR": str(tmp_path / "spool"),
        "CALLBOT_SUMMARY_TRIGGER_TOKENS": "200",  # an in-call summary after the first turns
        "CALLBOT_LOG_JSON": "false",
        "SERVE_PORT": str(port),
    }


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in reversed(started):
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_fake_openai_serve_and_phone_complete_a_ticket_with_true_times(
    tmp_path: Path, env: dict[str, str], processes: list[subprocess.Popen[str]]
) -> None:
    script = [f"--greeting={GREETING}"] + [f"--caller-line={line}" for line in CALLER_LINES]
    wav = tmp_path / "caller.wav"
    made = subprocess.run(
        callbot("fake-openai", *script, "--write-caller-wav", str(wav)), env=env, check=False
    )
    assert made.returncode == 0 and wav.exists()

    # 1. the offline OpenAI
    fake = subprocess.Popen(
        callbot("fake-openai", "--port", "0", *script), env=env, stdout=subprocess.PIPE, text=True
    )
    processes.append(fake)
    assert fake.stdout is not None
    match = re.search(r"base_url=(\S+)", fake.stdout.readline())
    assert match, "the fake did not say where it listens"
    env["OPENAI_BASE_URL"] = base_url = match[1]
    unserved = httpx.post(f"{base_url}/embeddings", json={}, timeout=10)  # an answer, not a dropped line
    assert unserved.status_code == 404 and "Invalid URL" in unserved.json()["error"]["message"]

    # 2. the real server, pointed at it
    server_log = tmp_path / "serve.log"
    with server_log.open("w") as log:
        serve = subprocess.Popen(
            callbot("serve", "--port", env["SERVE_PORT"]), env=env, stderr=log, stdout=log, text=True
        )
    processes.append(serve)
    server = env["CALLBOT_PUBLIC_URL"]
    deadline = time.monotonic() + 60
    while True:
        assert serve.poll() is None, server_log.read_text()
        try:
            if httpx.get(f"{server}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "callbot serve did not become ready"
        time.sleep(0.2)

    # 3. the phone, with the recording
    phone = subprocess.run(
        callbot("phone", server, "--input", str(wav)), env=env, capture_output=True, text=True, timeout=120
    )
    assert phone.returncode == 0, phone.stdout + phone.stderr
    said = [float(t) for t in re.findall(r"^\[\s*([\d.]+)s\] you say: caller\.wav", phone.stdout, re.M)]
    assert len(said) == len(CALLER_LINES), phone.stdout
    assert re.search(r"ticket #1 \(complete\)", phone.stdout), phone.stdout

    shown = subprocess.run(
        callbot("tickets", "show", "1", "--json"), env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    ticket = json.loads(shown.stdout)

    # the ticket was summarised by the fake text model (it used to stay pending_summary)
    assert ticket["status"] == "complete", ticket.get("last_error")
    assert ticket["summary"]["title"] == CALLER_LINES[0]
    assert {"label": "number", "value": "4471-2290"} in ticket["summary"]["facts"]
    assert "ticket summary failed" not in server_log.read_text()

    # every spoken turn says when it was said, in call order, and the caller's match the phone
    turns = ticket["transcript"]
    assert [t["role"] for t in turns] == ["assistant"] + ["user", "assistant"] * len(CALLER_LINES)
    assert [t["text"] for t in turns if t["role"] == "user"] == CALLER_LINES
    assert all(t["started_ms"] is not None and t["ended_ms"] > t["started_ms"] for t in turns)
    starts = [t["started_ms"] for t in turns]
    assert starts == sorted(starts)
    for previous, turn in itertools.pairwise(turns):
        assert turn["started_ms"] >= previous["ended_ms"] - 100  # nobody talked over anybody
    for turn, phone_said_s in zip([t for t in turns if t["role"] == "user"], said, strict=True):
        assert abs(turn["started_ms"] / 1000 - phone_said_s) < 0.5, (turn, phone_said_s)
        assert turn["started_ms"] < turn["at_ms"]  # said before its item reached the server

    # the in-call summaries kept who said what
    summaries = "\n".join(s["text"] for s in ticket["in_call_summaries"])
    assert "- Assistant: Hello, you're through to Acme Broadband support." in summaries
    assert f"- Caller: {CALLER_LINES[0]}" in summaries
    assert "Caller: Assistant:" not in summaries

    text = subprocess.run(
        callbot("tickets", "show", "1"), env=env, capture_output=True, text=True, timeout=60
    )
    assert re.search(r"^\[\d\d:\d\d-\d\d:\d\d\] Caller: Hi, this is Maria Chen", text.stdout, re.M), (
        text.stdout
    )
