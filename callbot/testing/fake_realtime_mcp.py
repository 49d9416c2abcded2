"""Remote MCP tools in the fake Realtime server: listing a declared server's tools, and the
MCP calls the script makes inside a response.

With a real session OpenAI connects to the MCP server itself; the fake connects to nothing and
takes the server's side from the script: `Script.mcp_tools` is what each server lists,
`Script.mcp_calls[n]` the call reply n makes and what it gets back. The events and items have
the SDK's shapes and are checked by `protocol_check` like everything else the fake sends; an
`mcp_call` item has no `status` or `object`, which its model (`RealtimeMcpToolCall`) does not
declare, and the `response.mcp_call.*` events carry no `response_id`.

Listing (after the `session.updated` that declares a server): `mcp_list_tools.in_progress`, the
`mcp_list_tools` item (`conversation.item.added` / `.done`), then `mcp_list_tools.completed`;
a failed listing puts an item with no tools and ends with `mcp_list_tools.failed`. A server is
listed again by a later `session.update` only if it has no successful listing whose item is
still in the conversation: the fake 'model' knows a server's tools from that item alone, so a
deleted listing is a server whose tools it no longer has. The order of these events and the
relisting rule are the fake's reading of the SDK's models; OpenAI does not document them.

One part of `FakeSession`'s `Responder`, sharing its `SessionCore`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from callbot.testing.fake_realtime_items import ItemEvents
from callbot.testing.fake_realtime_state import ConvItem, ScriptedMcpCall, SessionCore


class McpServers:
    """The session's remote MCP servers: their tool listings and the calls made to them."""

    def __init__(self, core: SessionCore, items: ItemEvents) -> None:
        self.core = core
        self.items = items
        self.listings: dict[str, str] = {}
        """Server label -> the id of its latest successful `mcp_list_tools` item."""

    # ----- listing -----
    def declared(self) -> dict[str, dict[str, Any]]:
        """The `mcp` tools of the effective session config, by server label."""
        tools = self.core.config.get("tools") or []
        return {str(t["server_label"]): t for t in tools if t.get("type") == "mcp"}

    def session_updated(self) -> None:
        """List every declared server that has no listing in the conversation yet."""
        for label, server in self.declared().items():
            listed = self.listings.get(label)
            if listed is not None and self.core.conversation.get(listed) is not None:
                continue
            self._list(label, server)

    def _list(self, label: str, server: dict[str, Any]) -> None:
        core = self.core
        item_id = core.new_id("item")
        core.emit({"type": "mcp_list_tools.in_progress", "item_id": item_id})
        fails = label in core.script.mcp_list_fails
        offered = [] if fails else core.script.mcp_tools.get(label, [])
        tools = [copy.deepcopy(t) for t in offered if _allowed(server, t)]
        data = {"id": item_id, "type": "mcp_list_tools", "server_label": label, "tools": tools}
        self.items.add(ConvItem(data=data), None)
        if fails:
            core.emit({"type": "mcp_list_tools.failed", "item_id": item_id})
            return
        self.listings[label] = item_id
        core.emit({"type": "mcp_list_tools.completed", "item_id": item_id})

    # ----- calls -----
    def can_call(self, call: ScriptedMcpCall) -> bool:
        """Whether the 'model' has this tool: its server is declared, and the server's listing,
        still in the conversation, holds the tool (and the declaration still allows it)."""
        server = self.declared().get(call.server_label)
        listed = self.listings.get(call.server_label)
        item = self.core.conversation.get(listed) if listed is not None else None
        if server is None or item is None:
            return False
        tool = next((t for t in item.data.get("tools") or [] if t.get("name") == call.name), None)
        return tool is not None and _allowed(server, tool)

    def call(
        self, response_id: str, call: ScriptedMcpCall, *, inband: bool, output_index: int
    ) -> dict[str, Any]:
        """Emit one MCP call as an output item of the response; returns the finished item."""
        core = self.core
        arguments = json.dumps(call.arguments)
        data: dict[str, Any] = {
            "id": core.new_id("item"),
            "type": "mcp_call",
            "server_label": call.server_label,
            "name": call.name,
            "arguments": "",
        }
        at = {"item_id": data["id"], "output_index": output_index}
        core.emit(
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": output_index,
                "item": copy.deepcopy(data),
            }
        )
        item = ConvItem(data=data)
        prev = core.conversation.insert(item) if inband else None
        if inband:
            core.emit(
                {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(data)}
            )
        core.emit(
            {
                "type": "response.mcp_call_arguments.delta",
                "response_id": response_id,
                **at,
                "delta": arguments,
            }
        )
        core.emit(
            {
                "type": "response.mcp_call_arguments.done",
                "response_id": response_id,
                **at,
                "arguments": arguments,
            }
        )
        data["arguments"] = arguments
        core.emit({"type": "response.mcp_call.in_progress", **at})
        if call.error is not None:
            data["error"] = copy.deepcopy(call.error)
            core.emit({"type": "response.mcp_call.failed", **at})
            answer = str(call.error.get("message") or "")
        else:
            data["output"] = call.output or ""
            core.emit({"type": "response.mcp_call.completed", **at})
            answer = data["output"]
        item.heard_text = f"{call.server_label}.{call.name}({arguments}) -> {answer}"
        core.emit(
            {
                "type": "response.output_item.done",
                "response_id": response_id,
                "output_index": output_index,
                "item": copy.deepcopy(data),
            }
        )
        if inband:
            core.emit(
                {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(data)}
            )
        return copy.deepcopy(data)


def _allowed(server: dict[str, Any], tool: dict[str, Any]) -> bool:
    """`allowed_tools` as the SDK's `Mcp` model has it: a list of names, or a filter object
    (`tool_names`, and `read_only`, which matches tools annotated `readOnlyHint`)."""
    allowed = server.get("allowed_tools")
    if allowed is None:
        return True
    if isinstance(allowed, list):
        return tool.get("name") in allowed
    names = allowed.get("tool_names")
    if names is not None and tool.get("name") not in names:
        return False
    read_only = allowed.get("read_only")
    return read_only is None or bool((tool.get("annotations") or {}).get("readOnlyHint")) == read_only
