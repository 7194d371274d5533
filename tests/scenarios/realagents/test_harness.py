"""The harness drives each pinned real agent offline: a canary for agent upgrades.

One turn per agent, straight over the ACP SDK (no cairnd): the stub scripts a
file write, the real tool writes the file, the model sees the prompt. If one
of these fails, the agent or its environment changed: read NOTES.md and
re-run the smoke script for that agent before suspecting cairnd.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from acp import PROTOCOL_VERSION, spawn_agent_process, text_block
from acp.schema import ClientCapabilities, FileSystemCapabilities

from . import anthropic_stub, gemini_stub, responses_stub
from .harness import (
    RecordingClient,
    agent_env,
    claude_agent_bin,
    claude_agent_env,
    codex_agent_bin,
    codex_agent_env,
    ensure_agents_installed,
    gemini_agent_command,
    gemini_agent_env,
    make_git_repo,
)
from .scripted import ScriptedModelStub

pytestmark = pytest.mark.realagent

TURN_TIMEOUT = 120.0  # a bound against hangs, not an expectation: a turn takes well under a second


@pytest.fixture(scope="module")
def agents_installed() -> None:
    problem = ensure_agents_installed()
    if problem:
        pytest.skip(f"real agents unavailable: {problem}")


async def one_write_turn(
    stub: ScriptedModelStub,
    command: list[str],
    env: Mapping[str, str],
    repo: Path,
    offer_fs: bool,
    stderr_path: Path,
) -> tuple[RecordingClient, str]:
    client = RecordingClient(root=repo)
    with stderr_path.open("wb") as stderr:
        async with spawn_agent_process(
            client,
            command[0],
            *command[1:],
            env=dict(env),
            cwd=repo,
            observers=[client.observe],
            transport_kwargs={"stderr": stderr, "shutdown_timeout": 0.5},
        ) as (conn, _proc):
            await asyncio.wait_for(
                conn.initialize(
                    protocol_version=PROTOCOL_VERSION,
                    client_capabilities=ClientCapabilities(
                        fs=FileSystemCapabilities(read_text_file=offer_fs, write_text_file=offer_fs)
                    ),
                ),
                TURN_TIMEOUT,
            )
            session = await asyncio.wait_for(conn.new_session(cwd=str(repo), mcp_servers=[]), TURN_TIMEOUT)
            response = await asyncio.wait_for(
                conn.prompt(session_id=session.session_id, prompt=[text_block("make a.txt")]), TURN_TIMEOUT
            )
    return client, response.stop_reason


def run_write_turn(
    tmp_path: Path,
    stub: ScriptedModelStub,
    command: list[str],
    env_for: Callable[[ScriptedModelStub, Path], Mapping[str, str]],
    offer_fs: bool,
) -> tuple[Path, RecordingClient, str]:
    home = tmp_path / "home"
    home.mkdir()
    repo = make_git_repo(tmp_path / "repo")
    stub.push(*write_and_answer(stub, repo))
    with stub:
        client, stop_reason = asyncio.run(
            one_write_turn(stub, command, env_for(stub, home), repo, offer_fs, tmp_path / "agent.stderr")
        )
    return repo, client, stop_reason


def write_and_answer(stub: ScriptedModelStub, repo: Path) -> list[anthropic_stub.Reply]:
    if isinstance(stub, responses_stub.ResponsesStub):
        return [responses_stub.apply_patch_add("a.txt", "made by a real agent"), responses_stub.text("Done.")]
    module = anthropic_stub if isinstance(stub, anthropic_stub.AnthropicStub) else gemini_stub
    return [module.write_file(str(repo / "a.txt"), "made by a real agent\n"), module.text("Done.")]


@pytest.mark.slow
def test_claude_agent_acp_writes_a_file_with_its_own_tool(tmp_path: Path, agents_installed: None) -> None:
    stub = anthropic_stub.AnthropicStub()
    repo, client, stop_reason = run_write_turn(
        tmp_path,
        stub,
        [str(claude_agent_bin())],
        lambda s, home: claude_agent_env(s.agent_env(str(home)), home),
        offer_fs=True,
    )
    assert stop_reason == "end_turn"
    assert (repo / "a.txt").read_text() == "made by a real agent\n"
    # one question, for the Write, and it offers the once-only answer cairnd gives
    assert ["allow_once" in {o["kind"] for o in r["options"]} for r in client.permission_requests] == [True]
    assert anthropic_stub.prompt_texts(stub.main_requests()[0]) == ["make a.txt"]
    assert stub.remaining() == [] and stub.unscripted == 0
    assert "Done." in client.agent_text()


@pytest.mark.slow
def test_gemini_cli_writes_a_file_with_its_own_tool(tmp_path: Path, agents_installed: None) -> None:
    stub = gemini_stub.GeminiStub()
    repo, client, stop_reason = run_write_turn(
        tmp_path,
        stub,
        gemini_agent_command(),
        lambda s, home: gemini_agent_env(s.agent_env(str(home)), home),
        # offered fs/*, Gemini CLI 0.61 cannot create a new file (NOTES.md)
        offer_fs=False,
    )
    assert stop_reason == "end_turn"
    assert (repo / "a.txt").read_text() == "made by a real agent\n"
    assert [o["kind"] for o in client.permission_requests[0]["options"]] == ["allow_always", "allow_once", "reject_once"]
    assert gemini_stub.prompt_texts(stub.main_requests()[0])[-1] == "make a.txt"
    assert stub.remaining() == [] and stub.unscripted == 0


def test_agent_env_drops_is_sandbox_and_keeps_the_rest() -> None:
    env = agent_env({"HOME": "/h"}, base={"IS_SANDBOX": "1", "PATH": "/bin", "HOME": "/root"})
    assert env == {"PATH": "/bin", "HOME": "/h"}


@pytest.mark.slow
def test_codex_acp_writes_a_file_with_apply_patch(tmp_path: Path, agents_installed: None) -> None:
    stub = responses_stub.ResponsesStub()
    repo, client, stop_reason = run_write_turn(
        tmp_path,
        stub,
        [str(codex_agent_bin())],
        lambda s, home: codex_agent_env(s.agent_env(str(home))),
        offer_fs=False,
    )
    assert stop_reason == "end_turn"
    assert (repo / "a.txt").read_text() == "made by a real agent\n"
    [first, second] = stub.main_requests()
    assert responses_stub.prompt_texts(first) == ["make a.txt"]
    assert [o["output"].splitlines()[-1] for o in responses_stub.tool_outputs(second)] == ["A a.txt"]
    assert stub.remaining() == [] and stub.unscripted == 0
    assert "Done." in client.agent_text()
