"""Live audio for the simulated caller: where its voice comes from and where what it hears goes.

Scripts normally carry their audio (`Say`), and the recording is assembled after the call. A
softphone instead needs a microphone feeding the 20 ms clock and a speaker fed by it. Both are
plain synchronous calls made once per tick from the caller's event loop, so an implementation
only has to hand over or take one frame without blocking (buffering against its device clock is
its own business).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class AudioSource(Protocol):
    """Where a `Live` step's caller audio comes from (a microphone)."""

    def read_frame(self) -> np.ndarray | None:
        """The next 20 ms: 160 int16 samples at 8 kHz (zeros when nobody talks); None ends the step."""
        ...


class AudioSink(Protocol):
    """Where the caller's playback goes (a speaker), tick by tick."""

    def play_frame(self, pcm8k: np.ndarray) -> None:
        """What the phone plays this tick: 160 int16 samples at 8 kHz, zeros when nothing plays.

        The array belongs to the caller's recording: read it, do not modify it.
        """
        ...
