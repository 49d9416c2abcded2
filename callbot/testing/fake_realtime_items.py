"""Conversation item events of the fake Realtime server: create, delete, truncate, retrieve,
and the input audio transcription of user items.

One part of `FakeSession`, sharing its `SessionCore`. Error codes that the protocol notes
document (`Audio content of Xms is already shorter than Yms` with a null code) are reproduced;
the other codes are the fake's own consistent choice.
"""

from __future__ import annotations

import base64
import copy
import math
from typing import Any

from callbot.testing.fake_realtime_state import ConvItem, SessionCore, split_words, text_tokens


class ItemEvents:
    """Conversation item handling for one session."""

    def __init__(self, core: SessionCore) -> None:
        self.core = core

    def add(self, item: ConvItem, previous_item_id: str | None) -> None:
        """Insert a finished item and announce it with `conversation.item.added` + `.done`."""
        prev = self.core.conversation.insert(item, previous_item_id)
        self.core.emit(
            {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item.data)}
        )
        self.core.emit(
            {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item.data)}
        )

    def from_client(self, raw: dict[str, Any]) -> ConvItem:
        """Build a ConvItem from a client-supplied GA item (id assigned if missing)."""
        data = copy.deepcopy(raw)
        data["id"] = data.get("id") or self.core.new_id("item")
        data["object"] = "realtime.item"
        data["status"] = data.get("status") or "completed"
        item = ConvItem(data=data)
        fmt = self.core.input_format
        texts: list[str] = []
        for part in data.get("content") or []:
            audio = part.pop("audio", None)
            if part.get("type") == "input_audio" and audio:
                item.audio_bytes = base64.b64decode(audio)
                item.audio_format = fmt
                item.audio_ms = fmt.ms(len(item.audio_bytes))
            texts.append(part.get("text") or part.get("transcript") or "")
        texts.append(str(data.get("output") or ""))
        item.heard_text = " ".join(t for t in texts if t)
        return item

    def on_create(self, obj: dict[str, Any]) -> None:
        raw, prev, eid = obj["item"], obj.get("previous_item_id"), obj.get("event_id")
        if prev not in (None, "root") and self.core.conversation.get(prev) is None:
            self.core.error(
                f"Error adding item: the previous item with id '{prev}' does not exist.",
                code="item_create_invalid_previous_item_id",
                param="previous_item_id",
                event_id=eid,
            )
            return
        if raw.get("type") == "function_call_output" and not any(
            i.data.get("type") == "function_call" and i.data.get("call_id") == raw.get("call_id")
            for i in self.core.conversation.items
        ):
            self.core.error(
                f"No function call with call_id '{raw.get('call_id')}' in this conversation.",
                code="invalid_value",
                param="item.call_id",
                event_id=eid,
            )
            return
        if raw.get("role") == "assistant" and any(
            p.get("type") == "output_audio" for p in raw.get("content") or []
        ):
            self.core.error(
                "Assistant audio cannot be added with conversation.item.create; use output_text content.",
                code="invalid_value",
                param="item.content",
                event_id=eid,
            )
            return
        if raw.get("id") and self.core.conversation.get(raw["id"]) is not None:
            self.core.error(
                f"Item with id '{raw['id']}' already exists.",
                code="item_create_duplicate_id",
                param="item.id",
                event_id=eid,
            )
            return
        self.add(self.from_client(raw), prev)
        self._note_restored_turn(raw)

    def _note_restored_turn(self, raw: dict[str, Any]) -> None:
        """Text history a client re-creates (after a reconnect) advances the script like speech did.

        The script describes the whole call, so a fresh session that is handed the first turns
        as text goes on with the next scripted line instead of starting over.
        """
        if raw.get("type") != "message":
            return
        progress = self.core.progress
        if raw.get("role") == "user":
            progress.utterances += 1
        elif raw.get("role") == "assistant":
            if progress.greeted:
                progress.replies += 1
            progress.greeted = True

    def on_delete(self, obj: dict[str, Any]) -> None:
        item_id = obj["item_id"]
        if not self.core.conversation.delete(item_id):
            self.core.error(
                f"Error deleting item: the item with id '{item_id}' does not exist.",
                code="item_delete_invalid_item_id",
                param="item_id",
                event_id=obj.get("event_id"),
            )
            return
        self.core.emit({"type": "conversation.item.deleted", "item_id": item_id})

    def on_truncate(self, obj: dict[str, Any]) -> None:
        item_id, index, end_ms, eid = (
            obj["item_id"],
            obj["content_index"],
            obj["audio_end_ms"],
            obj.get("event_id"),
        )
        item = self.core.conversation.get(item_id)
        if item is None:
            self.core.error(
                f"Error truncating item: the item with id '{item_id}' does not exist.",
                code="item_truncate_invalid_item_id",
                param="item_id",
                event_id=eid,
            )
            return
        if item.data.get("status") == "in_progress":
            self.core.error(
                f"Cannot truncate item '{item_id}' while its response is in progress.",
                code="invalid_value",
                event_id=eid,
            )
            return
        content = item.data.get("content") or []
        if (
            item.data.get("role") != "assistant"
            or index >= len(content)
            or content[index].get("type") != "output_audio"
        ):
            self.core.error(
                "Only assistant audio content can be truncated.",
                code="invalid_value",
                param="content_index",
                event_id=eid,
            )
            return
        if end_ms > item.audio_ms + 1e-6:
            self.core.error(
                f"Audio content of {int(item.audio_ms)}ms is already shorter than {end_ms}ms",
                code=None,
                event_id=eid,
            )
            return
        item.audio_ms = float(end_ms)
        content[index]["transcript"] = None  # the server forgets text the caller never heard
        item.heard_text = ""
        self.core.emit(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": index,
                "audio_end_ms": end_ms,
            }
        )

    def on_retrieve(self, obj: dict[str, Any]) -> None:
        item = self.core.conversation.get(obj["item_id"])
        if item is None:
            self.core.error(
                f"Error retrieving item: the item with id '{obj['item_id']}' does not exist.",
                code="item_retrieve_invalid_item_id",
                param="item_id",
                event_id=obj.get("event_id"),
            )
            return
        self.core.emit({"type": "conversation.item.retrieved", "item": item.with_audio()})

    def transcribe(self, item: ConvItem, n: int) -> None:
        """Emit the scripted input transcription of the n-th utterance (or its failure)."""
        core = self.core
        if n in core.script.fail_transcription_for:
            core.emit(
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": item.id,
                    "content_index": 0,
                    "error": {
                        "type": "transcription_error",
                        "code": "transcription_failed",
                        "message": f"Fake transcription failure for utterance {n}.",
                        "param": None,
                    },
                }
            )
            return
        text = item.heard_text
        for piece in split_words(text, max(1, math.ceil(len(text.split()) / 3))):
            if piece:
                core.emit(
                    {
                        "type": "conversation.item.input_audio_transcription.delta",
                        "item_id": item.id,
                        "content_index": 0,
                        "delta": piece,
                    }
                )
        audio_tokens = item.tokens()[1]
        out = text_tokens(text)
        core.emit(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item.id,
                "content_index": 0,
                "transcript": text,
                "usage": {
                    "type": "tokens",
                    "input_tokens": audio_tokens,
                    "output_tokens": out,
                    "total_tokens": audio_tokens + out,
                    "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
                },
            }
        )
        if core.conversation.get(item.id) is item:
            item.data["content"][0]["transcript"] = text
