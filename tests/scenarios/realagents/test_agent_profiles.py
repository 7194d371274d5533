"""What the runner and the configuration do for real agents, shown on the agents that
need no node (the reference agent, tests/agent/agents/plain_agent.py), in seconds:

- `fs = false` in a profile: cairnd does not offer fs/* (Gemini CLI cannot create
  files through them);
- a profile's env replaces cairnd's own variables, "" included (IS_SANDBOX = "" for
  Claude Code when cairnd runs as root with IS_SANDBOX set);
- a turn that ends `cancelled` retires the agent process: the next prompt runs in a
  fresh one that gets the history (session/load here; claude-agent-acp is one turn
  behind after a cancel otherwise: test_claude_daemon.py).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from cairnd.config.settings import AgentProfile, ConfigError, parse_config, reference_profile
from cairnd.sessionlog.entries import method_of, parse_message
from cairnd.sessionlog.file import iter_lines
from cairnd.agent.runner import AgentRunner
from cairnd.sessionlog.transcript import session_state

PLAIN_AGENT = Path(__file__).resolve().parents[2] / "agent" / "agents" / "plain_agent.py"
SESSION = "s1"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "sessions" / SESSION / "log.ndjson"


def messages(log_path: Path) -> list[dict[str, Any]]:
    return [m for _, line in iter_lines(log_path) if (m := parse_message(line)) is not None]


@asynccontextmanager
async def runner(repo: Path, log_path: Path, profile: AgentProfile) -> AsyncIterator[AgentRunner]:
    async with anyio.create_task_group() as tg:
        run = AgentRunner(SESSION, repo, log_path, profile, task_group=tg, max_file_bytes=1 << 20, stop_timeout=5.0)
        try:
            yield run
        finally:
            with anyio.CancelScope(shield=True):
                await run.close()


def plain(tmp_path: Path, env: dict[str, str] | None = None) -> AgentProfile:
    return AgentProfile("plain", (sys.executable, str(PLAIN_AGENT), "--sessions", str(tmp_path / "plain-sessions")),
                        env or {})


# -- configuration ------------------------------------------------------------------


def test_fs_is_offered_unless_a_profile_says_fs_false(tmp_path: Path) -> None:
    config = parse_config({"agents": {
        "claude": {"command": ["claude-agent-acp"], "env": {"ANTHROPIC_API_KEY": "k", "IS_SANDBOX": ""}},
        "gemini": {"command": ["gemini", "--acp"], "fs": False},
    }}, environ={"CAIRND_STATE_DIR": str(tmp_path)})
    assert config.agent("claude") == AgentProfile("claude", ("claude-agent-acp",),
                                                  {"ANTHROPIC_API_KEY": "k", "IS_SANDBOX": ""}, "allow_once", True)
    assert config.agent("gemini").fs is False
    assert config.agent("reference").fs is True


@pytest.mark.parametrize("value", ["false", 0, 1, "yes"])
def test_fs_must_be_a_boolean(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match=r"\[agents.gemini\] fs = .* must be true or false"):
        parse_config({"agents": {"gemini": {"command": ["gemini"], "fs": value}}},
                     environ={"CAIRND_STATE_DIR": str(tmp_path)})


# -- the runner -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_fs_false_offers_no_fs_and_the_agent_writes_itself(repo: Path, log_path: Path) -> None:
    profile = AgentProfile("local-files", reference_profile().command, fs=False)
    async with runner(repo, log_path, profile) as run:
        result = await run.prompt("write a.txt: made without fs")
    assert result["stopReason"] == "end_turn"
    assert (repo / "a.txt").read_text() == "made without fs\n"
    sent = messages(log_path)
    [init] = [m for m in sent if m.get("method") == "initialize"]
    # The SDK leaves out what equals ACP's defaults (no fs, no terminal): nothing offered.
    fs = init["params"].get("clientCapabilities", {}).get("fs", {})
    assert not fs.get("readTextFile") and not fs.get("writeTextFile")
    assert not any(str(method_of(m)).startswith("fs/") for m in sent)


@pytest.mark.anyio
async def test_profile_env_replaces_cairnds_own_variables_even_with_empty(
        repo: Path, log_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IS_SANDBOX", "yes")
    monkeypatch.setenv("CAIRND_TEST_KEPT", "kept")
    async with runner(repo, log_path, plain(tmp_path, {"IS_SANDBOX": ""})) as run:
        await run.prompt("env: IS_SANDBOX\nenv: CAIRND_TEST_KEPT")
    reply = session_state(iter_lines(log_path)).conversation[-1].agent_text
    assert "IS_SANDBOX=\n" in reply and "CAIRND_TEST_KEPT=kept\n" in reply


@pytest.mark.anyio
async def test_a_cancelled_turn_retires_the_agent_and_the_next_prompt_loads_the_session(
        repo: Path, log_path: Path, tmp_path: Path) -> None:
    async with runner(repo, log_path, plain(tmp_path)) as run:
        await run.prompt("first")
        cancelled = await run.prompt("second\nstop: cancelled")  # the agent ends it `cancelled`
        assert cancelled["stopReason"] == "cancelled"
        with anyio.fail_after(30):  # a bound against hangs: it goes in about RETIRE_GRACE_SECONDS
            while run.running:
                await anyio.sleep(0.02)
        after = await run.prompt("third")
    assert after["stopReason"] == "end_turn"
    sent = messages(log_path)
    sdk = [m["params"]["sdkSessionId"] for m in sent if method_of(m) == "_posthog/sdk_session"]
    assert len(sdk) == 2 and sdk[0] == sdk[1]  # two processes, one agent session
    assert [m["method"] for m in sent if m.get("method") in ("session/new", "session/load")] == [
        "session/new", "session/load"]
    assert "history=2" in session_state(iter_lines(log_path)).conversation[-1].agent_text


@pytest.mark.anyio
async def test_other_stop_reasons_keep_the_agent_running(repo: Path, log_path: Path, tmp_path: Path) -> None:
    async with runner(repo, log_path, plain(tmp_path)) as run:
        await run.prompt("first\nstop: max_tokens")
        assert run.running
        await run.prompt("second")
    assert len([m for m in messages(log_path) if method_of(m) == "_posthog/sdk_session"]) == 1
