"""What cairnd acp sends the editor of its agent's frames (cairnd.acp.relay), on a real
socket and the ACP SDK's own connection: an update of a turn goes out at once, in order
with what the outbox queued before it; outside a turn only the updates an editor wants."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
from acp.connection import Connection

from cairnd.acp.relay import Outbox, Relay

pytestmark = pytest.mark.anyio


class EditorEnd:
    """The editor's end of the socket: what cairnd acp wrote to it, frame by frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def has_data(self) -> bool:
        """Whether bytes are waiting now (no wait: what was written is in the kernel)."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def frames(self, count: int) -> list[dict[str, Any]]:
        self.sock.settimeout(30)
        while self.pending.count(b"\n") < count:
            self.pending += self.sock.recv(1 << 16)
        lines = self.pending.split(b"\n")
        self.pending = b"\n".join(lines[count:])
        return [orjson.loads(line) for line in lines[:count]]


@asynccontextmanager
async def outbox_to_editor() -> AsyncIterator[tuple[Outbox, EditorEnd]]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)

    async def no_requests(method: str, params: Any, is_notification: bool) -> None:
        return None

    outbox = Outbox()
    outbox.conn = Connection(no_requests, writer, reader, listening=False)  # the SDK's, as cairnd acp's
    outbox.wire = writer
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            yield outbox, EditorEnd(theirs)
            tg.cancel_scope.cancel()
    finally:
        await outbox.conn.close()
        theirs.close()


def update(session: str, kind: str, n: int) -> dict[str, Any]:
    return {"sessionId": session, "update": {"sessionUpdate": kind, "n": n}}


async def test_an_update_of_a_turn_is_out_before_the_relay_returns_and_behind_what_was_queued() -> None:
    async with outbox_to_editor() as (outbox, editor):
        outbox.forward(update("s", "agent_message_chunk", 1))
        assert editor.has_data()  # written in the tap's own step, no task in between
        outbox.say("s", "cairnd's own words")  # through the outbox task and the SDK
        outbox.forward(update("s", "agent_message_chunk", 2))  # behind them, however it goes
        outbox.update("s", {"sessionUpdate": "available_commands_update", "availableCommands": []})
        outbox.forward(update("s", "agent_message_chunk", 3))
        await outbox.flush()
        frames = editor.frames(5)
    assert all(f["method"] == "session/update" and f["jsonrpc"] == "2.0" for f in frames)
    assert [f["params"]["update"].get("n") or f["params"]["update"]["sessionUpdate"] for f in frames] == [
        1, "agent_message_chunk", 2, "available_commands_update", 3]
    assert frames[1]["params"]["update"]["content"]["text"] == "cairnd's own words"


async def test_the_agent_s_updates_reach_the_editor_under_its_session_id_in_a_turn_and_few_outside() -> None:
    async with outbox_to_editor() as (outbox, editor):
        relay = Relay("editor-session", outbox, own_commands=[{"name": "rewind", "description": "go back"}])

        def from_agent(kind: str, n: int, **extra: Any) -> None:
            message = {"jsonrpc": "2.0", "method": "session/update",
                       "params": {**update("agent-session", kind, n), **extra}}
            relay.observe(orjson.dumps(message), message)

        from_agent("agent_message_chunk", 1)  # between turns: a session/load's history, say
        from_agent("current_mode_update", 2)  # between turns, and the editor wants it
        relay.in_turn = True
        from_agent("agent_message_chunk", 3, _meta={"kept": True})
        relay.observe(b"not json", None)  # logged by the tap; nothing to tell the editor
        relay.in_turn = False
        await outbox.flush()
        frames = editor.frames(2)
        assert not editor.has_data()
    assert [f["params"]["update"]["n"] for f in frames] == [2, 3]
    assert {f["params"]["sessionId"] for f in frames} == {"editor-session"}
    assert frames[1]["params"]["_meta"] == {"kept": True}
