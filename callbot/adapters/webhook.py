"""POST each finished ticket to an operator's URL (a helpdesk, a chat channel, a queue).

Delivery is best effort with bounded retries: the ticket is already safe in the database, so a
receiver that stays down costs a log line, never a failed call or a stuck shutdown. Server
errors, 429 and network failures are retried with exponential backoff; other 4xx answers mean
the receiver rejects this request, and retrying it would not change that.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)


class TicketWebhook:
    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        attempts: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._owns_client = client is None
        self._attempts = max(1, attempts)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def deliver(self, ticket: dict[str, Any]) -> bool:
        """Send the ticket; True once the receiver answered 2xx. Never raises (but can be cancelled)."""
        try:
            return await self._deliver(ticket)
        except Exception:
            # A bug here (say, a value JSON cannot encode) must not take the ticket service down.
            log.exception("ticket %s webhook failed unexpectedly", ticket.get("id"))
            return False

    async def _deliver(self, ticket: dict[str, Any]) -> bool:
        ticket_id = ticket.get("id")
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.post(
                    self.url, json=ticket, headers={"User-Agent": "callbot-ticket-webhook"}
                )
            except httpx.HTTPError:
                log.warning(
                    "ticket %s webhook attempt %d/%d failed",
                    ticket_id,
                    attempt,
                    self._attempts,
                    exc_info=True,
                )
            else:
                if response.is_success:
                    return True
                retryable = response.status_code >= 500 or response.status_code == 429
                log.warning(
                    "ticket %s webhook attempt %d/%d: HTTP %d%s",
                    ticket_id, attempt, self._attempts, response.status_code,
                    "" if retryable else " (not retried)",
                )  # fmt: skip
                if not retryable:
                    return False
            if attempt < self._attempts:
                await asyncio.sleep(min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1)))
        log.error("ticket %s webhook gave up after %d attempts to %s", ticket_id, self._attempts, self.url)
        return False
