"""SPEC section 10: the reference agent, driven over real stdio by the ACP SDK's own client.

These tests talk to `python -m cairnd.agents.reference` directly (no cairnd runner), so they
pin down the agent's behaviour on its own: actions, tool calls, sub-sessions, cancel, crash,
the `history=N` report and the replay marker it honours.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import acp
import anyio
import pytest
from acp.schema import (
    ClientCapabilities,
    FileSystemCapabilities,
    ReadTextFileResponse,
    WriteTextFileResponse,
)

from cairnd.agents.reference import Action, parse_line, read_transcript

pytestmark = [pytest.mark.anyio, pytest.mark.repo(empty=True)]


class RecordingClient:
    """A minimal ACP client: serves fs inside `root`, records every update and fs call."""

    def __init__(self, root: Path, refuse_writes: bool = False) -> None:
        self.root = root
        self.refuse_writes = refuse_writes
        self.updates: list[dict[str, Any]] = []
        self.fs_calls: list[tuple[str, str]] = []

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update.model_dump(mode="json", by_alias=True, exclude_none=True))

    async def write_text_file(self, session_id: str, path: str, content: str, **kwargs: Any) -> WriteTextFileResponse:
        self.fs_calls.append(("write", path))
        if self.refuse_writes:
            raise acp.RequestError.invalid_params({"path": path, "reason": "refused by test"})
        Path(path).write_text(content)
        return WriteTextFileResponse()

    async def read_text_file(self, session_id: str, path: str, line: int | None = None, limit: int | None = None,
                             **kwargs: Any) -> ReadTextFileResponse:
        self.fs_calls.append(("read", path))
        try:
            return ReadTextFileResponse(content=Path(path).read_text())
        except FileNotFoundError:
            raise acp.RequestError.resource_not_found(path) from None

    async def request_permission(self, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("session/request_permission")

    def texts(self, kind: str) -> list[str]:
        return [u["content"]["text"] for u in self.updates if u["sessionUpdate"] == kind]


@asynccontextmanager
async def reference_agent(repo: Path, *, fs: bool = True, refuse_writes: bool = False,
                          env: dict[str, str] | None = None) -> AsyncIterator[tuple[Any, RecordingClient, Any, str]]:
    client = RecordingClient(repo, refuse_writes)
    caps = ClientCapabilities(fs=FileSystemCapabilities(read_text_file=fs, write_text_file=fs))
    async with acp.spawn_agent_process(client, sys.executable, "-m", "cairnd.agents.reference",
                                       cwd=repo, env={**os.environ, **(env or {})}) as (conn, proc):
        await conn.initialize(protocol_version=acp.PROTOCOL_VERSION, client_capabilities=caps)
        session = await conn.new_session(cwd=str(repo))
        yield conn, client, proc, session.session_id


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The agent's transcripts, per test (the agent reads the variable from its environment)."""
    path = tmp_path / "reference-store"
    monkeypatch.setenv("CAIRND_REFERENCE_STORE", str(path))
    return path


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def history_of(client: RecordingClient) -> int:
    last = client.texts("agent_message_chunk")[-1]
    match = re.search(r"history=(\d+)", last)
    assert match, last
    return int(match.group(1))


def test_lines_parse_into_actions() -> None:
    assert parse_line("write a/b.txt: hello: world") == Action("write", "a/b.txt", "hello: world")
    assert parse_line("append notes.md: more") == Action("append", "notes.md", "more")
    assert parse_line("delete old.txt") == Action("delete", "old.txt")
    assert parse_line("commit: add the README") == Action("commit", "add the README")
    assert parse_line("delegate: delegate: x") == Action("delegate", "delegate: x")
    assert parse_line("sleep: 0.5") == Action("sleep", "0.5")
    assert parse_line("crash") == Action("crash")
    assert parse_line("hello there") == Action("echo", "hello there")
    assert parse_line("write nothing") == Action("echo", "write nothing")


async def test_actions_go_through_client_fs_and_are_reported_as_tool_calls(repo: Path) -> None:
    prompt = "write a.txt: one\nappend a.txt: two\nwrite b.txt: gone\ndelete b.txt\ncommit: first\nhello"
    async with reference_agent(repo) as (conn, client, _, sid):
        response = await conn.prompt(session_id=sid, prompt=[acp.text_block(prompt)])
    assert response.stop_reason == "end_turn"
    assert (repo / "a.txt").read_text() == "one\ntwo\n"
    assert not (repo / "b.txt").exists()
    assert git(repo, "log", "--format=%s") == "first\n"
    assert ("write", str(repo / "a.txt")) in client.fs_calls
    assert ("read", str(repo / "a.txt")) in client.fs_calls
    starts = [u for u in client.updates if u["sessionUpdate"] == "tool_call"]
    ends = [u for u in client.updates if u["sessionUpdate"] == "tool_call_update"]
    assert [u["title"] for u in starts] == ["write a.txt", "append a.txt", "write b.txt", "delete b.txt",
                                            "commit first"]
    assert [u["toolCallId"] for u in ends] == [u["toolCallId"] for u in starts]
    assert {u["status"] for u in ends} == {"completed"}
    assert client.texts("agent_message_chunk")[0] == "hello"
    assert history_of(client) == 0


async def test_without_client_fs_it_writes_directly(repo: Path) -> None:
    async with reference_agent(repo, fs=False) as (conn, client, _, sid):
        await conn.prompt(session_id=sid, prompt=[acp.text_block("write x.txt: direct\nappend x.txt: more")])
    assert (repo / "x.txt").read_text() == "direct\nmore\n"
    assert client.fs_calls == []


async def test_a_refused_write_is_a_failed_tool_call_and_the_turn_goes_on(repo: Path) -> None:
    async with reference_agent(repo, refuse_writes=True) as (conn, client, _, sid):
        response = await conn.prompt(session_id=sid, prompt=[acp.text_block("write ../x: no\nstill here")])
    assert response.stop_reason == "end_turn"
    [end] = [u for u in client.updates if u["sessionUpdate"] == "tool_call_update"]
    assert end["status"] == "failed"
    assert "refused by test" in end["content"][0]["content"]["text"]
    assert "still here" in client.texts("agent_message_chunk")


async def test_commit_uses_a_fixed_identity_where_none_is_configured(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.gitconfig").write_text("")
    no_identity = {"GIT_CONFIG_GLOBAL": str(tmp_path / "empty.gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
                   "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "EMAIL"} | no_identity
    async with acp.spawn_agent_process(RecordingClient(repo), sys.executable, "-m", "cairnd.agents.reference",
                                       cwd=repo, env=env) as (conn, _):
        await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
        sid = (await conn.new_session(cwd=str(repo))).session_id
        await conn.prompt(session_id=sid, prompt=[acp.text_block("write f: x\ncommit: anonymous")])
    author = git(repo, "log", "-1", "--format=%an <%ae>")
    assert author == "cairnd reference agent <reference-agent@cairnd.invalid>\n"


async def test_delegate_runs_marked_sub_sessions_and_nests(repo: Path) -> None:
    async with reference_agent(repo) as (conn, client, _, sid):
        await conn.prompt(session_id=sid, prompt=[acp.text_block("delegate: delegate: write n.txt: deep")])
    users = [u for u in client.updates if u["sessionUpdate"] == "user_message_chunk"]
    assert [(u["content"]["text"], u["_meta"]["cairnd"]["subSession"]) for u in users] == [
        ("delegate: write n.txt: deep", "d1"), ("write n.txt: deep", "d1/1")]
    assert all(u["messageId"] for u in users)
    answers = [u["_meta"]["cairnd"]["subSession"] for u in client.updates
               if u["sessionUpdate"] == "agent_message_chunk" and "_meta" in u]
    assert answers == ["d1/1", "d1"]
    assert (repo / "n.txt").read_text() == "deep\n"


@pytest.mark.slow
async def test_sleep_honours_cancel(repo: Path) -> None:
    async with reference_agent(repo) as (conn, client, _, sid):
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            result: list[str] = []

            async def run() -> None:
                response = await conn.prompt(session_id=sid, prompt=[acp.text_block("sleep: 30\nwrite late: x")])
                result.append(response.stop_reason)

            tg.start_soon(run)
            await anyio.sleep(0.2)  # a cancel that arrives before the sleep starts cancels it too
            await conn.cancel(session_id=sid)
    assert result == ["cancelled"]
    assert time.monotonic() - started < 20
    assert not (repo / "late").exists()


@pytest.mark.slow
async def test_crash_exits_at_once_with_status_1(repo: Path) -> None:
    async with reference_agent(repo) as (conn, client, proc, sid):
        with pytest.raises(ConnectionError):
            await conn.prompt(session_id=sid, prompt=[acp.text_block("write before: x\ncrash\nwrite after: y")])
        assert await proc.wait() == 1
    assert (repo / "before").exists()
    assert not (repo / "after").exists()


@pytest.mark.slow
async def test_history_counts_prompts_and_replayed_messages(repo: Path) -> None:
    replay = acp.resource_block(acp.embedded_text_resource("cairnd://replay/s1", "earlier conversation"))
    replay.field_meta = {"cairnd": {"userMessages": 3}}
    async with reference_agent(repo) as (conn, client, _, sid):
        await conn.prompt(session_id=sid, prompt=[replay, acp.text_block("first here")])
        assert history_of(client) == 3
        await conn.prompt(session_id=sid, prompt=[acp.text_block("second here")])
        assert history_of(client) == 4
    assert "earlier conversation" not in client.texts("agent_message_chunk")


def agent_message_ids(client: RecordingClient) -> list[str]:
    """The id of each turn's last agent message (the `history=N` one), in order."""
    return [u["messageId"] for u in client.updates
            if u["sessionUpdate"] == "agent_message_chunk" and u["content"]["text"].startswith("history=")]


async def test_it_advertises_fork_and_resume_and_keeps_a_transcript(repo: Path, store: Path) -> None:
    async with reference_agent(repo) as (conn, client, _, sid):
        for text in ("one", "two", "three"):
            await conn.prompt(session_id=sid, prompt=[acp.text_block(text)])
    records = read_transcript(sid, store)
    assert [(r["kind"], r["text"]) for r in records] == [
        ("user", "one"), ("agent", "one"), ("agent", "history=0"),
        ("user", "two"), ("agent", "two"), ("agent", "history=1"),
        ("user", "three"), ("agent", "three"), ("agent", "history=2")]
    assert [r["messageId"] for r in records if r["text"].startswith("history=")] == agent_message_ids(client)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 3])
async def test_a_fork_at_a_message_id_holds_the_transcript_up_to_it_in_a_new_process(repo: Path, store: Path,
                                                                                    k: int) -> None:
    async with reference_agent(repo) as (conn, client, _, parent):
        for text in ("one", "two", "three"):
            await conn.prompt(session_id=parent, prompt=[acp.text_block(text)])
    cut_after = agent_message_ids(client)[k - 1]
    other = repo.parent / "elsewhere"
    other.mkdir()
    async with reference_agent(other) as (conn, client, _, _unused):
        fork = await conn.fork_session(session_id=parent, cwd=str(other), mcp_servers=[],
                                       jetbrains={"air": {"fork": {"version": 1, "messageId": cut_after}}})
        await conn.prompt(session_id=fork.session_id, prompt=[acp.text_block("after the fork")])
    assert history_of(client) == k
    kept = read_transcript(fork.session_id, store)
    assert [r["text"] for r in kept if r["kind"] == "user"] == ["one", "two", "three"][:k] + ["after the fork"]
    assert read_transcript(parent, store)[-1]["text"] == "history=2"  # the parent is untouched


@pytest.mark.slow
async def test_fork_and_resume_errors_name_what_is_missing(repo: Path, store: Path) -> None:
    async with reference_agent(repo) as (conn, _client, _, sid):
        await conn.prompt(session_id=sid, prompt=[acp.text_block("one")])
        with pytest.raises(acp.RequestError) as unknown_message:
            await conn.fork_session(session_id=sid, cwd=str(repo), mcp_servers=[],
                                    jetbrains={"air": {"fork": {"version": 1, "messageId": "nope"}}})
        assert unknown_message.value.code == -32602 and "nope" in str(unknown_message.value)
        (store / f"{sid}.jsonl").unlink()
        for call in (conn.fork_session, conn.resume_session):
            with pytest.raises(acp.RequestError) as gone:
                await call(session_id=sid, cwd=str(repo), mcp_servers=[])
            assert gone.value.code == -32002 and sid in str(gone.value)


@pytest.mark.slow
async def test_resume_in_a_new_process_knows_the_earlier_messages(repo: Path) -> None:
    async with reference_agent(repo) as (conn, _client, _, sid):
        await conn.prompt(session_id=sid, prompt=[acp.text_block("one")])
        await conn.prompt(session_id=sid, prompt=[acp.text_block("two")])
    async with reference_agent(repo) as (conn, client, _, _unused):
        await conn.resume_session(session_id=sid, cwd=str(repo), mcp_servers=[])
        await conn.prompt(session_id=sid, prompt=[acp.text_block("three")])
    assert history_of(client) == 2
