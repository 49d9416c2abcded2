"""The in-call summariser: a separate, cheaper text model condenses older turns.

Implements `callbot.ports.Summariser`. Errors and timeouts become `SummaryUnavailable`; the call
state machine then keeps the conversation intact and retries later.
"""

from __future__ import annotations

import asyncio

import openai

from callbot.core.summary import DEFAULT_PROMPT, SummaryRequest, prompt_messages
from callbot.errors import SummaryUnavailable


class OpenAISummariser:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        *,
        language: str,
        style: str,
        template: str = DEFAULT_PROMPT,
        timeout_s: float = 20.0,
    ) -> None:
        self._client = client
        self.model = model
        self._language = language
        self._style = style
        self._template = template
        self._timeout_s = timeout_s

    async def summarise(self, request: SummaryRequest) -> str:
        messages = prompt_messages(
            request, language=self._language, style=self._style, template=self._template
        )
        try:
            completion = await asyncio.wait_for(
                self._client.chat.completions.create(model=self.model, messages=messages),  # type: ignore[arg-type]
                timeout=self._timeout_s,
            )
        except TimeoutError as exc:
            raise SummaryUnavailable(f"summary model timed out after {self._timeout_s:.0f} s") from exc
        except openai.OpenAIError as exc:
            raise SummaryUnavailable(f"summary model failed: {exc}") from exc
        content = completion.choices[0].message.content if completion.choices else None
        if not content or not content.strip():
            raise SummaryUnavailable("summary model returned an empty answer")
        return content
