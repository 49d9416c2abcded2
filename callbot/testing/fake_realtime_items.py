"""Conversation item events of the fake Realtime server: create, delete, truncate, retrieve.

A mixin of `FakeSession`, split out only to keep modules readable. Error codes that the
protocol notes document (`Audio content of Xms is already shorter than Yms` with a null code)
are reproduced; the other codes are the fake's own consistent choice.
"""

from __future__ import annotations

import base64
import copy
from typing import TYPE_CHECKING, Any

from callbot.testing.fake_realtime_state import ConvItem

if TYPE_CHECKING:
    from callbot.testing.fake_realtime_audio import AudioFormat
    from callbot.testing.fake_realtime_state import Conversation


class ItemsMixin:
    """Conversation item handling for FakeSession."""

    if TYPE_CHECKING:
        conversation: Conversation
        _in_fmt: AudioFormat
        _utterances: int
        _replies: int
        _greeted: bool

        def emit(self, event: dict[str, Any]) -> None: ...
        def error(
            self, message: str, *, code: str | None, param: str | None = None, event_id: str | None = None
        ) -> None: ...
        def new_id(self, prefix: str) -> str: ...

    def add_item(self, item: ConvItem, previous_item_id: str | None) -> None:
        """Insert a finished item and announce it with `conversation.item.added` + `.done`."""
        prev = self.conversation.insert(item, previous_item_id)
        self.emit(
            {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item.data)}
        )
        self.emit(
            {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item.data)}
        )

    def item_from_client(self, raw: dict[str, Any]) -> ConvItem:
        """Build a ConvItem from a client-supplied GA item (id assigned if missing)."""
        data = copy.deepcopy(raw)
        data["id"] = data.get("id") or self.new_id("item")
        data["object"] = "realtime.item"
        data["status"] = data.get("status") or "completed"
        item = ConvItem(data=data)
        texts: list[str] = []
        for part in data.get("content") or []:
            audio = part.pop("audio", None)
            if part.get("type") == "input_audio" and audio:
                item.audio_bytes = base64.b64decode(audio)
                item.audio_format = self._in_fmt
                item.audio_ms = self._in_fmt.ms(len(item.audio_bytes))
            texts.append(part.get("text") or part.get("transcript") or "")
        texts.append(str(data.get("output") or ""))
        item.heard_text = " ".join(t for t in texts if t)
        return item

    def _on_item_create(self, obj: dict[str, Any]) -> None:
        raw, prev, eid = obj["item"], obj.get("previous_item_id"), obj.get("event_id")
        if prev not in (None, "root") and self.conversation.get(prev) is None:
            self.error(
                f"Error adding item: the previous item with id '{prev}' does not exist.",
                code="item_create_invalid_previous_item_id",
                param="previous_item_id",
                event_id=eid,
            )
            return
        if raw.get("role") == "assistant" and any(
            p.get("type") == "output_audio" for p in raw.get("content") or []
        ):
            self.error(
                "Assistant audio cannot be added with conversation.item.create; use output_text content.",
                code="invalid_value",
                param="item.content",
                event_id=eid,
            )
            return
        if raw.get("id") and self.conversation.get(raw["id"]) is not None:
            self.error(
                f"Item with id '{raw['id']}' already exists.",
                code="item_create_duplicate_id",
                param="item.id",
                event_id=eid,
            )
            return
        self.add_item(self.item_from_client(raw), prev)
        self._note_restored_turn(raw)

    def _note_restored_turn(self, raw: dict[str, Any]) -> None:
        """Text history a client re-creates (after a reconnect) advances the script like speech did.

        The script describes the whole call, so a fresh session that is handed the first turns
        as text goes on with the next scripted line instead of starting over.
        """
        if raw.get("type") != "message":
            return
        if raw.get("role") == "user":
            self._utterances += 1
        elif raw.get("role") == "assistant":
            if self._greeted:
                self._replies += 1
            self._greeted = True

    def _on_item_delete(self, obj: dict[str, Any]) -> None:
        item_id = obj["item_id"]
        if not self.conversation.delete(item_id):
            self.error(
                f"Error deleting item: the item with id '{item_id}' does not exist.",
                code="item_delete_invalid_item_id",
                param="item_id",
                event_id=obj.get("event_id"),
            )
            return
        self.emit({"type": "conversation.item.deleted", "item_id": item_id})

    def _on_item_truncate(self, obj: dict[str, Any]) -> None:
        item_id, index, end_ms, eid = (
            obj["item_id"],
            obj["content_index"],
            obj["audio_end_ms"],
            obj.get("event_id"),
        )
        item = self.conversation.get(item_id)
        if item is None:
            self.error(
                f"Error truncating item: the item with id '{item_id}' does not exist.",
                code="item_truncate_invalid_item_id",
                param="item_id",
                event_id=eid,
            )
            return
        if item.data.get("status") == "in_progress":
            self.error(
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
            self.error(
                "Only assistant audio content can be truncated.",
                code="invalid_value",
                param="content_index",
                event_id=eid,
            )
            return
        if end_ms > item.audio_ms + 1e-6:
            self.error(
                f"Audio content of {int(item.audio_ms)}ms is already shorter than {end_ms}ms",
                code=None,
                event_id=eid,
            )
            return
        item.audio_ms = float(end_ms)
        content[index]["transcript"] = None  # the server forgets text the caller never heard
        item.heard_text = ""
        self.emit(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": index,
                "audio_end_ms": end_ms,
            }
        )

    def _on_item_retrieve(self, obj: dict[str, Any]) -> None:
        item = self.conversation.get(obj["item_id"])
        if item is None:
            self.error(
                f"Error retrieving item: the item with id '{obj['item_id']}' does not exist.",
                code="item_retrieve_invalid_item_id",
                param="item_id",
                event_id=obj.get("event_id"),
            )
            return
        self.emit({"type": "conversation.item.retrieved", "item": item.with_audio()})
