"""Twilio's final status for calls whose status callback never arrived.

Twilio posts each status callback once. One that reaches callbot while its database is down (or
that is lost on the way) would leave the call's ticket without an outcome for good, and
`callbot call` waiting on it. So every replica, now and then, looks up the calls whose final
status is overdue (`core/call_lifecycle.status_overdue_s`) on Twilio's REST API and folds what it
says in, as the callback would have. Folding is idempotent, so replicas doing the same call twice
change nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from callbot.core.call_lifecycle import fetched_status
from callbot.errors import CallGone, StoreUnavailable, TwilioRestError
from callbot.ports import CallControl, CallLog

log = logging.getLogger(__name__)


class StatusReconciler:
    def __init__(
        self,
        calls: CallLog,
        control: CallControl,
        *,
        after_stream_s: float,
        after_start_s: float,
        batch: int = 50,
    ) -> None:
        self._calls = calls
        self._control = control
        self._after_stream_s = after_stream_s
        self._after_start_s = after_start_s
        self._batch = batch

    async def run(self, interval_s: float) -> None:
        """A pass every `interval_s` until cancelled; a failed pass is logged, never fatal."""
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("call status pass failed; trying again in %g s", interval_s)
            await asyncio.sleep(interval_s)

    async def reconcile(self, now: datetime | None = None) -> int:
        """Ask Twilio about each call whose final status is overdue at `now`; how many got one."""
        now = now or datetime.now(UTC)
        try:
            overdue = await self._calls.calls_awaiting_status(
                now - timedelta(seconds=self._after_stream_s),
                now - timedelta(seconds=self._after_start_s),
                self._batch,
            )
        except StoreUnavailable as exc:
            log.info("overdue call statuses not looked up, database unavailable: %s", exc)
            return 0
        settled = 0
        for call_sid in overdue:
            try:
                state = await self._control.fetch_call(call_sid)
            except CallGone as exc:
                log.warning("call %s: no final status, and Twilio does not know the call: %s", call_sid, exc)
                continue
            except TwilioRestError as exc:
                log.warning("overdue call statuses not looked up, Twilio unreachable: %s", exc)
                break
            update = fetched_status(call_sid, state)
            if update is None:
                continue  # still going (a transfer, a long call): asked again next pass
            try:
                await self._calls.apply_status(update)
            except StoreUnavailable as exc:
                log.info("call %s: fetched status not recorded, database unavailable: %s", call_sid, exc)
                break
            log.warning(
                "call %s: its final status callback never came; Twilio says %s", call_sid, state.status
            )
            settled += 1
        return settled
