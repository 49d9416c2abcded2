"""Settings: the env example stays complete, and values come from the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from callbot.settings import Settings, env_example

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_lists_every_setting_with_its_default() -> None:
    # Regenerate with: python -c "from callbot.settings import env_example; print(env_example(), end='')"
    assert (ROOT / "deploy" / "env.example").read_text() == env_example()


def test_settings_read_the_sdk_names_and_callbot_prefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    monkeypatch.setenv("CALLBOT_PUBLIC_URL", "https://bot.example.com/")
    monkeypatch.setenv("CALLBOT_AUDIO_MODE", "pcmu")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    settings.check_serving()
    assert settings.audio_mode == "pcmu"
    assert settings.media_ws_url == "wss://bot.example.com/twilio/media"
    assert settings.voice_webhook_url == "https://bot.example.com/twilio/voice"
    assert "sk-test" not in repr(settings)  # secrets never end up in logs via repr


def test_instructions_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "persona.txt"
    path.write_text("You are Ada, the dental practice's receptionist.\n")
    assert Settings(_env_file=None, instructions_file=path).instructions.startswith("You are Ada")  # type: ignore[call-arg]


def test_json_log_lines_carry_the_call_sid(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    from callbot.logs import call_sid_var, setup_logging

    setup_logging("INFO", json_lines=True)
    try:
        token = call_sid_var.set("CA0123")
        logging.getLogger("callbot.bridge").info("ending call: %s", "caller hung up")
        call_sid_var.reset(token)
        logging.getLogger("callbot.web").warning("no call here")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["call_sid"] == "CA0123" and lines[0]["msg"] == "ending call: caller hung up"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "callbot.bridge"
    assert lines[1]["call_sid"] == "-"


def test_debug_logs_never_print_websockets_frames_with_the_mcp_authorization(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """websockets logs each frame at DEBUG as its head and tail; a session.update's tail is the
    MCP servers' `authorization`. At DEBUG callbot's own lines come out and those never do."""
    import json
    import logging

    from websockets.frames import Frame, Opcode

    from callbot.logs import setup_logging

    tools = [{"type": "mcp", "server_label": "docs", "authorization": "sk-mcp-9"}]
    update = {"type": "session.update", "session": {"instructions": "x" * 500, "tools": tools}}
    frame = Frame(Opcode.TEXT, json.dumps(update).encode())
    assert "sk-mcp-9" in str(frame)  # what websockets would print
    setup_logging("DEBUG", json_lines=True)
    try:
        logging.getLogger("websockets.client").debug("> %s", frame)
        logging.getLogger("callbot.bridge").debug("a debug line")
        logging.getLogger("websockets.client").warning("a warning still shows")
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("websockets").setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "sk-mcp-9" not in err
    assert [json.loads(line)["msg"] for line in err.splitlines()] == ["a debug line", "a warning still shows"]


def _readme_settings_table() -> set[str]:
    """The names in README's settings table (section Settings).

    `_X` after `CALLBOT_Y` in one cell is `CALLBOT_X`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| setting | default | meaning |", text.index("\n## Settings\n")) :]
    table = table[: table.index("\n\n")]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        prefix = ""
        for token in re.findall(r"`([A-Z_][A-Z0-9_]*)`", line.split("|")[1]):
            if token.startswith("_"):
                names.add(prefix + token)
            else:
                names.add(token)
                prefix = token.split("_", 1)[0]
    return names


def test_readme_settings_table_lists_every_setting() -> None:
    settings = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", env_example(), re.MULTILINE))
    assert len(settings) > 70  # the env example parsed
    table = _readme_settings_table()
    assert sorted(settings - table) == []
    assert sorted(table - settings) == []
