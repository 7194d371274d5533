"""`cairnd acp` against the agent driven directly: what an editor pays for cairnd in
front of its agent (SPEC 18), measured by one ACP client (the Python SDK's) talking to
the agent directly, to `cairnd acp` fronting it, and to a process that only copies bytes
in front of it (bench/byterelay.py: the floor of any process on the path), turns
interleaved, in an order that alternates from round to round.

- latency: from the client writing `session/prompt` to the first `session/update` it
  reads (the editor's "it started answering"), median over turns, with the middle
  half's range;
- bytes: of everything the client reads during a whole turn (updates and the answer,
  as compact JSON), median;
- a `/rewind` against a `/fork` at the same message, both as slash commands answered
  by cairnd acp (request to answer), on a repository of 1000 files with a dirty tree.

Each prompt comes SETTLE seconds after the last turn ended, as an editor's prompts come
after a pause: cairnd's work after a turn (the log's offsets index, packing) is done by
then and does not land on the next turn, whichever side it is.

The agent is the reference agent (no model): its own cost is near nothing, so the
ratios show cairnd's part whole (a real agent's seconds per turn would hide it; one
row shows by how much, with an agent that thinks before it answers).
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
from measure import BENCH, Row, command_of, main, median, ms, percentile, ratio, target_text
from synth import dirty, git, repo  # noqa: E402

TARGET = 1.10
SETTLE = 0.05  # seconds between a turn's answer and the next prompt
THINKING = 0.3  # seconds the "thinking" agent waits before its first update (a model's first token comes later)
AGENT = [sys.executable, "-m", "cairnd.agents.reference"]
SIDES = {"direct": AGENT, "front": [sys.executable, "-m", "cairnd", "acp"],
         "relay": [sys.executable, str(BENCH / "byterelay.py"), *AGENT]}


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


async def _rounds(opened: dict, found: dict[str, list[float]], rounds: int, prefix: str, label: str,
                  measured: tuple[str, ...]) -> None:
    """`rounds` turns on every side (the first, a warm-up, not counted), each after SETTLE."""
    names = list(opened)
    for number in range(rounds + 1):
        text = f"{prefix}write {label}-{number}.txt: turn {number}\necho turn {number}"
        for name in names if number % 2 else names[::-1]:
            await asyncio.sleep(SETTLE)
            conn, client, session = opened[name]
            first, size, whole = await _turn(conn, client, session, text)
            if number:
                for key, value in zip(measured, (first, size, whole)):
                    found.setdefault(f"{name}_{key}", []).append(value)


async def _measure(root: Path, turns: int, thinking: int, rewinds: int) -> dict[str, list[float]]:
    from contextlib import AsyncExitStack
    env = {**os.environ, "CAIRND_STATE_DIR": str(root / "state"), "CAIRND_REFERENCE_STORE": str(root / "ref")}
    found: dict[str, list[float]] = {"fork": [], "rewind": []}
    async with AsyncExitStack() as stack:
        opened = {}
        for name, command in SIDES.items():
            target = root / name
            git(root, "clone", "-q", "--shared", repo(1_000), target)
            if name == "front":
                dirty(target, 1_000)
            opened[name] = await _open(stack, command, target, env)
        await _rounds(opened, found, turns, "", "bench", ("first", "bytes", "turn"))
        direct_and_front = {name: opened[name] for name in ("direct", "front")}
        await _rounds(direct_and_front, found, thinking, f"sleep: {THINKING}\n", "thinking", ("thinking",))
        conn, client, session = opened["front"]
        messages = turns + thinking + 2
        for _ in range(rewinds):
            _f, _b, took_fork = await _turn(conn, client, session, f"/fork {messages - 1}")
            assert "Forked at" in "".join(client.texts), client.texts
            _f, _b, took_rewind = await _turn(conn, client, session, f"/rewind {messages - 1}")
            assert "Rewound" in "".join(client.texts), client.texts
            found["fork"].append(took_fork)
            found["rewind"].append(took_rewind)
            await _turn(conn, client, session, "write again.txt: again")  # the message the next rewind undoes
    return found


def _spread(values: list[float]) -> str:
    """The middle half of the turns."""
    return f"{percentile(values, 0.25) * 1000:.1f}-{percentile(values, 0.75) * 1000:.1f} ms"


def run(quick: bool) -> list[Row]:
    command = command_of(__file__, quick)
    turns, thinking, rewinds = (8, 2, 2) if quick else (40, 10, 6)
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-acp-") as tmp:
        found = asyncio.run(_measure(Path(tmp), turns, thinking, rewinds))
    first = {side: median(found[f"{side}_first"]) for side in SIDES}
    spread = {side: _spread(found[f"{side}_first"]) for side in SIDES}
    bytes_d, bytes_f = median(found["direct_bytes"]), median(found["front_bytes"])
    turn_d, turn_f = median(found["direct_turn"]), median(found["front_turn"])
    think_d, think_f = median(found["direct_thinking"]), median(found["front_thinking"])
    fork, rewind = median(found["fork"]), median(found["rewind"])
    return [
        Row("cairnd acp: session/prompt to the first session/update",
            f"{ms(first['front'])} through cairnd acp (middle half {spread['front']}; the agent directly: "
            f"{ms(first['direct'])}, {spread['direct']}), median of {turns} turns, each {SETTLE * 1000:.0f} ms "
            "after the last",
            ratio(first["front"], first["direct"], "the agent directly"),
            target_text(f"<= {TARGET:.2f}x", first["front"] / first["direct"] <= TARGET), command),
        Row("cairnd acp: the floor, a process that only copies bytes in front of the agent",
            f"{ms(first['relay'])} to the first update through it (middle half {spread['relay']}), same turns",
            ratio(first["relay"], first["direct"], "the agent directly"),
            target_text("none: what any process on the path costs", None), command),
        Row("cairnd acp: the first update from an agent that thinks first",
            f"{ms(think_f)} through cairnd acp (the agent directly: {ms(think_d)}), its first update "
            f"{THINKING * 1000:.0f} ms after the prompt, median of {thinking} turns",
            ratio(think_f, think_d, "the agent directly"),
            target_text(f"<= {TARGET:.2f}x", think_f / think_d <= TARGET), command),
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
