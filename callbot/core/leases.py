"""Replica leases: when a live replica may take over the tickets of one that stopped heartbeating.

Every `callbot serve` process (a replica) renews a lease in the database every
`heartbeat_ms`, and stamps its id on the tickets of the calls it carries. A replica whose lease
has not been renewed for `lease_ms` is taken for dead (SIGKILL, OOM kill, node loss): its
`in_progress` tickets are moved to `pending_summary` with the reason `REPLICA_LOST`, and the
claimer summarises them from the transcript checkpointed so far (saved after every turn).

The policy here is pure (time is an argument). The one subtle rule: a replica only claims once
it has itself renewed its lease without a gap for a whole lease period. After an outage of the
database every replica's lease looks stale at once; the one that reconnects first would
otherwise take the live calls of all the others. Waiting one lease of continuous renewals gives
every live replica the time to renew its own lease first.
"""

from __future__ import annotations

from dataclasses import dataclass

REPLICA_LOST = "replica lost"
"""The end reason of a ticket finished by another replica after its own replica died."""


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    lease_ms: int = 30_000
    """A replica not heard from for this long is taken for dead."""
    heartbeat_ms: int = 10_000
    """How often a live replica renews its lease (and looks for dead replicas' tickets)."""

    def __post_init__(self) -> None:
        if self.lease_ms <= 0 or self.heartbeat_ms <= 0:
            raise ValueError("lease and heartbeat intervals must be positive")
        if self.heartbeat_ms * 2 > self.lease_ms:
            raise ValueError("the heartbeat must come at least twice per lease")

    @classmethod
    def from_lease(cls, lease_ms: int) -> LeasePolicy:
        """A heartbeat three times per lease: one lost renewal does not expire a live replica."""
        return cls(lease_ms=lease_ms, heartbeat_ms=max(1, lease_ms // 3))

    def expired_before_ms(self, now_ms: int) -> int:
        """Leases last renewed before this moment belong to dead replicas."""
        return now_ms - self.lease_ms

    def takeover_bound_ms(self, summary_timeout_ms: int) -> int:
        """The longest a dead replica's ticket waits to be final, once a live replica has been up
        for a lease: the lease, one heartbeat to notice, and the ticket summary's deadline."""
        return self.lease_ms + self.heartbeat_ms + summary_timeout_ms


class LeaseState:
    """One replica's view of its own lease: when it last renewed, and since when without a gap."""

    def __init__(self, policy: LeasePolicy) -> None:
        self.policy = policy
        self.last_renewed_ms: int | None = None
        self._unbroken_since_ms: int | None = None

    def renewed(self, now_ms: int) -> None:
        """The lease was written at `now_ms`."""
        last = self.last_renewed_ms
        if last is None or self._unbroken_since_ms is None or now_ms - last > self.policy.lease_ms:
            self._unbroken_since_ms = now_ms  # first renewal, or after a gap: count again
        self.last_renewed_ms = now_ms

    def renewal_failed(self, now_ms: int) -> None:
        """The database did not take the renewal; the run of unbroken renewals ends once the
        lease itself has run out (a single lost renewal within the lease does not count)."""
        last = self.last_renewed_ms
        if last is None or now_ms - last > self.policy.lease_ms:
            self._unbroken_since_ms = None

    def may_claim(self, now_ms: int) -> bool:
        """True when this replica has renewed without a gap for at least one whole lease."""
        since = self._unbroken_since_ms
        last = self.last_renewed_ms
        if since is None or last is None or now_ms - last > self.policy.lease_ms:
            return False
        return now_ms - since >= self.policy.lease_ms

    def next_beat_in_ms(self, now_ms: int) -> int:
        """How long to wait before the next renewal."""
        if self.last_renewed_ms is None:
            return 0
        return max(0, self.last_renewed_ms + self.policy.heartbeat_ms - now_ms)
