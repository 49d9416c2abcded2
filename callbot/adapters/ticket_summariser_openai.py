"""The post-call ticket summary from OpenAI's Chat Completions API with structured outputs.

Strict `json_schema` output makes the model's reply match the ticket schema; the reply is still
parsed and validated here, because a refusal, a truncated reply or a proxy can break that
promise. Every failure leaves this module as `SummaryUnavailable`, and the ticket service keeps
the ticket pending and tries again later.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import openai

from callbot.core.record import CallRecord
from callbot.core.ticket import StructuredSummary, summary_request_text, validate_summary
from callbot.errors import SummaryUnavailable, TicketSummaryInvalid

SCHEMA_NAME = "support_ticket"


class OpenAITicketSummariser:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        schema: Mapping[str, Any],
        prompt: str,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._model = model
        self._schema = dict(schema)
        self._prompt = prompt
        self._timeout_s = timeout_s

    @property
    def model(self) -> str:
        return self._model

    async def summarise(self, record: CallRecord) -> StructuredSummary:
        try:
            async with asyncio.timeout(self._timeout_s):
                completion = await self._client.chat.completions.create(
                    model=self._model,
                    messages=[
                        {"role": "system", "content": self._prompt},
                        {"role": "user", "content": summary_request_text(record)},
                    ],
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": SCHEMA_NAME, "schema": self._schema, "strict": True},
                    },
                    timeout=self._timeout_s,
                )
        except TimeoutError as exc:
            raise SummaryUnavailable(f"ticket summary timed out after {self._timeout_s:g} s") from exc
        except openai.APIStatusError as exc:
            raise SummaryUnavailable(f"OpenAI answered HTTP {exc.status_code}: {exc.message}") from exc
        except openai.APITimeoutError as exc:
            raise SummaryUnavailable(f"OpenAI request timed out: {exc}") from exc
        except openai.OpenAIError as exc:
            raise SummaryUnavailable(f"OpenAI request failed: {type(exc).__name__}: {exc}") from exc

        if not completion.choices:
            raise SummaryUnavailable("OpenAI returned no choices")
        choice = completion.choices[0]
        message = choice.message
        if message.refusal:
            raise SummaryUnavailable(f"the model refused to summarise: {message.refusal[:200]}")
        if choice.finish_reason == "length":
            raise SummaryUnavailable("the summary was cut off (finish_reason=length)")
        if not message.content:
            raise SummaryUnavailable("the model returned an empty summary")
        try:
            return validate_summary(json.loads(message.content), self._schema)
        except json.JSONDecodeError as exc:
            raise SummaryUnavailable(f"the summary is not valid JSON: {exc}") from exc
        except TicketSummaryInvalid as exc:
            raise SummaryUnavailable(str(exc)) from exc
