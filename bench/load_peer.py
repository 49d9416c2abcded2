"""Peer servers for load_bench.py's side-by-side mode (`--peer`): where their code and venv come
from and the command that serves them on loopback.

A peer is another Twilio <-> OpenAI Realtime bridge run against the same load side as callbot:
the same lean callers and the same fake Realtime server (`bench/load_fake.py`), the peer pinned
to the server CPU. Its source is never part of this repository: it is copied from `--peer-dir`
(default `../shared/peers/<name>` beside the checkout) into the run's work directory, and it
runs in a venv built from its own pinned `requirements.txt` into a cache directory
(`bench/.peer-venv/<name>-<hash of the requirements>`, git-ignored) the first time.

Known peers (`PEERS`):

* `twilio-sample`: Twilio's official Python sample (FastAPI + uvicorn + a `websockets` client,
  G.711 passthrough, one mark per audio delta), changed only to read the fake's port from
  `FAKE_OPENAI_PORT`. Served as `python -m uvicorn main:app --host 127.0.0.1 --port P`, which
  is what its `__main__` (`uvicorn.run(app, host="0.0.0.0", port=PORT)`) does, bound to
  loopback instead of every interface. Webhook `POST /incoming-call`, stream `/media-stream`
  (host from the request); no signature checks, no stream tokens, and it does not speak first.

Any other peer: `--peer NAME --peer-dir DIR --peer-cmd '{python} ...' --peer-webhook PATH`.
The command is a template (`{python}` the venv's interpreter, `{port}` the port to listen on,
`{fake_port}` the fake Realtime's port, `{src}` the copied source); it must serve in the
process it starts (no shell, no reloader, no worker processes), because CPU and RSS are read
from that process.
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
VENV_CACHE = REPO / "bench" / ".peer-venv"
FAKE_API_KEY = "sk-load-bench-fake"


@dataclass(frozen=True)
class PeerSpec:
    name: str
    src: Path
    """The peer's source folder (read only: it is copied before it runs)."""
    command: str
    """argv template: {python}, {port}, {fake_port}, {src}."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment, same placeholders."""
    webhook_path: str = "/incoming-call"
    ready_path: str = "/"
    """GET this until it answers (any status below 500): the peer is listening."""
    requirements: str = "requirements.txt"
    greets: bool = False
    """Whether the peer speaks first (callers wait for a greeting) or waits for the caller."""


PEERS: dict[str, dict[str, object]] = {
    "twilio-sample": {
        "command": "{python} -m uvicorn main:app --host 127.0.0.1 --port {port}",
        "env": {"PORT": "{port}", "FAKE_OPENAI_PORT": "{fake_port}", "OPENAI_API_KEY": FAKE_API_KEY},
        "webhook_path": "/incoming-call",
        "ready_path": "/",
        "greets": False,
    }
}


def default_peer_dir(name: str, repo: Path = REPO) -> Path:
    """`../shared/peers/<name>` beside the checkout (CI and other checkouts have it there)."""
    return repo.parent / "shared" / "peers" / name


def peer_spec(
    name: str,
    *,
    peer_dir: str | Path | None = None,
    command: str | None = None,
    webhook_path: str | None = None,
    env: Mapping[str, str] | None = None,
    repo: Path = REPO,
) -> PeerSpec:
    """The spec of a known peer, with any of its parts overridden; an unknown peer needs a command."""
    known = PEERS.get(name, {})
    cmd = command or known.get("command")
    if not cmd:
        raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEERS)}): give its --peer-cmd")
    src = Path(peer_dir) if peer_dir else default_peer_dir(name, repo)
    merged_env = {**dict(known.get("env", {})), **dict(env or {})}  # type: ignore[call-overload]
    return PeerSpec(
        name=name,
        src=src.resolve(),
        command=str(cmd),
        env=merged_env,
        webhook_path=str(webhook_path or known.get("webhook_path") or "/incoming-call"),
        ready_path=str(known.get("ready_path") or "/"),
        greets=bool(known.get("greets", False)),
    )


def _fill(template: str, values: Mapping[str, str]) -> str:
    try:
        return template.format(**values)
    except KeyError as exc:
        raise ValueError(f"unknown placeholder {exc} in peer template {template!r}") from None


def build_command(spec: PeerSpec, *, python: str, port: int, fake_port: int, src: Path) -> list[str]:
    """The peer's argv: the template split like a shell would (no shell runs), then filled in."""
    values = {"python": python, "port": str(port), "fake_port": str(fake_port), "src": str(src)}
    argv = [_fill(part, values) for part in shlex.split(spec.command)]
    if not argv:
        raise ValueError("empty peer command")
    return argv


def build_env(
    spec: PeerSpec, base: Mapping[str, str], *, port: int, fake_port: int, src: Path
) -> dict[str, str]:
    """The peer's environment: `base` without this checkout's Python settings, plus the spec's."""
    values = {"port": str(port), "fake_port": str(fake_port), "src": str(src), "python": ""}
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update({k: _fill(v, values) for k, v in spec.env.items()})
    return env


def requirements_key(text: str) -> str:
    """Cache key of a venv: the first 12 hex digits of the requirements' SHA-256 (pins changed,
    new venv) together with this interpreter's version."""
    digest = hashlib.sha256(f"{sys.version_info[:2]}\n{text}".encode()).hexdigest()
    return digest[:12]


def venv_dir(spec: PeerSpec, cache: Path = VENV_CACHE) -> Path:
    text = (spec.src / spec.requirements).read_text()
    return cache / f"{spec.name}-{requirements_key(text)}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(spec: PeerSpec, cache: Path = VENV_CACHE, *, log: TextIO = sys.stderr) -> Path:
    """The peer venv's interpreter; builds the venv from the peer's requirements when missing.

    A `.complete` file is written once pip succeeded, so an interrupted build is rebuilt, never
    mistaken for a finished one.
    """
    req = spec.src / spec.requirements
    if not req.exists():
        raise FileNotFoundError(f"{req} not found: is --peer-dir right?")
    final = venv_dir(spec, cache)
    python = venv_python(final)
    done = final / ".complete"
    if python.exists() and done.exists():
        return python
    shutil.rmtree(final, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"building the {spec.name} venv in {final} from {req} ...", file=log, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(final)], check=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(req)], check=True, timeout=900)
    done.write_text(req.read_text())
    return python


def copy_source(spec: PeerSpec, dest_root: Path) -> Path:
    """A fresh copy of the peer's source under `dest_root` (the shared folder stays untouched)."""
    if not spec.src.is_dir():
        raise FileNotFoundError(f"peer source {spec.src} not found: pass --peer-dir")
    dest = dest_root / f"peer-{spec.name}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(
        spec.src, dest, ignore=shutil.ignore_patterns(".venv", "venv", "__pycache__", ".git", ".env")
    )
    for path in dest.rglob("*"):  # the shared copy may be read-only; this one is the peer's to use
        path.chmod(path.stat().st_mode | 0o200)
    dest.chmod(dest.stat().st_mode | 0o200)
    return dest


def source_digest(src: Path) -> str:
    """A short SHA-256 over the peer's files (names and contents), for the report."""
    h = hashlib.sha256()
    for path in sorted(q for q in src.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(
    proc: asyncio.subprocess.Process, port: int, path: str, timeout: float = 60.0
) -> None:
    """Until an HTTP GET of `path` on 127.0.0.1:`port` gets a status line, or the process died."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"the peer exited with {proc.returncode} before it listened")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(request)
            line = await asyncio.wait_for(reader.readline(), 5.0)
        except (OSError, TimeoutError):
            line = b""
        finally:
            writer.close()
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < 500:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the peer did not answer GET {path} on port {port} within {timeout:g} s")
