"""`cairnd acp` against the agent driven directly: what an editor pays for cairnd in
front of its agent (SPEC 18), measured by one ACP client (the Python SDK's) talking to
both at once, turns interleaved.

- latency: from the client writing `session/prompt` to the first `session/update` it
  reads (the editor's "it started answering"), median over turns;
- bytes: of everything the client reads during a whole turn (updates and the answer,
  as compact JSON), median;
- a `/rewind` against a `/fork` at the same message, both as slash commands answered
  by cairnd acp (request to answer), on a repository of 1000 files with a dirty tree.

The agent is the reference agent (no model): its own cost is near nothing, so the
ratios show cairnd's part whole (a real agent's seconds per turn would hide it).
Each turn writes a file and echoes a line: a tool call, its update, two messages.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

# This file is bench/acpfront.py: with bench/ first on the path it would hide the ACP SDK's `acp`.
_BENCH = sys.path.pop(0) if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent else None
from acp import PROTOCOL_VERSION, spawn_agent_process, text_block  # noqa: E402
from acp.schema import ClientCapabilities, FileSystemCapabilities  # noqa: E402

if _BENCH is not None:
    sys.path.insert(0, _BENCH)
from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import dirty, git, repo  # noqa: E402

TARGET = 1.10


class Client:
    """A minimal ACP client that times what it reads."""

    def __init__(self) -> None:
        self.sent_at = 0.0
        self.first_update: float | None = None
        self.read_bytes = 0
        self.texts: list[str] = []

    def observe(self, event) -> None:
        if event.direction.value != "incoming":
            return
        message = event.message
        self.read_bytes += len(orjson.dumps(message)) + 1
        if message.get("method") == "session/update":
            if self.first_update is None:
                self.first_update = time.perf_counter()
            update = message["params"]["update"]
            if update.get("sessionUpdate") == "agent_message_chunk":
                self.texts.append((update.get("content") or {}).get("text") or "")

    async def request_permission(self, options, session_id, tool_call, **kwargs):
        from acp.schema import AllowedOutcome, RequestPermissionResponse
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=options[0].option_id))

    async def session_update(self, session_id, update, **kwargs):
        return None

    async def write_text_file(self, content, path, session_id, **kwargs):
        from acp.schema import WriteTextFileResponse
        Path(path).write_text(content)
        return WriteTextFileResponse()

    async def read_text_file(self, path, session_id, limit=None, line=None, **kwargs):
        from acp.schema import ReadTextFileResponse
        return ReadTextFileResponse(content=Path(path).read_text())

    async def ext_method(self, method, params):
        return {}

    async def ext_notification(self, method, params):
        return None


async def _turn(conn, client: Client, session: str, text: str) -> tuple[float, int, float]:
    """(seconds to the first update, bytes read, seconds to the answer)."""
    client.first_update, client.read_bytes, client.texts = None, 0, []
    client.sent_at = time.perf_counter()
    await conn.prompt(session_id=session, prompt=[text_block(text)])
    done = time.perf_counter()
    first = (client.first_update or done) - client.sent_at
    return first, client.read_bytes, done - client.sent_at


async def _open(stack, command: list[str], cwd: Path, env: dict[str, str]):
    client = Client()
    conn, _proc = await stack.enter_async_context(spawn_agent_process(
        client, command[0], *command[1:], env=env, cwd=cwd, observers=[client.observe], use_unstable_protocol=True))
    await conn.initialize(protocol_version=PROTOCOL_VERSION, client_capabilities=ClientCapabilities(
        fs=FileSystemCapabilities(read_text_file=True, write_text_file=True)))
    session = (await conn.new_session(cwd=str(cwd), mcp_servers=[])).session_id
    return conn, client, session


async def _measure(root: Path, turns: int, rewinds: int) -> dict[str, list[float]]:
    from contextlib import AsyncExitStack
    env = {**os.environ, "CAIRND_STATE_DIR": str(root / "state"), "CAIRND_REFERENCE_STORE": str(root / "ref")}
    direct_repo, front_repo = root / "direct", root / "front"
    for target in (direct_repo, front_repo):
        git(root, "clone", "-q", "--shared", repo(1_000), target)
    dirty(front_repo, 1_000)
    found: dict[str, list[float]] = {k: [] for k in ("direct_first", "front_first", "direct_bytes", "front_bytes",
                                                     "direct_turn", "front_turn", "fork", "rewind")}
    async with AsyncExitStack() as stack:
        direct = await _open(stack, [sys.executable, "-m", "cairnd.agents.reference"], direct_repo, env)
        front = await _open(stack, [sys.executable, "-m", "cairnd", "acp"], front_repo, env)
        for number in range(turns + 1):  # the first turn of each warms up and is not counted
            text = f"write bench-{number}.txt: turn {number}\necho turn {number}"
            for name, (conn, client, session) in (("direct", direct), ("front", front)):
                first, size, whole = await _turn(conn, client, session, text)
                if number:
                    found[f"{name}_first"].append(first)
                    found[f"{name}_bytes"].append(size)
                    found[f"{name}_turn"].append(whole)
        conn, client, session = front
        messages = turns + 1
        for _ in range(rewinds):
            _f, _b, took_fork = await _turn(conn, client, session, f"/fork {messages - 1}")
            assert "Forked at" in "".join(client.texts), client.texts
            _f, _b, took_rewind = await _turn(conn, client, session, f"/rewind {messages - 1}")
            assert "Rewound" in "".join(client.texts), client.texts
            found["fork"].append(took_fork)
            found["rewind"].append(took_rewind)
            await _turn(conn, client, session, "write again.txt: again")  # the message the next rewind undoes
    return found


def run(quick: bool) -> list[Row]:
    command = command_of(__file__, quick)
    turns, rewinds = (5, 2) if quick else (40, 6)
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-acp-") as tmp:
        found = asyncio.run(_measure(Path(tmp), turns, rewinds))
    first_d, first_f = median(found["direct_first"]), median(found["front_first"])
    bytes_d, bytes_f = median(found["direct_bytes"]), median(found["front_bytes"])
    turn_d, turn_f = median(found["direct_turn"]), median(found["front_turn"])
    fork, rewind = median(found["fork"]), median(found["rewind"])
    return [
        Row("cairnd acp: session/prompt to the first session/update",
            f"{ms(first_f)} through cairnd acp (the agent directly: {ms(first_d)}), median of {turns} turns",
            ratio(first_f, first_d, "the agent directly"), target_text(f"<= {TARGET:.2f}x", first_f / first_d <= TARGET),
            command),
        Row("cairnd acp: bytes the client reads in a whole turn",
            f"{bytes_f:.0f} B through cairnd acp (the agent directly: {bytes_d:.0f} B)",
            ratio(bytes_f, bytes_d, "the agent directly"), target_text(f"<= {TARGET:.2f}x", bytes_f / bytes_d <= TARGET),
            command),
        Row("cairnd acp: a whole turn, prompt to answer (checkpoint included)",
            f"{ms(turn_f)} through cairnd acp (the agent directly: {ms(turn_d)})",
            ratio(turn_f, turn_d, "the agent directly"),
            target_text("none set: the turn's checkpoint is cairnd's work", None), command),
        Row("cairnd acp: /rewind N against /fork N, 1000 files, dirty",
            f"/rewind {ms(rewind)}, /fork {ms(fork)} (request to answer, median of {rewinds})",
            ratio(rewind, fork, "a fork"), target_text("about one fork (SPEC 13)", None), command),
    ]


if __name__ == "__main__":
    main(__file__, run)
