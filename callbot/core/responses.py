"""Which Realtime response is generating, and which were cancelled by a barge-in.

With server VAD the server starts responses itself, and a `response.cancel` only takes effect at
the later `response.done` (docs/protocols.md §8.2): until then deltas of the cancelled response
keep arriving and must not play. Out-of-band responses never get here (§10.5).
"""

from __future__ import annotations


class Responses:
    def __init__(self) -> None:
        self.active: str | None = None
        self._cancelled: set[str] = set()

    def created(self, response_id: str | None) -> None:
        self.active = response_id

    def done(self, response_id: str | None) -> None:
        if response_id == self.active:
            self.active = None

    def cancel_active(self) -> str | None:
        """The active response, the first time it is cancelled; None if there is nothing to cancel."""
        response_id = self.active
        if response_id is None or response_id in self._cancelled:
            return None
        self._cancelled.add(response_id)
        return response_id

    def is_cancelled(self, response_id: str | None) -> bool:
        return response_id in self._cancelled

    def new_session(self) -> None:
        """A new Realtime session: the old one's responses are gone with it."""
        self.active = None
        self._cancelled.clear()
