"""The real Claude Code (claude-agent-acp) behind `cairnd acp`, offline against the
scripted Messages-API stub (tests/scenarios/realagents): its permission requests reach
the editor and the editor's answer decides them; `/rewind 1` sends the model exactly
the conversation it kept (SPEC 18)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from acp import PROTOCOL_VERSION, spawn_agent_process, text_block
from acp.schema import ClientCapabilities, FileSystemCapabilities

from acpkit import acp_env, cairnd_acp
from daemonproc import write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
from realagents import daemonkit  # noqa: E402
from realagents.anthropic_stub import AnthropicStub, prompt_texts, text, write_file  # noqa: E402
from realagents.harness import RecordingClient, ensure_agents_installed, make_git_repo  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.realagent, pytest.mark.slow]


PROMPTS = ["Write refused.txt.", "Write kept.txt.", "What is left?"]


async def test_claude_behind_cairnd_acp_asks_the_editor_and_rewinds(tmp_path):
    problem = ensure_agents_installed()
    if problem:
        pytest.skip(f"real agents unavailable: {problem}")
    repo = make_git_repo(tmp_path / "project", {"README.md": "# demo\n"})
    with AnthropicStub([write_file(str(repo / "refused.txt"), "no\n"), text("It was refused."),
                        write_file(str(repo / "kept.txt"), "yes\n"), text("Written."),
                        text("Only README.md.")]) as stub:
        profile = daemonkit.claude_profile(stub.agent_env(str(tmp_path / "home")), tmp_path / "home")
        config = write_config(tmp_path / "cairnd.toml", {**daemonkit.DAEMON_SETTINGS, "agents": {"claude": profile}})
        client = RecordingClient(root=repo, permission="reject_once")
        command = cairnd_acp("claude")
        env = acp_env(tmp_path, config)
        async with spawn_agent_process(client, command[0], *command[1:], env=env, cwd=repo,
                                       observers=[client.observe], use_unstable_protocol=True) as (conn, _proc):
            await conn.initialize(protocol_version=PROTOCOL_VERSION, client_capabilities=ClientCapabilities(
                fs=FileSystemCapabilities(read_text_file=True, write_text_file=True), terminal=False))
            session = (await conn.new_session(cwd=str(repo), mcp_servers=[])).session_id

            await conn.prompt(session_id=session, prompt=[text_block(PROMPTS[0])])
            assert len(client.permission_requests) == 1 and not (repo / "refused.txt").exists()
            client.permission = "allow_once"
            await conn.prompt(session_id=session, prompt=[text_block(PROMPTS[1])])
            assert len(client.permission_requests) == 2 and (repo / "kept.txt").read_text() == "yes\n"
            assert "Written." in client.agent_text()  # Claude's own words streamed through

            await conn.prompt(session_id=session, prompt=[text_block("/rewind 1")])
            assert "Rewound to before user message 1" in client.agent_text()
            assert not (repo / "kept.txt").exists()  # the editor's files went back with the conversation
            await conn.prompt(session_id=session, prompt=[text_block(PROMPTS[2])])
        # the model saw the kept conversation, exactly: message 0 and its answer, then the new one
        assert [t.strip() for t in prompt_texts(stub.main_requests()[-1])] == [PROMPTS[0], PROMPTS[2]]
        assert "/rewind" not in repr(stub.main_requests())  # a slash command never reaches the agent
        assert stub.remaining() == []
