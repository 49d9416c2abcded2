"""How one call is shaped (`CallConfig`) and what it counted (`CallStats`); `core/call.py` uses both."""

from __future__ import annotations

from dataclasses import dataclass, field

from callbot.core import realtime as rt
from callbot.core.recovery import RecoveryPolicy
from callbot.core.summary import SummaryPolicy
from callbot.core.tool_config import ToolsConfig


@dataclass(frozen=True, slots=True)
class CallConfig:
    """How one call is shaped. The defaults here are the finest shape (one 20 ms frame per Twilio
    message and per append, a mark every 60 ms, 100 ms ahead), which the frame-level core tests
    spell out; `callbot serve` takes its values from settings.py (larger messages, deeper lead)."""

    agent: rt.AgentConfig = field(default_factory=rt.AgentConfig)
    playback_lead_ms: int = 100
    mark_interval_ms: int = 60
    media_message_ms: int = 20
    """Audio per Twilio media message (whole 20 ms frames); with `mark_interval_ms` equal to it,
    each message is followed by one mark."""
    playback_prebuffer_ms: int = 0
    """A reply's first audio waits until this much of it is queued (PlaybackTracker): 0 sends at once."""
    session_ready_timeout_ms: int = 10_000
    inbound_batch_frames: int = 1
    """Caller frames per input_audio_buffer.append: 1 for the lowest latency; 2-5 halve to fifth
    the per-message cost (and the resampler calls) at 20-80 ms of added inbound delay."""
    summary: SummaryPolicy = field(default_factory=SummaryPolicy)
    recovery: RecoveryPolicy = field(default_factory=RecoveryPolicy)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    """The agent's tools; `agent.session_tools` is what the session is told of them."""


@dataclass(slots=True)
class CallStats:
    twilio_messages: int = 0
    inbound_frames: int = 0
    inbound_dropped_not_ready: int = 0
    invalid_twilio: int = 0
    realtime_events: int = 0
    unknown_realtime: int = 0
    invalid_realtime: int = 0
    realtime_errors: int = 0
    late_deltas_dropped: int = 0
    barge_ins: int = 0
    reconnects: int = 0
    rollovers: int = 0
    dtmf_digits: str = ""
