"""The agent's tools as configured: the tools file's entries, checked, and the Realtime tool list.

`CALLBOT_TOOLS_FILE` (YAML or JSON; read by `callbot/compose.py`) holds two lists:

- `tools`: HTTP tools. callbot POSTs (or sends with `method`) the model's arguments as JSON to
  `url` and hands the JSON answer back as the function call's output.
- `mcp_servers`: remote MCP servers, passed to the session as Realtime `mcp` tools; OpenAI calls
  them itself and callbot only records what happened (docs/call-control.md §6).

Header values (and an MCP server's `authorization`) may name environment variables as
`${NAME}`, so secrets stay out of the file; they are filled in here, at start-up, and a missing
one is an error naming the entry. `parse_tools` never returns half a configuration: the first
bad entry raises `ToolsFileError` saying which entry and which field.

The built-ins (`end_call`, `transfer_to_human`) are declared here too; what they do is in
`core/tools.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from callbot.errors import ToolsFileError

END_CALL = "end_call"
TRANSFER = "transfer_to_human"
BUILTIN_NAMES = frozenset({END_CALL, TRANSFER})

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class HttpTool:
    """One HTTP tool. `headers` hold resolved values: they go to the tool, never to a ticket."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class ToolsConfig:
    """What the agent may use on a call. `mcp` are Realtime `mcp` tool objects, ready to send."""

    http: tuple[HttpTool, ...] = ()
    mcp: tuple[Mapping[str, Any], ...] = ()
    end_call: bool = True
    transfer_to: str | None = None
    by_name: Mapping[str, HttpTool] = field(default_factory=dict)

    def http_tool(self, name: str) -> HttpTool | None:
        return self.by_name.get(name)

    def offered(self, name: str) -> bool:
        """Whether a function call of this name is one the session was given."""
        if name == END_CALL:
            return self.end_call
        if name == TRANSFER:
            return self.transfer_to is not None
        return name in self.by_name


def tools_config(
    data: Any, env: Mapping[str, str], *, end_call: bool = True, transfer_to: str | None = None
) -> ToolsConfig:
    """Check the tools file's content (`None` for no file) and resolve `${VAR}` from `env`."""
    if transfer_to is not None:
        check_transfer_target(transfer_to)
    if data is None:
        return ToolsConfig(end_call=end_call, transfer_to=transfer_to)
    if not isinstance(data, Mapping):
        raise ToolsFileError("the tools file must hold an object with `tools` and/or `mcp_servers`")
    unknown = set(data) - {"tools", "mcp_servers"}
    if unknown:
        raise ToolsFileError(f"the tools file has unknown top-level keys: {', '.join(sorted(unknown))}")
    http = tuple(_http_tool(i, entry, env) for i, entry in enumerate(_list(data, "tools")))
    mcp = tuple(_mcp_server(i, entry, env) for i, entry in enumerate(_list(data, "mcp_servers")))
    names: set[str] = set()
    for tool in http:
        if tool.name in BUILTIN_NAMES:
            raise ToolsFileError(f"tools entry {tool.name!r}: the name is taken by a built-in tool")
        if tool.name in names:
            raise ToolsFileError(f"tools entry {tool.name!r}: the name is used twice")
        names.add(tool.name)
    labels = [str(server["server_label"]) for server in mcp]
    if len(set(labels)) != len(labels):
        raise ToolsFileError("mcp_servers: a server_label is used twice")
    return ToolsConfig(
        http=http,
        mcp=mcp,
        end_call=end_call,
        transfer_to=transfer_to,
        by_name={tool.name: tool for tool in http},
    )


def check_transfer_target(target: str) -> None:
    """A phone number in E.164 form (`+15551234567`) or a `sip:` URI (docs/call-control.md §3)."""
    if target.startswith("sip:") and len(target) > 4 and " " not in target:
        return
    if re.fullmatch(r"\+[1-9][0-9]{6,14}", target):
        return
    raise ToolsFileError(f"CALLBOT_TRANSFER_TO must be a +E.164 number or a sip: URI, not {target!r}")


def realtime_tools(cfg: ToolsConfig) -> list[dict[str, Any]]:
    """The `session.tools` list: the HTTP tools and built-ins as function tools, then MCP servers."""
    tools: list[dict[str, Any]] = [
        _function(tool.name, tool.description, dict(tool.parameters)) for tool in cfg.http
    ]
    if cfg.end_call:
        tools.append(
            _function(
                END_CALL,
                "End the phone call. Only when the caller is done or asks to hang up: first say a short "
                "goodbye in the same response, then call this. Never call it while the caller still "
                "needs something.",
                {
                    "type": "object",
                    "properties": {"reason": {"type": "string", "description": "Why the call ends."}},
                    "required": ["reason"],
                },
            )
        )
    if cfg.transfer_to is not None:
        tools.append(
            _function(
                TRANSFER,
                "Hand the caller to a human colleague, when they ask for a person or you cannot help. "
                "First tell the caller you are transferring them, in the same response, then call this.",
                {
                    "type": "object",
                    "properties": {
                        "reason": {"type": "string", "description": "What the caller needs from the human."}
                    },
                    "required": ["reason"],
                },
            )
        )
    tools.extend(dict(server) for server in cfg.mcp)
    return tools


def _function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "name": name, "description": description, "parameters": parameters}


# ----- one entry at a time -----
def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise ToolsFileError(f"`{key}` in the tools file must be a list")
    return value


def _entry_name(kind: str, index: int, entry: Any, key: str) -> str:
    if isinstance(entry, Mapping) and isinstance(entry.get(key), str):
        return f"{kind} entry {entry[key]!r}"
    return f"{kind} entry #{index + 1}"


def _http_tool(index: int, entry: Any, env: Mapping[str, str]) -> HttpTool:
    where = _entry_name("tools", index, entry, "name")
    if not isinstance(entry, Mapping):
        raise ToolsFileError(f"{where}: must be an object")
    allowed = {"name", "description", "parameters", "url", "method", "headers", "timeout_s"}
    unknown = set(entry) - allowed
    if unknown:
        raise ToolsFileError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ToolsFileError(f"{where}: `name` must be 1-64 letters, digits, _ or -")
    description = entry.get("description", "")
    if not isinstance(description, str) or not description.strip():
        raise ToolsFileError(f"{where}: `description` must be a non-empty string (the model reads it)")
    parameters = entry.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        raise ToolsFileError(f"{where}: `parameters` must be a JSON Schema with type object")
    if not isinstance(parameters.get("properties", {}), Mapping):
        raise ToolsFileError(f"{where}: `parameters.properties` must be an object")
    url = entry.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ToolsFileError(f"{where}: `url` must be an http:// or https:// URL")
    method = str(entry.get("method", "POST")).upper()
    if method not in _METHODS:
        raise ToolsFileError(f"{where}: `method` must be one of {', '.join(_METHODS)}")
    timeout = entry.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise ToolsFileError(f"{where}: `timeout_s` must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]")
    headers = _headers(where, entry.get("headers", {}), env)
    return HttpTool(
        name=name,
        description=description.strip(),
        parameters=dict(parameters),
        url=url,
        method=method,
        headers=tuple(headers.items()),
        timeout_s=float(timeout),
    )


def _headers(where: str, value: Any, env: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ToolsFileError(f"{where}: `headers` must be an object of strings")
    out: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not isinstance(raw, str):
            raise ToolsFileError(f"{where}: header {key!r} must be a string")
        out[key] = _expand(f"{where}: header {key!r}", raw, env)
    return out


def _expand(where: str, text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ToolsFileError(f"{where} names the environment variable {name}, which is not set")
        return env[name]

    return _ENV.sub(one, text)


_MCP_FIELDS = {
    "server_label",
    "server_url",
    "connector_id",
    "allowed_tools",
    "require_approval",
    "headers",
    "authorization",
    "server_description",
}


def _mcp_server(index: int, entry: Any, env: Mapping[str, str]) -> dict[str, Any]:
    where = _entry_name("mcp_servers", index, entry, "server_label")
    if not isinstance(entry, Mapping):
        raise ToolsFileError(f"{where}: must be an object")
    unknown = set(entry) - _MCP_FIELDS
    if unknown:
        raise ToolsFileError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
    label = entry.get("server_label")
    if not isinstance(label, str) or not _NAME.match(label):
        raise ToolsFileError(f"{where}: `server_label` must be 1-64 letters, digits, _ or -")
    if not entry.get("server_url") and not entry.get("connector_id"):
        raise ToolsFileError(f"{where}: give `server_url` (or `connector_id`)")
    url = entry.get("server_url")
    if url is not None and (not isinstance(url, str) or not url.startswith("https://")):
        raise ToolsFileError(f"{where}: `server_url` must be an https:// URL OpenAI can reach")
    if entry.get("require_approval", "never") != "never":
        # Approval requests need someone to approve them mid-call; nobody is there on a phone line.
        raise ToolsFileError(f"{where}: only `require_approval: never` works on a phone call")
    allowed_tools = entry.get("allowed_tools")
    if allowed_tools is not None and not (
        isinstance(allowed_tools, list) and all(isinstance(t, str) for t in allowed_tools)
    ):
        raise ToolsFileError(f"{where}: `allowed_tools` must be a list of tool names")
    server: dict[str, Any] = {"type": "mcp", "server_label": label, "require_approval": "never"}
    for key in ("server_url", "connector_id", "server_description"):
        if entry.get(key) is not None:
            if not isinstance(entry[key], str):
                raise ToolsFileError(f"{where}: `{key}` must be a string")
            server[key] = entry[key]
    if allowed_tools is not None:
        server["allowed_tools"] = list(allowed_tools)
    if entry.get("headers"):
        server["headers"] = _headers(where, entry["headers"], env)
    if entry.get("authorization") is not None:
        if not isinstance(entry["authorization"], str):
            raise ToolsFileError(f"{where}: `authorization` must be a string")
        server["authorization"] = _expand(f"{where}: authorization", entry["authorization"], env)
    return server
