"""Strict validation of OpenAI Realtime GA events against the installed SDK's pydantic models.

Why this exists: the SDK never validates what it sends (TypedDicts are hints only) and parses
what it receives with `construct_type_unchecked`, which never fails — an unknown or beta-shaped
event silently turns into the wrong class. The fake server and the tests therefore check every
event on the wire here, so a beta field name or a misspelt event type fails loudly offline
instead of being discovered on a live call.

Two deliberate differences from plain `TypeAdapter(RealtimeClientEvent)`:

* The SDK unions are annotated with the SDK's own ``PropertyInfo(discriminator="type")``, which
  pydantic ignores. Validating the whole union in "smart" mode produces a wall of errors, one
  per member. We pick the member class by the ``type`` string ourselves.
* The SDK models accept unknown fields (``extra="allow"``). The real server does not — it answers
  ``unknown_parameter``. After validation we walk the model tree and reject any non-empty
  ``model_extra`` (this is what catches ``input_audio_format`` and friends).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union, get_args, get_origin

import pydantic
from openai.types.realtime.conversation_item import ConversationItem
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from openai.types.realtime.response_item_reference import ResponseItemReference

__all__ = [
    "ProtocolViolation",
    "client_event_types",
    "server_event_types",
    "validate_client_event",
    "validate_server_event",
]


class ProtocolViolation(ValueError):
    """An event that the real Realtime server (or a strict client) would reject.

    `code` and `param` mirror what the real server puts in an `error` event, so the fake can
    answer with a realistic `invalid_request_error`.
    """

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def _union_members(alias: Any) -> tuple[type[pydantic.BaseModel], ...]:
    """Unwrap ``Annotated[Union[...], PropertyInfo]`` into its member classes."""
    target = alias
    if get_origin(target) is not Union:
        target = get_args(target)[0]
    return tuple(m for m in get_args(target) if isinstance(m, type) and issubclass(m, pydantic.BaseModel))


def _by_type(alias: Any) -> dict[str, type[pydantic.BaseModel]]:
    table: dict[str, type[pydantic.BaseModel]] = {}
    for member in _union_members(alias):
        for literal in get_args(member.model_fields["type"].annotation):
            table[str(literal)] = member
    return table


@functools.cache
def _client_table() -> dict[str, type[pydantic.BaseModel]]:
    return _by_type(RealtimeClientEvent)


@functools.cache
def _server_table() -> dict[str, type[pydantic.BaseModel]]:
    # realtime_server_event.py's union already lists ConversationItemRetrieved and the three
    # OutputAudioBuffer* events, which are defined only in that module.
    return _by_type(RealtimeServerEvent)


@functools.cache
def _adapter(target: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(target)


def client_event_types() -> frozenset[str]:
    """Every client event `type` the SDK knows."""
    return frozenset(_client_table())


def server_event_types() -> frozenset[str]:
    """Every server event `type` the SDK knows."""
    return frozenset(_server_table())


def _format_loc(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _clean_loc(data: Any, loc: Sequence[str | int], missing: bool) -> tuple[list[str | int], int | None]:
    """Drop pydantic's union tags (member class names etc.) from an error location.

    A location part is kept when it really indexes into the input; for `missing` errors the last
    part is kept too because it names the absent field. Also returns the index (in `loc`) of the
    first union tag, which identifies the top-level union branch the error belongs to.
    """
    kept: list[str | int] = []
    first_tag: int | None = None
    cur = data
    for i, part in enumerate(loc):
        indexes_mapping = isinstance(cur, Mapping) and part in cur
        indexes_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if indexes_mapping or indexes_list:
            kept.append(part)
            cur = cur[part]
        elif missing and i == len(loc) - 1:
            kept.append(part)
        elif first_tag is None:
            first_tag = i
    return kept, first_tag


def _pick_error(data: Any, errors: list[Any]) -> tuple[Any, list[str | int]]:
    """Choose the error that best explains a failed validation.

    Union errors come once per member. Branches whose own `type`/`role` literal did not match
    are clearly the wrong member, so prefer the others; then the branch with the fewest
    errors; then the deepest location.
    """
    groups: dict[Any, list[tuple[Any, list[str | int]]]] = {}
    wrong: set[Any] = set()
    for err in errors:
        loc = err["loc"]
        kept, tag_at = _clean_loc(data, loc, err["type"] == "missing")
        key = None if tag_at is None else (tuple(loc[: tag_at + 1]))
        groups.setdefault(key, []).append((err, kept))
        if (
            tag_at is not None
            and err["type"] == "literal_error"
            and len(loc) == tag_at + 2
            and loc[-1] in ("type", "role")
        ):
            wrong.add(key)
    best = min(groups, key=lambda k: (k in wrong, len(groups[k])))
    return max(groups[best], key=lambda pair: len(pair[0]["loc"]))


def _raise_from_validation(
    kind: str, etype: str, data: Any, exc: pydantic.ValidationError, prefix: Sequence[str | int]
) -> None:
    errors = exc.errors(include_url=False)
    first, loc = _pick_error(data, errors)
    where = _format_loc([*prefix, *loc])
    if first["type"] == "missing":
        raise ProtocolViolation(
            f"{kind} event '{etype}': missing required parameter '{where}'",
            code="missing_required_parameter",
            param=where,
        )
    raise ProtocolViolation(
        f"{kind} event '{etype}': invalid value at '{where}': {first['msg']}",
        code="invalid_value",
        param=where,
    )


def _extras(node: Any, path: list[str | int]) -> Iterator[list[str | int]]:
    """Yield the location of every field no SDK model declares."""
    if isinstance(node, pydantic.BaseModel):
        for key in node.model_extra or {}:
            yield [*path, key]
        for name in type(node).model_fields:
            value = getattr(node, name, None)
            if value is not None:
                yield from _extras(value, [*path, name])
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _extras(value, [*path, i])
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _extras(value, [*path, key])


def _validate(kind: str, etype: str, target: Any, data: Any, prefix: Sequence[str | int]) -> None:
    try:
        model = _adapter(target).validate_python(data)
    except pydantic.ValidationError as exc:
        _raise_from_validation(kind, etype, data, exc, prefix)
        return
    for loc in _extras(model, list(prefix)):
        where = _format_loc(loc)
        raise ProtocolViolation(
            f"{kind} event '{etype}': unknown parameter '{where}' (not in the GA schema)",
            code="unknown_parameter",
            param=where,
        )


def _event_type(kind: str, obj: Any, table: Mapping[str, type[pydantic.BaseModel]]) -> str:
    if not isinstance(obj, Mapping):
        raise ProtocolViolation(f"{kind} event must be a JSON object, got {type(obj).__name__}", param=None)
    etype = obj.get("type")
    if not isinstance(etype, str):
        raise ProtocolViolation(
            f"{kind} event is missing a string 'type'", code="missing_required_parameter", param="type"
        )
    if etype not in table:
        raise ProtocolViolation(
            f"{kind} event has unknown type '{etype}'", code="invalid_value", param="type"
        )
    return etype


def validate_client_event(obj: dict[str, Any]) -> None:
    """Raise ProtocolViolation unless `obj` is a well-formed GA client event.

    `response.create` gets one special case: `response.input` may hold `item_reference`s
    (`ResponseItemReference`), which the pydantic `RealtimeResponseCreateParams` model does not
    list although the API (and the SDK's `...WithReferencesParam` TypedDict) accepts them.
    """
    table = _client_table()
    etype = _event_type("client", obj, table)
    response = obj.get("response")
    if etype == "response.create" and isinstance(response, dict) and isinstance(response.get("input"), list):
        inputs = response["input"]
        stripped = {**obj, "response": {k: v for k, v in response.items() if k != "input"}}
        _validate("client", etype, table[etype], stripped, ())
        for i, entry in enumerate(inputs):
            target: Any = ResponseItemReference
            if not (isinstance(entry, dict) and entry.get("type") == "item_reference"):
                target = ConversationItem
            _validate("client", etype, target, entry, ("response", "input", i))
        return
    _validate("client", etype, table[etype], obj, ())


def validate_server_event(obj: dict[str, Any]) -> None:
    """Raise ProtocolViolation unless `obj` is a well-formed GA server event."""
    table = _server_table()
    etype = _event_type("server", obj, table)
    _validate("server", etype, table[etype], obj, ())
