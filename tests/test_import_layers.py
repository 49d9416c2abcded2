"""The import layers, enforced: `lint-imports` checks the contracts in pyproject.toml.

Imports point one way (entry points -> web -> compose -> bridge / ticket service / adapters ->
ports -> core -> errors); core does no I/O; the bridge and the ticket service reach the outside
world only through `callbot.ports`; nothing imports web or the CLI. A new import that breaks
one fails here, with import-linter's report naming the import chain.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str:
    beside_python = Path(sys.executable).with_name("lint-imports")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]' (import-linter)")
    return found


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [_lint_imports(), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "0 broken" in report, report


def test_importing_the_bridge_and_the_ticket_service_loads_no_io_library() -> None:
    """The point of the ports, checked at run time too: a fresh interpreter imports the bridge
    and the ticket service, and none of the adapters' libraries comes along."""
    heavy = ["openai", "websockets", "starlette", "fastapi", "uvicorn", "httpx", "sqlalchemy"]
    code = (
        "import sys, callbot.bridge, callbot.ticketing, callbot.ports, callbot.logs; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
