"""Fixtures of the real-agent tests: the agents installed from npm, the stubs that play
their models on a loopback port, and daemons whose default agent is one of them.

- `agents_installed`: skips the test when the npm agents cannot be had.
- `anthropic_api`, `gemini_api`: the scripted Messages API and Gemini API stubs; what
  they were asked is left in tmp_path/model-requests.jsonl.
- `repo`: a repository with one commit and a local identity (the agents commit with a
  HOME of their own, which has none).
- `agent_daemon(name, profile, state=...)`: a daemon whose default agent is this profile.
- `claude_daemon(wiretap=None)`, `gemini_daemon`: real Claude Code, real Gemini CLI,
  their model calls going to the stubs above, their HOME tmp_path/home.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemonproc import Daemon

from . import daemonkit
from .anthropic_stub import AnthropicStub
from .gemini_stub import GeminiStub
from .harness import ensure_agents_installed, make_git_repo


@pytest.fixture(scope="session")
def agents_installed() -> None:
    problem = ensure_agents_installed()
    if problem:
        pytest.skip(f"real agents unavailable: {problem}")


@pytest.fixture
def anthropic_api(tmp_path: Path) -> Iterator[AnthropicStub]:
    with AnthropicStub() as running:
        yield running
        running.write_log(tmp_path / "model-requests.jsonl")  # kept with the test's files


@pytest.fixture
def gemini_api(tmp_path: Path) -> Iterator[GeminiStub]:
    with GeminiStub() as running:
        yield running
        running.write_log(tmp_path / "model-requests.jsonl")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_git_repo(tmp_path / "project", {"README.md": "# demo\n"})


@pytest.fixture
def agent_daemon(start_daemon: Callable[..., Daemon], agents_installed: None) -> Callable[..., Daemon]:
    def start(name: str, profile: dict[str, Any], *, state: str = "state") -> Daemon:
        return start_daemon({**daemonkit.DAEMON_SETTINGS, "default_agent": name, "agents": {name: profile}},
                            state=state)
    return start


@pytest.fixture
def claude_daemon(agent_daemon: Callable[..., Daemon], anthropic_api: AnthropicStub,
                  tmp_path: Path) -> Callable[..., Daemon]:
    def start(wiretap: Path | None = None) -> Daemon:
        home = tmp_path / "home"
        return agent_daemon("claude", daemonkit.claude_profile(anthropic_api.agent_env(str(home)), home, wiretap))
    return start


@pytest.fixture
def gemini_daemon(agent_daemon: Callable[..., Daemon], gemini_api: GeminiStub, tmp_path: Path) -> Daemon:
    home = tmp_path / "home"
    # The wiretap runs inside the agent sandbox: its captures go in the session's own HOME.
    return agent_daemon("gemini", daemonkit.gemini_profile(gemini_api.agent_env(str(home)), home,
                                                           wiretap=Path("~/wire")))
