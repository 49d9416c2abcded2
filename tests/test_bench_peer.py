"""bench/load_peer.py: where a peer server's code and venv come from and how it is started
(plain functions; no peer runs and no venv is built here)."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import load_peer


def test_the_twilio_sample_is_served_on_loopback_from_its_venv() -> None:
    spec = load_peer.peer_spec("twilio-sample", peer_dir="/x/peers/twilio-sample")
    argv = load_peer.build_command(spec, python="/v/bin/python", port=5050, fake_port=8765, src=Path("/w/p"))
    assert argv == ["/v/bin/python", "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", "5050"]
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/work/callbot", "VIRTUAL_ENV": "/work/.venv", "HOME": "/root"}
    env = load_peer.build_env(spec, base, port=5050, fake_port=8765, src=Path("/w/p"))
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "PORT": "5050",
        "FAKE_OPENAI_PORT": "8765",
        "OPENAI_API_KEY": load_peer.FAKE_API_KEY,
    }
    assert spec.webhook_path == "/incoming-call" and spec.greets is False
    assert spec.src == Path("/x/peers/twilio-sample")


def test_the_peer_source_defaults_to_shared_beside_the_checkout() -> None:
    repo = Path("/ci/checkouts/callbot")
    assert load_peer.default_peer_dir("twilio-sample", repo) == Path(
        "/ci/checkouts/shared/peers/twilio-sample"
    )
    spec = load_peer.peer_spec("twilio-sample", repo=repo)
    assert spec.src == Path("/ci/checkouts/shared/peers/twilio-sample")


def test_another_peer_needs_its_command_and_may_use_every_placeholder() -> None:
    with pytest.raises(ValueError, match="unknown peer 'other'"):
        load_peer.peer_spec("other", peer_dir="/p")
    spec = load_peer.peer_spec(
        "other",
        peer_dir="/p",
        command="{python} '{src}/serve it.py' --port {port} --upstream ws://127.0.0.1:{fake_port}",
        webhook_path="/voice",
        env={"TOKEN": "t-{port}"},
    )
    argv = load_peer.build_command(spec, python="py", port=1, fake_port=2, src=Path("/w/src"))
    assert argv == ["py", "/w/src/serve it.py", "--port", "1", "--upstream", "ws://127.0.0.1:2"]
    assert load_peer.build_env(spec, {}, port=1, fake_port=2, src=Path("/w"))["TOKEN"] == "t-1"
    assert spec.webhook_path == "/voice"
    bad = load_peer.peer_spec("other", peer_dir="/p", command="{python} --at {host}")
    with pytest.raises(ValueError, match="unknown placeholder 'host'"):
        load_peer.build_command(bad, python="py", port=1, fake_port=2, src=Path("/w"))


def test_the_venv_is_keyed_by_the_pins_and_reused_once_complete(tmp_path: Path) -> None:
    src = tmp_path / "peer"
    src.mkdir()
    (src / "requirements.txt").write_text("websockets==15.0.1\n")
    spec = load_peer.peer_spec("twilio-sample", peer_dir=src)
    cache = tmp_path / "cache"
    first = load_peer.venv_dir(spec, cache)
    assert first.parent == cache and first.name.startswith("twilio-sample-") and len(first.name) == 26
    (src / "requirements.txt").write_text("websockets==15.0.2\n")
    assert load_peer.venv_dir(spec, cache) != first  # new pins, new venv
    venv = load_peer.venv_dir(spec, cache)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / ".complete").write_text("")
    assert load_peer.ensure_venv(spec, cache) == venv / "bin" / "python"  # no build: it is there
    with pytest.raises(FileNotFoundError, match="--peer-dir"):
        load_peer.ensure_venv(load_peer.peer_spec("twilio-sample", peer_dir=tmp_path / "nowhere"), cache)


def test_the_source_is_copied_writable_without_caches(tmp_path: Path) -> None:
    src = tmp_path / "shared" / "twilio-sample"
    (src / "__pycache__").mkdir(parents=True)
    (src / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"x")
    (src / "main.py").write_text("print('hi')\n")
    (src / "main.py").chmod(stat.S_IRUSR | stat.S_IRGRP)
    spec = load_peer.peer_spec("twilio-sample", peer_dir=src)
    digest = load_peer.source_digest(src)
    dest = load_peer.copy_source(spec, tmp_path / "run")
    assert dest == tmp_path / "run" / "peer-twilio-sample"
    assert sorted(p.name for p in dest.iterdir()) == ["main.py"]
    assert (dest / "main.py").read_text() == "print('hi')\n"
    assert (dest / "main.py").stat().st_mode & stat.S_IWUSR
    assert load_peer.source_digest(dest) == digest == load_peer.source_digest(src)  # caches not counted
    (src / "main.py").chmod(stat.S_IRUSR | stat.S_IWUSR)
    (src / "main.py").write_text("print('changed')\n")
    assert load_peer.source_digest(src) != digest
