"""Responses of the fake Realtime server: creation, paced streaming, cancellation, usage.

A mixin of `FakeSession` (it uses the session's `emit`, `error`, `conversation`, ...). Split
out only to keep each module readable.
"""

from __future__ import annotations

import asyncio
import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callbot.testing.fake_realtime_audio import AudioFormat, audio_format
from callbot.testing.fake_realtime_state import ConvItem, context_tokens, split_words, text_tokens, usage
from callbot.testing.speech import duration_ms_for_text

if TYPE_CHECKING:
    from callbot.testing.fake_realtime_state import Conversation, Script, SessionContext


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
    pending_transcriptions: list[tuple[ConvItem, int]] = field(default_factory=list)


def _rate_limits(max_output_tokens: Any) -> list[dict[str, Any]]:
    reserve = max_output_tokens if isinstance(max_output_tokens, int) else 4096
    return [
        {"name": "requests", "limit": 20000, "remaining": 19999, "reset_seconds": 0.003},
        {"name": "tokens", "limit": 4000000, "remaining": 4000000 - reserve, "reset_seconds": 0.06},
    ]


class ResponseMixin:
    """Response handling for FakeSession."""

    if TYPE_CHECKING:
        ctx: SessionContext
        script: Script
        config: dict[str, Any]
        conversation: Conversation
        conversation_id: str
        closed: bool

        def emit(self, event: dict[str, Any]) -> None: ...
        def error(
            self, message: str, *, code: str | None, param: str | None = None, event_id: str | None = None
        ) -> None: ...
        def new_id(self, prefix: str) -> str: ...
        def item_from_client(self, raw: dict[str, Any]) -> ConvItem: ...
        def transcribe(self, item: ConvItem, n: int) -> None: ...

    def _init_responses(self) -> None:
        self.responses: dict[str, ActiveResponse] = {}
        self.active_inband: ActiveResponse | None = None
        self.voice_locked = False
        self._greeted = False
        self._replies = 0

    # ------------------------------------------------------------------ client events

    def _on_response_create(self, obj: dict[str, Any]) -> None:
        params = obj.get("response") or {}
        inband = params.get("conversation", "auto") != "none"
        if inband and self.active_inband is not None:
            self.error(
                f"Conversation already has an active response in progress: {self.active_inband.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
                event_id=obj.get("event_id"),
            )
            return
        self.start_response(params, event_id=obj.get("event_id"))

    def _on_response_cancel(self, obj: dict[str, Any]) -> None:
        rid = obj.get("response_id")
        resp = self.responses.get(rid) if rid else self.active_inband
        if resp is None:
            self.error(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
                event_id=obj.get("event_id"),
            )
            return
        self.finish_response(resp, "cancelled", "client_cancelled")

    # ------------------------------------------------------------------ lifecycle

    def _reply_text(self, inband: bool, params: dict[str, Any], context: list[ConvItem]) -> str:
        """Pick what the fake model says (see `Script`)."""
        if not inband:
            if self.script.out_of_band_reply is not None:
                return self.script.out_of_band_reply
            said = " | ".join(item.heard_text for item in context if item.heard_text)
            return f"Summary: {said[:300] or 'nothing yet.'}"
        has_user = any(item.data.get("role") == "user" for item in self.conversation.items)
        if not self._greeted and (params.get("instructions") is not None or not has_user):
            self._greeted = True
            return self.script.greeting
        n = self._replies
        self._replies += 1
        if n < len(self.script.replies):
            return self.script.replies[n]
        last_user = next((i for i in reversed(context) if i.data.get("role") == "user"), None)
        return f"You said: {last_user.heard_text if last_user else 'nothing'}"

    def _resolve_input(self, spec: list[dict[str, Any]], event_id: str | None) -> list[ConvItem] | None:
        items: list[ConvItem] = []
        for entry in spec:
            if entry.get("type") == "item_reference":
                found = self.conversation.get(entry["id"])
                if found is None:
                    self.error(
                        f"Item reference '{entry['id']}' does not exist in this session.",
                        code="invalid_value",
                        param="response.input",
                        event_id=event_id,
                    )
                    return None
                items.append(found)
            else:
                items.append(self.item_from_client(entry))
        return items

    def start_response(self, params: dict[str, Any], *, event_id: str | None) -> ActiveResponse | None:
        """Emit the opening events of a response and start streaming it."""
        session = self.config
        inband = params.get("conversation", "auto") != "none"
        modalities = params.get("output_modalities") or session["output_modalities"]
        instructions = (
            params["instructions"] if params.get("instructions") is not None else session["instructions"]
        )
        out = (params.get("audio") or {}).get("output") or {}
        fmt = audio_format(out.get("format") or session["audio"]["output"]["format"])
        if fmt is None:
            self.error(
                "The fake server does not implement that output format.",
                code="invalid_value",
                event_id=event_id,
            )
            return None
        context = list(self.conversation.items)
        if params.get("input") is not None:
            resolved = self._resolve_input(params["input"], event_id)
            if resolved is None:
                return None
            context = resolved
        text = self._reply_text(inband, params, context)
        audio = "audio" in modalities
        voice = out.get("voice") or session["audio"]["output"].get("voice")
        max_tokens = params.get("max_output_tokens", session.get("max_output_tokens"))
        body: dict[str, Any] = {
            "object": "realtime.response",
            "id": self.new_id("resp"),
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": self.conversation_id if inband else None,
            "output_modalities": ["audio"] if audio else ["text"],
            "max_output_tokens": max_tokens,
            "audio": {"output": {"format": fmt.to_json(), "voice": voice}},
            "usage": None,
            "metadata": params.get("metadata"),
        }
        data = {"id": self.new_id("item"), "object": "realtime.item", "type": "message", "role": "assistant"}
        item = ConvItem(data={**data, "status": "in_progress", "content": []})
        delta_ms = max(10, int(self.script.delta_ms))
        if audio:
            duration = duration_ms_for_text(text)
            seed = zlib.crc32(text.encode()) & 0xFFFF
            chunks = self.ctx.synth_chunks(fmt, duration, seed, delta_ms)
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
        )
        rid, iid = resp.id, item.id
        self.emit({"type": "response.created", "response": copy.deepcopy(body)})
        self.emit({"type": "rate_limits.updated", "rate_limits": _rate_limits(max_tokens)})
        self.emit(
            {
                "type": "response.output_item.added",
                "response_id": rid,
                "output_index": 0,
                "item": copy.deepcopy(item.data),
            }
        )
        if inband:
            prev = self.conversation.insert(item)
            self.emit(
                {
                    "type": "conversation.item.added",
                    "previous_item_id": prev,
                    "item": copy.deepcopy(item.data),
                }
            )
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        ids = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        self.emit({"type": "response.content_part.added", **ids, "part": part})
        self.responses[rid] = resp
        if inband:
            self.active_inband = resp
        resp.task = asyncio.get_running_loop().create_task(self._stream(resp))
        return resp

    async def _stream(self, resp: ActiveResponse) -> None:
        """Send the deltas, paced at `realtime_factor` x real time; the sleeps are the only awaits."""
        loop = asyncio.get_running_loop()
        factor = self.script.realtime_factor
        steps = len(resp.chunks) if resp.audio else len(resp.pieces)
        interval = self.script.delta_ms / 1000 / factor if factor > 0 else 0.0
        if self.script.first_delta_delay_ms > 0:
            await asyncio.sleep(self.script.first_delta_delay_ms / 1000)
        t0 = loop.time()
        ids = {"response_id": resp.id, "item_id": resp.item.id, "output_index": 0, "content_index": 0}
        for i in range(steps):
            if i:
                await asyncio.sleep(max(0.0, t0 + i * interval - loop.time()) if interval else 0)
            if resp.finished or self.closed:
                return
            if resp.audio:
                self.emit({"type": "response.output_audio.delta", **ids, "delta": resp.chunks[i]})
                resp.audio_ms += resp.chunk_ms[i]
                resp.item.audio_ms = resp.audio_ms
            piece = resp.pieces[i]
            if piece:
                kind = (
                    "response.output_audio_transcript.delta" if resp.audio else "response.output_text.delta"
                )
                self.emit({"type": kind, **ids, "delta": piece})
                resp.sent_text += piece
        self.finish_response(resp, "completed")

    def finish_response(self, resp: ActiveResponse, status: str, reason: str | None = None) -> None:
        """Emit the closing events (also for cancelled responses) and `response.done`."""
        if resp.finished:
            return
        resp.finished = True
        if resp.task is not None and resp.task is not asyncio.current_task():
            resp.task.cancel()
        ids = {"response_id": resp.id, "item_id": resp.item.id, "output_index": 0, "content_index": 0}
        text = resp.sent_text
        if resp.audio:
            self.emit({"type": "response.output_audio.done", **ids})
            self.emit({"type": "response.output_audio_transcript.done", **ids, "transcript": text})
            part: dict[str, Any] = {"type": "audio", "transcript": text}
            content: dict[str, Any] = {"type": "output_audio", "transcript": text}
            self.voice_locked = self.voice_locked or resp.audio_ms > 0
        else:
            self.emit({"type": "response.output_text.done", **ids, "text": text})
            part = {"type": "text", "text": text}
            content = {"type": "output_text", "text": text}
        self.emit({"type": "response.content_part.done", **ids, "part": part})
        item = resp.item
        item.data["status"] = "completed" if status == "completed" else "incomplete"
        item.data["content"] = [content]
        item.heard_text = text
        self.emit(
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": 0,
                "item": copy.deepcopy(item.data),
            }
        )
        if resp.inband and self.conversation.get(item.id) is item:
            prev = self.conversation.previous_of(item.id)
            self.emit(
                {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item.data)}
            )
        body = resp.body
        body["status"] = status
        body["status_details"] = None if status == "completed" else {"type": status, "reason": reason}
        body["output"] = [copy.deepcopy(item.data)]
        body["usage"] = usage(resp.context, text_tokens(text), resp.audio_ms)
        self.emit({"type": "response.done", "response": copy.deepcopy(body)})
        self.responses.pop(resp.id, None)
        if self.active_inband is resp:
            self.active_inband = None
        for pending in resp.pending_transcriptions:
            self.transcribe(*pending)

    def cancel_all_responses(self) -> None:
        """Stop streaming tasks without emitting anything (the connection is gone)."""
        for resp in self.responses.values():
            resp.finished = True
            if resp.task is not None:
                resp.task.cancel()
        self.responses.clear()
        self.active_inband = None
