"""Configuration, read from the environment (and an optional `.env` file) by pydantic-settings.

Every setting is `CALLBOT_<NAME>` in the environment, except the OpenAI and Twilio credentials,
which use the names their SDKs and consoles already use (`OPENAI_API_KEY`, `OPENAI_BASE_URL`,
`TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`). `deploy/env.example` lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from callbot.core.cost import DEFAULT_PRICE_TABLE, Prices, price_table
from callbot.errors import SettingsError

AudioMode = Literal["pcm24k", "pcmu"]

DEFAULT_INSTRUCTIONS = (
    "You are the friendly phone assistant of our support line. Speak in short, natural sentences: "
    "this is a phone call, not a chat. Ask one question at a time. Confirm names, numbers and dates "
    "by repeating them back. If you cannot help, say that a colleague will call back."
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CALLBOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # Settings(twilio_auth_token=...) by field name, next to the env aliases the SDKs read;
        # pydantic-settings before 2.15 ignores field names of aliased fields without this.
        populate_by_name=True,
    )

    # --- OpenAI (names the SDK reads) ---
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "CALLBOT_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "CALLBOT_OPENAI_BASE_URL")
    )
    realtime_url: str | None = Field(
        default=None,
        description="Websocket base URL for Realtime when it differs from OPENAI_BASE_URL (proxies, tests).",
    )

    # --- Twilio ---
    twilio_account_sid: str | None = Field(
        default=None, validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "CALLBOT_TWILIO_ACCOUNT_SID")
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "CALLBOT_TWILIO_AUTH_TOKEN")
    )
    twilio_api_url: str = Field(
        default="https://api.twilio.com",
        description="Base URL of Twilio's REST API (call control); point it at a fake in tests.",
    )
    public_url: str | None = Field(
        default=None,
        description="Public https origin Twilio reaches this server at, e.g. https://bot.example.com",
    )
    validate_twilio_signatures: bool = Field(
        default=True, description="Development only: false skips X-Twilio-Signature checks."
    )
    require_stream_signature: bool = Field(
        default=False,
        description=(
            "Refuse media websockets without X-Twilio-Signature. Off by default: whether Twilio signs "
            "the upgrade is unverified (docs/protocols.md §3.3); a present signature is always checked, and "
            "the per-call stream token is always required."
        ),
    )
    stream_token_ttl_s: int = Field(default=120, ge=10, description="Lifetime of the per-call stream token.")

    # --- Outbound calls (README "Outbound calls") ---
    outbound_from_number: str | None = Field(
        default=None,
        description="The Twilio number outbound calls come from (E.164), unless a call names one.",
    )
    outbound_ring_timeout_s: int = Field(
        default=30, ge=5, le=600, description="How long an outbound call rings."
    )
    call_status_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often callbot asks Twilio about calls whose final status callback is overdue.",
    )
    machine_policy: Literal["voicemail", "hangup"] = Field(
        default="voicemail",
        description="On an answering machine: leave CALLBOT_VOICEMAIL_MESSAGE (after the beep) or hang up.",
    )
    voicemail_message: str = Field(
        default="", description="The voicemail outbound calls leave on a machine; empty: hang up instead."
    )

    # --- Realtime agent ---
    model: str = "gpt-realtime-1.5"
    voice: str = "marin"
    instructions: str = DEFAULT_INSTRUCTIONS
    instructions_file: Path | None = None
    greeting: str = "Greet the caller warmly in one short sentence and ask how you can help."
    audio_mode: AudioMode = "pcm24k"
    transcription_model: str = "gpt-realtime-whisper"
    transcription_language: str | None = None
    vad_type: Literal["server_vad", "semantic_vad"] = "server_vad"
    vad_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    vad_prefix_padding_ms: int = Field(default=300, ge=0)
    vad_silence_duration_ms: int = Field(default=500, ge=0)
    vad_eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    noise_reduction: Literal["near_field", "far_field", "off"] = "near_field"
    truncation_retention_ratio: float | None = Field(
        default=None, gt=0.0, le=1.0, description="GA truncation safety net; unset leaves the server default."
    )
    session_ready_timeout_s: float = Field(default=10.0, gt=0)
    end_message: str = Field(
        default="We're sorry, this call has to end now. Please call us again.",
        description="Spoken by Twilio when callbot ends a call itself (upstream failure, shutdown).",
    )
    max_reconnects: int = Field(default=3, ge=0, description="Realtime reconnect attempts per outage.")
    session_max_age_s: float = Field(
        default=55 * 60, gt=0, description="Roll over to a fresh Realtime session after this long."
    )
    twilio_idle_timeout_s: float = Field(
        default=15.0, gt=0, description="End a call whose Twilio stream stalls this long."
    )

    # --- Playback to Twilio ---
    playback_lead_ms: int = Field(
        default=600,
        ge=20,
        description="At most this much audio is buffered at Twilio; deep enough to ride out a stalled leg.",
    )
    media_message_ms: int = Field(
        default=200,
        ge=20,
        multiple_of=20,
        description="Audio per Twilio media message (whole 20 ms frames).",
    )
    playback_prebuffer_ms: int = Field(
        default=0,
        ge=0,
        description="Hold a reply's start until this much audio is there, to ride out a stall; 0: at once.",
    )
    mark_interval_ms: int = Field(
        default=200, ge=20, description="A Twilio mark at least every this much audio; ends a message."
    )
    inbound_batch_frames: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Caller 20 ms frames per append to Realtime: more is cheaper, 1 is fastest.",
    )

    # --- Summariser (in-call context) ---
    summary_enabled: bool = True
    summary_model: str = "gpt-5.4-mini"
    summary_trigger_tokens: int = Field(default=12_000, ge=100)
    keep_last_turns: int = Field(default=2, ge=1)
    summary_language: str = "the caller's language"
    summary_style: str = "concise bullet points"
    summary_prompt_file: Path | None = None
    summary_timeout_s: float = Field(default=20.0, gt=0)
    summary_retry_after_s: float = Field(default=15.0, ge=0)
    transcript_wait_ms: int = Field(default=3000, ge=0)

    # --- Tickets ---
    database_url: str = "sqlite+aiosqlite:///./callbot.db"
    migrate_on_start: bool = Field(default=True, description="Apply database migrations at server start.")
    ticket_model: str = "gpt-5.4-mini"
    ticket_prompt_file: Path | None = None
    ticket_schema_file: Path | None = None
    ticket_timeout_s: float = Field(default=60.0, gt=0)
    ticket_retry_interval_s: float = Field(default=300.0, gt=0)
    spool_dir: Path = Path("./var/spool")
    ticket_webhook_url: str | None = None
    ticket_webhook_redeliver_s: float = Field(
        default=60.0,
        gt=0,
        description="A finished ticket the webhook has not taken after this long (a crash, a "
        "database cut, a receiver down for longer than the retries) is sent again, by any replica.",
    )
    admin_user: str = "admin"
    admin_password: SecretStr | None = None
    redact_patterns: list[str] = Field(default_factory=list)
    replica_lease_s: float = Field(
        default=30.0,
        ge=1.0,
        description="A replica that has not renewed its lease in the database for this long is taken "
        "for dead, and a live replica finishes its calls' tickets as 'replica lost' (renewed every "
        "third of it).",
    )
    replica_id: str | None = Field(
        default=None,
        max_length=64,
        description="This process's name in the replica leases; default: host name, process id and "
        "a random suffix (unique per start).",
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {model: dict(rates) for model, rates in DEFAULT_PRICE_TABLE.items()},
        description="USD per million tokens by Realtime model, as JSON "
        '{"model": {"text_in", "text_out", "audio_in", "audio_out", "cached_in"}}: '
        "the ticket pages' cost estimates (a dated model name takes its family's prices).",
    )

    # --- Returning callers (memory) ---
    memory_enabled: bool = Field(
        default=True, description="Seed a call with the caller's earlier finished tickets (by phone number)."
    )
    memory_max_calls: int = Field(default=3, ge=1, le=20, description="At most this many earlier calls.")
    memory_days: int = Field(default=30, ge=1, description="Only earlier calls from the last this many days.")
    memory_max_tokens: int = Field(
        default=600,
        ge=50,
        description="Upper bound on the memory message (~4 characters a token); at most half "
        "of CALLBOT_SUMMARY_TRIGGER_TOKENS is used.",
    )
    memory_lookup_timeout_s: float = Field(
        default=1.0, gt=0, le=10, description="The lookup at call start gives up after this long: no memory."
    )

    # --- Tools (README "Tools") ---
    tools_file: Path | None = Field(
        default=None, description="YAML or JSON file of HTTP tools and MCP servers; checked at start-up."
    )
    end_call_tool: bool = Field(default=True, description="Offer the built-in end_call tool.")
    transfer_to: str | None = Field(
        default=None,
        description="A +E.164 number or sip: URI: offers transfer_to_human, which dials it with a brief.",
    )

    # --- Process ---
    max_concurrent_calls: int = Field(default=200, ge=1)
    drain_timeout_s: float = Field(default=300.0, ge=0)
    max_message_bytes: int = Field(default=256 * 1024, ge=4096)
    fast_paths: bool = Field(
        default=True,
        description="Fast paths past uvicorn's, websockets' and the SDK's public APIs, each behind a "
        "start-up probe (GET /healthz says which run); false forces the public paths.",
    )
    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _read_instructions_file(self) -> Settings:
        try:
            price_table(self.prices)
        except ValueError as exc:
            raise ValueError(f"CALLBOT_PRICES: {exc}") from exc
        if self.instructions_file is not None:
            try:
                self.instructions = self.instructions_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"CALLBOT_INSTRUCTIONS_FILE {self.instructions_file}: {exc}") from exc
        if self.public_url is not None:
            self.public_url = self.public_url.rstrip("/")
        if self.media_message_ms > self.playback_lead_ms:
            raise ValueError(
                f"CALLBOT_MEDIA_MESSAGE_MS ({self.media_message_ms}) must not exceed "
                f"CALLBOT_PLAYBACK_LEAD_MS ({self.playback_lead_ms}): a message must fit under the lead"
            )
        if self.playback_prebuffer_ms > self.playback_lead_ms:
            raise ValueError(
                f"CALLBOT_PLAYBACK_PREBUFFER_MS ({self.playback_prebuffer_ms}) must not exceed "
                f"CALLBOT_PLAYBACK_LEAD_MS ({self.playback_lead_ms}): what is held must fit under the lead"
            )
        return self

    # ----- derived values -----
    @property
    def media_ws_url(self) -> str:
        """The `wss://` URL of the media websocket, exactly as written into the TwiML."""
        origin = self.require_public_url()
        if origin.startswith("https://"):
            return "wss://" + origin[len("https://") :] + "/twilio/media"
        if origin.startswith("http://"):
            return "ws://" + origin[len("http://") :] + "/twilio/media"
        return origin + "/twilio/media"

    @property
    def voice_webhook_url(self) -> str:
        return self.require_public_url() + "/twilio/voice"

    @property
    def price_table(self) -> dict[str, Prices]:
        """`prices` as the cost estimates take it."""
        return price_table(self.prices)

    def require_public_url(self) -> str:
        if not self.public_url:
            raise SettingsError("set CALLBOT_PUBLIC_URL to the https origin Twilio reaches this server at")
        return self.public_url

    def outbound_problems(self, from_number: str | None = None) -> list[str]:
        """The settings missing to place a call (empty when it can be placed)."""
        missing = []
        if not self.twilio_account_sid:
            missing.append("TWILIO_ACCOUNT_SID")
        if self.twilio_auth_token is None:
            missing.append("TWILIO_AUTH_TOKEN")
        if not self.public_url:
            missing.append("CALLBOT_PUBLIC_URL")
        if not (from_number or self.outbound_from_number):
            missing.append("CALLBOT_OUTBOUND_FROM_NUMBER (or the call's 'from')")
        return missing

    def check_serving(self) -> None:
        """Fail fast, naming every missing setting the server needs to take calls."""
        missing = []
        if self.openai_api_key is None:
            missing.append("OPENAI_API_KEY (your OpenAI API key)")
        if not self.public_url:
            missing.append("CALLBOT_PUBLIC_URL (the public https origin of this server)")
        if self.validate_twilio_signatures and self.twilio_auth_token is None:
            missing.append(
                "TWILIO_AUTH_TOKEN (to check Twilio's request signatures; "
                "or CALLBOT_VALIDATE_TWILIO_SIGNATURES=false in development)"
            )
        if missing:
            raise SettingsError("missing settings: " + "; ".join(missing))


def env_example() -> str:
    """The text of deploy/env.example: every setting with its default (a test keeps the file in sync)."""
    lines = [
        "# Every callbot setting, with its default. Copy to .env and fill in what you need.",
        "# Credentials use the names the OpenAI and Twilio SDKs read; everything else is CALLBOT_<NAME>.",
        "# Lines starting with '# NAME=' have no default: uncomment and set them as needed.",
        "",
    ]
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        env = alias.choices[0] if isinstance(alias, AliasChoices) else f"CALLBOT_{name.upper()}"
        default = info.get_default(call_default_factory=True, validated_data={})
        if isinstance(default, bool):
            value = str(default).lower()
        elif isinstance(default, list):
            value = "[]"
        elif default is None or "\n" in str(default) or len(str(default)) > 100:
            value = ""
        else:
            value = str(default)
        if info.description:
            lines.append(f"# {info.description}")
        lines.append(f"{env}={value}" if value else f"# {env}=")
    return "\n".join(lines) + "\n"
