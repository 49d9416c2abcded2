"""The fault soak's short version: bench/fault_soak.py with a few dozen calls and every fault.

Two real `callbot serve` replicas on a fresh PostgreSQL database (behind the soak's TCP proxy),
the Realtime sessions dropped and refused, the ticket model failing and slow, the database link
cut, the webhook failing, replica "a" SIGKILLed and restarted, and the webhook, media
websocket, status and AMD callbacks, call API and tools fuzzed alongside. Every call whose
stream started must end with exactly one complete ticket, and no fuzz case may get a 5xx or
break a check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fault_soak

pytestmark = pytest.mark.postgres


async def _postgres_reachable() -> None:
    try:
        conn = await asyncpg.connect(fault_soak.PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CALLBOT_SKIP_POSTGRES") == "1":
            pytest.skip(f"PostgreSQL unreachable and CALLBOT_SKIP_POSTGRES=1: {exc}")
        pytest.fail(f"PostgreSQL at {fault_soak.PG_ADMIN} is unreachable: {exc}", pytrace=False)
    await conn.close()


def test_the_short_fault_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    import asyncio

    asyncio.run(_postgres_reachable())
    out = tmp_path / "soak.json"
    argv = ["--calls", "40", "--concurrency", "8", "--lease-s", "4", "--db-cut-s", "6", "--slow-s", "4"]
    argv += ["--webhook-fail-s", "4", "--fuzz-webhook", "150", "--fuzz-media", "50", "--json", str(out)]
    argv += ["--fuzz-status", "60", "--fuzz-amd", "30", "--fuzz-calls", "30", "--fuzz-tools", "4"]
    argv += ["--final-timeout-s", "90"]
    code = fault_soak.main(argv)
    fig = json.loads(out.read_text())
    brief = {k: v for k, v in fig.items() if not isinstance(v, (list, dict)) or k in ("lost_sids", "faults")}
    assert code == 0, fig
    assert fig["calls_placed"] >= 40, brief
    assert fig["calls_with_stream"] == fig["tickets_written"] == fig["tickets_complete"] >= 38, brief
    assert fig["duplicates"] == 0 and fig["tickets_lost"] == 0 and fig["lost_sids"] == [], brief
    # The ticket webhook is at least once (README "Reliability"): every complete ticket reaches
    # the receiver; one whose delivery was taken but not recorded (a SIGKILL, a database cut, a
    # receiver slow past the timeout) is sent again, so duplicates are counted, not forbidden.
    assert fig["webhook_undelivered"] == 0, brief
    assert fig["webhook_deliveries"] - fig["webhook_duplicates"] >= fig["tickets_complete"], brief
    assert fig["replica_lost_tickets"] >= 1, brief  # the killed replica's calls, finished by the other
    assert fig["continued_after_realtime_fault"] >= 1, brief
    assert fig["split_calls"] >= 10, brief
    assert len(fig["faults"]) == 7, brief
    assert fig["fuzz_cases"] == 150 + 50 + 60 + 30 + 30 + 4 and fig["fuzz_failures"] == 0, fig["fuzz_notes"]
    notes = fig["fuzz_notes"]
    assert (notes["status"], notes["amd"], notes["calls"], notes["tools"]) == (60, 30, 30, 4), notes
    assert fig["fuzz_answered_unfinished"] == 0 and fig["replicas_healthy_at_end"], brief
    assert fig["all_final"] and fig["seconds_to_final_after_last_fault"] < 60, brief
