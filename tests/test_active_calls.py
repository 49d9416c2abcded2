"""`ActiveCalls`: the set of calls in progress that drain and the demo await instead of polling."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from callbot.web.services import ActiveCalls


async def test_waiting_returns_when_the_last_call_leaves_and_times_out_while_one_stays() -> None:
    calls = ActiveCalls()
    assert await calls.wait_empty(0) is True  # nothing in progress yet
    first, second = cast(Any, object()), cast(Any, object())
    calls.add(first)
    calls.add(second)
    assert len(calls) == 2 and set(calls) == {first, second}
    assert await calls.wait_empty(0.01) is False

    waiter = asyncio.create_task(calls.wait_empty(5))
    calls.discard(first)
    await asyncio.sleep(0)
    assert not waiter.done()  # one call is still in progress
    calls.discard(second)
    assert await waiter is True
    calls.discard(second)  # discarding twice is harmless, as for a set
    assert len(calls) == 0 and not calls
