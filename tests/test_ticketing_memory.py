"""The caller memory service: policy from the core, the store behind a port, never a failed call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from callbot.core.memory import MEMORY_HEADER, EarlierCall, MemoryPolicy
from callbot.core.record import CallInfo
from callbot.errors import StoreUnavailable
from callbot.ticketing import CallerMemoryService

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


class FakeStore:
    def __init__(
        self, calls: Sequence[EarlierCall] = (), *, delay_s: float = 0.0, down: bool = False
    ) -> None:
        self.calls = list(calls)
        self.delay_s = delay_s
        self.down = down
        self.asked: list[tuple[str, datetime, int]] = []

    async def earlier_calls(self, number: str, since: datetime, limit: int) -> Sequence[EarlierCall]:
        self.asked.append((number, since, limit))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            raise StoreUnavailable("OSError: connection refused")
        return self.calls[:limit]


def info(number: str = "+15551230000") -> CallInfo:
    return CallInfo("CA1", "MZ1", from_number=number, to_number="+15559870000")


def service(store: FakeStore, **policy: object) -> CallerMemoryService:
    return CallerMemoryService(
        store,
        MemoryPolicy(**policy),  # type: ignore[arg-type]
        redact_patterns=[r"secret \w+"],
        timeout_s=0.2,
        clock=lambda: NOW,
    )


CALL = EarlierCall(5, NOW - timedelta(days=1), "Router", outcome="Told the secret word")


async def test_a_returning_caller_gets_the_message_for_their_number() -> None:
    store = FakeStore([CALL])
    seed = await service(store, max_calls=2, days=7).recall(info("+1 555 123 0000"))
    assert seed is not None and seed.ticket_ids == (5,)
    assert seed.text.startswith(MEMORY_HEADER) and 'ticket #5: "Router"' in seed.text
    assert "secret word" not in seed.text  # the service's redaction patterns apply
    assert store.asked == [("+15551230000", NOW - timedelta(days=7), 2)]


@pytest.mark.parametrize("number", ["anonymous", "", "+266696687", "12345"])
async def test_withheld_and_invalid_numbers_never_reach_the_store(number: str) -> None:
    store = FakeStore([CALL])
    assert await service(store).recall(info(number)) is None
    assert store.asked == []


async def test_disabled_memory_never_reaches_the_store() -> None:
    store = FakeStore([CALL])
    assert await service(store, enabled=False).recall(info()) is None
    assert store.asked == []


async def test_a_database_that_is_down_means_no_memory_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="callbot.ticketing")
    assert await service(FakeStore([CALL], down=True)).recall(info()) is None
    assert any(
        "memory lookup failed" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records
    )


async def test_a_slow_database_is_given_up_on_after_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callbot.ticketing")
    started = time.monotonic()
    assert await service(FakeStore([CALL], delay_s=5.0)).recall(info()) is None
    assert time.monotonic() - started < 1.0  # the 0.2 s timeout, not the store's 5 s
    assert any("took over 0.2 s" in r.getMessage() for r in caplog.records)


async def test_no_history_is_no_message() -> None:
    assert await service(FakeStore([])).recall(info()) is None


def test_the_memory_takes_at_most_half_of_the_summary_trigger() -> None:
    from callbot import compose
    from callbot.settings import Settings

    def policy(**values: object) -> MemoryPolicy:
        return compose.memory_policy(Settings(**values))  # type: ignore[arg-type]

    assert policy() == MemoryPolicy(enabled=True, max_calls=3, days=30, max_tokens=600)
    assert policy(summary_trigger_tokens=400, memory_max_tokens=600).max_tokens == 200
    assert policy(summary_enabled=False, summary_trigger_tokens=400).max_tokens == 600  # nothing to bound
    assert policy(memory_max_calls=5, memory_days=7).max_calls == 5
    assert policy(memory_enabled=False).enabled is False


def test_memory_off_builds_no_service() -> None:
    from callbot import compose
    from callbot.settings import Settings

    assert compose.caller_memory(Settings(memory_enabled=False), store=None) is None  # type: ignore[arg-type]
