"""What `callbot serve` loads before its first call (issue #14: idle RSS).

The server imports neither the other commands' modules (simulator, softphone, ticket CLI) nor
alembic and its template engine unless a migration runs, nor jinja2 before a review page is
asked for. Each check runs in a fresh interpreter, since this test process has imported all of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from callbot.adapters.store_migrate import head_revision, recorded_revision, shipped_head, upgrade_if_needed

NOT_BEFORE_THE_FIRST_CALL = [
    "alembic",
    "mako",
    "jinja2",
    "callbot.caller",
    "callbot.testing",
    "callbot.demo",
    "callbot.phone",
]


def loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_serve_builds_its_app_without_the_other_commands_alembic_or_jinja2() -> None:
    modules = loaded_after(
        "from callbot.cli import build_parser\n"
        "build_parser(serve_only=True).parse_args(['serve'])\n"
        "from callbot.settings import Settings\n"
        "from callbot.web.app import create_app\n"
        "create_app(Settings(_env_file=None, public_url='https://x.example.com', admin_password='p'))\n"
    )
    assert "callbot.web.app" in modules and "callbot.adapters.store_sql" in modules
    assert [m for m in NOT_BEFORE_THE_FIRST_CALL if m in modules] == []
    assert "callbot.cli_tickets" not in modules


def test_the_full_command_line_still_has_every_command() -> None:
    from callbot.cli import build_parser

    parser = build_parser()
    for argv in (["demo"], ["phone", "--list-devices"], ["tickets", "list"], ["db", "upgrade"]):
        assert parser.parse_args(argv).func is not None


def test_the_shipped_head_read_without_alembic_is_alembics_head() -> None:
    assert shipped_head() == head_revision()


async def test_upgrade_if_needed_migrates_a_new_database_then_skips_alembic(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sub/t.db"
    assert await recorded_revision(url) is None
    assert not (tmp_path / "sub").exists()  # asking did not create the database
    assert await upgrade_if_needed(url) == shipped_head()
    assert await recorded_revision(url) == shipped_head()
    engine = sa.create_engine(f"sqlite:///{tmp_path}/sub/t.db")
    with engine.connect() as conn:
        assert "tickets" in sa.inspect(conn).get_table_names()
    engine.dispose()
    # An up-to-date database: a server restarting on it never imports alembic.
    modules = loaded_after(
        "import asyncio\n"
        "from callbot.adapters.store_migrate import upgrade_if_needed\n"
        f"assert asyncio.run(upgrade_if_needed({url!r})) == {shipped_head()!r}\n"
    )
    assert "alembic" not in modules and "mako" not in modules


def test_the_twilio_rest_client_is_imported_at_its_first_request_not_at_start_up() -> None:
    modules = loaded_after(
        "from callbot.settings import Settings\n"
        "from callbot.web.app import create_app\n"
        "create_app(Settings(_env_file=None, public_url='https://x.example.com', admin_password='p',\n"
        "    twilio_account_sid='AC' + '0' * 32, twilio_auth_token='token'))\n"
    )
    assert "callbot.compose" in modules
    assert [m for m in ("callbot.adapters.twilio_rest", "twilio.rest", "requests") if m in modules] == []


async def test_call_control_on_first_use_builds_once_and_forwards() -> None:
    from callbot.compose import CallControlOnFirstUse
    from callbot.core.call_control import CallCreate, CallState, CallUpdate, CreatedCall

    class Control:
        def __init__(self) -> None:
            self.calls: list[str] = []

        async def update_call(self, call_sid: str, update: CallUpdate) -> None:
            self.calls.append(f"update {call_sid} {update.status}")

        async def create_call(self, request: CallCreate) -> CreatedCall:
            self.calls.append(f"create {request.to}")
            return CreatedCall(call_sid="CA1", status="queued")

        async def fetch_call(self, call_sid: str) -> CallState:
            self.calls.append(f"fetch {call_sid}")
            return CallState(status="completed", duration_s=3)

        async def aclose(self) -> None:
            self.calls.append("closed")

    built: list[Control] = []

    def build() -> Control:
        built.append(Control())
        return built[-1]

    unused = CallControlOnFirstUse(build)
    await unused.aclose()
    assert built == []  # never asked: never built, nothing to close

    control = CallControlOnFirstUse(build)
    await control.update_call("CA9", CallUpdate(status="completed"))
    request = CallCreate(to="+15550001111", from_="+15550002222", twiml="<Response/>")
    created = await control.create_call(request)
    state = await control.fetch_call("CA9")
    await control.aclose()
    assert len(built) == 1
    assert built[0].calls == ["update CA9 completed", "create +15550001111", "fetch CA9", "closed"]
    assert created.call_sid == "CA1" and state.duration_s == 3
