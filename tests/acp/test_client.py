"""`cairnd acp` through the ACP Python SDK's client side, for what acpx does not expose:
session/list, session/load (the conversation replayed from the log), session/fork at a
message id and at the tip, the slash commands, and bad input that leaves the session
going on (SPEC 18)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import acp
import orjson
import pytest
from acp import PROTOCOL_VERSION, spawn_agent_process, text_block
from acp.schema import ClientCapabilities, FileSystemCapabilities

from acpkit import acp_env, cairnd_acp, repo_at
from gitrepos import git_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
from realagents.harness import RecordingClient  # noqa: E402

pytestmark = pytest.mark.anyio


class Editor:
    """One `cairnd acp` process and the client talking to it."""

    def __init__(self, conn, client: RecordingClient) -> None:
        self.conn, self.client = conn, client

    async def say(self, session: str, text: str) -> tuple[str, str]:
        """(the stop reason, the agent's text of this turn)."""
        before = len(self.client.updates("agent_message_chunk"))
        answer = await self.conn.prompt(session_id=session, prompt=[text_block(text)])
        chunks = self.client.updates("agent_message_chunk")[before:]
        assert all(c["sessionId"] == session for c in chunks)
        return answer.stop_reason, "".join((c["update"].get("content") or {}).get("text") or "" for c in chunks)


async def until(condition, seconds: float = 30) -> None:
    import anyio
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.02)


def editor(tmp_path: Path, repo: Path):
    client = RecordingClient(root=repo)
    command = cairnd_acp()
    return client, spawn_agent_process(client, command[0], *command[1:], env=acp_env(tmp_path), cwd=repo,
                                       observers=[client.observe], use_unstable_protocol=True)


async def opened(conn) -> dict:
    init = await conn.initialize(protocol_version=PROTOCOL_VERSION, client_capabilities=ClientCapabilities(
        fs=FileSystemCapabilities(read_text_file=True, write_text_file=True), terminal=False))
    return init.model_dump(by_alias=True, exclude_none=True)


@pytest.mark.slow
async def test_commands_list_load_and_fork_from_a_python_client(tmp_path):
    repo = repo_at(tmp_path)
    client, spawned = editor(tmp_path, repo)
    async with spawned as (conn, _proc):
        ed = Editor(conn, client)
        init = await opened(conn)
        caps = init["agentCapabilities"]
        assert caps["loadSession"] is True and {"list", "resume", "fork"} <= set(caps["sessionCapabilities"])
        assert caps["promptCapabilities"]["embeddedContext"] is True  # the reference agent's, passed through

        with pytest.raises(acp.RequestError) as refused:
            await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
        assert "git repository" in str(refused.value.data) and str(tmp_path) in str(refused.value.data)

        session = (await conn.new_session(cwd=str(repo), mcp_servers=[])).session_id
        await until(lambda: client.updates("available_commands_update"))  # sent right after the answer
        commands = client.updates("available_commands_update")[-1]["update"]["availableCommands"]
        assert {"checkpoints", "rewind", "fork", "diff", "land"} <= {c["name"] for c in commands}

        assert (await ed.say(session, "write a.txt: one"))[0] == "end_turn"
        assert (repo / "a.txt").read_text() == "one\n"  # in place: the editor's own files
        await ed.say(session, "write b.txt: two")

        stop, text = await ed.say(session, "/checkpoints")
        assert stop == "end_turn"
        assert "0  turn 1  'write a.txt: one'  a.txt (A)  dirty" in text, text
        assert "1  turn 2  'write b.txt: two'  b.txt (A)  dirty" in text, text
        _, diff = await ed.say(session, "/diff 1")
        assert "b.txt" in diff and "a.txt" not in diff, diff
        _, text = await ed.say(session, "/rewind 5")
        assert "user_message_index 5: session" in text and "2 user messages" in text, text
        _, text = await ed.say(session, "/frobnicate")
        assert "unknown command /frobnicate" in text, text
        _, text = await ed.say(session, "/fork 1 write c.txt: three")
        found = re.search(r"session (\S+), worktree (\S+)\. Its first turn is running", text)
        assert found, text
        fork_id, fork_tree = found[1], Path(found[2])
        assert (fork_tree / "a.txt").exists() and not (fork_tree / "b.txt").exists()
        _, text = await ed.say(session, "/land from-editor")
        assert "Landed on branch from-editor" in text, text
        assert git_text(repo, "show", "from-editor:b.txt") == "two"
        _, text = await ed.say(session, "echo still here")
        assert "history=2" in text  # the bad commands left the session going, and no command counted

        # session/list: this repository's sessions, the fork and this one among them
        listed = {s.session_id: s for s in (await conn.list_sessions(cwd=str(repo))).sessions}
        assert session in listed and fork_id in listed and listed[session].title == "repo"

        # session/fork at the agent message that answered the first prompt
        log = tmp_path / "state" / "sessions" / session / "log.ndjson"
        first_answer = next(
            m["params"]["update"]["messageId"] for m in (orjson.loads(l)["notification"] for l in log.read_bytes().splitlines())
            if m.get("method") == "session/update" and m["params"]["update"].get("sessionUpdate") == "agent_message_chunk")
        forked = await conn.fork_session(session_id=session, cwd=str(repo), mcp_servers=[],
                                         jetbrains={"air": {"fork": {"version": 1, "messageId": first_answer}}})
        assert forked.session_id not in (session, fork_id)
        _, text = await ed.say(forked.session_id, "echo in the fork")
        assert "history=1" in text, text  # it holds the first turn, natively, and nothing after
        tip = await conn.fork_session(session_id=session, cwd=str(repo), mcp_servers=[])
        _, text = await ed.say(tip.session_id, "echo at the tip")
        assert "history=3" in text, text

    # a new process (another editor window) loads the session: its conversation replayed
    client2, spawned2 = editor(tmp_path, repo)
    async with spawned2 as (conn2, _proc):
        await opened(conn2)
        await conn2.load_session(session_id=session, cwd=str(repo), mcp_servers=[])
        users = [u["update"]["content"]["text"] for u in client2.updates("user_message_chunk")]
        assert [u for u in users if not u.startswith("/")] == ["write a.txt: one", "write b.txt: two",
                                                                "echo still here"], users
        assert "/checkpoints" in users and "/land from-editor" in users  # with cairnd's answers
        assert any("Landed on branch from-editor" in (u["update"]["content"].get("text") or "")
                   for u in client2.updates("agent_message_chunk"))
        calls = [u["update"]["title"] for u in client2.updates("tool_call")]
        assert calls == ["write a.txt", "write b.txt"], calls  # the turns' tool calls, as they ran
        _, text = await Editor(conn2, client2).say(session, "echo after load")
        assert "history=3" in text, text


@pytest.mark.slow
async def test_an_agent_that_cannot_start_and_a_session_open_elsewhere(tmp_path):
    from daemonproc import write_config
    repo = repo_at(tmp_path)
    config = write_config(tmp_path / "cairnd.toml", {"agents": {"broken": {"command": [str(tmp_path / "no-such")]}}})
    client = RecordingClient(root=repo)
    command = cairnd_acp("broken")
    env = acp_env(tmp_path, config)
    async with spawn_agent_process(client, command[0], *command[1:], env=env, cwd=repo,
                                   observers=[client.observe], use_unstable_protocol=True) as (conn, _proc):
        await opened(conn)  # answered, with cairnd's own capabilities, though the agent is missing
        session = (await conn.new_session(cwd=str(repo), mcp_servers=[])).session_id
        ed = Editor(conn, client)
        await until(lambda: "did not start" in client.agent_text())
        assert str(tmp_path / "no-such") in client.agent_text()
        stop, text = await ed.say(session, "hello")
        assert stop == "end_turn" and "cannot start agent 'broken'" in text, text
        _, text = await ed.say(session, "/checkpoints")  # the session goes on; no turn began
        assert "No user messages yet." in text, text

        # another editor (another cairnd acp) cannot write the same session while this one serves it
        client2 = RecordingClient(root=repo)
        async with spawn_agent_process(client2, command[0], *command[1:], env=env, cwd=repo,
                                       observers=[client2.observe], use_unstable_protocol=True) as (conn2, proc2):
            await opened(conn2)
            with pytest.raises(acp.RequestError) as busy:
                await conn2.load_session(session_id=session, cwd=str(repo), mcp_servers=[])
            assert busy.value.data["code"] == "session_busy", busy.value.data
