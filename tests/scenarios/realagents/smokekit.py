"""What the hand-run smoke scripts share: a narrated ACP session against a real agent.

Not used by pytest. Every raw ACP frame and every model call is printed with
a timestamp; `check` lines are pass/fail, `seen` lines are observations.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from acp import PROTOCOL_VERSION, spawn_agent_process, text_block
from acp.schema import ClientCapabilities, FileSystemCapabilities, Implementation

from .harness import Frame, RecordingClient
from .scripted import ScriptedModelStub

T0 = time.monotonic()


def say(line: str) -> None:
    print(f"[{time.monotonic() - T0:7.2f}] {line}", flush=True)


def reexec_isolated() -> None:
    """Run this script again in a fresh network namespace that has only loopback.

    Belt and braces for exploring an agent: whatever it tries to reach
    outside 127.0.0.1 fails on the spot instead of leaving the machine.
    """
    if os.environ.get("CAIRND_SMOKE_ISOLATED") == "1":
        return
    script = " ".join(["ip link set lo up && exec", *map(_quote, [sys.executable, *sys.argv])])
    env = {**os.environ, "CAIRND_SMOKE_ISOLATED": "1"}
    sys.exit(subprocess.run(["unshare", "-n", "sh", "-c", script], env=env, check=False).returncode)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


@dataclass
class Smoke:
    work: Path
    home: Path
    repo: Path
    stub: ScriptedModelStub
    command: list[str]
    env: Callable[[], Mapping[str, str]]
    prompt_texts: Callable[[Mapping[str, Any]], list[str]]
    quiet: bool
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        say(("ok   " if ok else "FAIL ") + what)
        if not ok:
            self.failures.append(what)

    def seen(self, what: str) -> None:
        say("seen " + what)

    def client(self, root: Path | None = None) -> RecordingClient:
        return RecordingClient(root=root or self.repo, on_frame=self.print_frame)

    def print_frame(self, frame: Frame) -> None:
        raw = orjson.dumps(frame.message).decode()
        if self.quiet and len(raw) > 300:
            raw = raw[:300] + "..."
        say(("<- " if frame.direction == "in" else "-> ") + raw)

    @contextlib.asynccontextmanager
    async def agent(
        self, client: RecordingClient, cwd: Path, label: str, fs: bool = True
    ) -> AsyncIterator[tuple[Any, Any]]:
        """A fresh agent process, initialized (offering fs/* when `fs`); its stderr goes to a file."""
        stderr_path = self.work / f"agent-{label}.stderr"
        with stderr_path.open("wb") as stderr:
            async with spawn_agent_process(
                client,
                self.command[0],
                *self.command[1:],
                env=dict(self.env()),
                cwd=cwd,
                observers=[client.observe],
                # the SDK's default is a pipe nobody reads: a chatty agent would block on it
                transport_kwargs={"stderr": stderr},
            ) as (conn, proc):
                started = time.monotonic()
                init = await conn.initialize(
                    protocol_version=PROTOCOL_VERSION,
                    client_capabilities=ClientCapabilities(
                        fs=FileSystemCapabilities(read_text_file=fs, write_text_file=fs), terminal=False
                    ),
                    client_info=Implementation(name="cairnd-smoke", version="0"),
                )
                say(f"initialize took {time.monotonic() - started:.2f}s; loadSession={init.agent_capabilities.load_session}")
                yield conn, proc
                closing = time.monotonic()
            say(f"agent {label} gone {time.monotonic() - closing:.2f}s after stdin closed (exit {proc.returncode})")
        tail = stderr_path.read_text(errors="replace").strip()
        if tail:
            say(f"agent {label} stderr (last 800 chars): {tail[-800:]}")

    async def new_session(self, conn: Any, cwd: Path) -> str:
        started = time.monotonic()
        session = await conn.new_session(cwd=str(cwd), mcp_servers=[])
        say(f"session/new took {time.monotonic() - started:.2f}s: {session.session_id}")
        return session.session_id

    async def prompt(self, conn: Any, session_id: str, words: str) -> Any:
        say(f"=== prompt: {words}")
        started = time.monotonic()
        response = await conn.prompt(session_id=session_id, prompt=[text_block(words)])
        say(f"=== stopReason={response.stop_reason} after {time.monotonic() - started:.2f}s")
        return response

    def model_saw_since(self, count_before: int) -> list[list[str]]:
        return [self.prompt_texts(body) for body in self.stub.main_requests()[count_before:]]

    def agent_texts_since(self, client: RecordingClient, first_frame: int) -> list[str]:
        return [
            (f.message["params"]["update"].get("content") or {}).get("text")
            for f in client.frames[first_frame:]
            if f.message.get("method") == "session/update"
            and f.message["params"]["update"].get("sessionUpdate") == "agent_message_chunk"
        ]

    def report_requests(self, dump: Path | None) -> None:
        say("stub requests:")
        for rec in self.stub.requests():
            body = rec.body or {}
            say(
                f"  #{rec.seq} {rec.method} {rec.path} {rec.query} kind={rec.kind} model={body.get('model')} "
                f"stream={body.get('stream')} tools={len(body.get('tools') or [])} -> {rec.reply}"
                f"{' (aborted by client)' if rec.aborted_by_client else ''}"
            )
        say(f"unscripted main calls: {self.stub.unscripted}")
        if dump is None:
            return
        dump.mkdir(parents=True, exist_ok=True)
        for rec in self.stub.requests():
            (dump / f"{rec.seq:03d}-{rec.kind}.json").write_bytes(
                orjson.dumps(
                    {"method": rec.method, "path": rec.path, "query": rec.query, "headers": rec.headers, "body": rec.body},
                    option=orjson.OPT_INDENT_2,
                )
            )
        say(f"request bodies in {dump}")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
