"""What a call cost in tokens and dollars, and what it would have cost without in-call summaries.

Pure arithmetic on the call's record (docs/cost.md explains each figure):

- **Tokens by kind**: text and audio, each as uncached input, cached input and output, summed
  over the call's in-conversation responses (`ResponseUsage`, docs/protocols.md §11.1).
- **Estimated cost**: those tokens at a price table's rates (USD per million tokens; the
  defaults are docs/protocols.md §11.4, and the table is the `CALLBOT_PRICES` setting).
- **Without summaries**: every response after a summary read the summary instead of the turns
  it folded. Had nothing been folded, its input would have been larger by the folded turns'
  tokens less the summary's own. Turns carry no token counts from the server, so each is
  estimated from what the record holds: its audio length at the documented audio token rates
  and its text at about four characters a token (docs/cost.md). The extra tokens are priced as
  uncached input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from callbot.core.record import CallRecord, ResponseUsage, SummaryEvent, TranscriptEntry, UsageTotals

PER_MILLION = 1_000_000

CALLER_AUDIO_MS_PER_TOKEN = 100
"""Caller audio: one input token per 100 ms (docs/protocols.md §11.2)."""
ASSISTANT_AUDIO_MS_PER_TOKEN = 50
"""Assistant audio: one token per 50 ms (docs/protocols.md §11.2)."""
CHARS_PER_TEXT_TOKEN = 4
"""About four characters of English per text token: the estimate for transcripts and summaries."""

PRICE_FIELDS = ("text_in", "text_out", "audio_in", "audio_out", "cached_in")


@dataclass(frozen=True, slots=True)
class Prices:
    """One model's rates in USD per million tokens."""

    text_in: float
    text_out: float
    audio_in: float
    audio_out: float
    cached_in: float

    def to_json(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PRICE_FIELDS}


DEFAULT_PRICE_TABLE: dict[str, dict[str, float]] = {
    "gpt-realtime-1.5": dict(text_in=4.0, text_out=16.0, audio_in=32.0, audio_out=64.0, cached_in=0.4),
    "gpt-realtime-2": dict(text_in=4.0, text_out=24.0, audio_in=32.0, audio_out=64.0, cached_in=0.4),
}
"""The list prices at the time of writing (docs/protocols.md §11.4); override with CALLBOT_PRICES."""


def price_table(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, Prices]:
    """A validated price table from plain data (a setting): every rate a number >= 0."""
    table: dict[str, Prices] = {}
    for model, rates in raw.items():
        if not isinstance(rates, Mapping):
            raise ValueError(f"prices for {model!r} must be an object of {', '.join(PRICE_FIELDS)}")
        missing = [name for name in PRICE_FIELDS if name not in rates]
        unknown = sorted(set(rates) - set(PRICE_FIELDS))
        if missing or unknown:
            raise ValueError(
                f"prices for {model!r}: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {', '.join(missing)}" if missing else "",
                        f"unknown {', '.join(unknown)}" if unknown else "",
                    )
                    if part
                )
            )
        values: dict[str, float] = {}
        for name in PRICE_FIELDS:
            value = rates[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"prices for {model!r}: {name} must be a number >= 0, not {value!r}")
            values[name] = float(value)
        table[model] = Prices(**values)
    return table


def prices_for(model: str, table: Mapping[str, Prices]) -> Prices | None:
    """The model's rates: an exact name, else the longest table name it starts with (a dated
    snapshot such as `gpt-realtime-1.5-2026-01-01` takes its family's rates); None if unknown."""
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None


@dataclass(frozen=True, slots=True)
class TokensByKind:
    """Tokens of a call (or of many) by modality and kind; `*_input` is the uncached input."""

    text_input: int = 0
    text_cached: int = 0
    text_output: int = 0
    audio_input: int = 0
    audio_cached: int = 0
    audio_output: int = 0

    def __add__(self, other: TokensByKind) -> TokensByKind:
        return TokensByKind(*(getattr(self, name) + getattr(other, name) for name in TOKEN_KINDS))

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in TOKEN_KINDS)

    def cost_usd(self, prices: Prices) -> float:
        micro = (
            self.text_input * prices.text_in
            + self.audio_input * prices.audio_in
            + (self.text_cached + self.audio_cached) * prices.cached_in
            + self.text_output * prices.text_out
            + self.audio_output * prices.audio_out
        )
        return micro / PER_MILLION

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in TOKEN_KINDS}


TOKEN_KINDS = ("text_input", "text_cached", "text_output", "audio_input", "audio_cached", "audio_output")


def _split_cached(cached: int, text: int, audio: int, cached_text: int, cached_audio: int) -> tuple[int, int]:
    """The cached tokens as (text, audio): the server's split when it gave one, else in
    proportion to the input's own text/audio split."""
    cached = min(cached, text + audio)
    if cached_text + cached_audio == cached and cached_text <= text and cached_audio <= audio:
        return cached_text, cached_audio
    if cached == 0 or text + audio == 0:
        return 0, 0
    cached_audio = min(audio, round(cached * audio / (text + audio)))
    cached_text = min(text, cached - cached_audio)
    return cached_text, cached - cached_text


def response_tokens(usage: ResponseUsage) -> TokensByKind:
    text, audio = usage.input_text_tokens, usage.input_audio_tokens
    if text + audio < usage.input_tokens:  # no modality split reported: count the rest as text
        text = usage.input_tokens - audio
    cached_text, cached_audio = _split_cached(
        usage.cached_tokens, text, audio, usage.cached_text_tokens, usage.cached_audio_tokens
    )
    return TokensByKind(
        text_input=text - cached_text,
        text_cached=cached_text,
        text_output=usage.output_text_tokens,
        audio_input=audio - cached_audio,
        audio_cached=cached_audio,
        audio_output=usage.output_audio_tokens,
    )


def totals_tokens(usage: UsageTotals) -> TokensByKind:
    """The same split from the call's totals alone (tickets stored before per-response usage)."""
    return response_tokens(
        ResponseUsage(
            at_ms=0,
            input_tokens=usage.input_tokens,
            cached_tokens=usage.cached_tokens,
            input_text_tokens=usage.input_text_tokens,
            input_audio_tokens=usage.input_audio_tokens,
            output_text_tokens=usage.output_text_tokens,
            output_audio_tokens=usage.output_audio_tokens,
        )
    )


# ----- what the summaries saved -----


def _text_tokens(text: str | None) -> int:
    return -(-len(text) // CHARS_PER_TEXT_TOKEN) if text else 0


def turn_tokens(entry: TranscriptEntry) -> tuple[int, int]:
    """(text, audio) tokens a turn holds in the model's context, estimated from the record.

    A caller turn is its audio (the model hears the audio; its transcript is not in the
    context). An assistant turn is its audio as far as it played (the heard part when the
    caller cut in) plus its transcript text. A turn nobody spoke (keypad digits) is text.
    """
    spoken_ms = (
        entry.ended_ms - entry.started_ms
        if entry.started_ms is not None and entry.ended_ms is not None
        else None
    )
    if entry.interrupted and entry.heard_ms is not None:
        spoken_ms = entry.heard_ms
    if spoken_ms is None:
        return _text_tokens(entry.text), 0
    spoken_ms = max(0, spoken_ms)
    if entry.role == "user":
        return 0, spoken_ms // CALLER_AUDIO_MS_PER_TOKEN
    if entry.role == "assistant":
        return _text_tokens(entry.text), spoken_ms // ASSISTANT_AUDIO_MS_PER_TOKEN
    return _text_tokens(entry.text), 0


def folded_extra(
    transcript: Iterable[TranscriptEntry], summaries: Iterable[SummaryEvent], at_ms: int
) -> tuple[int, int]:
    """(text, audio) tokens a response at `at_ms` would have read on top of its real input had
    no summary been made: the turns folded by then, less the summaries then in the context.

    A later summary may fold an earlier one (a roll-up); only the summaries nobody folded are
    still in the context, and a turn counts once however many roll-ups cover it.
    """
    done = [s for s in summaries if s.at_ms < at_ms]
    if not done:
        return 0, 0
    folded = {item_id for s in done for item_id in s.folded_item_ids}
    text = audio = 0
    for entry in transcript:
        if entry.item_id in folded:
            t, a = turn_tokens(entry)
            text, audio = text + t, audio + a
    for s in done:
        if s.summary_id not in folded:
            text -= _text_tokens(s.text)
    return text, audio


@dataclass(frozen=True, slots=True)
class CallCost:
    """A call's tokens by kind, its estimated cost and what summaries saved.

    `cost_usd` and the two other dollar figures are None when the model has no price in the
    table. `saved_*_tokens` are summed over the responses (each re-reads the whole context).
    """

    model: str
    prices: Prices | None
    tokens: TokensByKind
    responses: int
    saved_text_tokens: int
    saved_audio_tokens: int
    cost_usd: float | None
    cost_without_summaries_usd: float | None

    @property
    def tokens_saved(self) -> int:
        return self.saved_text_tokens + self.saved_audio_tokens

    @property
    def saved_usd(self) -> float | None:
        if self.cost_usd is None or self.cost_without_summaries_usd is None:
            return None
        return self.cost_without_summaries_usd - self.cost_usd

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prices_per_million": self.prices.to_json() if self.prices else None,
            "tokens": {**self.tokens.to_json(), "total": self.tokens.total},
            "responses": self.responses,
            "estimated_usd": _round(self.cost_usd),
            "without_summaries_usd": _round(self.cost_without_summaries_usd),
            "saved_usd": _round(self.saved_usd),
            "tokens_saved": self.tokens_saved,
            "saved_text_tokens": self.saved_text_tokens,
            "saved_audio_tokens": self.saved_audio_tokens,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def call_cost(record: CallRecord, table: Mapping[str, Prices]) -> CallCost:
    """The cost figures of one call, at the rates of its Realtime model in `table`."""
    prices = prices_for(record.realtime_model, table)
    if record.response_usage:
        tokens = TokensByKind()
        for usage in record.response_usage:
            tokens += response_tokens(usage)
        responses = len(record.response_usage)
    else:
        tokens = totals_tokens(record.usage)
        responses = record.usage.responses
    saved_text = saved_audio = 0
    for usage in record.response_usage:
        text, audio = folded_extra(record.transcript, record.summaries, usage.at_ms)
        saved_text, saved_audio = saved_text + text, saved_audio + audio
    cost = tokens.cost_usd(prices) if prices else None
    without = None
    if prices is not None and cost is not None:
        without = cost + (saved_text * prices.text_in + saved_audio * prices.audio_in) / PER_MILLION
    return CallCost(
        model=record.realtime_model,
        prices=prices,
        tokens=tokens,
        responses=responses,
        saved_text_tokens=saved_text,
        saved_audio_tokens=saved_audio,
        cost_usd=cost,
        cost_without_summaries_usd=without,
    )
