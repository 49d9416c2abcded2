"""A fake of OpenAI's HTTP Chat Completions API, for the offline demo and the tests.

It is a simulator, not a model, and says so: plain-text replies begin with "FAKE SUMMARY", and
structured tickets say so in their `summary`. What it does do faithfully is the contract the
callers depend on: a ChatCompletion body the real `openai` SDK parses, token usage, strict
`json_schema` replies that validate against the schema the request sent, and facts (digit runs,
dates, capitalised names) restated verbatim from the transcript, so tests can check that
nothing was lost on the way. Failure switches (HTTP 500s, truncated JSON, delays) drive the
fault tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from callbot.core.ticket_schema import schema_errors


@dataclass
class FakeOpenAIControl:
    """Switches a test flips between requests, and what the fake received."""

    fail_next: int = 0
    fail_status: int = 500
    invalid_json_next: int = 0
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    keep_requests: int = 1000  # a long demo or benchmark must not grow without bound

    def fail(self, count: int, status: int = 500) -> None:
        self.fail_next, self.fail_status = count, status


def create_fake_openai_app(control: FakeOpenAIControl | None = None) -> FastAPI:
    """The fake API as an ASGI app; `app.state.control` is the FakeOpenAIControl it obeys."""
    app = FastAPI(title="fake OpenAI (simulator)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.control = control or FakeOpenAIControl()
    app.state.counter = _Counter()
    app.add_exception_handler(StarletteHTTPException, _not_served)  # type: ignore[arg-type]

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        ctl: FakeOpenAIControl = request.app.state.control
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return _error(401, "missing API key (the fake wants any Bearer token)", "invalid_request_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON", "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or "model" not in body:
            return _error(400, "model and messages are required", "invalid_request_error")
        ctl.requests.append(body)
        del ctl.requests[: -ctl.keep_requests]
        if ctl.delay_s:
            await asyncio.sleep(ctl.delay_s)
        if ctl.fail_next > 0:
            ctl.fail_next -= 1
            return _error(ctl.fail_status, "injected failure from the fake OpenAI server", "server_error")
        content = reply_content(body)
        if ctl.invalid_json_next > 0 and _wants_schema(body):
            ctl.invalid_json_next -= 1
            content = content[: len(content) // 2]
        return JSONResponse(_completion(body, content, request.app.state.counter.next()))

    return app


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


SERVED = "POST /v1/chat/completions and the Realtime websocket /v1/realtime"


async def _not_served(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and methods get OpenAI's error body (`Invalid URL (METHOD /path)`), never silence."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404 and request.url.path.rstrip("/").endswith("/realtime"):
        response = _error(426, f"{where}: the Realtime API is a websocket; connect with Upgrade: websocket")
        response.headers["Upgrade"] = "websocket"
        return response
    if exc.status_code == 404:
        return _error(404, f"Invalid URL ({where}). The fake OpenAI serves {SERVED}.")
    if exc.status_code == 405:
        return _error(405, f"Method not allowed ({where}). The fake OpenAI serves {SERVED}.")
    return _error(exc.status_code, f"{where}: {exc.detail}")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


def _wants_schema(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") == "json_schema"


def _completion(body: Mapping[str, Any], content: str, number: int) -> dict[str, Any]:
    prompt_chars = sum(len(_content_text(m.get("content"))) for m in body["messages"] if isinstance(m, dict))
    prompt_tokens, completion_tokens = prompt_chars // 4 + 1, len(content) // 4 + 1
    return {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body["model"]),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def reply_content(body: Mapping[str, Any]) -> str:
    """What the fake answers: a schema instance for json_schema requests, else a text summary."""
    source = "\n".join(
        _content_text(m.get("content"))
        for m in body["messages"]
        if isinstance(m, dict) and m.get("role") == "user"
    )
    fmt = body.get("response_format")
    if _wants_schema(body):
        spec = fmt["json_schema"] if isinstance(fmt, dict) else {}
        schema = spec.get("schema") or {"type": "object", "properties": {}, "required": []}
        hints = ticket_hints(source) if spec.get("name") == "support_ticket" else None
        return json.dumps(instance_for(schema, hints, schema), ensure_ascii=False)
    return text_summary(source)


# ----- reading a transcript -----

_OFFSET = r"\d+:\d{2}(?::\d{2})?"
# A ticket line starts with "[00:06-00:09] " (or "[00:06] "); the in-call summariser's lines have none.
_LINE = re.compile(
    rf"^(?:\[(?P<at>{_OFFSET})(?:-{_OFFSET})?\]\s*)?"
    r"(?P<who>Caller|Assistant|System)(?P<notes>[^:]*):\s*(?P<text>.*)$"
)
_DATE = re.compile(
    r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b"
    r"|\b(?:January|February|March|April|May|June|July|August|September|October|November|December)"
    r"\s+\d{1,2}(?:st|nd|rd|th)?\b"
    r"|\b\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:January|February|March|April|May|June|July|August|September"
    r"|October|November|December)\b"
)
_NUMBER = re.compile(r"(?<![\w.])\+?\d(?:[\d\-./,]*\d)?(?![\w])")
_PHONE = re.compile(r"(?<![\w+])\+\d[\d \-()/]{5,}\d(?![\w])")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_NAME = re.compile(r"\b[A-Z][a-zà-öø-ÿ']+(?:\s+[A-Z][a-zà-öø-ÿ']+)+\b")
_NOT_NAMES = {
    "Hello", "Hi", "Thanks", "Thank", "Yes", "No", "Okay", "Ok", "The", "This", "That", "My", "Your", "I",
    "Caller", "Assistant", "System", "Good", "Please", "Sure", "Great", "Can", "Could", "Would", "What",
    "When", "Where", "How", "Is", "It", "We", "You", "Fake", "Call", "Dear",
}  # fmt: skip


@dataclass(frozen=True)
class _Turn:
    who: str
    text: str


def _turns(source: str) -> list[_Turn]:
    turns = []
    for raw in source.splitlines():
        match = _LINE.match(raw.strip())
        if match:
            turns.append(_Turn(match["who"], match["text"].strip()))
    if not turns:  # not our transcript format: treat every non-empty line as the caller's
        turns = [_Turn("Caller", line.strip()) for line in source.splitlines() if line.strip()]
    return turns


def extract_facts(text: str) -> list[tuple[str, str]]:
    """(label, value) pairs found in `text`, each value exactly as written, in order of appearance."""
    found: list[tuple[int, str, str]] = []
    taken: list[tuple[int, int]] = []

    def add(label: str, match: re.Match[str]) -> None:
        span = match.span()
        if any(span[0] < end and start < span[1] for start, end in taken):
            return
        taken.append(span)
        found.append((span[0], label, match.group(0).strip()))

    for m in _EMAIL.finditer(text):
        add("email", m)
    for m in _PHONE.finditer(text):
        add("phone number", m)
    for m in _DATE.finditer(text):
        add("date", m)
    for m in _NUMBER.finditer(text):
        if sum(c.isdigit() for c in m.group(0)) >= 3:
            add("number", m)
    for m in _NAME.finditer(text):
        words = m.group(0).split()
        while words and words[0] in _NOT_NAMES:
            words.pop(0)
        if len(words) >= 2 and not _DATE.search(" ".join(words)):
            add("name", m)
    seen: set[str] = set()
    facts = []
    for _, label, value in sorted(found):
        if value not in seen:
            seen.add(value)
            facts.append((label, value))
    return facts


TRANSCRIPT_MARKER = "Transcript to summarise:"


def text_summary(source: str) -> str:
    """The plain-text fake summary: facts and the lines that carry them, verbatim.

    A rolled-up request carries the previous summary before the transcript: its facts are
    carried over (deduplicated), but only the new transcript's lines are quoted, so summaries
    stay bounded in size the way a real model's do.
    """
    previous, marker, transcript = source.partition(TRANSCRIPT_MARKER)
    if not marker:
        previous, transcript = "", source
    transcript = "\n".join(line for line in transcript.splitlines() if line.strip() not in ("<<<", ">>>"))
    turns = _turns(transcript)
    facts = extract_facts(previous + "\n" + "\n".join(t.text for t in turns))
    lines = ["FAKE SUMMARY (offline simulator, not a language model)."]
    lines.append(f"{len(turns)} lines were summarised.")
    for label in ("name", "number", "phone number", "date", "email"):
        values = [v for lab, v in facts if lab == label]
        if values:
            lines.append(f"{label.capitalize()}s: {'; '.join(values)}")
    carrying = [t for t in turns if any(v in t.text for _, v in facts)]
    if carrying:
        lines.append("Lines with facts:")
        lines += [f"- {t.who}: {t.text}" for t in carrying[:20]]
    if turns:
        lines.append(f"Last line: {turns[-1].who}: {turns[-1].text}")
    return "\n".join(lines)


_KEYWORDS = [
    ("billing", ("invoice", "bill", "charge", "refund", "payment", "paid", "price increase", "rechnung")),
    ("complaint", ("complain", "unacceptable", "terrible", "angry", "disappointed", "worst", "beschwerde")),
    (
        "technical",
        ("error", "broken", "not working", "doesn't work", "crash", "outage", "router", "internet"),
    ),
    ("account", ("password", "login", "log in", "account", "address change", "email address", "konto")),
    ("sales", ("buy", "purchase", "quote", "upgrade", "offer", "pricing", "subscribe")),
    ("information", ("opening hours", "open on", "where is", "information", "how do i", "what time")),
]


def ticket_hints(source: str) -> dict[str, Any]:
    """Fill the support_ticket fields from the transcript with keyword rules."""
    turns = _turns(source)
    caller = [t.text for t in turns if t.who == "Caller" and t.text and not t.text.startswith("(")]
    assistant = [t.text for t in turns if t.who == "Assistant" and t.text and not t.text.startswith("(")]
    everything = " ".join(t.text for t in turns)
    lowered = " ".join(caller).lower()
    request = next((line for line in caller if len(line.split()) >= 4), caller[0] if caller else "")
    category = next((name for name, words in _KEYWORDS if any(w in lowered for w in words)), "other")
    actions = [
        {
            "description": line[:200],
            "owner": None,
            "due": next((v for lab, v in extract_facts(line) if lab == "date"), None),
        }
        for line in assistant
        if re.search(r"\b(will|i'll|we'll|call you back|follow up|send you)\b", line.lower())
    ]
    last_reply = (
        f'The assistant last said: "{assistant[-1]}".' if assistant else "The assistant did not answer."
    )
    unhappy = ("angry", "terrible", "unacceptable", "disappointed")
    if any(w in lowered for w in unhappy):
        sentiment = "negative"
    elif any(w in lowered for w in ("thank", "great", "perfect")):
        sentiment = "positive"
    else:
        sentiment = "neutral"
    if re.search(r"\b(urgent|emergency)\b", lowered):
        priority = "urgent"
    elif re.search(r"\b(asap|immediately|today|right now)\b", lowered):
        priority = "high"
    else:
        priority = "normal"
    return {
        "title": (request[:77] + "...") if len(request) > 80 else (request or "Call without a request"),
        "summary": (
            "Fake summary by the offline simulator (no language model). "
            f'The call had {len(turns)} turns. The caller said: "{request}". {last_reply}'
        ),
        "caller_request": request,
        "outcome": assistant[-1] if assistant else "No answer was given.",
        "category": category,
        "priority": priority,
        "sentiment": sentiment,
        "action_items": actions,
        "facts": [{"label": label, "value": value} for label, value in extract_facts(everything)],
        "follow_up_needed": bool(actions) or "call back" in everything.lower(),
        "language": "de" if re.search(r"\b(ich|und|nicht|bitte)\b", lowered) else "en",
    }


def instance_for(schema: Mapping[str, Any], hint: Any, root: Mapping[str, Any]) -> Any:
    """A value valid under `schema`: the hint where it fits, the smallest valid value elsewhere."""
    if "$ref" in schema:
        name = str(schema["$ref"]).removeprefix("#/$defs/")
        return instance_for(root.get("$defs", {}).get(name, {}), hint, root)
    if hint is not None and not schema_errors(hint, schema, root):
        return hint
    if "anyOf" in schema:
        return instance_for(schema["anyOf"][0], hint, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    types = schema.get("type", "object")
    types = [types] if isinstance(types, str) else list(types)
    if "null" in types and hint is None:
        return None
    kind = next((t for t in types if t != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        given = hint if isinstance(hint, dict) else {}
        return {name: instance_for(sub, given.get(name), root) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items", {})
        values = [instance_for(items, h, root) for h in hint] if isinstance(hint, list) else []
        while len(values) < int(schema.get("minItems", 0)):
            values.append(instance_for(items, None, root))
        return values
    defaults: dict[str, Any] = {"string": "fake", "integer": 0, "number": 0, "boolean": False, "null": None}
    return defaults.get(kind)


# ----- serving it -----


def _config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)


def _base_url(server: uvicorn.Server) -> str:
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in this event loop; yields its URL."""
    server = uvicorn.Server(_config(app))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield _base_url(server)
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def serve_fake_openai(control: FakeOpenAIControl | None = None) -> AsyncIterator[str]:
    """Run the fake API; yields the base URL for `openai.AsyncOpenAI(base_url=...)`, ending in /v1."""
    async with serve_app(create_fake_openai_app(control)) as url:
        yield url + "/v1"


@contextmanager
def serve_app_in_thread(app: Any, start_timeout_s: float = 10.0) -> Iterator[str]:
    """Serve an ASGI app from a background thread, for synchronous callers (selenium, CLIs)."""
    server = uvicorn.Server(_config(app))
    thread = threading.Thread(target=server.run, name="uvicorn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield _base_url(server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
