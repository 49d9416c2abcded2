"""Responses of the fake Realtime server: creation, paced streaming, cancellation, usage.

One part of `FakeSession`, sharing its `SessionCore`; user items it needs (transcriptions held
until a response is done, inline `response.input` items) go through the session's `ItemEvents`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from callbot.core.memory import MEMORY_HEADER
from callbot.testing.fake_realtime_audio import AudioFormat, audio_format
from callbot.testing.fake_realtime_items import ItemEvents
from callbot.testing.fake_realtime_mcp import McpServers
from callbot.testing.fake_realtime_state import (
    ConvItem,
    ScriptedCall,
    ScriptedMcpCall,
    SessionCore,
    context_tokens,
    split_words,
    text_tokens,
    usage,
)
from callbot.testing.speech import duration_ms_for_text


@dataclass(eq=False)
class ActiveResponse:
    """Book-keeping for one response between `response.created` and `response.done`."""

    id: str
    inband: bool
    audio: bool
    fmt: AudioFormat
    voice: Any
    text: str
    body: dict[str, Any]
    """The `response` object as sent in `response.created` (updated for `response.done`)."""
    context: dict[str, Any]
    item: ConvItem
    chunks: list[str]
    pieces: list[str]
    chunk_ms: list[float]
    sent_text: str = ""
    audio_ms: float = 0.0
    finished: bool = False
    task: asyncio.Task[None] | None = None
    call: ScriptedCall | None = None
    """The function call this response makes after its speech, if the script says so."""
    pending_transcriptions: list[tuple[ConvItem, int]] = field(default_factory=list)
    mcp_item: dict[str, Any] | None = None
    """The finished `mcp_call` item this response opened with (output index 0), if any."""
    message_index: int = 0
    """The output index of the spoken message (1 after an MCP call)."""

    @property
    def steps(self) -> int:
        """How many deltas the response streams (one per audio chunk, or per text piece)."""
        return len(self.chunks) if self.audio else len(self.pieces)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the fake 'model' does in one response: says `text`, and maybe calls a tool."""

    text: str
    call: ScriptedCall | None = None
    """A function call after the speech."""
    mcp: ScriptedMcpCall | None = None
    """An MCP call before the speech (OpenAI runs it; the speech is about its answer)."""


def _rate_limits(max_output_tokens: Any) -> list[dict[str, Any]]:
    reserve = max_output_tokens if isinstance(max_output_tokens, int) else 4096
    return [
        {"name": "requests", "limit": 20000, "remaining": 19999, "reset_seconds": 0.003},
        {"name": "tokens", "limit": 4000000, "remaining": 4000000 - reserve, "reset_seconds": 0.06},
    ]


class Responder:
    """Response handling for one session: `response.create` / `.cancel`, streaming, barge-in.

    `stream` paces one response's deltas; a subclass may pace them another way (the load
    benchmark's lean fake uses timer callbacks) as long as each step goes through `send_delta`.
    """

    def __init__(self, core: SessionCore, items: ItemEvents) -> None:
        self.core = core
        self.items = items
        self.active: dict[str, ActiveResponse] = {}
        """Responses between `response.created` and `response.done`, by id."""
        self.active_inband: ActiveResponse | None = None
        self.voice_locked = False
        """Assistant audio was produced: the voice can no longer change."""
        self.mcp = McpServers(core, items)

    # ------------------------------------------------------------------ client events

    def on_create(self, obj: dict[str, Any]) -> None:
        params = obj.get("response") or {}
        inband = params.get("conversation", "auto") != "none"
        if inband and self.active_inband is not None:
            self.core.error(
                f"Conversation already has an active response in progress: {self.active_inband.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
                event_id=obj.get("event_id"),
            )
            return
        self.start(params, event_id=obj.get("event_id"))

    def on_cancel(self, obj: dict[str, Any]) -> None:
        rid = obj.get("response_id")
        resp = self.active.get(rid) if rid else self.active_inband
        if resp is None:
            self.core.error(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
                event_id=obj.get("event_id"),
            )
            return
        self.finish(resp, "cancelled", "client_cancelled")

    # ------------------------------------------------------------------ lifecycle

    def _reply(self, inband: bool, params: dict[str, Any], context: list[ConvItem]) -> Reply:
        """Pick what the fake model says (see `Script`), and the tool it calls, if any."""
        if not inband:
            if self.core.script.out_of_band_reply is not None:
                return Reply(self.core.script.out_of_band_reply)
            said = " | ".join(item.heard_text for item in context if item.heard_text)
            return Reply(f"Summary: {said[:300] or 'nothing yet.'}")
        has_user = any(item.data.get("role") == "user" for item in self.core.conversation.items)
        progress, script = self.core.progress, self.core.script
        if not progress.greeted and (params.get("instructions") is not None or not has_user):
            progress.greeted = True
            earlier = self._earlier_call_title()
            if earlier is not None:
                return Reply(f"{script.greeting} Are you calling about {earlier}?")
            return Reply(script.greeting)
        outputs = [i for i in context if i.data.get("type") == "function_call_output"]
        unread = [i for i in outputs if i.id not in progress.outputs_read]
        if unread:  # the model reads back a tool's answer it has not spoken about yet
            progress.outputs_read.add(unread[-1].id)
            return Reply(script.after_tool.replace("{output}", str(unread[-1].data.get("output") or "")))
        n = progress.replies
        progress.replies += 1
        mcp = script.mcp_calls.get(n)
        if mcp is not None:  # a real model cannot call a tool it was not given either
            return Reply(mcp.spoken(), mcp=mcp) if self.mcp.can_call(mcp) else Reply(script.no_tool_reply)
        call = script.function_calls.get(n)
        if call is not None and self._declared(call.name):
            return Reply(call.say, call)
        if n < len(script.replies):
            return Reply(script.replies[n])
        last_user = next((i for i in reversed(context) if i.data.get("role") == "user"), None)
        return Reply(f"You said: {last_user.heard_text if last_user else 'nothing'}")

    def _declared(self, name: str) -> bool:
        """Only a function tool the session declared can be called (a real model cannot do more)."""
        tools = self.core.config.get("tools") or []
        return any(t.get("type") == "function" and t.get("name") == name for t in tools)

    def _earlier_call_title(self) -> str | None:
        """The 'model' reads a returning caller's memory: the newest earlier call's title, taken
        from a system item at the conversation root (callbot/core/memory.py writes it)."""
        for item in self.core.conversation.items:
            data = item.data
            if data.get("role") != "system":
                break  # the memory sits at the root, before any turn
            text = " ".join(str(p.get("text") or "") for p in data.get("content") or [])
            match = re.search(r'ticket #\d+: "([^"]+)"', text) if text.startswith(MEMORY_HEADER) else None
            if match:
                return match.group(1)
        return None

    def _resolve_input(self, spec: list[dict[str, Any]], event_id: str | None) -> list[ConvItem] | None:
        items: list[ConvItem] = []
        for entry in spec:
            if entry.get("type") == "item_reference":
                found = self.core.conversation.get(entry["id"])
                if found is None:
                    self.core.error(
                        f"Item reference '{entry['id']}' does not exist in this session.",
                        code="invalid_value",
                        param="response.input",
                        event_id=event_id,
                    )
                    return None
                items.append(found)
            else:
                items.append(self.items.from_client(entry))
        return items

    def start(self, params: dict[str, Any], *, event_id: str | None) -> ActiveResponse | None:
        """Emit the opening events of a response and start streaming it."""
        session = self.core.config
        inband = params.get("conversation", "auto") != "none"
        modalities = params.get("output_modalities") or session["output_modalities"]
        instructions = (
            params["instructions"] if params.get("instructions") is not None else session["instructions"]
        )
        out = (params.get("audio") or {}).get("output") or {}
        fmt = audio_format(out.get("format") or session["audio"]["output"]["format"])
        if fmt is None:
            self.core.error(
                "The fake server does not implement that output format.",
                code="invalid_value",
                event_id=event_id,
            )
            return None
        context = list(self.core.conversation.items)
        if params.get("input") is not None:
            resolved = self._resolve_input(params["input"], event_id)
            if resolved is None:
                return None
            context = resolved
        reply = self._reply(inband, params, context)
        text = reply.text
        audio = "audio" in modalities
        voice = out.get("voice") or session["audio"]["output"].get("voice")
        max_tokens = params.get("max_output_tokens", session.get("max_output_tokens"))
        body: dict[str, Any] = {
            "object": "realtime.response",
            "id": self.core.new_id("resp"),
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": self.core.conversation_id if inband else None,
            "output_modalities": ["audio"] if audio else ["text"],
            "max_output_tokens": max_tokens,
            "audio": {"output": {"format": fmt.to_json(), "voice": voice}},
            "usage": None,
            "metadata": params.get("metadata"),
        }
        data = {
            "id": self.core.new_id("item"),
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
        }
        item = ConvItem(data={**data, "status": "in_progress", "content": []})
        delta_ms = max(10, int(self.core.script.delta_ms))
        spoken = (
            self.core.ctx.spoken_chunks(fmt, text, delta_ms)
            if audio and self.core.script.speak_words
            else None
        )
        if spoken is not None:  # words through eSpeak NG (callbot/testing/tts.py)
            chunks, duration, item.audio_bytes = spoken
            chunk_ms = [float(min(delta_ms, duration - i * delta_ms)) for i in range(len(chunks))]
            item.audio_format = fmt
        elif audio:
            duration = duration_ms_for_text(text)
            seed = zlib.crc32(text.encode()) & 0xFFFF
            chunks = self.core.ctx.synth_chunks(fmt, duration, seed, delta_ms)
            chunk_ms = [float(min(delta_ms, duration - i * delta_ms)) for i in range(len(chunks))]
            item.audio_format, item.synth_seed, item.synth_ms = fmt, seed, duration
        else:
            chunks, chunk_ms = [], []
        pieces = split_words(text, len(chunks) if audio else max(1, math.ceil(len(text.split()) / 3)))
        resp = ActiveResponse(
            body["id"],
            inband,
            audio,
            fmt,
            voice,
            text,
            body,
            context_tokens(instructions, context),
            item,
            chunks,
            pieces,
            chunk_ms,
            call=reply.call,
        )
        rid, iid = resp.id, item.id
        self.core.emit({"type": "response.created", "response": copy.deepcopy(body)})
        self.core.emit({"type": "rate_limits.updated", "rate_limits": _rate_limits(max_tokens)})
        if reply.mcp is not None:  # the MCP call comes first; the speech is about its answer
            resp.mcp_item = self.mcp.call(rid, reply.mcp, inband=inband, output_index=0)
            resp.message_index = 1
        self.core.emit(
            {
                "type": "response.output_item.added",
                "response_id": rid,
                "output_index": resp.message_index,
                "item": copy.deepcopy(item.data),
            }
        )
        if inband:
            prev = self.core.conversation.insert(item)
            self.core.emit(
                {
                    "type": "conversation.item.added",
                    "previous_item_id": prev,
                    "item": copy.deepcopy(item.data),
                }
            )
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        ids = {"response_id": rid, "item_id": iid, "output_index": resp.message_index, "content_index": 0}
        self.core.emit({"type": "response.content_part.added", **ids, "part": part})
        self.active[rid] = resp
        if inband:
            self.active_inband = resp
        resp.task = asyncio.get_running_loop().create_task(self.stream(resp))
        return resp

    async def stream(self, resp: ActiveResponse) -> None:
        """Send the deltas, paced at `realtime_factor` x real time; the sleeps are the only awaits."""
        loop = asyncio.get_running_loop()
        script = self.core.script
        steps = resp.steps
        interval = self.delta_interval_s()
        if script.first_delta_delay_ms > 0:
            await asyncio.sleep(script.first_delta_delay_ms / 1000)
        t0 = loop.time()
        for i in range(steps):
            if i:
                await asyncio.sleep(max(0.0, t0 + i * interval - loop.time()) if interval else 0)
            if resp.finished or self.core.closed:
                return
            self.send_delta(resp, i)
        self.finish(resp, "completed")

    def delta_interval_s(self) -> float:
        """Wall-clock seconds between two deltas (0: as fast as they go)."""
        script = self.core.script
        factor = script.realtime_factor
        return script.delta_ms / 1000 / factor if factor > 0 else 0.0

    def send_delta(self, resp: ActiveResponse, i: int) -> None:
        """Step `i` of a response: its audio chunk and/or its piece of transcript or text."""
        ids = {
            "response_id": resp.id,
            "item_id": resp.item.id,
            "output_index": resp.message_index,
            "content_index": 0,
        }
        if resp.audio:
            self.core.emit({"type": "response.output_audio.delta", **ids, "delta": resp.chunks[i]})
            resp.audio_ms += resp.chunk_ms[i]
            resp.item.audio_ms = resp.audio_ms
        piece = resp.pieces[i]
        if piece:
            kind = "response.output_audio_transcript.delta" if resp.audio else "response.output_text.delta"
            self.core.emit({"type": kind, **ids, "delta": piece})
            resp.sent_text += piece

    def finish(self, resp: ActiveResponse, status: str, reason: str | None = None) -> None:
        """Emit the closing events (also for cancelled responses) and `response.done`."""
        if resp.finished:
            return
        resp.finished = True
        if resp.task is not None and resp.task is not asyncio.current_task():
            resp.task.cancel()
        ids = {
            "response_id": resp.id,
            "item_id": resp.item.id,
            "output_index": resp.message_index,
            "content_index": 0,
        }
        text = resp.sent_text
        if resp.audio:
            self.core.emit({"type": "response.output_audio.done", **ids})
            self.core.emit({"type": "response.output_audio_transcript.done", **ids, "transcript": text})
            part: dict[str, Any] = {"type": "audio", "transcript": text}
            content: dict[str, Any] = {"type": "output_audio", "transcript": text}
            self.voice_locked = self.voice_locked or resp.audio_ms > 0
        else:
            self.core.emit({"type": "response.output_text.done", **ids, "text": text})
            part = {"type": "text", "text": text}
            content = {"type": "output_text", "text": text}
        self.core.emit({"type": "response.content_part.done", **ids, "part": part})
        item = resp.item
        item.data["status"] = "completed" if status == "completed" else "incomplete"
        item.data["content"] = [content]
        item.heard_text = text
        self.core.emit(
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": resp.message_index,
                "item": copy.deepcopy(item.data),
            }
        )
        if resp.inband and self.core.conversation.get(item.id) is item:
            prev = self.core.conversation.previous_of(item.id)
            self.core.emit(
                {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item.data)}
            )
        output = [copy.deepcopy(item.data)]
        if resp.mcp_item is not None:
            output.insert(0, copy.deepcopy(resp.mcp_item))
        if resp.call is not None:
            output.append(self._function_call(resp, status))
        body = resp.body
        body["status"] = status
        body["status_details"] = None if status == "completed" else {"type": status, "reason": reason}
        body["output"] = output
        body["usage"] = usage(resp.context, text_tokens(text), resp.audio_ms)
        self.core.emit({"type": "response.done", "response": copy.deepcopy(body)})
        self.active.pop(resp.id, None)
        if self.active_inband is resp:
            self.active_inband = None
        for pending in resp.pending_transcriptions:
            self.items.transcribe(*pending)

    def _function_call(self, resp: ActiveResponse, status: str) -> dict[str, Any]:
        """The output item after the speech: a function call, with the events a real one has.

        A cut-short response's call item ends `incomplete` (unless the script makes it say
        `completed` anyway); either way only `response.done`'s status says whether it counts."""
        assert resp.call is not None
        raw = resp.call.raw_arguments
        arguments = raw if raw is not None else json.dumps(resp.call.arguments)
        complete = status == "completed" or self.core.script.cancelled_calls_complete
        data: dict[str, Any] = {
            "id": self.core.new_id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": self.core.new_id("call"),
            "name": resp.call.name,
            "arguments": "",
        }
        index = resp.message_index + 1
        ids = {
            "response_id": resp.id,
            "output_index": index,
            "item_id": data["id"],
            "call_id": data["call_id"],
        }
        self.core.emit(
            {
                "type": "response.output_item.added",
                "response_id": resp.id,
                "output_index": index,
                "item": dict(data),
            }
        )
        fc = ConvItem(data=data)
        prev = self.core.conversation.insert(fc) if resp.inband else None
        if resp.inband:
            self.core.emit({"type": "conversation.item.added", "previous_item_id": prev, "item": dict(data)})
        self.core.emit({"type": "response.function_call_arguments.delta", **ids, "delta": arguments})
        self.core.emit(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "name": resp.call.name,
                "arguments": arguments,
            }
        )
        data["arguments"] = arguments
        data["status"] = "completed" if complete else "incomplete"
        fc.heard_text = f"{resp.call.name}({arguments})"
        self.core.emit(
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": index,
                "item": dict(data),
            }
        )
        if resp.inband:
            self.core.emit({"type": "conversation.item.done", "previous_item_id": prev, "item": dict(data)})
        return copy.deepcopy(data)

    def cancel_all(self) -> None:
        """Stop streaming tasks without emitting anything (the connection is gone)."""
        for resp in self.active.values():
            resp.finished = True
            if resp.task is not None:
                resp.task.cancel()
        self.active.clear()
        self.active_inband = None
