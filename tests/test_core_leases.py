"""Replica lease policy (callbot/core/leases.py): when a replica may take over a dead one's tickets."""

from __future__ import annotations

import pytest

from callbot.core.leases import LeasePolicy, LeaseState

POLICY = LeasePolicy(lease_ms=30_000, heartbeat_ms=10_000)


def test_heartbeat_is_a_third_of_the_lease_and_must_fit_twice() -> None:
    assert LeasePolicy.from_lease(30_000) == POLICY
    assert POLICY.expired_before_ms(100_000) == 70_000
    assert POLICY.takeover_bound_ms(60_000) == 100_000
    with pytest.raises(ValueError, match="twice"):
        LeasePolicy(lease_ms=10_000, heartbeat_ms=6_000)
    with pytest.raises(ValueError, match="positive"):
        LeasePolicy(lease_ms=0, heartbeat_ms=0)


def test_a_fresh_replica_claims_only_after_a_whole_lease_of_renewals() -> None:
    state = LeaseState(POLICY)
    assert not state.may_claim(0)
    assert state.next_beat_in_ms(0) == 0
    for t in range(0, 30_000, 10_000):
        state.renewed(t)
        assert not state.may_claim(t)
    assert state.next_beat_in_ms(20_000) == 10_000
    assert state.next_beat_in_ms(25_000) == 5_000
    state.renewed(30_000)
    assert state.may_claim(30_000)


def test_after_a_database_outage_longer_than_the_lease_the_count_starts_again() -> None:
    # Every replica's lease looks stale after the outage; whoever reconnects first must not
    # take the live calls of the others before they had a lease's time to renew.
    state = LeaseState(POLICY)
    for t in range(0, 60_001, 10_000):
        state.renewed(t)
    assert state.may_claim(60_000)
    for t in (70_000, 80_000, 90_000, 100_000):
        state.renewal_failed(t)
    assert not state.may_claim(100_000)
    state.renewed(110_000)
    assert not state.may_claim(110_000)
    state.renewed(120_000)
    state.renewed(130_000)
    assert not state.may_claim(130_000)
    state.renewed(140_000)
    assert state.may_claim(140_000)


def test_one_lost_renewal_within_the_lease_does_not_break_the_run() -> None:
    state = LeaseState(POLICY)
    for t in (0, 10_000, 20_000, 30_000):
        state.renewed(t)
    state.renewal_failed(40_000)
    assert state.may_claim(40_000)  # the lease itself still holds (renewed 10 s ago)
    state.renewed(50_000)
    assert state.may_claim(50_000)


def test_a_stale_own_lease_never_claims_even_without_a_failure_reported() -> None:
    # A process frozen (SIGSTOP, a long GC pause) for longer than the lease wakes up stale.
    state = LeaseState(POLICY)
    for t in (0, 10_000, 20_000, 30_000):
        state.renewed(t)
    assert not state.may_claim(70_000)
    state.renewed(70_000)
    assert not state.may_claim(70_000)
