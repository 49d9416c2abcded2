"""Fuzzing the tool path: adversarial model arguments and adversarial tool-server answers.

`ToolCase` is one function call: the arguments text the model sends (`arguments`) and how the
tool server answers it (`answer`). `MisbehavingToolServer` is a raw HTTP/1.1 server on loopback
(asyncio streams, no framework) so that it can answer anything at all: JSON, not JSON, huge
bodies, a charset that is not the body's, invalid UTF-8, nesting deep enough to break a
recursive parser, numbers too long for `int()`, 5xx, a wrong Content-Length, nothing (too slow),
or a dropped connection. Each case sets the server's next answer before its call runs.

`check_tool_output` is the invariant for one case: the runner returned compact JSON of at most
`MAX_OUTPUT_CHARS` characters, or raised `ToolFailed` whose message names the tool; and the text
that goes back to the model as the `function_call_output` is valid JSON (an `{"error": ...}`
object for a failure). tests/test_fuzz_tools.py and bench/fault_soak.py share these.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from callbot.adapters.http_tools import MAX_OUTPUT_CHARS
from callbot.caller.simulator import HangUp, Say, Silence, Step, WaitForAssistant
from callbot.core import realtime as rt
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.fake_realtime_state import ScriptedCall
from callbot.testing.speech import synth_speech

TOOL_NAME = "fuzz_lookup"
TOOL_TIMEOUT_S = 0.6
"""The fuzzed tool's timeout: a "slow" answer waits longer than this."""
AFTER_TOOL = "Tool result received."
"""What the fake model says after a tool's output (`Script.after_tool`): short, whatever the output."""


def tools_yaml(base_url: str, *, timeout_s: float = TOOL_TIMEOUT_S, method: str = "POST") -> str:
    """A tools file with the one fuzzed tool, served by `MisbehavingToolServer` at `base_url`."""
    return f"""\
tools:
  - name: {TOOL_NAME}
    description: Look something up (a fuzzed tool).
    parameters:
      type: object
      properties:
        order_number:
          type: string
    url: {base_url}/lookup
    method: {method}
    timeout_s: {timeout_s}
"""


# ----------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    """How the tool server answers one request."""

    kind: str  # "raw": send `data` and close; "drop": abort after reading; "slow": answer late
    data: bytes = b""
    delay_s: float = 0.0
    label: str = ""


def http_answer(
    status: int, body: bytes, content_type: str | None = "application/json", *, length: int | None = None
) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body) if length is None else length}"]
    if content_type is not None:
        head.append(f"Content-Type: {content_type}")
    head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _deep(n: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * n + b"]" * n
    return b'{"a":' * n + b"1" + b"}" * n


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=10,
)

ok_bodies = json_values.map(lambda v: json.dumps(v).encode())
odd_bodies = st.sampled_from(
    [
        b"",
        b"<html>oops</html>",
        b"null",
        b"NaN",
        b'{"a": Infinity}',
        b'{"a": 1e999999}',
        b'"\\ud800"',  # a lone surrogate, escaped: valid JSON text, not encodable as UTF-8
        b'{"k": "\\udfff\\ud800"}',
        b"\xff\xfe{\x00}\x00",  # UTF-16 with a BOM
        b"\xef\xbb\xbf{}",  # UTF-8 with a BOM
        b'{"a": "\xc3\x28"}',  # invalid UTF-8
        b"\x80\x81\x82",
        b'{"a": 1',  # truncated
        b"\x00" * 16,
        '{"é": "ü"}'.encode("latin-1"),
        '{"name": "Zoë"}'.encode("utf-16"),
    ]
)
huge_bodies = st.integers(min_value=MAX_OUTPUT_CHARS, max_value=400_000).map(
    lambda n: json.dumps({"text": "x" * n}).encode()
) | st.integers(min_value=1000, max_value=50_000).map(lambda n: b"[" + b"1," * n + b"1]")
long_numbers = st.integers(min_value=4301, max_value=20_000).map(lambda n: b'{"n": ' + b"9" * n + b"}")
deep_bodies = st.builds(
    _deep, st.sampled_from([50, 1500, 20_000, 200_000]), st.sampled_from(["list", "dict"])
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "application/json; charset=latin-1",
        "application/json; charset=ebcdic-nonsense",
        "application/json; charset=",
        "text/html",
        "text/plain; charset=utf-32",
        None,
    ]
)
statuses = st.sampled_from([200, 200, 200, 201, 204, 301, 400, 404, 418, 500, 502, 503, 504, 599])

raw_answers = st.builds(
    lambda status, body, ctype: Answer("raw", http_answer(status, body, ctype), label=f"{status} {ctype}"),
    statuses,
    ok_bodies | odd_bodies | huge_bodies | long_numbers | deep_bodies,
    content_types,
)
broken_answers = st.sampled_from(
    [
        Answer("raw", http_answer(200, b'{"a": 1}', length=5000), label="Content-Length too long"),
        Answer("raw", http_answer(200, b'{"a": 1}', length=3), label="Content-Length too short"),
        Answer("raw", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", label="bad chunks"),
        Answer("raw", b"not http at all\r\n\r\n", label="not HTTP"),
        Answer("raw", b"", label="closed without a word"),
        Answer("raw", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", label="headers cut off"),
        Answer("drop", label="connection reset"),
        Answer("slow", http_answer(200, b'{"late": true}'), delay_s=TOOL_TIMEOUT_S + 0.4, label="too slow"),
    ]
)
answers = st.one_of(raw_answers, raw_answers, raw_answers, broken_answers)

# ----------------------------------------------------------------------------- arguments

argument_texts = (
    json_values.map(json.dumps)  # any JSON: an object or not
    | st.dictionaries(st.text(max_size=12), json_values, max_size=4).map(json.dumps)
    | st.text(max_size=60)  # usually not JSON
    | st.sampled_from(
        [
            "",
            "{",
            "null",
            '{"order_number": "\\ud800"}',  # JSON text decoding to a lone surrogate
            '{"\\udfff": 1}',
            '{"order_number": "\\u0000"}',
            '{"n": 1e999999}',
            '{"a": NaN}',
            '{"order_number": "4417"}',
            '{"a": 1}{"b": 2}',
        ]
    )
    | st.integers(min_value=4301, max_value=10_000).map(lambda n: '{"n": ' + "9" * n + "}")
    | st.builds(
        lambda n, kind: _deep(n, kind).decode(),
        st.sampled_from([100, 5000, 100_000]),
        st.sampled_from(["list", "dict"]),
    )
    | st.integers(min_value=10_000, max_value=200_000).map(lambda n: json.dumps({"order_number": "4" * n}))
)
surrogate_arguments = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3).map(
    lambda s: '{"order_number": "' + s + '"}'
)
"""Arguments text holding raw lone surrogates (only the runner-level fuzzer sends these: they cannot
cross a websocket as UTF-8, so no real model's arguments carry them)."""


@dataclass(frozen=True)
class ToolCase:
    arguments: str
    answer: Answer
    method: str = "POST"

    def label(self) -> str:
        answer = f"{self.answer.label}:{self.answer.data[:60]!r}"
        return f"ToolCase({self.method} arguments={self.arguments[:80]!r} answer={answer})"


tool_cases = st.builds(
    ToolCase,
    arguments=argument_texts,
    answer=answers,
    method=st.sampled_from(["POST", "POST", "POST", "GET"]),
)
runner_tool_cases = st.builds(
    ToolCase,
    arguments=argument_texts | surrogate_arguments,
    answer=answers,
    method=st.sampled_from(["POST", "POST", "POST", "GET"]),
)


# ----------------------------------------------------------------------------- the server


@dataclass
class MisbehavingToolServer:
    """Answers every request with `answer` (set per case); counts what it was sent."""

    answer: Answer = field(default_factory=lambda: Answer("raw", http_answer(200, b'{"ok": true}')))
    requests: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()  # answers still held back ("too slow") go now
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = self.answer
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or b"0")
            if length:
                await reader.readexactly(length)
            self.requests += 1
            if answer.kind == "drop":
                writer.transport.abort()
                return
            if answer.delay_s and self._stopping is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), answer.delay_s)
            writer.write(answer.data)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def misbehaving_tool_server() -> AsyncIterator[MisbehavingToolServer]:
    server = MisbehavingToolServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# ----------------------------------------------------------------------------- whole calls


def tool_call_steps(cases: int) -> list[Step]:
    """Greeting, a first turn (the fake's reply 0, as a legitimate call has), then one turn per
    fuzzed function call: the agent's "One moment.", the tool, the read-back of its output."""
    steps: list[Step] = [WaitForAssistant(timeout_s=10), Say(synth_speech(600, 8000, seed=21)), Silence(100)]
    steps.append(WaitForAssistant(timeout_s=10))
    for n in range(cases):
        steps += [
            Say(synth_speech(600, 8000, seed=22 + n)),
            Silence(100),
            WaitForAssistant(timeout_s=15, quiet_ms=1500),
        ]
    steps.append(HangUp())
    return steps


def script_tool_cases(script: Script, cases: list[ToolCase]) -> None:
    """The fake model's replies 1.. call the fuzzed tool with these arguments (reply 0 stays legit)."""
    script.function_calls.clear()
    for n, case in enumerate(cases, start=1):
        script.function_calls[n] = ScriptedCall(TOOL_NAME, raw_arguments=case.arguments, say="One moment.")


def function_call_outputs(fake: FakeRealtimeServer, seen: set[int]) -> list[dict[str, Any]]:
    """The outputs the model received in sessions not looked at before (only fuzzed calls make any)."""
    outputs = []
    for session in list(fake.sessions):
        if id(session) in seen:
            continue
        items = [
            e["item"]
            for e in session.received
            if e.get("type") == "conversation.item.create" and e["item"].get("type") == "function_call_output"
        ]
        if items:
            seen.add(id(session))
            outputs += items
    return outputs


# ----------------------------------------------------------------------------- the checks


def model_output(output: str | None, error: str | None) -> str:
    """What the bridge sends the model for this result (core/tools.py `ToolCalls.result`)."""
    text = output if error is None and output is not None else json.dumps({"error": error})
    event = rt.function_call_output("call_fuzz", text)
    json.dumps(event)  # the event must be serialisable for the websocket
    return text


def check_tool_output(case: ToolCase, output: str | None, error: str | None) -> None:
    """One case's result: a bounded JSON answer, or a clear error naming the tool."""
    assert (output is None) != (error is None), (output, error)
    if output is not None:
        assert len(output) <= MAX_OUTPUT_CHARS, len(output)
        output.encode("utf-8")  # it goes to the model as UTF-8 JSON
    else:
        assert error is not None and TOOL_NAME in error, error
        assert len(error) < 1000, f"error of {len(error)} characters"
        error.encode("utf-8")
    text = model_output(output, error)
    if error is not None:
        assert json.loads(text) == {"error": error}
